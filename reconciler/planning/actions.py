"""What a plan is made of: actions with their phases and reasons, and conditions.

The planner (:mod:`reconciler.planning.plan`) makes them; the converger
(:mod:`reconciler.control.converge`) runs the actions phase by phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.desired.types import DesiredContainer, replacement_name
from runtime.api import NetworkAttachment, NetworkSpec, PortMapping

__all__ = (
    "PHASE",
    "PHASES",
    "Action",
    "ActionKind",
    "Condition",
    "ConditionKind",
    "Plan",
    "starts_first",
)


class ActionKind(StrEnum):
    CREATE = "create"
    DESTROY = "destroy"
    RECREATE = "recreate"
    UNBIND = "unbind"
    BIND = "bind"
    MOVE = "move"
    RELEASE = "release"
    START = "start"
    HEAL = "heal"
    RESIZE = "resize"
    ENSURE_NETWORK = "ensure-network"
    RENEW_NETWORK = "renew-network"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    REMOVE_NETWORK = "remove-network"


PHASE = {
    ActionKind.DESTROY: 0,
    ActionKind.UNBIND: 0,
    ActionKind.RECREATE: 0,
    ActionKind.RESIZE: 0,
    ActionKind.CREATE: 1,
    ActionKind.BIND: 1,
    ActionKind.START: 1,
    ActionKind.HEAL: 1,
    ActionKind.MOVE: 1,
    ActionKind.RELEASE: 2,
    ActionKind.ENSURE_NETWORK: 0,
    ActionKind.RENEW_NETWORK: 0,
    ActionKind.CONNECT: 1,
    ActionKind.DISCONNECT: 2,
    ActionKind.REMOVE_NETWORK: 3,
}
"""Phase 0 frees what phase 1 needs (and resizes), phase 1 takes (``recreate`` removes in
phase 0, creates in phase 1), phase 2 releases old forwards nothing takes. Networks:
made (or remade) in phase 0, before phase 1 creates and connects what joins them; a
container leaves a network in phase 2, once it joined its new ones; a network goes in
phase 3, after the last container left it."""

PHASES = (0, 1, 2, 3)


class ConditionKind(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    DUPLICATE_NAME = "DuplicateName"
    PORT_CONFLICT = "PortConflict"
    NAME_TAKEN = "NameTaken"
    FOLDER_UNREADABLE = "FolderUnreadable"
    BACK_OFF = "BackOff"
    MASS_DELETE = "MassDeleteGuard"
    STATE_DISK_FULL = "StateDiskFull"
    INVALID_NETWORK = "InvalidNetwork"
    """A network file does not validate: its network is left as it is."""
    NETWORK_IN_USE = "NetworkInUse"
    """A network's settings changed while containers use it: it is remade once none does."""
    NETWORK_CONFLICT = "NetworkConflict"
    """A network of the name exists with other settings, and this folder did not make it."""
    PORT_SWAP = "PortSwap"
    """Its start-first replacement takes a host port another one's takes from it: it goes
    in the next pass, after the other (one pass cannot hand both over)."""


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    reason: str
    desired: DesiredContainer | None = None
    ports: tuple[PortMapping, ...] = ()
    moves: tuple[tuple[str, PortMapping], ...] = ()
    """For a ``move`` or a ``create``: (running container, forward) it takes from others,
    moved back to back (a create's container is started without them)."""
    network: NetworkSpec | None = None
    """For ``ensure-network`` and ``renew-network`` (whose ``name`` is the network's):
    what to make."""
    attachment: NetworkAttachment | None = None
    """For ``connect`` and ``disconnect`` (whose ``name`` is the container's): which
    network it joins or leaves."""
    after: tuple[str, ...] = ()
    """Containers whose actions of this pass must all succeed first (a ``remove-network``
    waits for those that leave the network)."""

    def __str__(self) -> str:
        ports = f" {', '.join(str(p) for p in self.ports)}" if self.ports else ""
        joined = f" {self.attachment.network}" if self.attachment else ""
        return f"{self.kind.value} {self.name}{joined}{ports}: {self.reason}"

    @property
    def for_network(self) -> bool:
        """Whether ``name`` is a network's (else a container's)."""
        return self.kind in _NETWORK_KINDS


_NETWORK_KINDS = (
    ActionKind.ENSURE_NETWORK,
    ActionKind.RENEW_NETWORK,
    ActionKind.REMOVE_NETWORK,
)


@dataclass(frozen=True)
class Condition:
    name: str
    kind: ConditionKind
    message: str
    network: str | None = None
    """A network's condition (its name in the folder; ``name`` is then ``*``)."""


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    conditions: tuple[Condition, ...] = ()
    lingering: tuple[str, ...] = ()
    """Networks this folder made that nothing joins after the plan, kept for now (their
    removal waits for the linger: :class:`reconciler.planning.networks.NetworkLinger`)."""

    def phase(self, number: int) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if PHASE[a.kind] == number)


def starts_first(action: Action) -> bool:
    """A recreate whose replacement starts before the old container stops (when the
    replacement's name fits; else it is replaced stop-first)."""
    return (
        action.kind is ActionKind.RECREATE
        and action.desired is not None
        and action.desired.update == "start-first"
        and len(replacement_name(action.name)) <= 63
    )
