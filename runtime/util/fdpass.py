"""Descriptors passed over unix sockets (SCM_RIGHTS): one way to send and to receive them,
for the holder and its spares, the network keeper and its agent."""

from __future__ import annotations

import array
import socket
from collections.abc import Sequence

__all__ = ("receive_with_fds", "send_with_fds")


def send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> int:
    """Send ``data`` with ``fds`` attached (none: a plain send); the bytes sent."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([data], rights)


def receive_with_fds(
    sock: socket.socket, size: int, most: int, flags: int = 0
) -> tuple[bytes, list[int]]:
    """Up to ``size`` bytes and up to ``most`` descriptors that came with them."""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(most * fds.itemsize), flags)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)
