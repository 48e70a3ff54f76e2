"""Netlink steps for bridge networks, through pyroute2, in the calling process's network
namespace: a bridge with its gateway address, and a veth pair whose one end joins the
bridge and whose other end goes into a container's namespace as ``ethN``.

Each function works in the namespace the process is in now; a caller that must stay in
its own forks a child, enters the namespace (:func:`in_namespace`) and calls these.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.sandbox import syscalls as sc

__all__ = (
    "Link",
    "bridge_name",
    "configure_inside",
    "delete_link",
    "ensure_bridge",
    "in_namespace",
    "link_names",
    "mac_of",
    "make_veth",
    "prewarm",
    "veth_name",
)


def _short(prefix: str, *parts: str) -> str:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=5).hexdigest()
    return f"{prefix}{digest}"  # at most 15 characters: IFNAMSIZ


def bridge_name(network: str) -> str:
    """The bridge of ``network`` in the shared namespace (``sqb`` + 10 hex digits)."""
    return _short("sqb", network)


def veth_name(address: str, network: str, side: str = "v") -> str:
    """The shared namespace's end (``side`` "v") of the veth pair of the container that
    holds ``address`` on ``network``, or its peer's name while it moves there (``side``
    "p"). Named after the lease, not the container's name: a renamed container keeps its
    pair, and one that takes the old name never takes the pair with it."""
    return _short(f"sq{side}", address, network)


@dataclass(frozen=True)
class Link:
    """One network of a container, as its end of the veth pair needs it inside."""

    moved_as: str
    """The peer's name while it moves in (unique in the shared namespace); it is given
    the first free ``ethN`` inside."""
    address: str
    prefixlen: int
    gateway: str


def mac_of(address: str) -> str:
    """The link-layer address of the interface holding IPv4 ``address``: derived from it
    (locally administered, ``02:42`` and the four bytes, Docker's habit), so a container
    started again keeps it and peers' ARP caches stay right (a new random one would be
    unreachable from them for up to a minute)."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{byte:02x}" for byte in packed)


def in_namespace(ns_fd: int, work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child that entered network namespace ``ns_fd``; raise
    OSError with the child's message when it fails."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.close(read_end)
            sc.setns(ns_fd, sc.CLONE_NEWNET)
            work()
        except BaseException as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode()[:4000])
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise OSError(message or f"network namespace step failed (status {status})")


if TYPE_CHECKING:
    from pyroute2 import IPRoute


def prewarm() -> None:
    """Load pyroute2 now (about 70 ms), so that the children forked later have it."""
    from pyroute2 import IPRoute  # noqa: F401


def _ipr() -> IPRoute:
    """A netlink socket in this process's network namespace (pyroute2 is loaded only by
    the processes that wire bridges)."""
    from pyroute2 import IPRoute

    ipr: Any = IPRoute()
    return ipr


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_names() -> set[str]:
    with _ipr() as ipr:
        return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}


def ensure_bridge(name: str, subnet: str) -> None:
    """The bridge ``name`` up, with the subnet's first address (the gateway) on it."""
    net = ipaddress.IPv4Network(subnet)
    gateway = str(next(net.hosts()))
    with _ipr() as ipr:
        index = _index(ipr, name)
        if index is None:
            ipr.link("add", ifname=name, kind="bridge")
            index = _index(ipr, name)
            assert index is not None
        have = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index)}
        if gateway not in have:
            ipr.addr("add", index=index, address=gateway, prefixlen=net.prefixlen)
        ipr.link("set", index=index, state="up")


def delete_link(name: str) -> None:
    """Delete link ``name`` (a bridge, or a veth and its peer), if it exists."""
    with _ipr() as ipr:
        index = _index(ipr, name)
        if index is not None:
            ipr.link("del", index=index)


def make_veth(host_end: str, bridge: str, container_ns_fd: int, inside_name: str) -> None:
    """A veth pair: ``host_end`` joins ``bridge`` here; its peer, ``inside_name``, moves
    into the namespace ``container_ns_fd`` (still down, no address)."""
    delete_link(host_end)  # left by a container whose namespace outlived its record
    with _ipr() as ipr:
        ipr.link("add", ifname=host_end, kind="veth", peer=inside_name)
        peer = _index(ipr, inside_name)
        master = _index(ipr, bridge)
        host = _index(ipr, host_end)
        assert peer is not None and master is not None and host is not None
        ipr.link("set", index=peer, net_ns_fd=container_ns_fd)
        ipr.link("set", index=host, master=master, state="up")


def configure_inside(links: list[Link], default_gateway: str | None) -> None:
    """Inside the container's namespace: loopback up; each link that just moved in
    renamed to the first free ``ethN``, given its address and up; the default route
    through ``default_gateway`` (none when None)."""
    with _ipr() as ipr:
        lo = _index(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")
        names = {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for link in links:
            index = _index(ipr, link.moved_as)
            if index is None:
                continue  # in place since an earlier wiring
            ifname = next(f"eth{n}" for n in range(len(names) + 1) if f"eth{n}" not in names)
            names.add(ifname)
            ipr.link("set", index=index, ifname=ifname, address=mac_of(link.address))
            ipr.addr("add", index=index, address=link.address, prefixlen=link.prefixlen)
            ipr.link("set", index=index, state="up")
        _default_route(ipr, default_gateway)


def _default_route(ipr: IPRoute, gateway: str | None) -> None:
    for route in ipr.get_routes(family=2):
        if route["dst_len"] == 0:
            if gateway is not None and route.get_attr("RTA_GATEWAY") == gateway:
                return
            ipr.route("del", dst="0.0.0.0/0")
    if gateway is not None:
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
