"""Conflicts between files: one rule for ``reconciler validate``, loading and planning.

The file that holds a name or host port now keeps it, else the file that sorts first;
the other is refused at its own line, naming the file that keeps it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

from reconciler.control.status import container_rows
from reconciler.desired.folder import load_desired
from reconciler.desired.types import DesiredContainer
from reconciler.desired.validation import privileged_ports, validate_files
from reconciler.planning import conflicts
from reconciler.planning.conflicts import Claim, Holding, overlaps, refuse, refuse_names
from reconciler.planning.plan import ConditionKind, plan, settled
from runtime.api.interface import ContainerInfo, ContainerState
from runtime.api.spec import PortMapping
from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless
from tests.test_reconciler_e2e import cli, cli_env
from tests.test_validate_cli import validate

BASE = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "httpd"\n'


def squishfile(name: str | None = None, *, host: int | None = None, addr: str = "") -> str:
    text = f'name = "{name}"\n' if name else ""
    text += BASE
    if host is not None:
        text += f"[[ports]]\ncontainer = 80\nhost = {host}\n"
        text += f'host_addr = "{addr}"\n' if addr else ""
    return text


def running(entry: DesiredContainer) -> ContainerInfo:
    return ContainerInfo(
        name=entry.name,
        state=ContainerState.RUNNING,
        spec=entry.spec,
        pid=4242,
        slirp_pid=4243,
        ports=entry.spec.ports,
        log_path="/state/log",
        created_at=1.0,
    )


def planned_problems(folder: Path, actual: list[ContainerInfo] | None = None) -> list[str]:
    """The problems ``plan`` refuses files with for a name or port conflict, as printed."""
    todo = plan(load_desired(folder), actual or [])
    conflicts = {ConditionKind.PORT_CONFLICT, ConditionKind.DUPLICATE_NAME}
    return sorted(c.message for c in todo.conditions if c.kind in conflicts)


def validated_problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The problems ``reconciler validate`` printed, as ``file:line: field: message``."""
    return sorted(line.removeprefix("error ") for line in result.stderr.splitlines())


# -- validate, load and plan agree ---------------------------------------------------------


