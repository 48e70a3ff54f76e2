"""The planner as a table: (desired, actual) -> actions and conditions.

``plan`` is pure, so most cases build :class:`DesiredState` and :class:`ContainerInfo`
objects directly; the desired side is labelled exactly as ``load_desired`` labels it
(through ``reconciler.desired.folder._labelled``). A few cases at the end go through real
squishfiles in ``tmp_path`` and :func:`load_desired`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from reconciler.desired.folder import FileCache, _labelled, load_desired
from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    LABEL_HASH,
    LABEL_MANAGED,
    MANAGER,
    DesiredContainer,
    DesiredState,
    FileError,
)
from reconciler.planning.plan import (
    PHASE,
    Action,
    ActionKind,
    ConditionKind,
    Plan,
    RemovalWindow,
    is_managed_by,
    plan,
)
from reconciler.problems import Problem
from reconciler.squishfile.placement import HostIdentity
from runtime.api.interface import ContainerInfo, ContainerState
from runtime.api.spec import ContainerSpec, NetworkAttachment, PortMapping, Resources, RootfsRef

FOLDER = Path("/srv/squish")
ELSEWHERE = Path("/srv/elsewhere")
BUSYBOX = RootfsRef(kind="busybox", version="builtin")

Restart = Literal["always", "on-failure", "never"]


# -- builders ------------------------------------------------------------------------------


def port(
    host: int,
    container: int = 80,
    protocol: Literal["tcp", "udp"] = "tcp",
    addr: str = "127.0.0.1",
) -> PortMapping:
    return PortMapping(container=container, host=host, protocol=protocol, host_addr=addr)


def spec(
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    argv: tuple[str, ...] = ("httpd", "-f"),
    ports: Sequence[PortMapping] = (),
    labels: Mapping[str, str] | None = None,
) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=argv,
        env=dict(env or {}),
        ports=tuple(ports),
        labels=dict(labels or {}),
    )


def want(
    name: str,
    *,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    argv: tuple[str, ...] = ("httpd", "-f"),
    ports: Sequence[PortMapping] = (),
    restart: Restart = "always",
    folder: Path = FOLDER,
) -> DesiredContainer:
    """A valid squishfile ``file`` (default ``<name>.toml``) in ``folder``, labelled."""
    path = folder / (file or f"{name}.toml")
    labelled = _labelled(spec(name, env=env, argv=argv, ports=ports), folder, path)
    return DesiredContainer(path, labelled, restart)


def info(
    container_spec: ContainerSpec,
    state: ContainerState,
    *,
    ports: Sequence[PortMapping] | None = None,
    exit_code: int | None = None,
) -> ContainerInfo:
    """An observed container; a running one forwards its spec's ports unless told."""
    if ports is None:
        ports = container_spec.ports if state is ContainerState.RUNNING else ()
    return ContainerInfo(
        name=container_spec.name,
        state=state,
        spec=container_spec,
        pid=4242 if state is ContainerState.RUNNING else None,
        slirp_pid=4243
        if state is ContainerState.RUNNING and container_spec.network in ("slirp4netns", "bridge")
        else None,
        exit_code=exit_code,
        ports=tuple(ports),
        log_path=f"/state/{container_spec.name}/log",
        created_at=1.0,
    )


def running(
    entry: DesiredContainer, *, ports: Sequence[PortMapping] | None = None
) -> ContainerInfo:
    return info(entry.spec, ContainerState.RUNNING, ports=ports)


def exited(entry: DesiredContainer, code: int) -> ContainerInfo:
    return info(entry.spec, ContainerState.EXITED, exit_code=code)


def created(entry: DesiredContainer) -> ContainerInfo:
    return info(entry.spec, ContainerState.CREATED)


def foreign(
    name: str, labels: Mapping[str, str] | None = None, ports: Sequence[PortMapping] = ()
) -> ContainerInfo:
    """A running container this folder did not make (unlabelled unless told)."""
    return info(
        spec(name, argv=("sleep", "1000"), ports=ports, labels=labels), ContainerState.RUNNING
    )


def desired(
    *entries: DesiredContainer,
    errors: Sequence[FileError] = (),
    readable: bool = True,
    folder: Path = FOLDER,
) -> DesiredState:
    return DesiredState(
        folder=folder,
        containers={e.name: e for e in entries},
        errors=tuple(errors),
        readable=readable,
    )


def invalid(file: str, name: str) -> FileError:
    path = FOLDER / file
    return FileError(path, name, (Problem(str(path), 3, "run.command", "is required"),))


def duplicate(file: str, name: str) -> FileError:
    path = FOLDER / file
    problem = Problem(str(path), None, "name", f"container name {name!r} is declared twice")
    return FileError(path, name, (problem,), kind="DuplicateName")


def action_text(action: Action) -> str:
    ports = (f"{p.host_addr}:{p.host}->{p.container}/{p.protocol}" for p in action.ports)
    return " ".join((action.kind.value, action.name, *ports))


def actions_of(result: Plan) -> tuple[str, ...]:
    """The containers' actions (the networks' are tests/test_plan_networks.py's)."""
    return tuple(action_text(a) for a in result.actions if not a.for_network)


def conditions_of(result: Plan) -> tuple[str, ...]:
    return tuple(sorted(f"{c.kind.value} {c.name}" for c in result.conditions))


# -- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    desired: DesiredState
    actual: tuple[ContainerInfo, ...]
    actions: tuple[str, ...]
    """``kind name [addr:host->container/proto ...]``, in plan order."""
    conditions: tuple[str, ...] = ()
    """``Kind name``, sorted."""
    now: float = 0.0
    not_before: Mapping[str, float] = field(default_factory=dict)


P8080 = port(8080)
P8081 = port(8081)
P9090 = port(9090, 90)

WEB = want("web", ports=[P8080])
WEB_NO_PORTS = want("web")
WEB_NEW_ENV = want("web", env={"GREETING": "hi"}, ports=[P8080])
WEB_NEW_ARGV = want("web", argv=("httpd", "-f", "-v"), ports=[P8080])
WEB_8081 = want("web", ports=[P8081])
WEB_TWO = want("web", ports=[P8080, P9090])
WEB_TWO_MOVED = want("web", ports=[P8080, port(9191, 90)])
WEB_ENV_AND_PORT = want("web", env={"GREETING": "hi"}, ports=[P8081])
API = want("api", ports=[P8081])
DB = want("db")

A_8080 = want("a", ports=[P8080])
A_8081 = want("a", ports=[P8081])
A_BARE = want("a")
B_8080 = want("b", ports=[P8080])
B_8081 = want("b", ports=[P8081])
B_8080_ENV = want("b", env={"X": "1"}, ports=[P8080])


def conflict(first: PortMapping, second: PortMapping) -> DesiredState:
    return desired(want("a", ports=[first]), want("b", ports=[second]))


def policy(name: str, restart: Restart) -> DesiredContainer:
    return want(name, restart=restart)


