"""Planning: a pure function from (desired, actual) to actions, each with its reason.

No I/O, no clock, no anyio: everything it needs comes in as arguments, so it is tested
as a table. ``reconciler.control.converge`` is the only place that acts on a plan.

Action kinds, each with the phase it runs in:

- ``destroy`` (0): a container this folder made is no longer wanted.
- ``bind`` (1) / ``unbind`` (0) / ``release`` (2): only ``[[ports]]`` changed: forwards
  are added to / removed from the running container, live; it keeps its pid. An old
  forward is removed in phase 0 (``unbind``) only when a take of this pass needs its host
  side (protocol, address, port): a new forward of the same container on the same host
  port, or another container's. Every other old forward is removed in phase 2
  (``release``), once its container's binds succeeded: a new port that cannot be bound
  never costs the old one. An old forward that another file now asks for, while that
  container is held by its back-off, stays where it is until that one can take it.
- ``move`` (1): a forward one running container drops and another running container
  asks for, as it is: moved from the one to the other with back-to-back calls, put back
  where it was when the other cannot take it (instead of an unbind and a bind). A
  ``create`` or ``recreate`` whose new container asks for such a forward carries it the
  same way: the container is started without it, then it is moved (a start-first
  replacement's once it is ready), so one that fails never costs the running one its
  forward.
- ``recreate`` (removes in 0, creates in 1): anything but ports and resources changed
  (the spec hash differs), or the ports changed while the container was not running.
- ``resize`` (0): only ``[resources]`` changed: the new limits are applied live, whether
  the container runs or not.
- ``create`` (1): the container does not exist.
- ``start`` (1): the container exists but is not running and its restart policy wants
  it up.
- ``heal`` (1): the container runs but its slirp4netns died: start it again, forwards
  included, without restarting the container.
- ``connect`` (1) / ``disconnect`` (2): only the networks a running container joins
  changed: it joins the new ones, then (once every action of it succeeded) leaves the
  old ones, live; it keeps its pid and is never left without a network. Changed while
  it is stopped, or aliases changed on a network it stays on: ``recreate``.
- ``ensure-network`` (0) / ``renew-network`` (0) / ``remove-network`` (3), named after
  the network: a network a wanted container joins is made (or, its settings changed and
  no container attached, remade) before phase 1 creates and connects; one this folder
  made goes after the last container attached to it left
  (:mod:`reconciler.planning.networks`).

Phase 0 frees what phase 1 takes, so ports can be swapped or moved between containers
in one pass, and makes the networks; phase 2 releases what nothing takes (old forwards,
networks left); phase 3 removes the networks nothing joins any more. The converger runs
the phases in order, skips a phase-1 action that joins a network whose making failed in
this pass, puts back a forward unbound in phase 0 whose replacement did not get bound in
phase 1, and skips phase 2 for a container any of whose actions failed.

Conflicts between files (one name, one host port) follow the rule of
:mod:`reconciler.planning.conflicts`: the file that holds it now keeps it, else the file
that sorts first; the others get a ``DuplicateName`` or ``PortConflict`` condition at
their own line and are applied once the name or port is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    LABEL_HASH,
    LABEL_MANAGED,
    LIVE_FIELDS,
    MANAGER,
    DesiredContainer,
    DesiredState,
    FileError,
    replaced_name,
)
from reconciler.planning.actions import (
    PHASE,
    Action,
    ActionKind,
    Condition,
    ConditionKind,
    Plan,
    starts_first,
)
from reconciler.planning.conflicts import (
    claim_of,
    holders_of,
    overlaps,
    refuse_ports,
    settle_names,
    yield_to_broken,
)
from reconciler.planning.networks import (
    NO_LINGER,
    NetworkLinger,
    attachment_actions,
    networks_differ,
    plan_networks,
)
from runtime.api import ContainerInfo, ContainerState, NetworkInfo, PortMapping

__all__ = (
    "PHASE",
    "Action",
    "ActionKind",
    "Condition",
    "ConditionKind",
    "NetworkLinger",
    "Plan",
    "RemovalWindow",
    "is_leftover",
    "is_managed_by",
    "plan",
    "settled",
    "takes",
)


def is_managed_by(info: ContainerInfo, folder: str) -> bool:
    """Whether this folder's reconciler made ``info`` (nothing else is ever touched)."""
    labels = info.spec.labels
    return labels.get(LABEL_MANAGED) == MANAGER and labels.get(LABEL_FOLDER) == folder


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


