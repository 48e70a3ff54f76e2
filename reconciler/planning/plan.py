"""Planning: a pure function from (desired, actual) to actions, each with its reason.

No I/O, no clock, no anyio: everything it needs comes in as arguments, so it is tested
as a table. ``reconciler.control.converge`` is the only place that acts on a plan.

Action kinds:

- ``create``: the container does not exist.
- ``destroy``: a container this folder made is no longer wanted.
- ``recreate``: anything but the ports changed (the spec hash differs), or the ports
  changed while the container was not running.
- ``unbind`` / ``bind``: only ``[[ports]]`` changed: forwards are removed from / added to
  the running container, live; it keeps its pid.
- ``start``: the container exists but is not running and its restart policy wants it up.
- ``heal``: the container runs but its slirp4netns died: start it again, forwards
  included, without restarting the container.

Ordering: every action that frees something (``destroy``, ``unbind``, and the removing
half of ``recreate``) runs in phase 0, everything that takes something in phase 1, so
ports can be swapped or moved between containers in one pass.

Host-port conflicts between files: the container that holds the port now keeps it;
among newcomers the file whose name sorts first wins. The others get a ``PortConflict``
condition and are applied once the port is free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    LABEL_HASH,
    LABEL_MANAGED,
    LIVE_FIELDS,
    MANAGER,
    DesiredContainer,
    DesiredState,
    replaced_name,
)
from runtime.api.interface import ContainerInfo, ContainerState
from runtime.api.spec import PortMapping

__all__ = (
    "PHASE",
    "Action",
    "ActionKind",
    "Condition",
    "ConditionKind",
    "Plan",
    "is_managed_by",
    "plan",
)


class ActionKind(StrEnum):
    CREATE = "create"
    DESTROY = "destroy"
    RECREATE = "recreate"
    UNBIND = "unbind"
    BIND = "bind"
    START = "start"
    HEAL = "heal"
    RESIZE = "resize"


PHASE = {
    ActionKind.DESTROY: 0,
    ActionKind.UNBIND: 0,
    ActionKind.RECREATE: 0,
    ActionKind.CREATE: 1,
    ActionKind.BIND: 1,
    ActionKind.START: 1,
    ActionKind.HEAL: 1,
    ActionKind.RESIZE: 0,
}
"""Phase 0 frees, phase 1 takes (``recreate`` removes in phase 0, creates in phase 1)."""


class ConditionKind(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    DUPLICATE_NAME = "DuplicateName"
    PORT_CONFLICT = "PortConflict"
    NAME_TAKEN = "NameTaken"
    FOLDER_UNREADABLE = "FolderUnreadable"
    BACK_OFF = "BackOff"
    MASS_DELETE = "MassDeleteGuard"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    reason: str
    desired: DesiredContainer | None = None
    ports: tuple[PortMapping, ...] = ()

    def __str__(self) -> str:
        ports = f" {', '.join(str(p) for p in self.ports)}" if self.ports else ""
        return f"{self.kind.value} {self.name}{ports}: {self.reason}"


@dataclass(frozen=True)
class Condition:
    name: str
    kind: ConditionKind
    message: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def phase(self, number: int) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if PHASE[a.kind] == number)


def is_managed_by(info: ContainerInfo, folder: str) -> bool:
    """Whether this folder's reconciler made ``info`` (nothing else is ever touched)."""
    labels = info.spec.labels
    return labels.get(LABEL_MANAGED) == MANAGER and labels.get(LABEL_FOLDER) == folder


def _overlaps(a: PortMapping, b: PortMapping) -> bool:
    if a.protocol != b.protocol or a.host != b.host:
        return False
    wildcard = {"0.0.0.0", "::"}
    return a.host_addr == b.host_addr or a.host_addr in wildcard or b.host_addr in wildcard


def _port_losers(
    desired: Iterable[DesiredContainer],
    holders: Mapping[str, tuple[PortMapping, ...]],
    reserved: Mapping[str, tuple[PortMapping, ...]],
) -> dict[str, str]:
    """Names that may not take their host ports now, with the reason.

    ``holders`` are the live forwards of this folder's containers; ``reserved`` those of
    containers kept running although no valid file asks for them (a broken file, a
    destroy in back-off): nobody else may take those ports.
    """

    def holds(entry: DesiredContainer, port: PortMapping) -> bool:
        return any(_overlaps(port, live) for live in holders.get(entry.name, ()))

    demoted: dict[str, str] = {}
    while True:
        losers, newly = _rank_ports(desired, holds, reserved, demoted)
        if not newly:
            return losers
        demoted.update(newly)  # a winner pushed out late: rank the rest again without it


