"""A container's side of its bridge networks, set with the classic interface ioctls
(``ifconfig``'s and ``route``'s) on a socket of the container's network namespace:
addresses, links up, the default route; and the namespace's TCP send buffers capped
(:data:`SEND_BUFFER_MAX`). No netlink library is loaded for it, and the caller needs no
process of its own in the namespace: :func:`entered` lends the calling thread to it for
the length of the work and brings it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.sandbox import netif
from runtime.sandbox import syscalls as sc

__all__ = ("SEND_BUFFER_MAX", "Address", "Stranded", "configure", "entered", "names")

_SIOCADDRT = 0x890B
_SIOCDELRT = 0x890C
_SIOCSIFADDR = 0x8916
_SIOCSIFNETMASK = 0x891C
_RTF_UP = 0x1
_RTF_GATEWAY = 0x2
_TCP_WMEM = Path("/proc/sys/net/ipv4/tcp_wmem")
"""The calling thread's namespace's: ``/proc/sys/net`` follows the thread, not the process."""
SEND_BUFFER_MAX = 1 << 20
"""Bytes a TCP socket of a container on a bridge network may queue to send, at most
(``net.ipv4.tcp_wmem``'s last figure, per network namespace; a new namespace copies the
host's, 4 MiB here). Every TCP peer of such a container is on this machine (the port
handler, a container across the bridge, slirp4netns' own stack for the world outside),
a round trip of tens of microseconds, so 1 MiB keeps any of them busy; and a host
forward through the port handler moves a 256 MiB download with about 17 % less CPU, at
0.73 to 0.81 times the loopback's rate against 0.63 to 0.69 with 4 MiB queued inside
(docs/benchmarks.md, "TCP through a host forward")."""


@dataclass(frozen=True)
class Address:
    """One interface inside the container and its IPv4 address."""

    ifname: str
    address: str
    prefixlen: int


class _SockaddrIn(ctypes.Structure):
    _fields_ = (
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_ushort),
        ("addr", ctypes.c_ubyte * 4),
        ("zero", ctypes.c_ubyte * 8),
    )


class _RtEntry(ctypes.Structure):
    """``struct rtentry`` of <net/route.h>, laid out by ctypes for this machine."""

    _fields_ = (
        ("pad1", ctypes.c_ulong),
        ("dst", _SockaddrIn),
        ("gateway", _SockaddrIn),
        ("genmask", _SockaddrIn),
        ("flags", ctypes.c_ushort),
        ("pad2", ctypes.c_short),
        ("pad3", ctypes.c_ulong),
        ("pad4", ctypes.c_void_p),
        ("metric", ctypes.c_short),
        ("dev", ctypes.c_char_p),
        ("mtu", ctypes.c_ulong),
        ("window", ctypes.c_ulong),
        ("irtt", ctypes.c_ushort),
    )


def _sockaddr(address: str) -> _SockaddrIn:
    packed = ipaddress.IPv4Address(address).packed
    return _SockaddrIn(socket.AF_INET, 0, (ctypes.c_ubyte * 4)(*packed))


def _set_address(sock: socket.socket, link: Address) -> None:
    network = ipaddress.IPv4Network(f"0.0.0.0/{link.prefixlen}")
    fcntl.ioctl(sock, _SIOCSIFADDR, netif.ifreq(link.ifname, bytes(_sockaddr(link.address))))
    mask = bytes(_sockaddr(str(network.netmask)))
    fcntl.ioctl(sock, _SIOCSIFNETMASK, netif.ifreq(link.ifname, mask))


def _default_routes() -> list[str]:
    """Gateways of the default routes in the calling thread's namespace."""
    found = []
    for line in Path("/proc/thread-self/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            found.append(str(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1])))
    return found


def _route(sock: socket.socket, request: int, gateway: str) -> None:
    entry = _RtEntry(dst=_sockaddr("0.0.0.0"), genmask=_sockaddr("0.0.0.0"))
    entry.gateway = _sockaddr(gateway)
    entry.flags = _RTF_UP | _RTF_GATEWAY
    fcntl.ioctl(sock, request, bytes(entry))


def _default_route(sock: socket.socket, gateway: str | None) -> None:
    """Exactly one default route, through ``gateway`` (none when None)."""
    have = _default_routes()
    if have == ([gateway] if gateway else []):
        return
    for old in have:
        with contextlib.suppress(OSError):
            _route(sock, _SIOCDELRT, old)
    if gateway is not None:
        try:
            _route(sock, _SIOCADDRT, gateway)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise


class Stranded(Exception):
    """The thread could not go back to its own namespace: its caller must not go on."""


@contextlib.contextmanager
def entered(ns_fd: int) -> Iterator[None]:
    """The calling thread in network namespace ``ns_fd`` until the block ends, then back
    in its own (which must be one this process may enter: its user namespace's);
    :class:`Stranded` when it cannot go back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(ns_fd, sc.CLONE_NEWNET)
        try:
            yield
        finally:
            try:
                sc.setns(own, sc.CLONE_NEWNET)
            except OSError as exc:
                raise Stranded(f"cannot go back to its own network namespace: {exc}") from exc
    finally:
        os.close(own)


def names() -> set[str]:
    """The interface names of the calling thread's namespace."""
    return {name for _, name in socket.if_nameindex()}


def _cap_send_buffers(path: Path) -> None:
    """``net.ipv4.tcp_wmem`` at ``path`` with its most at :data:`SEND_BUFFER_MAX` (kept
    when already lower), its first no higher, its least as it was. A speed-up only: a
    namespace whose setting cannot be read or written (a /proc/sys mounted read-only, a
    kernel without it) is left as it is, its container joined all the same."""
    try:
        least, first, most = (int(figure) for figure in path.read_text().split())
        if most > SEND_BUFFER_MAX:
            path.write_text(f"{least} {min(first, SEND_BUFFER_MAX)} {SEND_BUFFER_MAX}\n")
    except (OSError, ValueError):
        pass


def configure(links: list[Address], gateway: str | None) -> None:
    """In the calling thread's namespace: each of ``links`` given its address and up,
    then the default route through ``gateway`` (none when None), and its TCP send
    buffers capped at :data:`SEND_BUFFER_MAX`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        for link in links:
            _set_address(sock, link)
            netif.up(sock, link.ifname)
        _default_route(sock, gateway)
    _cap_send_buffers(_TCP_WMEM)