BASICS = [
    pytest.param(Case(desired(), (), ()), id="empty-empty"),
    pytest.param(Case(desired(WEB), (), ("create web",)), id="new-file-creates"),
    pytest.param(Case(desired(WEB), (running(WEB),), ()), id="unchanged-running-is-left"),
    pytest.param(Case(desired(), (running(WEB),), ("destroy web",)), id="file-gone-destroys"),
    pytest.param(
        Case(desired(), (exited(WEB, 0), created(DB)), ("destroy db", "destroy web")),
        id="file-gone-destroys-stopped-too",
    ),
    pytest.param(
        Case(desired(API), (running(WEB),), ("destroy web", "create api")),
        id="one-gone-one-new",
    ),
]

OWNERSHIP = [
    pytest.param(Case(desired(), (foreign("web"),), ()), id="unlabelled-foreign-untouched"),
    pytest.param(
        Case(desired(), (running(want("web", folder=ELSEWHERE)),), ()),
        id="other-folders-container-untouched",
    ),
    pytest.param(
        Case(
            desired(),
            (
                foreign(
                    "web",
                    {LABEL_MANAGED: "someone-else", LABEL_FOLDER: str(FOLDER), LABEL_FILE: "w"},
                ),
            ),
            (),
        ),
        id="other-manager-same-folder-untouched",
    ),
    pytest.param(
        Case(desired(), (foreign("web", {LABEL_FOLDER: str(FOLDER)}),), ()),
        id="folder-label-without-manager-untouched",
    ),
    pytest.param(
        Case(desired(WEB), (foreign("web"),), (), ("NameTaken web",)),
        id="desired-name-taken-by-unlabelled",
    ),
    pytest.param(
        Case(desired(WEB), (running(want("web", folder=ELSEWHERE)),), (), ("NameTaken web",)),
        id="desired-name-taken-by-other-folder",
    ),
    pytest.param(
        Case(
            desired(WEB, API),
            (foreign("web"), foreign("cron")),
            ("create api",),
            ("NameTaken web",),
        ),
        id="foreign-names-never-destroyed-others-proceed",
    ),
]

CHANGES = [
    pytest.param(
        Case(desired(WEB_NEW_ENV), (running(WEB),), ("recreate web",)), id="env-changed-recreates"
    ),
    pytest.param(
        Case(desired(WEB_NEW_ARGV), (running(WEB),), ("recreate web",)),
        id="argv-changed-recreates",
    ),
    pytest.param(
        Case(desired(WEB_NEW_ENV), (exited(WEB, 1),), ("recreate web",)),
        id="env-changed-while-exited-recreates",
    ),
    pytest.param(
        Case(
            desired(WEB_8081),
            (running(WEB),),
            ("bind web 127.0.0.1:8081->80/tcp", "release web 127.0.0.1:8080->80/tcp"),
        ),
        id="port-moved-running-binds-then-releases",
    ),
    pytest.param(
        Case(desired(WEB_TWO), (running(WEB),), ("bind web 127.0.0.1:9090->90/tcp",)),
        id="port-added-running-binds-only-it",
    ),
    pytest.param(
        Case(desired(WEB), (running(WEB_TWO),), ("release web 127.0.0.1:9090->90/tcp",)),
        id="port-removed-running-releases-only-it",
    ),
    pytest.param(
        Case(
            desired(WEB_TWO_MOVED),
            (running(WEB_TWO),),
            ("bind web 127.0.0.1:9191->90/tcp", "release web 127.0.0.1:9090->90/tcp"),
        ),
        id="only-the-changed-port-of-two",
    ),
    pytest.param(
        Case(
            desired(want("web", ports=[port(8080, 81)])),
            (running(WEB),),
            ("unbind web 127.0.0.1:8080->80/tcp", "bind web 127.0.0.1:8080->81/tcp"),
        ),
        id="container-side-of-a-port-changed",
    ),
    pytest.param(
        Case(desired(WEB_8081), (running(WEB, ports=[P8081]),), ()),
        id="live-ports-already-match-after-live-change",
    ),
    pytest.param(
        Case(desired(WEB_8081), (exited(WEB, 0),), ("recreate web",)),
        id="port-changed-while-exited-recreates",
    ),
    pytest.param(
        Case(desired(WEB_8081), (created(WEB),), ("recreate web",)),
        id="port-changed-while-created-recreates",
    ),
    pytest.param(
        Case(desired(WEB_ENV_AND_PORT), (running(WEB),), ("recreate web",)),
        id="env-and-port-changed-one-recreate-no-rebind",
    ),
]

MOVES = [
    pytest.param(
        Case(
            desired(A_8081, B_8080),
            (running(A_8080), running(B_8081)),
            ("move a 127.0.0.1:8081->80/tcp", "move b 127.0.0.1:8080->80/tcp"),
        ),
        id="swap-ports-between-running",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080),
            (running(A_8080), running(want("b"))),
            ("move b 127.0.0.1:8080->80/tcp",),
        ),
        id="move-port-to-running-container",
    ),
    pytest.param(
        Case(
            desired(A_BARE, want("b", ports=[port(8080, 81)])),
            (running(A_8080), running(want("b"))),
            ("unbind a 127.0.0.1:8080->80/tcp", "bind b 127.0.0.1:8080->81/tcp"),
        ),
        id="port-taken-with-another-container-port-unbinds-then-binds",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080),
            (running(A_8080),),
            ("create b",),
        ),
        id="move-port-to-new-container",
    ),
    pytest.param(
        Case(desired(B_8080), (running(A_8080),), ("destroy a", "create b")),
        id="port-of-destroyed-container-reused",
    ),
    pytest.param(
        Case(
            desired(want("a", env={"V": "2"}, ports=[P8081]), B_8080),
            (running(A_8080), running(B_8081)),
            ("recreate a", "bind b 127.0.0.1:8080->80/tcp"),
        ),
        id="swap-with-a-recreate-that-moves-its-new-port-over",
    ),
]