_LOST = {
    "slirp4netns": "its slirp4netns is gone",
    "bridge": "the namespace holding its networks is gone",
}
"""Why a running container with no live slirp4netns needs a heal, by network mode."""


def _ports_and_state(want: DesiredContainer, have: ContainerInfo) -> list[Action]:
    name = want.name
    wanted_ports = set(want.spec.ports)
    if have.state is ContainerState.RUNNING:
        lost = _LOST.get(have.spec.network)
        if lost is not None and have.slirp_pid is None:
            return [Action(ActionKind.HEAL, name, lost, want)]
        live = set(have.ports)
        actions = attachment_actions(want, have) if networks_differ(want.spec, have.spec) else []
        if actions and actions[0].kind is ActionKind.RECREATE:
            return actions
        gone = tuple(sorted(live - wanted_ports, key=str))
        new = tuple(sorted(wanted_ports - live, key=str))
        if gone:
            actions.append(Action(ActionKind.UNBIND, name, "ports changed", want, gone))
        if new:
            actions.append(Action(ActionKind.BIND, name, "ports changed", want, new))
        return actions
    if wanted_ports != set(have.spec.ports):
        return [Action(ActionKind.RECREATE, name, "ports changed while stopped", want)]
    if networks_differ(want.spec, have.spec):
        return [Action(ActionKind.RECREATE, name, "networks changed while stopped", want)]
    if have.state is ContainerState.CREATED:
        return [Action(ActionKind.START, name, "created but not started", want)]
    code = have.exit_code
    if not want.restarts_after(code):
        return []
    what = "exited" if want.restart == "always" else "failed"
    return [Action(ActionKind.START, name, f"{what} with code {code}; policy {want.restart}", want)]


@dataclass(frozen=True)
class _Pass:
    """What every phase of one plan needs to know."""

    desired: DesiredState
    by_name: Mapping[str, ContainerInfo]
    ours: Mapping[str, ContainerInfo]
    now: float
    hold: Mapping[str, float]
    restart_hold: Mapping[str, float]

    def held(self, name: str) -> bool:
        return self.hold.get(name, 0.0) > self.now


@dataclass
class _Removals:
    """Phase "deletions": what goes, and what stays although no valid file asks for it."""

    leftovers: list[Action] = field(default_factory=list)
    destroys: list[Action] = field(default_factory=list)
    reserved: dict[str, tuple[PortMapping, ...]] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)


@dataclass(frozen=True)
class RemovalWindow:
    """The mass-deletion guard's memory: when this folder's earlier removals were applied
    (kept by the loop), and over how many seconds they count."""

    seconds: float = 0.0
    removed_at: tuple[float, ...] = ()

    def earlier(self, now: float) -> int:
        """How many removals were applied within the window before ``now``."""
        return sum(1 for at in self.removed_at if now - at < self.seconds)

    def describe(self) -> str:
        """The window as a person reads it: ``5 min``, ``90 s``."""
        minutes, seconds = divmod(self.seconds, 60)
        return f"{minutes:g} min" if minutes and not seconds else f"{self.seconds:g} s"


NO_WINDOW = RemovalWindow()
"""Only the pass itself counts."""


