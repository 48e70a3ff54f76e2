"""Planning the networks: which to make, remake or remove, and who joins or leaves which.

Pure, as the rest of the planner. A network is wanted while a wanted container joins it;
its settings are its network file's (``NAME.network.toml``), else the defaults. It is
made in phase 0 (before phase 1 creates and connects what joins it); its settings
changed, it is remade only while no container is attached to it (else a
``NetworkInUse`` condition says what holds it); one this folder made goes in phase 3,
once the last container attached to it has left (destroyed, recreated elsewhere or
disconnected in this pass), or, given a :class:`NetworkLinger` (the loop's), once
nothing has joined it for the linger's seconds. A network file that does not validate
leaves its network as it is; containers that need it while it does not exist wait for
the file.

A running container whose networks changed joins the new ones in phase 1 and leaves the
old ones in phase 2 (same pid: never left without a network on the way); aliases changed
on a network it stays on mean a recreate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.desired.types import (
    LABEL_FOLDER,
    LABEL_MANAGED,
    MANAGER,
    DesiredContainer,
    DesiredState,
    network_labels,
)
from reconciler.planning.actions import Action, ActionKind, Condition, ConditionKind
from reconciler.squishfile.networks import local_network_name, runtime_network_name
from runtime.api import ContainerInfo, ContainerSpec, NetworkAttachment, NetworkInfo, NetworkSpec

__all__ = (
    "NO_LINGER",
    "NetworkLinger",
    "NetworkPlan",
    "attachment_actions",
    "joins",
    "network_managed_by",
    "networks_differ",
    "plan_networks",
)


def _joined(spec: ContainerSpec) -> dict[str, frozenset[str]]:
    return {a.network: frozenset(a.aliases) for a in spec.networks}


def networks_differ(want: ContainerSpec, have: ContainerSpec) -> bool:
    """Whether the networks joined (or their aliases) differ."""
    return _joined(want) != _joined(have)


def attachment_actions(want: DesiredContainer, have: ContainerInfo) -> list[Action]:
    """What a running container whose networks changed needs: connects and disconnects,
    or a recreate when aliases changed on a network it stays on."""
    mine, theirs = _joined(want.spec), _joined(have.spec)
    folder = want.spec.labels.get(LABEL_FOLDER)
    renamed = sorted(n for n in mine.keys() & theirs.keys() if mine[n] != theirs[n])
    if renamed:
        shown = ", ".join(_local(folder, n) for n in renamed)
        return [Action(ActionKind.RECREATE, want.name, f"aliases changed on {shown}", want)]
    connects = [
        Action(ActionKind.CONNECT, want.name, "networks changed", want, attachment=attachment)
        for attachment in want.spec.networks
        if attachment.network not in theirs
    ]
    disconnects = [
        Action(
            ActionKind.DISCONNECT,
            want.name,
            "networks changed",
            want,
            attachment=NetworkAttachment(network=network),
        )
        for network in sorted(theirs.keys() - mine.keys())
    ]
    return connects + disconnects


def _local(folder: str | None, network: str) -> str:
    """A network's name as the folder writes it (the runtime's when it is not the folder's)."""
    local = local_network_name(Path(folder), network) if folder else None
    return local or network


@dataclass
class NetworkPlan:
    """What :func:`plan_networks` decided."""

    actions: list[Action] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    held: list[Action] = field(default_factory=list)
    """Container actions held back: a network they need does not exist and its file does
    not validate."""
    lingering: list[str] = field(default_factory=list)
    """Networks this folder made that nothing joins after this pass, kept for now."""


@dataclass(frozen=True)
class NetworkLinger:
    """How long a network this folder made is kept once nothing joins it, and since when
    each such network has been unjoined (the loop remembers it): a file dropped
    meanwhile finds its network made (a bridge network's first container otherwise pays
    for making it, and for starting the user's network keeper when it is the only one)."""

    seconds: float = 0.0
    unjoined_since: Mapping[str, float] = field(default_factory=dict)

    def keeps(self, name: str, now: float) -> bool:
        """Whether network ``name``, unjoined after a pass at ``now``, stays for now."""
        return now < self.unjoined_since.get(name, now) + self.seconds


NO_LINGER = NetworkLinger()
"""A network goes with the last container that leaves it."""


def network_managed_by(info: NetworkInfo, folder: str) -> bool:
    """Whether this folder's reconciler made the network (nothing else is ever removed)."""
    labels = info.labels
    return labels.get(LABEL_MANAGED) == MANAGER and labels.get(LABEL_FOLDER) == folder


def _wanted(desired: DesiredState) -> dict[str, NetworkSpec]:
    """Every network a wanted container joins, with the settings to make it with."""
    wanted: dict[str, NetworkSpec] = {}
    for want in desired.containers.values():
        for attachment in want.spec.networks:
            name = attachment.network
            if name in desired.networks:
                wanted[name] = desired.networks[name].spec
            elif name not in wanted:
                local = local_network_name(desired.folder, name) or name
                labels = network_labels(desired.folder, local)
                wanted[name] = NetworkSpec(name=name, labels=labels)
    return wanted


def _differences(spec: NetworkSpec, info: NetworkInfo) -> list[str]:
    """The settings in which an existing network is not what ``spec`` asks for."""
    found = []
    if spec.subnet is not None and spec.subnet != info.subnet:
        found.append(f"subnet {info.subnet} -> {spec.subnet}")
    if spec.internal != info.internal:
        found.append(f"internal {str(info.internal).lower()} -> {str(spec.internal).lower()}")
    if spec.dns != info.dns:
        found.append(f"dns {str(info.dns).lower()} -> {str(spec.dns).lower()}")
    return found