CONFLICTS = [
    pytest.param(
        Case(conflict(P8080, P8080), (), ("create a",), ("PortConflict b",)),
        id="newcomers-first-file-wins",
    ),
    pytest.param(
        Case(
            desired(
                want("zeta", file="a.toml", ports=[P8080]),
                want("alpha", file="b.toml", ports=[P8080]),
            ),
            (),
            ("create zeta",),
            ("PortConflict alpha",),
        ),
        id="file-name-not-container-name-decides",
    ),
    pytest.param(
        Case(desired(A_8080, B_8080), (running(B_8080),), (), ("PortConflict a",)),
        id="holder-keeps-port-over-earlier-file",
    ),
    pytest.param(
        Case(desired(A_8080, B_8080_ENV), (running(B_8080),), ("recreate b",), ("PortConflict a",)),
        id="holder-keeps-port-through-recreate",
    ),
    pytest.param(
        Case(
            desired(want("a", env={"X": "2"}, ports=[P8080]), B_8080),
            (running(B_8080), exited(A_BARE, 1)),
            (),
            ("PortConflict a",),
        ),
        id="loser-gets-no-action-at-all",
    ),
    pytest.param(
        Case(conflict(port(8080, addr="0.0.0.0"), P8080), (), ("create a",), ("PortConflict b",)),
        id="ipv4-wildcard-overlaps-loopback",
    ),
    pytest.param(
        Case(conflict(P8080, port(8080, addr="0.0.0.0")), (), ("create a",), ("PortConflict b",)),
        id="loopback-overlaps-ipv4-wildcard",
    ),
    pytest.param(
        Case(conflict(port(8080, addr="::"), P8080), (), ("create a",), ("PortConflict b",)),
        id="ipv6-wildcard-overlaps-loopback",
    ),
    pytest.param(
        Case(conflict(P8080, port(8080, 81)), (), ("create a",), ("PortConflict b",)),
        id="same-host-port-other-container-port",
    ),
    pytest.param(
        Case(conflict(P8080, port(8080, addr="127.0.0.2")), (), ("create a", "create b")),
        id="distinct-addresses-do-not-conflict",
    ),
    pytest.param(
        Case(conflict(P8080, port(8080, protocol="udp")), (), ("create a", "create b")),
        id="tcp-and-udp-do-not-conflict",
    ),
    pytest.param(
        Case(
            conflict(P8080, port(8080, protocol="udp", addr="0.0.0.0")),
            (),
            ("create a", "create b"),
        ),
        id="wildcard-does-not-cross-protocols",
    ),
    pytest.param(
        Case(conflict(P8080, P8081), (), ("create a", "create b")),
        id="different-ports-do-not-conflict",
    ),
    pytest.param(
        Case(
            desired(A_8080, B_8080, want("c", ports=[P8080])),
            (),
            ("create a",),
            ("PortConflict b", "PortConflict c"),
        ),
        id="three-way-one-winner",
    ),
    pytest.param(
        Case(
            desired(A_8081, B_8080, want("c", ports=[P8081])),
            (running(A_8081), running(want("c", ports=[P8080]))),
            (),
            ("PortConflict b", "PortConflict c"),
        ),
        id="a-refused-file-keeps-its-forwards-so-no-one-else-takes-them",
    ),
]

BROKEN_FILES = [
    pytest.param(
        Case(
            desired(errors=[invalid("web.toml", "web")]), (running(WEB),), (), ("InvalidSpec web",)
        ),
        id="invalid-file-keeps-its-container",
    ),
    pytest.param(
        Case(
            desired(errors=[invalid("renamed.toml", "web")]),
            (running(WEB),),
            (),
            ("InvalidSpec web",),
        ),
        id="invalid-file-claiming-the-name-keeps-it",
    ),
    pytest.param(
        Case(
            desired(errors=[invalid("web.toml", "webby")]),
            (running(WEB),),
            (),
            ("InvalidSpec webby",),
        ),
        id="invalid-file-that-made-it-keeps-it",
    ),
    pytest.param(
        Case(desired(errors=[invalid("web.toml", "web")]), (), (), ("InvalidSpec web",)),
        id="invalid-file-without-container",
    ),
    pytest.param(
        Case(
            desired(errors=[invalid("web.toml", "web")]),
            (running(WEB), running(API)),
            ("destroy api",),
            ("InvalidSpec web",),
        ),
        id="invalid-file-does-not-shield-others",
    ),
    pytest.param(
        Case(
            desired(errors=[duplicate("web.toml", "web"), duplicate("www.toml", "web")]),
            (running(WEB),),
            (),
            ("DuplicateName web", "DuplicateName web"),
        ),
        id="duplicate-names-existing-untouched",
    ),
    pytest.param(
        Case(
            desired(DB, errors=[duplicate("web.toml", "web"), duplicate("www.toml", "web")]),
            (),
            ("create db",),
            ("DuplicateName web", "DuplicateName web"),
        ),
        id="duplicate-names-nothing-created",
    ),
    pytest.param(
        Case(
            desired(readable=False),
            (running(WEB), exited(API, 1), created(DB)),
            (),
            ("FolderUnreadable *",),
        ),
        id="folder-unreadable-changes-nothing",
    ),
    pytest.param(
        Case(desired(readable=False), (), (), ("FolderUnreadable *",)),
        id="folder-unreadable-empty",
    ),
]

POLICIES: tuple[Restart, ...] = ("always", "on-failure", "never")
EXITS: list[tuple[Restart, int, tuple[str, ...]]] = [
    ("always", 0, ("start web",)),
    ("always", 1, ("start web",)),
    ("on-failure", 0, ()),
    ("on-failure", 1, ("start web",)),
    ("on-failure", 137, ("start web",)),
    ("never", 0, ()),
    ("never", 1, ()),
]

RESTARTS = (
    [
        pytest.param(
            Case(
                desired(policy("web", restart)), (exited(policy("web", restart), code),), expected
            ),
            id=f"exited-{code}-{restart}",
        )
        for restart, code, expected in EXITS
    ]
    + [
        pytest.param(
            Case(
                desired(policy("web", restart)), (created(policy("web", restart)),), ("start web",)
            ),
            id=f"created-{restart}-starts",
        )
        for restart in POLICIES
    ]
    + [
        pytest.param(
            Case(desired(policy("web", restart)), (running(policy("web", restart)),), ()),
            id=f"running-{restart}-left",
        )
        for restart in POLICIES
    ]
)

BACK_OFF = [
    pytest.param(
        Case(desired(WEB, API), (), ("create api",), ("BackOff web",), 100.0, {"web": 130.0}),
        id="create-held-back",
    ),
    pytest.param(
        Case(desired(WEB), (), ("create web",), (), 100.0, {"web": 99.0}),
        id="create-after-back-off",
    ),
    pytest.param(
        Case(desired(WEB), (), ("create web",), (), 100.0, {"web": 100.0}),
        id="back-off-ends-at-not-before",
    ),
    pytest.param(
        Case(desired(WEB), (), ("create web",), (), 100.0, {"api": 200.0}),
        id="back-off-of-another-name",
    ),
    pytest.param(
        Case(desired(WEB), (exited(WEB, 1),), (), ("BackOff web",), 5.0, {"web": 6.0}),
        id="start-held-back",
    ),
    pytest.param(
        Case(desired(WEB), (exited(WEB, 1),), ("start web",), (), 7.0, {"web": 6.0}),
        id="start-after-back-off",
    ),
    pytest.param(
        Case(desired(WEB_NEW_ENV), (running(WEB),), (), ("BackOff web",), 5.0, {"web": 6.0}),
        id="recreate-held-back",
    ),
    pytest.param(
        Case(desired(WEB_8081), (running(WEB),), (), ("BackOff web",), 5.0, {"web": 6.0}),
        id="rebind-held-back",
    ),
    pytest.param(
        Case(desired(WEB), (running(WEB),), (), (), 5.0, {"web": 6.0}),
        id="nothing-to-do-no-back-off-condition",
    ),
    pytest.param(
        Case(desired(), (running(WEB),), (), ("BackOff web",), 5.0, {"web": 6.0}),
        id="destroy-held-back",
    ),
    pytest.param(
        Case(desired(), (running(WEB),), ("destroy web",), (), 7.0, {"web": 6.0}),
        id="destroy-after-back-off",
    ),
]