def plan(
    desired: DesiredState,
    actual: Sequence[ContainerInfo],
    *,
    now: float = 0.0,
    not_before: Mapping[str, float] | None = None,
    restart_not_before: Mapping[str, float] | None = None,
    allow_mass_delete: bool = False,
    removal_window: RemovalWindow | None = None,
    networks: Sequence[NetworkInfo] = (),
    linger: NetworkLinger = NO_LINGER,
) -> Plan:
    """The actions that take ``actual`` to ``desired``, and the conditions that block some.

    ``not_before`` maps a container name to the time before which nothing may be done to
    it (its back-off after a failed action); ``restart_not_before`` holds back only the
    restart of an exited container (its crash back-off: a fixed file goes ahead at once).
    ``now`` is the current time.

    Phases, in order: names (:func:`settled`); deletions (containers no valid file
    asks for, held back by the guards below); host-port arbitration between files; the
    per-container diff (create, recreate, resize, unbind/bind, connect/disconnect, start,
    heal), each held back by its back-off; the takes that wait for a container held by
    its back-off to free a port (:func:`_defer_takes`); the frees
    (:func:`_schedule_frees`: which old forwards move, which go before the takes, which
    after them, which stay); the networks (:func:`~reconciler.planning.networks.plan_networks`:
    made, remade, removed, given ``networks``, the ones that exist now; one nothing joins
    any more stays while ``linger`` keeps it).

    Mass-deletion guard: a pass whose removals, together with the removals applied
    within ``removal_window`` before it, come to more than half of this folder's
    containers (those it has now plus those removed within the window) and to more than
    two (an emptied folder, a half-synced checkout, files deleted one at a time) destroys
    none and reports ``MassDeleteGuard`` instead, unless ``allow_mass_delete``. With no
    window only this pass counts; deleting one or two files in a pass is applied when
    nothing was removed within the window. While a file cannot even be read far enough to
    know which container it names, nothing is destroyed either.
    """
    folder = str(desired.folder)
    if not desired.readable:
        message = f"{folder} is missing or unreadable; nothing is changed until it is back"
        unreadable = Condition("*", ConditionKind.FOLDER_UNREADABLE, message)
        errors = [_error_condition(e) for e in desired.errors]
        return Plan((), (*errors, unreadable))
    by_name = {info.name: info for info in actual}
    ours = {name: info for name, info in by_name.items() if is_managed_by(info, folder)}
    desired = settled(desired, actual)
    state = _Pass(desired, by_name, ours, now, not_before or {}, restart_not_before or {})
    removals = _removals(state)
    _guard_removals(state, removals, None if allow_mass_delete else removal_window or NO_WINDOW)
    conditions = [_error_condition(e) for e in desired.errors] + removals.conditions
    taken = {name for name in desired.containers if name in by_name and name not in ours}
    losers = _port_losers(state, taken, removals.reserved)
    actions: list[Action] = [*removals.leftovers, *removals.destroys]
    for want in sorted(desired.containers.values(), key=lambda w: w.name):
        wanted, blocked = _for_container(state, want, taken, losers)
        actions.extend(wanted)
        conditions.extend(blocked)
    actions, conditions = _defer_takes(state, actions, conditions)
    actions, conditions = _break_swaps(state, actions, conditions)
    actions = _schedule_frees(actions, _waiting(state, conditions))
    held = [name for name in state.hold if state.held(name)]
    networked = plan_networks(desired, networks, actions, by_name, held, linger=linger, now=now)
    actions = [a for a in actions if a not in networked.held] + networked.actions
    conditions += networked.conditions
    actions.sort(key=lambda a: (PHASE[a.kind], a.name, a.kind.value))
    return Plan(tuple(actions), tuple(conditions), tuple(networked.lingering))


def _error_condition(error: FileError) -> Condition:
    return Condition(error.name, ConditionKind(error.kind), error.message)


def settled(desired: DesiredState, actual: Sequence[ContainerInfo]) -> DesiredState:
    """``desired`` with duplicate names decided again now that the running containers are
    known: the file whose container runs keeps the name (the planner's first phase; a
    caller that shows ``desired`` next to a plan shows this)."""
    if not desired.errors:  # no file refused or broken: nothing to decide again
        return desired
    folder = str(desired.folder)
    holders = holders_of({info.name: info for info in actual if is_managed_by(info, folder)})
    refused = [e.refused for e in desired.errors if e.refused is not None]
    containers, duplicates = dict(desired.containers), list[FileError]()
    if refused:
        containers, duplicates = settle_names([*containers.values(), *refused], holders)
    broken = frozenset(e.file.name for e in desired.errors if e.refused is None)
    containers, yielded = yield_to_broken(containers, holders, broken)
    if not refused and not yielded:
        return desired
    errors = (*(e for e in desired.errors if e.refused is None), *duplicates, *yielded)
    return replace(desired, containers=containers, errors=errors)


