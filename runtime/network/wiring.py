"""How a container's interfaces on bridge networks are made, in the keeper of the shared
namespace (:mod:`runtime.network.shared`): one veth pair per network it joins, its end
inside named ``ethN`` with its address, the default route through the first network
unless that one is internal."""

from __future__ import annotations

import ipaddress

from runtime.network import netlink
from runtime.network.addresses import NetworkRecord

__all__ = ("default_gateway", "links_of", "plug")


def links_of(name: str, joins: list[str], networks: dict[str, NetworkRecord]) -> list[netlink.Link]:
    """The interfaces of container ``name`` inside it, one per network it ``joins``."""
    return [
        netlink.Link(
            moved_as=netlink.veth_name(networks[network].leases[name], network, "p"),
            address=networks[network].leases[name],
            prefixlen=ipaddress.IPv4Network(networks[network].subnet).prefixlen,
            gateway=networks[network].gateway,
        )
        for network in joins
    ]


def default_gateway(joins: list[str], networks: dict[str, NetworkRecord]) -> str | None:
    """The way out: the first network's gateway, unless that network is internal."""
    first = networks[joins[0]] if joins else None
    return first.gateway if first is not None and not first.internal else None


def plug(
    name: str, joins: list[str], networks: dict[str, NetworkRecord], container_ns: int, fresh: bool
) -> None:
    """In the shared namespace: a pair for each network joined anew, none for the rest."""
    present = set() if fresh else netlink.link_names()
    for network, record in networks.items():
        address = record.leases.get(name)
        if address is None:
            continue  # no lease there, so no pair either
        host_end = netlink.veth_name(address, network)
        if network not in joins:
            if host_end in present:
                netlink.delete_link(host_end)
        elif host_end not in present:
            moved_as = netlink.veth_name(address, network, "p")
            netlink.make_veth(host_end, netlink.bridge_name(network), container_ns, moved_as)