# An old forward goes before the takes only when one of them needs its host side; any
# other goes after them (release, phase 2); one that a held-back container asks for stays.
MAKE_BEFORE_BREAK = [
    pytest.param(
        Case(
            desired(want("web", ports=[P8081, port(9191, 90)])),
            (running(WEB_TWO),),
            (
                "bind web 127.0.0.1:8081->80/tcp 127.0.0.1:9191->90/tcp",
                "release web 127.0.0.1:8080->80/tcp 127.0.0.1:9090->90/tcp",
            ),
        ),
        id="every-port-moved-binds-all-then-releases-all",
    ),
    pytest.param(
        Case(
            desired(want("web", ports=[port(8080, 81), P8081])),
            (running(WEB),),
            (
                "unbind web 127.0.0.1:8080->80/tcp",
                "bind web 127.0.0.1:8080->81/tcp 127.0.0.1:8081->80/tcp",
            ),
        ),
        id="same-host-side-reused-unbinds-first",
    ),
    pytest.param(
        Case(
            desired(want("web", ports=[P8080])),
            (running(want("web", ports=[port(8080, addr="0.0.0.0")])),),
            ("unbind web 0.0.0.0:8080->80/tcp", "bind web 127.0.0.1:8080->80/tcp"),
        ),
        id="wildcard-host-side-overlaps-unbinds-first",
    ),
    pytest.param(
        Case(
            desired(want("web", ports=[port(8080, protocol="udp")])),
            (running(WEB),),
            ("bind web 127.0.0.1:8080->80/udp", "release web 127.0.0.1:8080->80/tcp"),
        ),
        id="other-protocol-same-port-coexists",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080),
            (running(A_8080), running(want("b"))),
            (),
            ("BackOff b",),
            5.0,
            {"b": 6.0},
        ),
        id="moved-port-stays-while-its-taker-backs-off",
    ),
    pytest.param(
        Case(desired(A_BARE, B_8080), (running(A_8080),), (), ("BackOff b",), 5.0, {"b": 6.0}),
        id="moved-port-stays-while-the-new-container-backs-off",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080),
            (running(A_8080), running(want("b"))),
            ("move b 127.0.0.1:8080->80/tcp",),
            (),
            7.0,
            {"b": 6.0},
        ),
        id="moved-port-moves-once-the-back-off-ends",
    ),
    pytest.param(
        Case(
            desired(want("a", ports=[P9090]), B_8080),
            (running(A_8080), running(want("b"))),
            ("bind a 127.0.0.1:9090->90/tcp",),
            ("BackOff b",),
            5.0,
            {"b": 6.0},
        ),
        id="held-back-taker-keeps-only-its-port-in-place",
    ),
    pytest.param(
        Case(
            desired(A_BARE, want("c", ports=[P8080])),
            (running(A_8080), foreign("c")),
            ("release a 127.0.0.1:8080->80/tcp",),
            ("NameTaken c",),
            5.0,
            {"c": 6.0},
        ),
        id="a-refused-file-holds-nothing-back",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080),
            (running(A_8080), running(want("b"))),
            (),
            ("BackOff a", "BackOff b"),
            5.0,
            {"a": 6.0},
        ),
        id="taker-waits-while-the-holder-backs-off",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080, want("c", ports=[P9090])),
            (running(A_8080), running(want("b", ports=[P9090]))),
            (),
            ("BackOff a", "BackOff b", "BackOff c"),
            5.0,
            {"a": 6.0},
        ),
        id="waiting-is-passed-along-a-chain-of-moves",
    ),
    pytest.param(
        Case(
            desired(A_BARE, B_8080),
            (running(A_8080),),
            ("create b",),
            (),
            7.0,
            {"a": 6.0},
        ),
        id="new-container-takes-the-port-once-the-holder-may-free-it",
    ),
]


@pytest.mark.parametrize(
    "case",
    BASICS
    + OWNERSHIP
    + CHANGES
    + MOVES
    + CONFLICTS
    + BROKEN_FILES
    + RESTARTS
    + BACK_OFF
    + MAKE_BEFORE_BREAK,
)
def test_plan_table(case: Case) -> None:
    result = plan(case.desired, case.actual, now=case.now, not_before=case.not_before)
    assert actions_of(result) == case.actions
    assert conditions_of(result) == tuple(sorted(case.conditions))


# -- the details the table does not show --------------------------------------------------


def test_plan_takes_no_clock_by_default() -> None:
    result = plan(desired(WEB), [], not_before={"web": 1.0})
    assert actions_of(result) == ()
    assert conditions_of(result) == ("BackOff web",)


def test_create_carries_the_labelled_spec() -> None:
    (action,) = plan(desired(WEB), []).actions
    assert action.kind is ActionKind.CREATE
    assert action.desired is WEB
    assert action.reason == "new in web.toml"
    assert action.desired.spec.labels[LABEL_HASH] == WEB.spec.labels[LABEL_HASH]


def test_recreate_reason_names_the_changed_field() -> None:
    (action,) = plan(desired(WEB_NEW_ENV), [running(WEB)]).actions
    assert action.kind is ActionKind.RECREATE
    assert action.desired is WEB_NEW_ENV
    assert action.reason == "changed: env"

    (action,) = plan(desired(WEB_NEW_ARGV), [running(WEB)]).actions
    assert action.reason == "changed: argv"

    both = want("web", env={"A": "1"}, argv=("sh",), ports=[P8081])
    (action,) = plan(desired(both), [running(WEB)]).actions
    assert action.reason == "changed: argv, env"  # ports are not a reason to recreate


def test_recreate_reason_without_a_visible_difference_is_the_hash() -> None:
    stale = WEB.spec.model_copy(update={"labels": {**WEB.spec.labels, LABEL_HASH: "0" * 16}})
    (action,) = plan(desired(WEB), [info(stale, ContainerState.RUNNING)]).actions
    assert action.kind is ActionKind.RECREATE
    assert action.reason == "changed: spec hash"


def test_port_change_while_stopped_says_so() -> None:
    (action,) = plan(desired(WEB_8081), [exited(WEB, 0)]).actions
    assert action.kind is ActionKind.RECREATE
    assert action.reason == "ports changed while stopped"


def test_rebind_carries_exactly_the_changed_ports() -> None:
    kept, gone, new_a, new_b = port(8080), port(9090, 90), port(7000, 70), port(53, 53, "udp")
    old = want("web", ports=[kept, gone])
    new = want("web", ports=[new_b, kept, new_a])
    actions = plan(desired(new), [running(old)]).actions
    assert [(a.kind, a.ports) for a in actions] == [
        (ActionKind.BIND, (new_b, new_a)),  # sorted by text: "...:53->" before "...:7000->"
        (ActionKind.RELEASE, (gone,)),
    ]
    assert all(a.desired is new for a in actions)
    assert str(actions[1]) == "release web 127.0.0.1:9090->90/tcp: ports changed"


