"""One JSON object per unix-socket connection: the framing slirp4netns' API and the
namespace holder share.

The asking side connects, sends one JSON object, shuts down its write side and reads the
answer to end of file; the answering side reads the request to end of file and writes
one JSON object. Reads are bounded in size; every failure is a built-in exception
(``OSError`` for the socket, ``TimeoutError`` when the peer is silent, ``ValueError``
for an answer that is too large or not a JSON object) for the caller to name.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

__all__ = ("EmptyMessage", "connect", "decode_object", "exchange", "peer_of", "read_to_eof")


class EmptyMessage(ValueError):
    """The peer closed the connection without sending anything."""


def read_to_eof(sock: socket.socket, limit: int, within: float | None = None) -> bytes:
    """Everything the peer sends until it shuts down its side; ValueError past ``limit``.
    With ``within``: TimeoutError unless all of it came within that many seconds (a
    socket's own timeout bounds each read only: a byte at a time would never end); the
    socket's timeout is as it was afterwards."""
    chunks: list[bytes] = []
    size = 0
    ends = None if within is None else time.monotonic() + within
    timeout = sock.gettimeout()
    try:
        while chunk := _next(sock, ends, within):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"message larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        sock.settimeout(timeout)


def _next(sock: socket.socket, ends: float | None, within: float | None) -> bytes:
    """The next bytes of a message whose whole must come by ``ends`` (None: no bound)."""
    if ends is not None:
        left = ends - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the message did not end within {within:g} s")
        sock.settimeout(left)
    return sock.recv(65536)


def peer_of(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a connected unix socket, as
    the kernel saw them when the connection was made (SO_PEERCRED)."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


def decode_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; ValueError when it is empty, not JSON or not an object."""
    if not raw:
        raise EmptyMessage("empty message")
    try:
        data = json.loads(raw)  # json.JSONDecodeError is a ValueError
    except RecursionError:  # nested deeper than the parser goes: refused, like bad JSON
        raise ValueError("message is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"message is not a JSON object: {data!r:.200}")
    return data


def connect(sock: socket.socket, path: str | Path, timeout: float) -> None:
    """Connect ``sock`` (a unix stream socket with a timeout) to ``path``, waiting up to
    ``timeout`` seconds while the listener's backlog is full. A unix socket with a
    timeout is non-blocking underneath, and its ``connect`` fails at once with EAGAIN
    then, where a blocking one would wait its turn (slirp4netns' API socket has a short
    backlog: twenty containers starting at once overflowed it)."""
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() + pause > deadline:
                raise TimeoutError(f"{path}: its listener's backlog stayed full") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.02)


def exchange(path: Path, request: dict[str, Any], *, timeout: float, limit: int) -> dict[str, Any]:
    """Send ``request`` to the socket at ``path`` and return the answer (see the module)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        connect(sock, path, timeout)
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        raw = read_to_eof(sock, limit)
    return decode_object(raw)