def _leaving(
    actions: Iterable[Action], by_name: Mapping[str, ContainerInfo]
) -> set[tuple[str, str]]:
    """(container, network) pairs the container actions of this pass end."""
    gone: set[tuple[str, str]] = set()
    for action in actions:
        have = by_name.get(action.name)
        if action.kind is ActionKind.DISCONNECT and action.attachment is not None:
            gone.add((action.name, action.attachment.network))
        elif have is not None and action.kind in (ActionKind.DESTROY, ActionKind.RECREATE):
            kept = _joined(action.desired.spec) if action.desired is not None else {}
            gone |= {(action.name, a.network) for a in have.spec.networks if a.network not in kept}
    return gone


@dataclass(frozen=True)
class _Networks:
    """What every decision about one network needs to know."""

    desired: DesiredState
    existing: Mapping[str, NetworkInfo]
    broken: Mapping[str, str]
    """Runtime name -> the file of a network file that does not validate."""
    held: frozenset[str]
    linger: NetworkLinger
    now: float

    def local(self, name: str) -> str:
        return local_network_name(self.desired.folder, name) or name


def plan_networks(
    desired: DesiredState,
    networks: Sequence[NetworkInfo],
    container_actions: Sequence[Action],
    by_name: Mapping[str, ContainerInfo],
    held: Iterable[str] = (),
    *,
    linger: NetworkLinger = NO_LINGER,
    now: float = 0.0,
) -> NetworkPlan:
    """The network actions and conditions of a pass, given the container actions planned
    (and the names ``held`` by their back-off: no action for them now), at ``now``."""
    folder = desired.folder
    broken = {runtime_network_name(folder, e.name): e.file.name for e in desired.network_errors}
    existing = {n.name: n for n in networks}
    state = _Networks(desired, existing, broken, frozenset(held), linger, now)
    out = NetworkPlan()
    for error in desired.network_errors:
        message = f"{error.message}; network {error.name} is left as it is"
        out.conditions.append(Condition("*", ConditionKind.INVALID_NETWORK, message, error.name))
    wanted = _wanted(desired)
    for name, spec in sorted(wanted.items()):
        if name not in broken and name not in state.held:
            _ensure(state, spec, out)
    _remove_unused(state, wanted, container_actions, by_name, out)
    _hold_for_broken(state, container_actions, out)
    return out


def _ensure(state: _Networks, spec: NetworkSpec, out: NetworkPlan) -> None:
    name, local = spec.name, state.local(spec.name)
    info = state.existing.get(name)
    if info is None:
        out.actions.append(
            Action(ActionKind.ENSURE_NETWORK, name, f"{local} is joined", network=spec)
        )
        return
    changed = _differences(spec, info)
    if not changed:
        return
    what = ", ".join(changed)
    if not network_managed_by(info, str(state.desired.folder)):
        message = f"network {name} exists with other settings ({what}) and was not made here"
        out.conditions.append(Condition("*", ConditionKind.NETWORK_CONFLICT, message, local))
    elif info.containers:
        users = ", ".join(sorted(info.containers))
        message = (
            f"network {local}: settings changed ({what}); it is remade once no container "
            f"uses it (now: {users})"
        )
        out.conditions.append(Condition("*", ConditionKind.NETWORK_IN_USE, message, local))
    else:
        reason = f"settings changed: {what}"
        out.actions.append(Action(ActionKind.RENEW_NETWORK, name, reason, network=spec))


def _remove_unused(
    state: _Networks,
    wanted: Mapping[str, NetworkSpec],
    container_actions: Sequence[Action],
    by_name: Mapping[str, ContainerInfo],
    out: NetworkPlan,
) -> None:
    leaving = _leaving(container_actions, by_name)
    folder = str(state.desired.folder)
    for name, info in sorted(state.existing.items()):
        if name in wanted or name in state.held or not network_managed_by(info, folder):
            continue
        if not all((user, name) in leaving for user in info.containers):
            continue
        if state.linger.keeps(name, state.now) and not _subnet_needed(info, out.actions):
            out.lingering.append(name)
            continue
        reason = f"{state.local(name)} is no longer joined"
        after = tuple(sorted(info.containers))
        out.actions.append(Action(ActionKind.REMOVE_NETWORK, name, reason, after=after))


def _subnet_needed(info: NetworkInfo, actions: Sequence[Action]) -> bool:
    """Whether a network made in this pass asks for a subnet that overlaps ``info``'s (a
    network file renamed, or its subnet given to another file): the runtime refuses
    overlapping subnets, so such a network does not linger but goes in this pass."""
    held = ipaddress.IPv4Network(info.subnet, strict=False)
    return any(
        a.network is not None
        and a.network.subnet is not None
        and ipaddress.IPv4Network(a.network.subnet, strict=False).overlaps(held)
        for a in actions
        if a.kind in (ActionKind.ENSURE_NETWORK, ActionKind.RENEW_NETWORK)
    )


def joins(action: Action) -> tuple[str, ...]:
    """The networks a container action joins (a create's, a recreate's, a connect's)."""
    if action.kind is ActionKind.CONNECT and action.attachment is not None:
        return (action.attachment.network,)
    if action.kind in (ActionKind.CREATE, ActionKind.RECREATE) and action.desired is not None:
        return tuple(a.network for a in action.desired.spec.networks)
    return ()


def _hold_for_broken(state: _Networks, actions: Sequence[Action], out: NetworkPlan) -> None:
    for action in actions:
        missing = [n for n in joins(action) if n in state.broken and n not in state.existing]
        if missing:
            file = state.broken[missing[0]]
            message = (
                f"waits for {file} to be fixed: network {state.local(missing[0])} does not "
                "exist yet"
            )
            out.held.append(action)
            out.conditions.append(Condition(action.name, ConditionKind.INVALID_NETWORK, message))