def test_swap_between_running_containers_moves_both_forwards_in_phase_1() -> None:
    result = plan(desired(A_8081, B_8080), [running(B_8081), running(A_8080)])
    assert result.phase(0) == result.phase(2) == ()
    assert [(a.kind, a.name, a.moves, a.ports) for a in result.actions] == [
        (ActionKind.MOVE, "a", (("b", P8081),), (P8081,)),
        (ActionKind.MOVE, "b", (("a", P8080),), (P8080,)),
    ]
    assert [PHASE[a.kind] for a in result.actions] == [1, 1]
    assert str(result.actions[0]) == "move a 127.0.0.1:8081->80/tcp: ports changed; from b"
    assert result.actions[0].desired is A_8081


def test_a_taker_that_waits_for_a_backing_off_holder_says_so() -> None:
    result = plan(desired(A_BARE, B_8080), [running(A_8080)], now=5.0, not_before={"a": 6.0})
    waiting = [c for c in result.conditions if c.name == "b"]
    assert [(c.kind, c.message) for c in waiting] == [
        (
            ConditionKind.BACK_OFF,
            "waits for a, which is backing off, to free host port 127.0.0.1:8080->80/tcp",
        )
    ]


def test_a_new_container_carries_the_forwards_it_takes_from_running_ones() -> None:
    b_after = want("b", ports=[P8080, P8081, P9090])
    result = plan(
        desired(A_BARE, b_after, want("c")),
        [running(A_8080), running(want("c", ports=[port(8081, 81), P9090]))],
    )
    (create,) = [a for a in result.actions if a.kind is ActionKind.CREATE]
    assert create.moves == (("a", P8080), ("c", P9090))  # as they are; 8081 is not
    assert create.reason == (
        "new in b.toml; moving 127.0.0.1:8080->80/tcp from a, 127.0.0.1:9090->90/tcp from c"
    )
    assert create.desired is b_after
    assert actions_of(result) == ("unbind c 127.0.0.1:8081->81/tcp", "create b")


def test_a_move_leaves_the_rest_of_both_containers_changes_as_they_were() -> None:
    a_before = want("a", ports=[P8080, P9090])
    a_after = want("a", ports=[port(7070)])
    b_after = want("b", ports=[P8080, P8081])
    result = plan(desired(a_after, b_after), [running(a_before), running(want("b"))])
    assert actions_of(result) == (
        "bind a 127.0.0.1:7070->80/tcp",
        "bind b 127.0.0.1:8081->80/tcp",
        "move b 127.0.0.1:8080->80/tcp",
        "release a 127.0.0.1:9090->90/tcp",
    )


def test_phases_of_every_kind() -> None:
    result = plan(
        desired(WEB_NEW_ENV, A_BARE, want("c", ports=[port(7070)]), want("d")),
        [running(WEB), running(want("gone")), exited(A_BARE, 1), running(want("d", ports=[P8081]))],
    )
    assert actions_of(result) == (
        "destroy gone",
        "recreate web",
        "start a",
        "create c",
        "release d 127.0.0.1:8081->80/tcp",
    )
    assert [a.kind for a in result.phase(0)] == [ActionKind.DESTROY, ActionKind.RECREATE]
    assert [a.kind for a in result.phase(1)] == [ActionKind.START, ActionKind.CREATE]
    assert [a.kind for a in result.phase(2)] == [ActionKind.RELEASE]


def test_destroy_reason_names_the_file() -> None:
    gone = want("old", file="legacy.toml")
    (action,) = plan(desired(), [running(gone)]).actions
    assert action == Action(ActionKind.DESTROY, "old", "legacy.toml is gone")


def test_port_conflict_names_the_winner_and_why() -> None:
    (newcomer,) = plan(conflict(P8080, P8080), []).conditions
    assert newcomer.name == "b"
    assert newcomer.kind is ConditionKind.PORT_CONFLICT
    assert "127.0.0.1:8080" in newcomer.message
    assert newcomer.message.endswith("claimed by a.toml, which sorts first")

    (holder,) = plan(desired(A_8080, B_8080), [running(B_8080)]).conditions
    assert holder.name == "a"
    assert holder.message.endswith("claimed by b.toml, which holds it now")


def test_name_taken_and_back_off_messages() -> None:
    (taken,) = plan(desired(WEB), [foreign("web")]).conditions
    assert taken.kind is ConditionKind.NAME_TAKEN
    assert "'web'" in taken.message

    (held,) = plan(desired(WEB), [], now=10.0, not_before={"web": 12.5}).conditions
    assert held.kind is ConditionKind.BACK_OFF
    assert held.message.startswith("backing off for 2.50 s before: create web")


def test_file_errors_become_conditions_with_their_message() -> None:
    error = invalid("web.toml", "web")
    (condition,) = plan(desired(errors=[error]), [running(WEB)]).conditions
    assert condition.kind is ConditionKind.INVALID_SPEC
    assert condition.message == error.message


def test_unreadable_folder_reports_the_folder() -> None:
    result = plan(desired(readable=False), [running(WEB)])
    assert result.actions == ()
    (condition,) = result.conditions
    assert condition.kind is ConditionKind.FOLDER_UNREADABLE
    assert str(FOLDER) in condition.message


@pytest.mark.parametrize(
    ("labels", "managed"),
    [
        ({LABEL_MANAGED: MANAGER, LABEL_FOLDER: str(FOLDER)}, True),
        ({LABEL_MANAGED: MANAGER, LABEL_FOLDER: str(ELSEWHERE)}, False),
        ({LABEL_MANAGED: MANAGER, LABEL_FOLDER: str(FOLDER) + "/"}, False),
        ({LABEL_MANAGED: MANAGER}, False),
        ({LABEL_FOLDER: str(FOLDER)}, False),
        ({LABEL_MANAGED: "podman", LABEL_FOLDER: str(FOLDER)}, False),
        ({}, False),
    ],
)
def test_is_managed_by(labels: dict[str, str], managed: bool) -> None:
    container = info(spec("web", labels=labels), ContainerState.RUNNING)
    assert is_managed_by(container, str(FOLDER)) is managed


# -- determinism --------------------------------------------------------------------------

MIXED_DESIRED = [
    WEB_8081,
    want("api", env={"V": "2"}),
    want("zeta", file="a.toml", ports=[port(7000)]),
    want("alpha", file="b.toml", ports=[port(7000, addr="0.0.0.0")]),
    want("new"),
    want("job", restart="on-failure"),
]
MIXED_ACTUAL = [
    running(WEB),
    running(want("api")),
    running(want("gone")),
    foreign("new"),
    exited(want("job", restart="on-failure"), 2),
    foreign("stray"),
]