def _removals(state: _Pass) -> _Removals:
    """Phase "deletions": this folder's containers that no valid file asks for."""
    out = _Removals()
    desired = state.desired
    claimed = {e.name for e in desired.errors}
    for name, have in sorted(state.ours.items()):
        file = have.spec.labels.get(LABEL_FILE, "?")
        if name in desired.containers:
            continue
        if is_leftover(desired, name, have):
            if state.held(name):
                out.reserved[name] = have.ports
            else:
                reason = f"left by an interrupted start-first replacement of {replaced_name(name)}"
                out.leftovers.append(Action(ActionKind.DESTROY, name, reason))
        elif file in desired.error_files or name in claimed:
            out.reserved[name] = have.ports  # its file is broken: the last valid spec keeps running
        elif state.held(name):
            out.reserved[name] = have.ports
            wait = state.hold[name] - state.now
            message = (
                f"backing off for {wait:.2f} s before removing it ({_unwanted(desired, file)})"
            )
            out.conditions.append(Condition(name, ConditionKind.BACK_OFF, message))
        else:
            out.destroys.append(Action(ActionKind.DESTROY, name, _unwanted(desired, file)))
    return out


def _unwanted(desired: DesiredState, file: str) -> str:
    """Why no file asks for a container made from ``file``: it is gone, or its
    ``[placement]`` leaves this host out."""
    placed = next((p for p in desired.placed_elsewhere if p.file.name == file), None)
    return f"{file} is gone" if placed is None else f"{file} is placed elsewhere ({placed.reason})"


def is_leftover(desired: DesiredState, name: str, have: ContainerInfo) -> bool:
    """A start-first replacement's leftover, made from the same file: never counted as a
    removal by the guards."""
    base = replaced_name(name)
    replaced = desired.containers.get(base) if base is not None else None
    return replaced is not None and have.spec.labels.get(LABEL_FILE) == replaced.spec.labels.get(
        LABEL_FILE
    )


def _guard_removals(state: _Pass, removals: _Removals, window: RemovalWindow | None) -> None:
    """Hold back every destroy while a file's name is unknown or the pass would bring the
    removals within ``window`` (None: mass deletion allowed) to most of the folder; held
    containers keep their ports."""
    condition = _removal_guard(state, removals.destroys, window)
    if condition is None:
        return
    removals.conditions.append(condition)
    for action in removals.destroys:
        removals.reserved[action.name] = state.ours[action.name].ports
    removals.destroys.clear()


def _removal_guard(
    state: _Pass, destroys: Sequence[Action], window: RemovalWindow | None
) -> Condition | None:
    unknown = sorted(e.file.name for e in state.desired.errors if not e.name_known)
    if destroys and unknown:
        return Condition(
            "*",
            ConditionKind.INVALID_SPEC,
            f"nothing is removed while {', '.join(unknown)} cannot be read far enough "
            "to know which container it names",
        )
    if window is None or not destroys:
        return None
    earlier = window.earlier(state.now)
    count, size = len(destroys) + earlier, len(state.ours) + earlier
    if count > 2 and 2 * count > size:
        return Condition(
            "*", ConditionKind.MASS_DELETE, _mass_delete_message(window, earlier, count, size)
        )
    return None


def _mass_delete_message(window: RemovalWindow, earlier: int, count: int, size: int) -> str:
    """The guard's condition: what this pass would remove, counted over which window."""
    more = f"{count - earlier} more: " if earlier else ""
    what = f"this pass would remove {more}{count} of the folder's {size} containers"
    if window.seconds:
        what += f" within the last {window.describe()} (the guard's window)"
    return (
        f"{what}; none is removed until the files are back or you confirm with --allow-mass-delete"
    )


def _port_losers(
    state: _Pass, taken: set[str], reserved: Mapping[str, tuple[PortMapping, ...]]
) -> dict[str, str]:
    """Phase "ports": the containers that may not take their host ports now, and why.

    A refused file's running container is left as it is, old forwards included: those
    are kept from every other file too (else that one would fail to bind them, again
    and again, with a port "in use" by this folder's own container)."""
    contenders = [want for name, want in state.desired.containers.items() if name not in taken]
    claims, holders, kept = [claim_of(w) for w in contenders], holders_of(state.ours), {**reserved}
    while True:
        refused = refuse_ports(claims, holders, kept)
        losers = {contenders[i].name: str(problem) for i, problem in refused.items()}
        more = {n: state.ours[n].ports for n in losers if n in state.ours and n not in kept}
        if not any(more.values()):
            return losers
        kept |= more


