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
from pathlib import Path
from typing import Any

__all__ = ("EmptyMessage", "decode_object", "exchange", "read_to_eof")


class EmptyMessage(ValueError):
    """The peer closed the connection without sending anything."""


def read_to_eof(sock: socket.socket, limit: int) -> bytes:
    """Everything the peer sends until it shuts down its side; ValueError past ``limit``."""
    chunks, size = [], 0
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"message larger than {limit} bytes")
    return b"".join(chunks)


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


def exchange(path: Path, request: dict[str, Any], *, timeout: float, limit: int) -> dict[str, Any]:
    """Send ``request`` to the socket at ``path`` and return the answer (see the module)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        raw = read_to_eof(sock, limit)
    return decode_object(raw)