def test_same_inputs_in_any_order_give_the_same_plan() -> None:
    errors = [invalid("broken.toml", "broken")]
    reference = plan(desired(*MIXED_DESIRED, errors=errors), MIXED_ACTUAL)
    assert actions_of(reference) == (
        "recreate api",
        "destroy gone",
        "start job",
        "bind web 127.0.0.1:8081->80/tcp",
        "create zeta",
        "release web 127.0.0.1:8080->80/tcp",
    )
    assert conditions_of(reference) == ("InvalidSpec broken", "NameTaken new", "PortConflict alpha")
    orders = (MIXED_DESIRED[::-1], MIXED_DESIRED[2:] + MIXED_DESIRED[:2], MIXED_DESIRED)
    for actual, entries in itertools.product(itertools.permutations(MIXED_ACTUAL), orders):
        assert plan(desired(*entries, errors=errors), list(actual)) == reference


# -- through real squishfiles -------------------------------------------------------------


def squishfile(
    name: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    ports: Sequence[tuple[int, int]] = (),
    restart: Restart | None = None,
) -> str:
    lines = [f'name = "{name}"'] if name else []
    lines += ["[layers]", 'busybox = "builtin"', "[run]", 'command = "httpd"', 'args = ["-f"]']
    if env:
        lines += ["[env]", *(f'{k} = "{v}"' for k, v in env.items())]
    if restart:
        lines += ["[restart]", f'policy = "{restart}"']
    for host, container in ports:
        lines += ["[[ports]]", f"container = {container}", f"host = {host}"]
    return "\n".join(lines) + "\n"


def observe(state: DesiredState) -> list[ContainerInfo]:
    """What the runtime would report after applying ``state``: all running."""
    return [running(entry) for entry in state.containers.values()]


def test_a_folder_through_its_lifecycle(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(squishfile(ports=[(8080, 80)]))
    (tmp_path / "api.toml").write_text(squishfile(env={"MODE": "prod"}, ports=[(8081, 81)]))
    first = load_desired(tmp_path)
    assert actions_of(plan(first, [])) == ("create api", "create web")
    actual = observe(first)
    in_step = plan(first, actual)
    assert (actions_of(in_step), in_step.conditions) == ((), ())

    # env edited: recreate; a port edited: rebind live
    (tmp_path / "api.toml").write_text(squishfile(env={"MODE": "dev"}, ports=[(8081, 81)]))
    (tmp_path / "web.toml").write_text(squishfile(ports=[(8090, 80)]))
    second = plan(load_desired(tmp_path), actual)
    assert actions_of(second) == (
        "recreate api",
        "bind web 127.0.0.1:8090->80/tcp",
        "release web 127.0.0.1:8080->80/tcp",
    )
    assert second.actions[0].reason == "changed: env"

    # an editor's swap file and a broken save: nothing is destroyed
    (tmp_path / ".web.toml.swp").write_text("garbage")
    (tmp_path / "web.toml").write_text("[layers\n")
    broken = plan(load_desired(tmp_path), actual)
    assert actions_of(broken) == ("recreate api",)
    assert conditions_of(broken) == ("InvalidSpec web",)

    # the file removed: destroyed; a foreign container and another folder's are not
    (tmp_path / "web.toml").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "web.toml").write_text(squishfile(name="elsewhere"))
    theirs = observe(load_desired(other))
    gone = plan(load_desired(tmp_path), [*actual, *theirs, foreign("stray")])
    assert actions_of(gone) == ("recreate api", "destroy web")


