"""Netlink steps for bridge networks, on a netlink socket of the shared namespace
(:func:`open_route`, in the process that lives there): a bridge with its gateway address
(through pyroute2), and a veth pair whose one end joins the bridge and whose other end is
made in a container's namespace as ``ethN`` (the two requests a start waits for, encoded
here: :func:`veth_message`, :func:`fdb_message`)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

__all__ = (
    "MTU",
    "Inside",
    "Requests",
    "bridge_index",
    "bridge_name",
    "claim_address",
    "delete_link",
    "ensure_bridge",
    "fdb_message",
    "link_names",
    "mac_of",
    "make_veth",
    "open_route",
    "prewarm",
    "veth_message",
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
    the whole network stack, about 20 ms; :func:`claim_address` has the bridge send to
    the new pair meanwhile)."""
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


def ensure_bridge(ipr: IPRoute, name: str, subnet: str) -> int:
    """The bridge ``name`` up, with the subnet's first address (the gateway) on it;
    return its interface index."""
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
    return index


def delete_link(ipr: IPRoute, name: str) -> None:
    """Delete link ``name`` (a bridge, or a veth and its peer), if it exists."""
    index = _index(ipr, name)
    if index is not None:
        ipr.link("del", index=index)


def bridge_index(ipr: IPRoute, name: str) -> int:
    """The interface index of bridge ``name``; OSError when there is none."""
    index = _index(ipr, name)
    if index is None:
        raise OSError(f"no bridge {name}")
    return index


class Requests:
    """A bare netlink socket of the calling process's network namespace, for the requests
    a container's start waits for: the message is sent and its acknowledgement read
    here. ``IPRoute`` runs an event loop for each call and decodes each answer whole:
    about 0.9 ms of Python per veth pair on this machine, more than the kernel's own
    work; and pyroute2's message classes alone took 0.26-0.3 ms to encode one."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        self.sock.bind((0, 0))
        self.sequence = 0

    def send(self, kind: int, flags: int, body: bytes) -> None:
        """Send a message of type ``kind`` (its ``body`` after the netlink header, see
        :func:`veth_message`) and wait for its acknowledgement; OSError with the
        kernel's errno when it refused."""
        self.sequence += 1
        flags |= _NLM_F_REQUEST | _NLM_F_ACK
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, self.sequence, 0)
        self.sock.send(header + body)
        while True:
            answer = self.sock.recv(65536)
            _, kind, _, sequence, _ = _NLMSGHDR.unpack_from(answer)
            if kind == _NLMSG_ERROR and sequence == self.sequence:
                (error,) = struct.unpack_from("=i", answer, _NLMSGHDR.size)
                if error:
                    raise OSError(-error, os.strerror(-error))
                return


_NLMSGHDR = struct.Struct("=IHHII")
_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_RTM_NEWNEIGH = 28
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_REPLACE = 0x100
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_IFF_UP = 0x1
_NTF_MASTER = 0x04
_NTF_STICKY = 0x40
_NUD_NOARP = 0x40
_IFINFOMSG = struct.Struct("=BxHiII")
"""family, type, index, flags, change"""
_NDMSG = struct.Struct("=BxxxiHBB")
"""family, index, state, flags, type"""
_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_MASTER = 10
_IFLA_LINKINFO = 18
_IFLA_NET_NS_FD = 28
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_VETH_INFO_PEER = 1
_NDA_LLADDR = 2


def make_veth(requests: Requests, host_end: str, master: int, inside: Inside, ns_fd: int) -> None:
    """A veth pair: ``host_end`` joins the bridge of index ``master`` here and comes up;
    its peer is made directly in the namespace ``ns_fd`` as ``inside.ifname`` with its
    link-layer address (still down, no IP address). Made there rather than moved there:
    moving a device between namespaces waits for the kernel's network-wide
    synchronisation (about 20 ms here), making it in place does not. OSError (EEXIST
    when ``host_end`` exists) when the kernel refuses."""
    body = veth_message(host_end, master, inside, ns_fd)
    requests.send(_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body)


def _attr(kind: int, payload: bytes) -> bytes:
    """A netlink attribute: its length and type, ``payload``, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def _text(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def veth_message(host_end: str, master: int, inside: Inside, ns_fd: int) -> bytes:
    """The body of :func:`make_veth`'s ``RTM_NEWLINK``, encoded here (the bytes
    pyroute2's ``ifinfmsg`` makes, which took it 0.26-0.3 ms of Python on the way to a
    container's start): an ``ifinfomsg`` (up), the host end's name, bridge and MTU,
    and the link info: kind ``veth``, its peer's ``ifinfomsg`` with its name, namespace,
    address and MTU."""
    peer = _IFINFOMSG.pack(0, 0, 0, 0, 0) + b"".join(
        (
            _text(_IFLA_IFNAME, inside.ifname),
            _u32(_IFLA_NET_NS_FD, ns_fd),
            _attr(_IFLA_ADDRESS, _mac(inside.mac)),
            _u32(_IFLA_MTU, MTU),
        )
    )
    info = _text(_IFLA_INFO_KIND, "veth") + _attr(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer))
    return _IFINFOMSG.pack(0, 0, 0, _IFF_UP, _IFF_UP) + b"".join(
        (
            _text(_IFLA_IFNAME, host_end),
            _u32(_IFLA_MASTER, master),
            _u32(_IFLA_MTU, MTU),
            _attr(_IFLA_LINKINFO, info),
        )
    )


def claim_address(requests: Requests, port: str, mac: str) -> None:
    """Frames for link-layer address ``mac`` go to bridge port ``port`` from now on: an
    entry of the bridge's forwarding database, replacing any, static (it never ages) and
    sticky (frames from ``mac`` on another port never move it). The pair of a container's
    ended namespace, which the kernel deletes in its own time (seconds on a busy
    machine), has the same address: without this the bridge keeps sending to that dead
    port what it learned to, and the dying namespace refuses it, until a frame from the
    new pair teaches it otherwise (an idle server sends none; the old namespace's
    answers to broadcasts teach it back). The entry goes with the port. OSError when
    the kernel refuses."""
    body = fdb_message(socket.if_nametoindex(port), mac)
    requests.send(_RTM_NEWNEIGH, _NLM_F_CREATE | _NLM_F_REPLACE, body)


def fdb_message(index: int, mac: str) -> bytes:
    """The body of :func:`claim_address`'s ``RTM_NEWNEIGH`` (what pyroute2's ``ndmsg``
    makes): an ``ndmsg`` for the bridge port of interface ``index``, static and sticky,
    and the link-layer address."""
    head = _NDMSG.pack(socket.AF_BRIDGE, index, _NUD_NOARP, _NTF_MASTER | _NTF_STICKY, 0)
    return head + _attr(_NDA_LLADDR, _mac(mac))


@dataclass(frozen=True)
class Inside:
    """The container's end of a veth pair: its name there and link-layer address."""

    ifname: str
    mac: str
