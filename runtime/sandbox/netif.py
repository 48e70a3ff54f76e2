"""Network interfaces set with the classic ioctls on an ``AF_INET`` socket: standard
library only, so the container's init (after pivot_root) and the network agent share it."""

from __future__ import annotations

import fcntl
import socket
import struct

__all__ = ("bring_up", "ifreq", "up")

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def ifreq(ifname: str, payload: bytes) -> bytes:
    """A ``struct ifreq``: the name, then its 24-byte union."""
    return struct.pack("16s24s", ifname.encode(), payload)


def up(sock: socket.socket, ifname: str) -> None:
    """Interface ``ifname`` of ``sock``'s namespace up (its other flags kept)."""
    current = fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq(ifname, b""))
    (flags,) = struct.unpack_from("H", current, 16)
    fcntl.ioctl(sock, _SIOCSIFFLAGS, ifreq(ifname, struct.pack("H", flags | _IFF_UP)))


def bring_up(ifname: str) -> None:
    """Interface ``ifname`` of the calling thread's namespace up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        up(sock, ifname)
