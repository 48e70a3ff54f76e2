"""The networks part of ``reconciler status``: each container's addresses, and the folder's
networks with their state, settings, members and conditions.

A network row (``status --json``, under ``"networks"``)::

    {"name": "back", "network": "sq-desired-3f2a9c_back", "file": "back.network.toml",
     "state": "Ready", "subnet": "10.89.3.0/24", "gateway": "10.89.3.1",
     "internal": false, "dns": true, "containers": {"db": "10.89.3.2"},
     "last_error": null, "conditions": [{"kind": "NetworkInUse", "message": "..."}]}

``name`` is the network's name in the folder (``default``: the folder's network) and
``network`` the runtime's. States: ``Ready`` (it exists), ``Pending`` (a container joins
it; it is made in the next pass, or waits for a condition), ``Terminating`` (nothing
joins it any more; it goes once the last container left), ``Lingering`` (nothing joins
it any more; ``reconciler run`` keeps it for its linger, for the next container to
come), ``Unused`` (a network file names it but no container joins it, so it is not
made). ``last_error``: why the last
action on it failed, if it did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.desired.types import DesiredState
from reconciler.planning.networks import network_managed_by
from reconciler.planning.plan import ActionKind, Plan
from reconciler.squishfile.networks import local_network_name, runtime_network_name
from runtime.api import ContainerInfo, NetworkInfo

__all__ = ("addresses", "network_rows")


def addresses(folder: Path, info: ContainerInfo | None) -> dict[str, str]:
    """A container's address on each network it joined, by the folder's network names."""
    if info is None:
        return {}
    return {local_network_name(folder, n) or n: a for n, a in sorted(info.addresses.items())}


def _state(name: str, info: NetworkInfo | None, todo: Plan, joined: bool) -> str:
    if info is not None and name in todo.lingering:
        return "Lingering"
    removing = any(a.kind is ActionKind.REMOVE_NETWORK and a.name == name for a in todo.actions)
    if removing:
        return "Terminating"
    if info is not None:
        return "Ready"
    return "Pending" if joined else "Unused"


def network_rows(
    desired: DesiredState,
    networks: Sequence[NetworkInfo],
    todo: Plan,
    errors: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per network of the folder: made by it, joined by a wanted container, set
    up by a network file (valid or not), or named by a condition; ``errors`` are the last
    errors recorded, by name (a network's is its runtime name's)."""
    folder = desired.folder
    existing = {n.name: n for n in networks}
    names = {n.name for n in networks if network_managed_by(n, str(folder))}
    joined = {a.network for w in desired.containers.values() for a in w.spec.networks}
    names |= joined
    names |= set(desired.networks)
    names |= {runtime_network_name(folder, e.name) for e in desired.network_errors}
    names |= {runtime_network_name(folder, c.network) for c in todo.conditions if c.network}
    return [
        _row(desired, name, existing.get(name), todo, joined=name in joined)
        | {"last_error": (errors or {}).get(name)}
        for name in sorted(names)
    ]


def _row(
    desired: DesiredState, name: str, info: NetworkInfo | None, todo: Plan, *, joined: bool
) -> dict[str, Any]:
    local = local_network_name(desired.folder, name) or name
    written = desired.networks.get(name)
    broken = next((e for e in desired.network_errors if e.name == local), None)
    file = written.file if written else broken.file if broken else None
    spec = written.spec if written else None
    conditions = [c for c in todo.conditions if c.network == local]
    return {
        "name": local,
        "network": name,
        "file": file.name if file else None,
        "state": _state(name, info, todo, joined),
        "subnet": info.subnet if info else spec.subnet if spec else None,
        "gateway": info.gateway if info else None,
        "internal": info.internal if info else bool(spec and spec.internal),
        "dns": info.dns if info else not spec or spec.dns,
        "containers": dict(sorted(info.containers.items())) if info else {},
        "conditions": [{"kind": c.kind.value, "message": c.message} for c in conditions],
    }