def test_squishfile_conflicts_and_name_taken(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text(squishfile(name="first", ports=[(8080, 80)]))
    (tmp_path / "a.toml").write_text(squishfile(name="second", ports=[(8080, 81)]))
    (tmp_path / "c.toml").write_text(squishfile(name="taken"))
    state = load_desired(tmp_path)
    result = plan(state, [foreign("taken")])
    assert actions_of(result) == ("create second",)
    assert conditions_of(result) == ("NameTaken taken", "PortConflict first")

    # once "first" holds the port, it keeps it against the earlier file
    holder = running(state.containers["first"])
    result = plan(state, [holder, foreign("taken")])
    assert actions_of(result) == ()
    assert conditions_of(result) == ("NameTaken taken", "PortConflict second")


def test_squishfile_restart_policy_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(squishfile(restart="on-failure"))
    state = load_desired(tmp_path)
    job = state.containers["job"]
    assert actions_of(plan(state, [exited(job, 0)])) == ()
    assert actions_of(plan(state, [exited(job, 3)])) == ("start job",)

    (tmp_path / "job2.toml").write_text(squishfile(name="job", env={"X": "1"}))
    result = plan(load_desired(tmp_path), [exited(job, 3)])
    assert actions_of(result) == ("start job",)  # job.toml made it: it keeps the name
    assert conditions_of(result) == ("DuplicateName job",)
    assert [a.desired for a in result.actions if not a.for_network] == [job]


def test_a_broken_file_keeps_the_name_of_the_container_it_runs(tmp_path: Path) -> None:
    """A typo in the file a container runs from does not hand the name to another file
    declaring it: the last valid spec keeps running, as with no other file."""
    (tmp_path / "a.toml").write_text(squishfile(name="web"))
    web = running(load_desired(tmp_path).containers["web"])
    (tmp_path / "b.toml").write_text(squishfile(name="web", env={"FROM": "b"}))
    assert conditions_of(plan(load_desired(tmp_path), [web])) == ("DuplicateName web",)

    (tmp_path / "a.toml").write_text(squishfile(name="web") + "typo = 1\n")
    result = plan(load_desired(tmp_path), [web])
    assert actions_of(result) == ()
    assert sorted(conditions_of(result)) == ["DuplicateName web", "InvalidSpec web"]
    [refused] = [c for c in result.conditions if c.kind == ConditionKind.DUPLICATE_NAME]
    assert "a.toml, which runs it now" in refused.message

    (tmp_path / "a.toml").unlink()  # gone, not broken: the other file's container now
    assert actions_of(plan(load_desired(tmp_path), [web])) == ("recreate web",)


@pytest.mark.parametrize("cached", [True, False], ids=["the loop", "apply"])
@pytest.mark.parametrize("make", ["dangling link", "directory", "fifo"])
def test_a_squishfile_that_turns_into_no_file_keeps_its_container(
    tmp_path: Path, make: str, cached: bool
) -> None:
    path = tmp_path / "web.toml"
    path.write_text(squishfile(name="site", ports=[(8080, 80)]))
    cache: FileCache | None = {} if cached else None
    site = running(load_desired(tmp_path, cache).containers["site"])
    path.unlink()
    if make == "dangling link":
        path.symlink_to(tmp_path / "moved" / "web.toml")
    elif make == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    result = plan(load_desired(tmp_path, cache), [site])
    assert actions_of(result) == ()
    # the loop remembers the name the file gave; apply has only the file's own name
    assert conditions_of(result) == (f"InvalidSpec {'site' if cached else 'web'}",)


@pytest.mark.parametrize("edit", ["a typo", "a symbolic link"])
def test_a_local_layer_a_start_would_refuse_keeps_the_running_container(
    tmp_path: Path, edit: str
) -> None:
    """Found probing the git source: ./site edited to a path that does not exist (or
    goes through a symbolic link) loaded as valid; the plan recreated the container
    (stop-first: removed first), and the create was refused: the container was lost
    to a typo. Refused when the file loads, the last valid spec keeps running."""
    (tmp_path / "site").mkdir()
    web = tmp_path / "web.toml"
    web.write_text(squishfile(name="web").replace("[run]", 'site = "./site"\n[run]'))
    running_web = running(load_desired(tmp_path).containers["web"])
    if edit == "a typo":
        web.write_text(web.read_text().replace("./site", "./sitee"))
        why = "does not exist"
    else:
        (tmp_path / "linked").symlink_to(tmp_path / "site")
        web.write_text(web.read_text().replace("./site", "./linked"))
        why = "goes through a symbolic link"
    cache: FileCache = {}
    state = load_desired(tmp_path, cache)
    result = plan(state, [running_web])
    assert actions_of(result) == ()
    assert conditions_of(result) == ("InvalidSpec web",)
    [error] = state.errors
    [problem] = error.problems
    assert (problem.field, problem.line) == ("layers.site", 4)
    assert why in problem.message
    # the path made right on the host, the same file: the next load sees it
    if edit == "a typo":
        (tmp_path / "sitee").mkdir()
    else:
        (tmp_path / "linked").unlink()
        (tmp_path / "linked").mkdir()
    trusted = load_desired(tmp_path, cache, trusted=True)  # no event came for the file
    assert actions_of(plan(trusted, [running_web])) == ("recreate web",)


def test_a_file_placed_elsewhere_is_not_refused_for_a_path_only_that_host_has(
    tmp_path: Path,
) -> None:
    """Found in review: the check of local paths ran before ``[placement]`` was looked
    at, so a file moved to another host, whose path exists only there, was an error
    here and kept its container here instead of removing it."""
    (tmp_path / "site").mkdir()
    web = tmp_path / "web.toml"
    web.write_text(squishfile(name="web").replace("[run]", 'site = "./site"\n[run]'))
    here = HostIdentity("host-2", {})
    running_web = running(load_desired(tmp_path, host=here).containers["web"])
    moved = web.read_text().replace("./site", "/srv/only-on-host-1")
    web.write_text(moved + '[placement]\nhosts = ["host-1"]\n')
    state = load_desired(tmp_path, host=here)
    assert [p.name for p in state.placed_elsewhere] == ["web"]
    assert actions_of(plan(state, [running_web])) == ("destroy web",)


def test_missing_folder_is_not_mass_deletion(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(squishfile())
    actual = observe(load_desired(tmp_path))
    (tmp_path / "web.toml").unlink()
    tmp_path.rmdir()
    result = plan(load_desired(tmp_path), actual)
    assert result.actions == ()
    assert conditions_of(result) == ("FolderUnreadable *",)


# -- ports held by the right container; held-back destroys are reported -------------------


def test_the_holder_of_that_port_keeps_it() -> None:
    a_old = want("a", ports=[P9090])
    a_new = want("a", ports=[P9090, P8080])
    # b holds 8080; a (holding only 9090) now also asks for 8080
    result = plan(desired(a_new, B_8080), [running(a_old), running(B_8080)])
    assert actions_of(result) == ()
    assert conditions_of(result) == ("PortConflict a",)


@pytest.mark.parametrize(
    ("state", "not_before"),
    [
        pytest.param(desired(A_8080, errors=[invalid("b.toml", "b")]), {}, id="invalid-file"),
        pytest.param(
            desired(A_8080, errors=[duplicate("b.toml", "b"), duplicate("c.toml", "b")]),
            {},
            id="duplicate-name",
        ),
        pytest.param(desired(A_8080), {"b": 10.0}, id="destroy-in-back-off"),
    ],
)
def test_a_kept_container_keeps_its_port(
    state: DesiredState, not_before: Mapping[str, float]
) -> None:
    result = plan(state, [running(B_8080)], now=1.0, not_before=not_before)
    assert "create a" not in actions_of(result)
    assert "PortConflict a" in conditions_of(result)


def test_a_file_whose_name_is_taken_claims_no_port() -> None:
    blocked = want("taken", file="a.toml", ports=[P8080])
    result = plan(desired(blocked, B_8080), [foreign("taken")])
    assert actions_of(result) == ("create b",)
    assert conditions_of(result) == ("NameTaken taken",)


def test_a_held_back_destroy_is_reported() -> None:
    result = plan(desired(), [running(WEB)], now=5.0, not_before={"web": 6.0})
    assert actions_of(result) == ()
    assert conditions_of(result) == ("BackOff web",)


# -- mass-deletion guard ----------------------------------------------------------------------

FLEET = [want(f"c{i}") for i in range(6)]


@pytest.mark.parametrize(
    ("kept", "allow", "destroyed", "guarded"),
    [
        pytest.param(6, False, 0, False, id="nothing-removed"),
        pytest.param(5, False, 1, False, id="one-file-is-always-applied"),
        pytest.param(4, False, 2, False, id="two-files-are-always-applied"),
        pytest.param(3, False, 3, False, id="half-is-not-more-than-half"),
        pytest.param(2, False, 0, True, id="more-than-half-and-more-than-two-is-held"),
        pytest.param(0, False, 0, True, id="emptied-folder-is-held"),
        pytest.param(0, True, 6, False, id="confirmed-with-allow-mass-delete"),
    ],
)
def test_mass_deletion_guard(kept: int, allow: bool, destroyed: int, guarded: bool) -> None:
    result = plan(desired(*FLEET[:kept]), [running(c) for c in FLEET], allow_mass_delete=allow)
    destroys = [a for a in actions_of(result) if a.startswith("destroy")]
    assert len(destroys) == destroyed
    assert ("MassDeleteGuard *" in conditions_of(result)) == guarded


def test_mass_deletion_guard_holds_only_destroys() -> None:
    new = want("newcomer")
    result = plan(desired(FLEET[0], new), [running(c) for c in FLEET])
    assert actions_of(result) == ("create newcomer",)
    assert conditions_of(result) == ("MassDeleteGuard *",)


@pytest.mark.parametrize(
    ("kept", "removed_at", "allow", "destroyed"),
    [
        pytest.param(4, (95.0, 96.0), False, 2, id="four-of-eight-in-the-window-is-half"),
        pytest.param(3, (95.0, 96.0), False, 0, id="five-of-eight-in-the-window-is-held"),
        pytest.param(5, (91.0,) * 5, False, 0, id="one-file-after-many-is-held"),
        pytest.param(5, (91.0,) * 4, False, 1, id="one-file-after-fewer-is-applied"),
        pytest.param(3, (30.0, 39.0), False, 3, id="removals-before-the-window-do-not-count"),
        pytest.param(5, (91.0,) * 5, True, 1, id="confirmed-with-allow-mass-delete"),
    ],
)
def test_the_mass_deletion_guard_counts_the_removals_within_its_window(
    kept: int, removed_at: tuple[float, ...], allow: bool, destroyed: int
) -> None:
    window = RemovalWindow(60.0, removed_at)
    result = plan(
        desired(*FLEET[:kept]),
        [running(c) for c in FLEET],
        now=100.0,
        allow_mass_delete=allow,
        removal_window=window,
    )
    assert len([a for a in actions_of(result) if a.startswith("destroy")]) == destroyed
    assert ("MassDeleteGuard *" in conditions_of(result)) == (destroyed == 0)


def test_the_guard_names_its_window_and_what_earlier_passes_removed() -> None:
    window = RemovalWindow(300.0, (95.0, 96.0))
    result = plan(
        desired(*FLEET[:3]), [running(c) for c in FLEET], now=100.0, removal_window=window
    )
    (guard,) = (c for c in result.conditions if c.kind is ConditionKind.MASS_DELETE)
    assert guard.message.startswith(
        "this pass would remove 3 more: 5 of the folder's 8 containers within the last 5 min"
    )


def test_a_pass_that_removes_nothing_is_never_guarded_whatever_the_window() -> None:
    window = RemovalWindow(60.0, (99.0,) * 30)
    result = plan(desired(*FLEET), [running(c) for c in FLEET], now=100.0, removal_window=window)
    assert conditions_of(result) == ()


def test_two_managed_containers_may_both_go() -> None:
    result = plan(desired(), [running(FLEET[0]), running(FLEET[1])])
    assert actions_of(result) == ("destroy c0", "destroy c1")


# -- found in review: unknown names, crash holds, chained conflicts ---------------------------


def test_a_file_that_names_nothing_knowable_holds_every_removal() -> None:
    broken = FileError(FOLDER / "site.toml", "site", (), name_known=False)
    result = plan(desired(errors=[broken]), [running(WEB)])
    assert actions_of(result) == ()
    assert "InvalidSpec *" in conditions_of(result)


def test_the_crash_back_off_holds_only_the_restart() -> None:
    old = want("job", argv=("false",))
    fixed = want("job", argv=("true",))
    held = {"job": 10.0}
    assert actions_of(plan(desired(old), [exited(old, 1)], now=1.0, restart_not_before=held)) == ()
    assert actions_of(plan(desired(fixed), [exited(old, 1)], now=1.0, restart_not_before=held)) == (
        "recreate job",
    )
    assert actions_of(plan(desired(), [exited(old, 1)], now=1.0, restart_not_before=held)) == (
        "destroy job",
    )


def test_a_winner_pushed_out_late_frees_the_port_it_won() -> None:
    # a wants 8080 and 8081, c wants 8081, z holds 8080 now: z keeps 8080, so a loses,
    # and c may take 8081, which nobody else can have.
    a = want("a", ports=[P8080, P8081])
    c = want("c", ports=[P8081])
    z = want("z", ports=[P8080])
    result = plan(desired(a, c, z), [running(z)])
    assert actions_of(result) == ("create c",)
    assert conditions_of(result) == ("PortConflict a",)


def test_containers_held_by_the_guard_keep_their_ports() -> None:
    old = [want(f"old{i}", ports=[port(8100 + i)]) for i in range(3)]
    new = [want(f"new{i}", ports=[port(8100 + i)]) for i in range(3)]
    result = plan(desired(*new), [running(o) for o in old])
    assert actions_of(result) == ()
    assert "MassDeleteGuard *" in conditions_of(result)
    assert {c for c in conditions_of(result) if c.startswith("PortConflict")} == {
        "PortConflict new0",
        "PortConflict new1",
        "PortConflict new2",
    }


def test_a_running_container_whose_slirp4netns_died_is_healed_not_restarted() -> None:
    alive = running(WEB)
    broken = alive.model_copy(update={"slirp_pid": None})
    assert actions_of(plan(desired(WEB), [broken])) == ("heal web",)
    offline = want("quiet")
    quiet = running(offline).model_copy(
        update={"spec": offline.spec.model_copy(update={"network": "none"})}
    )
    assert actions_of(plan(desired(offline), [quiet])) == ()


def test_a_bridge_container_whose_shared_namespace_died_is_healed_not_restarted() -> None:
    entry = want("api")
    on_bridge = entry.spec.model_copy(
        update={"network": "bridge", "networks": (NetworkAttachment(network="sq-app"),)}
    )
    entry = dataclasses.replace(entry, spec=on_bridge)
    lost = running(entry).model_copy(update={"slirp_pid": None})
    assert actions_of(plan(desired(entry), [lost])) == ("heal api",)


# -- leftovers of an interrupted start-first replacement ------------------------------------


def test_leftovers_of_interrupted_replacements_go_whatever_the_guard() -> None:
    # Killed between the renames: each NAME.old stepped aside, each NAME.next holds the
    # forwards, NAME itself is missing. Five at once would trip the guard if they counted.
    fleet = [want(f"w{i}", ports=[PortMapping(container=80, host=8100 + i)]) for i in range(5)]
    actual = []
    for entry in fleet:
        actual.append(
            running(want(f"{entry.name}.next", file=entry.file.name, ports=entry.spec.ports))
        )
        actual.append(running(want(f"{entry.name}.old", file=entry.file.name), ports=()))
    result = plan(desired(*fleet), actual)
    assert conditions_of(result) == ()
    assert sorted(a for a in actions_of(result) if a.startswith("destroy")) == sorted(
        f"destroy w{i}.{suffix}" for i in range(5) for suffix in ("next", "old")
    )
    assert {a for a in actions_of(result) if not a.startswith("destroy")} == {
        f"create w{i}" for i in range(5)
    }
    reasons = {a.reason for a in result.actions if a.name == "w0.next"}
    assert reasons == {"left by an interrupted start-first replacement of w0"}


def test_a_name_with_a_replacement_suffix_is_only_a_leftover_when_its_base_is_wanted() -> None:
    lone = want("api.next")  # its own file: an ordinary container that happens to be so named
    assert actions_of(plan(desired(lone), [running(lone)])) == ()
    gone = plan(desired(), [running(lone)])
    assert [a.reason for a in gone.actions] == ["api.next.toml is gone"]


# -- resources -----------------------------------------------------------------------------------


def test_changed_resources_are_applied_live_running_or_not() -> None:
    base = want("web", ports=[PortMapping(container=80, host=8080)])
    limited = spec("web", ports=[PortMapping(container=80, host=8080)]).model_copy(
        update={"resources": Resources(memory=64 * 1024**2, pids=50)}
    )
    tighter = dataclasses.replace(base, spec=_labelled(limited, FOLDER, base.file))
    result = plan(desired(tighter), [running(base)])
    assert [(a.kind.value, a.reason) for a in result.actions] == [("resize", "resources changed")]
    stopped = plan(desired(tighter), [exited(base, 0)])
    assert [a.kind.value for a in stopped.actions] == ["resize", "start"]


def test_a_container_named_like_a_leftover_but_from_another_file_is_not_one() -> None:
    api = want("api")
    other = want("api.next", file="other.toml")  # the user's own, its file now broken
    broken = FileError(FOLDER / "other.toml", "api.next", (), name_known=True)
    result = plan(desired(api, errors=[broken]), [running(api), running(other)])
    assert not [a for a in result.actions if a.name == "api.next"]  # kept: its file is broken