def test_validate_and_plan_refuse_the_same_file_for_a_wildcard_port(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(squishfile(host=8080, addr="0.0.0.0"))
    (tmp_path / "b.toml").write_text(squishfile(host=8080))
    result = validate(tmp_path)
    assert result.returncode == 1, result.stdout
    assert f"ok {tmp_path / 'a.toml'}" in result.stdout
    assert (
        f"{tmp_path / 'b.toml'}:7: ports[0].host: host port 127.0.0.1:8080->80/tcp is also "
        "claimed by a.toml, which sorts first"
    ) in result.stderr
    assert planned_problems(tmp_path) == validated_problems(result)


def test_validate_and_plan_refuse_the_same_file_for_a_name(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(squishfile("web"))
    (tmp_path / "b.toml").write_text(squishfile("web"))
    result = validate(tmp_path)
    assert result.returncode == 1
    assert f"ok {tmp_path / 'a.toml'}" in result.stdout
    assert (
        f'{tmp_path / "b.toml"}:1: name: container name "web" is also declared by a.toml, '
        "which sorts first"
    ) in result.stderr
    state = load_desired(tmp_path)
    assert state.containers["web"].file.name == "a.toml"
    assert planned_problems(tmp_path) == validated_problems(result)


def test_validate_and_plan_name_the_same_line_and_field_for_ports_out_of_order(
    tmp_path: Path,
) -> None:
    """The spec sorts its ports; a conflict still names the port as the file lists it."""
    (tmp_path / "a.toml").write_text(squishfile(host=8080))
    (tmp_path / "b.toml").write_text(
        squishfile(host=9090) + "[[ports]]\ncontainer = 81\nhost = 8080\n"
    )
    result = validate(tmp_path)
    assert result.returncode == 1, result.stdout
    assert validated_problems(result) == [
        f"{tmp_path / 'b.toml'}:10: ports[1].host: host port 127.0.0.1:8080->81/tcp is also "
        "claimed by a.toml, which sorts first"
    ]
    assert planned_problems(tmp_path) == validated_problems(result)


def test_the_running_file_keeps_its_name_and_the_newcomer_is_refused(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(squishfile(host=8080))
    holder = load_desired(tmp_path).containers["web"]
    (tmp_path / "aaa.toml").write_text(squishfile("web", host=9090))
    todo = plan(load_desired(tmp_path), [running(holder)])
    # the newcomer sorts first, but must not replace it
    assert [a for a in todo.actions if not a.for_network] == []
    (condition,) = todo.conditions
    assert condition.kind is ConditionKind.DUPLICATE_NAME
    assert condition.message == (
        f'{tmp_path / "aaa.toml"}:1: name: container name "web" is also declared by '
        "web.toml, which runs it now"
    )


def test_the_running_file_keeps_its_name_and_gets_its_edits(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(squishfile(host=8080))
    holder = load_desired(tmp_path).containers["web"]
    (tmp_path / "web.toml").write_text(squishfile(host=8081))
    (tmp_path / "aaa.toml").write_text(squishfile("web"))
    state = load_desired(tmp_path)
    assert state.containers["web"].file.name == "aaa.toml"  # by file name alone
    view = settled(state, [running(holder)])
    assert view.containers["web"].file.name == "web.toml"
    assert [e.file.name for e in view.errors] == ["aaa.toml"]
    todo = plan(state, [running(holder)])
    made = [a for a in todo.actions if not a.for_network]
    assert [(str(a.kind), a.name, a.desired and a.desired.file.name) for a in made] == [
        ("bind", "web", "web.toml"),
        ("release", "web", "web.toml"),
    ]


# -- validate_files: each file, then the conflicts between them -----------------------------


def test_validate_files_checks_each_file_and_conflicts_between_them(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    a.write_text(squishfile(host=8080))
    broken = tmp_path / "broken.toml"
    broken.write_text("colour = 1\n" + BASE)
    same_name = tmp_path / "b.toml"
    same_name.write_text(squishfile("a", host=8080))
    same_port = tmp_path / "c.toml"
    same_port.write_text(squishfile(host=1) + "[[ports]]\ncontainer = 80\nhost = 8080\n")
    other_proto = tmp_path / "d.toml"
    other_proto.write_text(squishfile(host=8080) + 'protocol = "udp"\n')
    paths = [other_proto, same_port, same_name, broken, a]  # results keep this order
    results = validate_files(paths)
    assert [path for path, _ in results] == paths
    errors = dict(results)
    assert errors[a] is None and errors[other_proto] is None
    assert [p.field for p in errors[broken].problems] == ["colour"]  # type: ignore[union-attr]
    (name_problem,) = errors[same_name].problems  # type: ignore[union-attr]
    assert (name_problem.line, name_problem.field) == (1, "name")
    assert name_problem.message.endswith('"a" is also declared by a.toml, which sorts first')
    (port_problem,) = errors[same_port].problems  # type: ignore[union-attr]
    assert (port_problem.line, port_problem.field) == (10, "ports[1].host")
    assert "127.0.0.1:8080->80/tcp is also claimed by a.toml" in port_problem.message


def test_a_file_refused_its_name_claims_no_port_and_other_folders_are_named_in_full(
    tmp_path: Path,
) -> None:
    first = tmp_path / "x" / "web.toml"
    clash = tmp_path / "y" / "web.toml"
    ported = tmp_path / "y" / "zzz.toml"
    for path in (first, clash):
        path.parent.mkdir(exist_ok=True)
        path.write_text(squishfile(host=8080))
    ported.write_text(squishfile(host=8080))
    results = dict(validate_files([clash, ported, first]))
    assert results[first] is None
    assert f"also declared by {first}, which sorts first" in str(results[clash])
    assert f"also claimed by {first}, which sorts first" in str(results[ported])


def test_validate_files_lets_the_running_file_keep_its_name_and_port(tmp_path: Path) -> None:
    newcomer = tmp_path / "aaa.toml"
    newcomer.write_text(squishfile("web", host=8080))
    holder = tmp_path / "web.toml"
    holder.write_text(squishfile(host=8080))
    other = tmp_path / "bbb.toml"
    other.write_text(squishfile(host=8080))
    holders = {"web": Holding("web.toml", (port(8080),))}
    results = dict(validate_files([newcomer, holder, other], holders))
    assert str(results[newcomer]).endswith("declared by web.toml, which runs it now")
    assert results[holder] is None
    assert str(results[other]) == (
        f"{other}:7: ports[0].host: host port 127.0.0.1:8080->80/tcp is also claimed by "
        "web.toml, which holds it now"
    )


# -- the rule as a table -------------------------------------------------------------------


def port(
    host: int, addr: str = "127.0.0.1", protocol: Literal["tcp", "udp"] = "tcp"
) -> PortMapping:
    return PortMapping(container=80, host=host, host_addr=addr, protocol=protocol)


def claim(file: str, *ports: PortMapping, name: str | None = None) -> Claim:
    lines = {f"ports[{i}].host": 10 + i for i in range(len(ports))}
    return Claim(Path("/f") / file, name or file.removesuffix(".toml"), ports, lines)


@pytest.mark.parametrize(
    ("a", "b", "clash"),
    [
        (port(8080), port(8080), True),
        (port(8080, "0.0.0.0"), port(8080), True),
        (port(8080), port(8080, "::"), True),
        (port(8080, "::1"), port(8080), False),
        (port(8080), port(8080, protocol="udp"), False),
        (port(8080), port(8081), False),
    ],
)
def test_overlaps(a: PortMapping, b: PortMapping, clash: bool) -> None:
    assert overlaps(a, b) is clash
    assert overlaps(b, a) is clash


def test_a_holder_that_sorts_later_pushes_out_an_earlier_winner() -> None:
    claims = [claim("a.toml", port(8080)), claim("b.toml", port(1), port(8080))]
    refused = refuse(claims, {"b": Holding("b.toml", (port(8080),))})
    assert list(refused) == [0]
    assert str(refused[0]) == (
        "/f/a.toml:10: ports[0].host: host port 127.0.0.1:8080->80/tcp is also claimed by "
        "b.toml, which holds it now"
    )


def test_a_pushed_out_winner_frees_its_other_ports() -> None:
    a = claim("a.toml", port(8080), port(9090))
    b = claim("b.toml", port(8080))
    c = claim("c.toml", port(9090))
    refused = refuse([a, b, c], {"b": Holding("b.toml", (port(8080),))})
    assert list(refused) == [0]


def test_reserved_ports_beat_every_file() -> None:
    refused = refuse([claim("a.toml", port(1), port(8080))], {}, {"old": (port(8080),)})
    assert str(refused[0]).startswith("/f/a.toml:11: ports[1].host: host port")
    assert "held by old, which is kept running" in str(refused[0])


def test_the_name_holder_wins_whatever_the_order() -> None:
    claims = [claim("a.toml", name="web"), claim("b.toml", name="web"), claim("c.toml", name="web")]
    assert sorted(refuse_names(claims, {})) == [1, 2]
    assert sorted(refuse_names(claims, {"web": Holding("c.toml")})) == [0, 1]
    assert sorted(refuse_names(claims, {"web": Holding("elsewhere.toml")})) == [1, 2]


def test_ranking_ports_compares_only_files_that_share_a_host_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each pass ranks every file: comparing each with every winner before it made a
    pass over 1,000 files cost a second and more."""
    compared: list[tuple[int, int]] = []
    clashes = conflicts._clashes

    def counting(claims: Sequence[Claim], index: int, other: int) -> list[tuple[int, int, int]]:
        compared.append((index, other))
        return clashes(claims, index, other)

    monkeypatch.setattr(conflicts, "_clashes", counting)
    claims = [claim(f"f{n:03}.toml", port(20000 + n)) for n in range(300)]
    claims += [claim("quiet.toml"), claim("zz.toml", port(20005))]
    refused = refuse(claims)
    assert list(refused) == [301]
    assert "also claimed by f005.toml, which sorts first" in str(refused[301])
    assert compared == [(301, 5)]


# -- with real containers: validate, plan and status name the same file ---------------------

SLEEPER = 'network = "none"\n' + BASE.replace('"httpd"', '"sleep"\nargs = ["1000"]')


@rootless
def test_validate_plan_and_status_refuse_the_newcomer_while_the_holder_runs(
    rt: LinuxRuntime, state_path: Path, cache_path: Path, tmp_path: Path
) -> None:
    env = cli_env(state_path, cache_path)
    folder = tmp_path / "fleet"
    folder.mkdir()
    (folder / "web.toml").write_text(SLEEPER)
    try:
        applied = cli(env, "apply", str(folder))
        assert applied.returncode == 0, applied
        pid = rt.inspect("web").pid
        (folder / "aaa.toml").write_text('name = "web"\n' + SLEEPER)
        expected = (
            f'{folder / "aaa.toml"}:1: name: container name "web" is also declared by '
            "web.toml, which runs it now"
        )
        checked = cli(env, "validate", str(folder))
        assert (checked.returncode, checked.stderr.strip()) == (1, f"error {expected}")
        assert f"ok {folder / 'web.toml'}" in checked.stdout
        planned = cli(env, "plan", str(folder))
        assert planned.returncode == 1, planned
        assert f"DuplicateName web: {expected}" in planned.stdout
        assert "recreate" not in planned.stdout
        status = json.loads(cli(env, "status", str(folder), "--json").stdout)
        (row,) = status["containers"]
        assert [c["message"] for c in row["conditions"]] == [expected]
        assert rt.inspect("web").pid == pid
    finally:
        cli(env, "down", str(folder))


def test_status_shows_the_running_holder_and_the_refused_newcomer(tmp_path: Path) -> None:
    """The holder's row is its own: its file, its phase; the newcomer is a condition on it."""
    (tmp_path / "web.toml").write_text(squishfile())
    (tmp_path / "aaa.toml").write_text(squishfile("web"))
    desired = load_desired(tmp_path)
    (holder,) = [e.refused for e in desired.errors if e.refused is not None]
    assert holder.file.name == "web.toml"  # by file order alone, aaa.toml would keep "web"
    actual = [running(holder)]
    (row,) = container_rows(settled(desired, actual), actual, plan(desired, actual), now=2.0)
    assert (row["file"], row["phase"]) == ("web.toml", "Running")
    assert [c["kind"] for c in row["conditions"]] == ["DuplicateName"]
    assert "aaa.toml:1: name:" in row["conditions"][0]["message"]


def test_privileged_ports_are_warned_about_at_their_line_and_only_in_valid_files(
    tmp_path: Path,
) -> None:
    low = tmp_path / "low.toml"
    low.write_text(squishfile(host=80))
    broken = tmp_path / "broken.toml"
    broken.write_text("colour = 1\n" + BASE + "[[ports]]\ncontainer = 80\nhost = 81\n")
    high = tmp_path / "high.toml"
    high.write_text(squishfile(host=8080))

    warnings = privileged_ports([low, broken, high], 1024)

    assert list(warnings) == [low]
    (problem,) = warnings[low]
    assert (problem.field, problem.line) == ("ports[0].host", squishfile(host=80).count("\n"))
    assert problem.message.startswith("host port 80 is privileged on this host ")
    assert "(net.ipv4.ip_unprivileged_port_start is 1024)" in problem.message
    assert "sysctl net.ipv4.ip_unprivileged_port_start=80" in problem.message
    assert privileged_ports([low], 80) == {}  # a host that allows it: nothing to say


def test_two_files_of_many_ports_are_compared_port_by_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found probing as a user: two files with the same 6,000 forwards took 3.6 s to
    validate, 12 s with 12,000 (every port against every other); the loop plans with
    the same code on every pass. Counted in comparisons, not timed."""
    compared = 0

    def counted(a: PortMapping, b: PortMapping) -> bool:
        nonlocal compared
        compared += 1
        return a.shares_socket_with(b)

    monkeypatch.setattr(conflicts, "overlaps", counted)
    many = [port(1024 + i) for i in range(2000)]
    refused = refuse([claim("a.toml", *many), claim("b.toml", *many)])
    assert list(refused) == [1]
    assert len(many) <= compared <= 2 * len(many)