def _rank_ports(
    desired: Iterable[DesiredContainer],
    holds: Callable[[DesiredContainer, PortMapping], bool],
    reserved: Mapping[str, tuple[PortMapping, ...]],
    demoted: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """One ranking; returns (losers, winners demoted during it that were not yet known)."""
    losers: dict[str, str] = dict(demoted)
    newly: dict[str, str] = {}
    winners: list[DesiredContainer] = []
    for entry in sorted(desired, key=lambda e: e.file.name):
        if entry.name in demoted:
            continue
        kept = next(
            (
                (mine, owner)
                for owner, ports in reserved.items()
                for mine in entry.spec.ports
                if any(_overlaps(mine, port) for port in ports)
            ),
            None,
        )
        if kept is not None:
            mine, owner = kept
            losers[entry.name] = (
                f"host port {mine} is held by {owner}, which is kept running "
                "until its own file is fixed or its removal succeeds"
            )
            continue
        clashes = [
            (mine, theirs, other)
            for other in winners
            for mine in entry.spec.ports
            for theirs in other.spec.ports
            if _overlaps(mine, theirs)
        ]
        if not clashes:
            winners.append(entry)
            continue
        if all(holds(entry, mine) and not holds(other, theirs) for mine, theirs, other in clashes):
            for mine, _, other in clashes:  # it holds these ports now: it keeps them
                if other in winners:
                    winners.remove(other)
                losers[other.name] = newly[other.name] = (
                    f"host port {mine} is also claimed by {entry.file.name}, which holds it now"
                )
            winners.append(entry)
            continue
        mine, theirs, other = next(
            c for c in clashes if not (holds(entry, c[0]) and not holds(c[2], c[1]))
        )
        why = "holds it now" if holds(other, theirs) else "sorts first"
        losers[entry.name] = f"host port {mine} is also claimed by {other.file.name}, which {why}"
    return losers, newly


def _changed_fields(want: DesiredContainer, have: ContainerInfo) -> str:
    a = want.spec.model_dump(exclude=set(LIVE_FIELDS))
    b = have.spec.model_dump(exclude=set(LIVE_FIELDS))
    fields = sorted(k for k in a if a[k] != b.get(k))
    return ", ".join(fields) or "spec hash"


def _for_existing(want: DesiredContainer, have: ContainerInfo) -> list[Action]:
    name = want.name
    if have.spec.labels.get(LABEL_HASH) != want.spec.labels.get(LABEL_HASH):
        reason = f"changed: {_changed_fields(want, have)}"
        return [Action(ActionKind.RECREATE, name, reason, want)]
    resize = []
    if have.spec.resources != want.spec.resources:  # live, running or not
        resize = [Action(ActionKind.RESIZE, name, "resources changed", want)]
    return resize + _ports_and_state(want, have)


def _ports_and_state(want: DesiredContainer, have: ContainerInfo) -> list[Action]:
    name = want.name
    wanted_ports = set(want.spec.ports)
    if have.state is ContainerState.RUNNING:
        if have.spec.network == "slirp4netns" and have.slirp_pid is None:
            return [Action(ActionKind.HEAL, name, "its slirp4netns is gone", want)]
        live = set(have.ports)
        actions = []
        gone = tuple(sorted(live - wanted_ports, key=str))
        new = tuple(sorted(wanted_ports - live, key=str))
        if gone:
            actions.append(Action(ActionKind.UNBIND, name, "ports changed", want, gone))
        if new:
            actions.append(Action(ActionKind.BIND, name, "ports changed", want, new))
        return actions
    if wanted_ports != set(have.spec.ports):
        return [Action(ActionKind.RECREATE, name, "ports changed while stopped", want)]
    if have.state is ContainerState.CREATED:
        return [Action(ActionKind.START, name, "created but not started", want)]
    code = have.exit_code
    if not want.restarts_after(code):
        return []
    what = "exited" if want.restart == "always" else "failed"
    return [Action(ActionKind.START, name, f"{what} with code {code}; policy {want.restart}", want)]


def plan(
    desired: DesiredState,
    actual: Sequence[ContainerInfo],
    *,
    now: float = 0.0,
    not_before: Mapping[str, float] | None = None,
    restart_not_before: Mapping[str, float] | None = None,
    allow_mass_delete: bool = False,
) -> Plan:
    """The actions that take ``actual`` to ``desired``, and the conditions that block some.

    ``not_before`` maps a container name to the time before which nothing may be done to
    it (its back-off after a failed action); ``restart_not_before`` holds back only the
    restart of an exited container (its crash back-off: a fixed file goes ahead at once).
    ``now`` is the current time.

    Mass-deletion guard: a pass that would destroy more than half of this folder's
    containers and more than two of them (an emptied folder, a half-synced checkout)
    destroys none and reports ``MassDeleteGuard`` instead, unless ``allow_mass_delete``.
    Deleting one or two files is always applied. While a file cannot even be read far
    enough to know which container it names, nothing is destroyed either.
    """
    folder = str(desired.folder)
    hold = not_before or {}
    restart_hold = restart_not_before or {}
    by_name = {info.name: info for info in actual}
    ours = {name: info for name, info in by_name.items() if is_managed_by(info, folder)}
    conditions = [Condition(e.name, ConditionKind(e.kind), e.message) for e in desired.errors]
    if not desired.readable:
        conditions.append(
            Condition(
                "*",
                ConditionKind.FOLDER_UNREADABLE,
                f"{folder} is missing or unreadable; nothing is changed until it is back",
            )
        )
        return Plan((), tuple(conditions))
    kept_files = desired.error_files
    claimed = {e.name for e in desired.errors}
    holders = {name: info.ports for name, info in ours.items() if info.ports}
    destroys: list[Action] = []
    leftovers: list[Action] = []
    reserved: dict[str, tuple[PortMapping, ...]] = {}
    for name, have in sorted(ours.items()):
        if name in desired.containers:
            continue
        base = replaced_name(name)
        replaced = desired.containers.get(base) if base is not None else None
        if (  # a replacement's leftover, made from the same file: never counted below
            replaced is not None
            and have.spec.labels.get(LABEL_FILE) == replaced.spec.labels.get(LABEL_FILE)
        ):
            if hold.get(name, 0.0) > now:
                reserved[name] = have.ports
            else:
                reason = f"left by an interrupted start-first replacement of {base}"
                leftovers.append(Action(ActionKind.DESTROY, name, reason))
            continue
        file = have.spec.labels.get(LABEL_FILE, "?")
        if file in kept_files or name in claimed:
            reserved[name] = have.ports  # its file is broken: the last valid spec keeps running
            continue
        if hold.get(name, 0.0) > now:
            reserved[name] = have.ports
            conditions.append(
                Condition(
                    name,
                    ConditionKind.BACK_OFF,
                    f"backing off for {hold[name] - now:.2f} s before removing it ({file} is gone)",
                )
            )
            continue
        destroys.append(Action(ActionKind.DESTROY, name, f"{file} is gone"))
    unknown = sorted(e.file.name for e in desired.errors if not e.name_known)
    if destroys and unknown:
        conditions.append(
            Condition(
                "*",
                ConditionKind.INVALID_SPEC,
                f"nothing is removed while {', '.join(unknown)} cannot be read far enough "
                "to know which container it names",
            )
        )
    elif len(destroys) > 2 and 2 * len(destroys) > len(ours) and not allow_mass_delete:
        conditions.append(
            Condition(
                "*",
                ConditionKind.MASS_DELETE,
                f"this pass would remove {len(destroys)} of the folder's {len(ours)} "
                "containers; none is removed until the files are back or you confirm "
                "with --allow-mass-delete",
            )
        )
    else:
        unknown = []
    if unknown or any(c.kind is ConditionKind.MASS_DELETE for c in conditions):
        for action in destroys:  # held: their ports stay theirs
            reserved[action.name] = ours[action.name].ports
        destroys = []
    taken = {name for name in desired.containers if name in by_name and name not in ours}
    contenders = [want for name, want in desired.containers.items() if name not in taken]
    losers = _port_losers(contenders, holders, reserved)
    actions: list[Action] = [*leftovers, *destroys]
    for name, want in sorted(desired.containers.items()):
        if name in taken:
            conditions.append(
                Condition(
                    name,
                    ConditionKind.NAME_TAKEN,
                    f"a container named {name!r} exists that this folder did not create; "
                    "it is left alone",
                )
            )
            continue
        if name in losers:
            conditions.append(Condition(name, ConditionKind.PORT_CONFLICT, losers[name]))
            continue
        existing = by_name.get(name)
        wanted = (
            [Action(ActionKind.CREATE, name, f"new in {want.file.name}", want)]
            if existing is None
            else _for_existing(want, existing)
        )
        until = hold.get(name, 0.0)
        if wanted and wanted[0].kind is ActionKind.START:
            until = max(until, restart_hold.get(name, 0.0))
        if wanted and until > now:
            conditions.append(
                Condition(
                    name,
                    ConditionKind.BACK_OFF,
                    f"backing off for {until - now:.2f} s before: {wanted[0]}",
                )
            )
            continue
        actions.extend(wanted)
    actions.sort(key=lambda a: (PHASE[a.kind], a.name, a.kind.value))
    return Plan(tuple(actions), tuple(conditions))