def _for_container(
    state: _Pass, want: DesiredContainer, taken: set[str], losers: Mapping[str, str]
) -> tuple[list[Action], list[Condition]]:
    """Phase "diff": what one wanted container needs, or the condition that blocks it."""
    name = want.name
    if name in taken:
        message = (
            f"a container named {name!r} exists that this folder did not create; it is left alone"
        )
        return [], [Condition(name, ConditionKind.NAME_TAKEN, message)]
    if name in losers:
        return [], [Condition(name, ConditionKind.PORT_CONFLICT, losers[name])]
    existing = state.by_name.get(name)
    wanted = (
        [Action(ActionKind.CREATE, name, f"new in {want.file.name}", want)]
        if existing is None
        else _for_existing(want, existing)
    )
    until = state.hold.get(name, 0.0)
    if wanted and wanted[0].kind is ActionKind.START:
        until = max(until, state.restart_hold.get(name, 0.0))
    if wanted and until > state.now:
        message = f"backing off for {until - state.now:.2f} s before: {wanted[0]}"
        return [], [Condition(name, ConditionKind.BACK_OFF, message)]
    return wanted, []


def takes(action: Action) -> tuple[PortMapping, ...]:
    """The host ports ``action`` takes in phase 1 (a bind or a move its own, a create,
    recreate or start those of its spec)."""
    if action.kind in (ActionKind.BIND, ActionKind.MOVE):
        return action.ports
    kinds = (ActionKind.CREATE, ActionKind.RECREATE, ActionKind.START)
    if action.kind in kinds and action.desired is not None:
        return action.desired.spec.ports
    return ()


def _defer_takes(
    state: _Pass, actions: Sequence[Action], conditions: Sequence[Condition]
) -> tuple[list[Action], list[Condition]]:
    """Hold back every action of a container that would take a host port a container
    held by its back-off forwards now (it cannot free it in this pass): trying would
    only fail and put this one in back-off too, out of step with the other."""
    held = {c.name for c in conditions if c.kind is ConditionKind.BACK_OFF}
    deferred: list[Condition] = []
    while True:
        live = [(n, p) for n in sorted(held & state.ours.keys()) for p in state.ours[n].ports]
        waits = _waits(actions, live, held)
        if not waits:
            return list(actions), [*conditions, *deferred]
        held |= waits.keys()
        deferred += waits.values()
        actions = [a for a in actions if a.name not in waits]


def _waits(
    actions: Sequence[Action], live: Sequence[tuple[str, PortMapping]], held: set[str]
) -> dict[str, Condition]:
    waits: dict[str, Condition] = {}
    for action in actions:
        if action.name in held or action.name in waits:
            continue
        for port in takes(action):
            owner = next((n for n, p in live if n != action.name and overlaps(port, p)), None)
            if owner is not None:
                message = f"waits for {owner}, which is backing off, to free host port {port}"
                waits[action.name] = Condition(action.name, ConditionKind.BACK_OFF, message)
                break
    return waits


def _break_swaps(
    state: _Pass, actions: Sequence[Action], conditions: Sequence[Condition]
) -> tuple[list[Action], list[Condition]]:
    """Two start-first recreates that take each other's host ports (a swap) cannot both
    go in one pass: each replacement would wait for a port the other's old container
    keeps until the other's hand-over, and both fail, pass after pass. The first of the
    two (by name) takes its ports from the other's running container as moves; the
    other goes in the next pass, when the first one's old container has freed its."""
    first = {a.name: a for a in actions if starts_first(a) and a.name in state.ours}
    needs = {name: _needs(state, action, first) for name, action in first.items()}
    later: dict[str, Condition] = {}
    given: dict[str, list[tuple[str, PortMapping]]] = {}
    for name in sorted(first):
        for other, ports in sorted(needs[name].items()):
            if name in later or other in later or name not in needs[other]:
                continue
            given.setdefault(name, []).extend((other, port) for port in ports)
            message = (
                f"swaps host ports with {name}: waits for {name}'s replacement to take "
                f"{', '.join(map(str, ports))} from it first (next pass)"
            )
            later[other] = Condition(other, ConditionKind.PORT_SWAP, message)
    out = [a for a in actions if a.name not in later]
    out = [_create_with_moves(a, given[a.name]) if a.name in given else a for a in out]
    return out, [*conditions, *later.values()]


