"""What a container's interfaces on bridge networks should be, worked out by the keeper
of the shared namespace (:mod:`runtime.network.shared`) from the address book and done
by the namespace's agent (:mod:`runtime.network.agent`): one veth pair per network it
joins, its end inside named ``ethN`` with its address, the default route through the
first network unless that one is internal."""

from __future__ import annotations

import ipaddress
from typing import Any

from runtime.network import netlink
from runtime.network.addresses import NetworkRecord

__all__ = ("default_gateway", "plan")


def default_gateway(joins: list[str], networks: dict[str, NetworkRecord]) -> str | None:
    """The way out: the first network's gateway, unless that network is internal."""
    first = networks[joins[0]] if joins else None
    return first.gateway if first is not None and not first.internal else None


def _pair(name: str, record: NetworkRecord, namespace: int) -> dict[str, Any]:
    address = record.leases[name]
    return {
        "host_end": netlink.veth_name(address, record.name, namespace),
        "bridge": netlink.bridge_name(record.name),
        "address": address,
        "prefixlen": ipaddress.IPv4Network(record.subnet).prefixlen,
        "mac": netlink.mac_of(address),
    }


def plan(
    name: str, joins: list[str], networks: dict[str, NetworkRecord], namespace: int
) -> dict[str, Any]:
    """The agent's ``plug`` request for container ``name``, in the network namespace of
    inode ``namespace``, on ``joins`` (in order):
    ``pairs``, one per network joined (the agent makes those it does not find);
    ``left``, the shared namespace's ends of the pairs of networks it holds a lease on
    but no longer joins (deleted, and their inside ends with them); ``gateway``."""
    left = [
        netlink.veth_name(record.leases[name], network, namespace)
        for network, record in networks.items()
        if name in record.leases and network not in joins
    ]
    return {
        "pairs": [_pair(name, networks[network], namespace) for network in joins],
        "left": left,
        "gateway": default_gateway(joins, networks),
    }
