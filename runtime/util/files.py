"""JSON files written atomically (write a temporary file, fsync, rename into place), and read
back tolerating a file that is missing or was never completed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ("parse_json", "read_json", "write_json_atomic")


def write_json_atomic(path: Path, data: Any, *, dir_fd: int | None = None) -> None:
    """Write JSON to ``path`` with write, fsync, rename: readers see old or new, never half."""
    name = path.name if dir_fd is not None else str(path)
    tmp = f"{name}.tmp.{os.getpid()}"
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable as JSON."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    return parse_json(raw)


def parse_json(raw: bytes) -> Any | None:
    """The JSON in ``raw``, or None if it is not JSON (an incomplete write, say)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None