def _needs(
    state: _Pass, action: Action, first: Mapping[str, Action]
) -> dict[str, list[PortMapping]]:
    """The host ports ``action`` takes that another start-first recreate's old container
    forwards now and its replacement does not keep, by that container."""
    found: dict[str, list[PortMapping]] = {}
    for port in takes(action):
        for other, recreate in first.items():
            held = any(overlaps(port, p) for p in state.ours[other].ports)
            kept = any(overlaps(port, p) for p in takes(recreate))
            if other != action.name and held and not kept:
                found.setdefault(other, []).append(port)
    return found


def _waiting(state: _Pass, conditions: Sequence[Condition]) -> list[DesiredContainer]:
    """The wanted containers held back by their back-off in this pass."""
    held = {c.name for c in conditions if c.kind is ConditionKind.BACK_OFF}
    return [want for name, want in state.desired.containers.items() if name in held]


def _schedule_frees(actions: Sequence[Action], waiting: Sequence[DesiredContainer]) -> list[Action]:
    """Phase "frees": split each ``unbind`` (every old forward of a running container)
    into what moves as it is to another running container (``move``, phase 1), what a
    take of this pass needs first (``unbind``, phase 0), what nothing takes (``release``,
    phase 2: only once its container's binds succeeded), and what a container held by
    its back-off asks for (kept until that one can take it)."""
    actions = _pair_moves(actions)
    taken = [port for action in actions for port in takes(action)]
    wanted_later = [port for want in waiting for port in want.spec.ports]
    out: list[Action] = []
    for action in actions:
        if action.kind is not ActionKind.UNBIND:
            out.append(action)
            continue
        first = tuple(p for p in action.ports if _clashes(p, taken))
        later = tuple(p for p in action.ports if p not in first and not _clashes(p, wanted_later))
        if first:
            out.append(replace(action, ports=first))
        if later:
            out.append(replace(action, kind=ActionKind.RELEASE, ports=later))
    return out


def _clashes(port: PortMapping, others: Sequence[PortMapping]) -> bool:
    return any(overlaps(port, other) for other in others)


def _pair_moves(actions: Sequence[Action]) -> list[Action]:
    """Each forward that one running container unbinds and another running container
    binds, or a new one is created with, as it is, is moved: out of the unbind, and out
    of the bind into a ``move`` (a create carries it in ``moves``)."""
    givers = [a for a in actions if a.kind is ActionKind.UNBIND]
    moves: dict[str, list[tuple[str, PortMapping]]] = {}
    for taker in actions:
        if taker.kind in (ActionKind.BIND, ActionKind.CREATE, ActionKind.RECREATE):
            for port in takes(taker):
                giver = next((u for u in givers if u.name != taker.name and port in u.ports), None)
                if giver is not None:
                    moves.setdefault(taker.name, []).append((giver.name, port))
    gone = {move for taken in moves.values() for move in taken}
    out: list[Action] = []
    for action in actions:
        if action.kind is ActionKind.UNBIND:
            rest = tuple(p for p in action.ports if (action.name, p) not in gone)
            out += [replace(action, ports=rest)] if rest else []
        elif action.kind is ActionKind.BIND:
            out += _bind_and_moves(action, moves.get(action.name, []))
        elif action.kind in (ActionKind.CREATE, ActionKind.RECREATE) and action.name in moves:
            out.append(_create_with_moves(action, moves[action.name]))
        else:
            out.append(action)
    return out


def _bind_and_moves(bind: Action, moves: Sequence[tuple[str, PortMapping]]) -> list[Action]:
    moved = {port for _, port in moves}
    rest = tuple(p for p in bind.ports if p not in moved)
    out = [replace(bind, ports=rest)] if rest else []
    for giver in sorted({giver for giver, _ in moves}):
        mine = tuple(m for m in moves if m[0] == giver)
        reason = f"{bind.reason}; from {giver}"
        ports = tuple(port for _, port in mine)
        out.append(replace(bind, kind=ActionKind.MOVE, reason=reason, ports=ports, moves=mine))
    return out


def _create_with_moves(create: Action, moves: Sequence[tuple[str, PortMapping]]) -> Action:
    taken = ", ".join(f"{port} from {giver}" for giver, port in moves)
    return replace(create, reason=f"{create.reason}; moving {taken}", moves=tuple(moves))
