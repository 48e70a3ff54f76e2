"""Folder events from inotify, read by the event loop and batched by a quiet time.

The watch costs nothing while nothing happens: the inotify descriptor is waited on by
the event loop (no thread, no polling step). A batch ends once no event that counts came
for ``quiet`` seconds, or for :data:`CLOSED_QUIET` when every file the batch saw created
or modified has been closed since (or renamed away, or deleted): a rename into place or
a closed write is told within a few milliseconds, a file still being written holds the
batch for the whole quiet time, and a burst (a git checkout, a copied folder) whose
writes follow each other closer than that is one batch. No batch lasts longer than
``longest``.

Python 3.11 has no inotify binding: the three calls go through libc (errno checked).
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import anyio

__all__ = ("CLOSED_QUIET", "Event", "Inotify", "batches")

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

FOLDER_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
"""What may change a file of a folder, or the folder itself."""

CLOSED_QUIET = 0.001
"""Seconds of quiet that end a batch whose files were all closed, renamed or deleted:
what comes closer than that after a write (the next file of a checkout) joins it."""

Event = tuple[Path, int]
"""The path an event is on (an entry of a watched folder, or the folder), and its mask."""

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

# The C library this interpreter runs on; not ``find_library``, which runs ``ldconfig``
# when the module is imported (and every command imports it).
_libc = ctypes.CDLL(None, use_errno=True)


def _checked(result: int, what: str, path: Path | None = None) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", None if path is None else str(path))
    return result


class Inotify:
    """One inotify descriptor watching folders (not recursively)."""

    def __init__(self) -> None:
        self.fd = _checked(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._folders: dict[int, Path] = {}

    def add(self, folder: Path) -> None:
        """Watch the entries of ``folder`` and the folder itself (OSError when it is no
        folder, or is gone)."""
        mask = FOLDER_EVENTS | IN_ONLYDIR
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(folder), ctypes.c_uint32(mask))
        self._folders[_checked(wd, "inotify_add_watch", folder)] = folder

    def read(self) -> list[Event]:
        """The events waiting, in order (a folder's own path for events on the folder,
        and for a lost queue on every folder); empty when none waits."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            events += self._parse(data)

    def _parse(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        offset = 0
        while offset < len(data):
            wd, mask, _, size = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size : offset + _HEADER.size + size].rstrip(b"\0")
            offset += _HEADER.size + size
            if mask & IN_Q_OVERFLOW:  # events were lost: anything may have changed
                events += [(folder, mask) for folder in self._folders.values()]
            elif wd in self._folders:
                folder = self._folders[wd]
                events.append((folder / os.fsdecode(name) if name else folder, mask))
        return events

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


async def _counted(notify: Inotify, counts: Callable[[Path], bool], wait: float) -> list[Event]:
    """The events that count, once one comes within ``wait`` seconds (else none)."""
    with anyio.move_on_after(wait):
        while True:
            await anyio.wait_readable(notify.fd)
            events = [(path, mask) for path, mask in notify.read() if counts(path)]
            if events:
                return events
    return []


def _written(writing: set[Path], events: list[Event]) -> set[Path]:
    """The files that may still be being written after ``events`` (created or modified,
    not closed since; a folder or a link made is never closed: it waits the quiet)."""
    for path, mask in events:
        if mask & (IN_CREATE | IN_MODIFY) and not mask & IN_ISDIR:
            writing.add(path)
        if mask & (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_DELETE):
            writing.discard(path)
    return writing


async def batches(
    notify: Inotify, counts: Callable[[Path], bool], *, quiet: float, longest: float, tick: float
) -> AsyncGenerator[bool, None]:
    """True after each batch of events that count (on paths for which ``counts`` holds),
    ended as the module says; False when ``tick`` seconds passed without any (so the
    caller can look around)."""
    while True:
        events = await _counted(notify, counts, tick)
        if not events:
            yield False
            continue
        ends = time.monotonic() + longest
        writing = _written(set(), events)
        while events:
            wait = quiet if writing else min(quiet, CLOSED_QUIET)
            events = await _counted(notify, counts, min(wait, max(ends - time.monotonic(), 0)))
            writing = _written(writing, events)
        yield True
