"""JSON files written atomically (write a temporary file, fsync, rename into place), and read
back tolerating a file that is missing or was never completed.

A write that fails (a full disk, say) raises and leaves neither a partial file nor its
temporary file behind: the old file, if any, stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ("parse_json", "read_json", "read_small", "write_atomic", "write_json_atomic")


def _write_all(fd: int, payload: bytes) -> None:
    """Write all of ``payload``: a write that runs out of space may write part of it and
    return the count (the next one raises the error)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(
    path: Path, payload: bytes, *, mode: int = 0o600, dir_fd: int | None = None, sync: bool = True
) -> None:
    """Write ``payload`` to ``path`` with write, fsync (unless not ``sync``: a file made
    again whenever it is needed), rename: readers see old or new, never half. On failure
    the temporary file is removed and the error raised."""
    name = path.name if dir_fd is not None else str(path)
    tmp = f"{name}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            _write_all(fd, payload)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def write_json_atomic(path: Path, data: Any, *, dir_fd: int | None = None) -> None:
    """Write JSON to ``path`` atomically (:func:`write_atomic`), readable by its owner only.
    Compact: ``json`` encodes an indented dump in Python, 3-4 times the time of its C
    encoder (a start writes eight records on its way: 19 µs against 5 for a spec)."""
    write_atomic(path, json.dumps(data, sort_keys=True).encode(), dir_fd=dir_fd)


def read_json(path: Path | str) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable as JSON."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return parse_json(raw)


def read_small(path: Path | str, limit: int = 4096) -> bytes:
    """The first ``limit`` bytes of ``path`` in one read: a kernel file of a few lines
    (``/proc/PID/stat``, a cgroup's events). Observing a container reads several each
    pass; ``Path.read_bytes`` costs several times as much for so little.

    OSError when it cannot be opened or read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def parse_json(raw: bytes) -> Any | None:
    """The JSON in ``raw``, or None if it is not JSON (an incomplete write, say)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


class Landmark:
    """A file whose disappearance (or replacement) means its owner's state folder is
    gone: a long-lived process checks it now and then and ends when it does."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.inode = os.stat(self.path).st_ino

    def gone(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self.inode
        except FileNotFoundError:
            return True
