"""Netlink steps for bridge networks, through pyroute2, on a netlink socket of the shared
namespace (:func:`open_route`, in the process that lives there): a bridge with its gateway
address, and a veth pair whose one end joins the bridge and whose other end is made in a
container's namespace as ``ethN``."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

__all__ = (
    "MTU",
    "Inside",
    "bridge_name",
    "delete_link",
    "ensure_bridge",
    "link_names",
    "mac_of",
    "make_veth",
    "open_route",
    "prewarm",
    "veth_name",
)


MTU = 65520
"""Of bridges and veth pairs: no wire carries these frames, so they are as large as
slirp4netns' tap takes (a container-to-container transfer over 1500-byte frames ran at
three quarters of the host's loopback; over these it runs at about its speed)."""


def _short(prefix: str, *parts: str) -> str:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=5).hexdigest()
    return f"{prefix}{digest}"  # at most 15 characters: IFNAMSIZ


def bridge_name(network: str) -> str:
    """The bridge of ``network`` in the shared namespace (``sqb`` + 10 hex digits)."""
    return _short("sqb", network)


def veth_name(address: str, network: str, namespace: int) -> str:
    """The shared namespace's end of the veth pair of the container that holds
    ``address`` on ``network`` in the network namespace of inode ``namespace``. Named
    after the lease and the namespace, not the container's name: a renamed container
    keeps its pair, one that takes the old name never takes the pair with it, and a
    container started again never meets the pair of its ended namespace, which the
    kernel deletes in its own time (deleting it here would cost a synchronisation of
    the whole network stack, about 20 ms)."""
    return _short("sqv", address, network, str(namespace))


def mac_of(address: str) -> str:
    """The link-layer address of the interface holding IPv4 ``address``: derived from it
    (locally administered, ``02:42`` and the four bytes, Docker's habit), so a container
    started again keeps it and peers' ARP caches stay right (a new random one would be
    unreachable from them for up to a minute)."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{byte:02x}" for byte in packed)


if TYPE_CHECKING:
    from pyroute2 import IPRoute


def prewarm() -> None:
    """Load pyroute2 now (about 70 ms), so that the children forked later have it."""
    from pyroute2 import IPRoute  # noqa: F401


def open_route() -> IPRoute:
    """A netlink socket in the calling process's network namespace (pyroute2 is loaded
    only by the processes that wire bridges)."""
    from pyroute2 import IPRoute

    ipr: Any = IPRoute()
    return ipr


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_names(ipr: IPRoute) -> set[str]:
    return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}


def ensure_bridge(ipr: IPRoute, name: str, subnet: str) -> None:
    """The bridge ``name`` up, with the subnet's first address (the gateway) on it."""
    net = ipaddress.IPv4Network(subnet)
    gateway = str(next(net.hosts()))
    index = _index(ipr, name)
    if index is None:
        ipr.link("add", ifname=name, kind="bridge", mtu=MTU)
        index = _index(ipr, name)
        assert index is not None
    have = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index)}
    if gateway not in have:
        ipr.addr("add", index=index, address=gateway, prefixlen=net.prefixlen)
    ipr.link("set", index=index, state="up")


def delete_link(ipr: IPRoute, name: str) -> None:
    """Delete link ``name`` (a bridge, or a veth and its peer), if it exists."""
    index = _index(ipr, name)
    if index is not None:
        ipr.link("del", index=index)


def make_veth(ipr: IPRoute, host_end: str, bridge: str, inside: Inside, ns_fd: int) -> None:
    """A veth pair: ``host_end`` joins ``bridge`` here and comes up; its peer is made
    directly in the namespace ``ns_fd`` as ``inside.ifname`` with its link-layer address
    (still down, no IP address). Made there rather than moved there: moving a device
    between namespaces waits for the kernel's network-wide synchronisation (about 20 ms
    here), making it in place does not."""
    master = _index(ipr, bridge)
    if master is None:
        raise OSError(f"no bridge {bridge}")
    peer = {"ifname": inside.ifname, "net_ns_fd": ns_fd, "address": inside.mac, "mtu": MTU}
    ipr.link("add", ifname=host_end, kind="veth", peer=peer, master=master, state="up", mtu=MTU)


@dataclass(frozen=True)
class Inside:
    """The container's end of a veth pair: its name there and link-layer address."""

    ifname: str
    mac: str
