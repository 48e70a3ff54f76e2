"""Folder events from inotify, read by the event loop and batched by a quiet time.

The watch costs nothing while nothing happens: the inotify descriptor is waited on by
the event loop (no thread, no polling step). A batch ends once no event that counts came
for ``quiet`` seconds, or for :data:`CLOSED_QUIET` when every file the batch saw created
or modified has been closed since (or renamed away, or deleted): a rename into place or
a closed write is told within a few milliseconds, a file still being written holds the
batch for the whole quiet time, and a burst (a git checkout, a copied folder) whose
writes follow each other closer than that is one batch. No batch lasts longer than
``longest``.

The binding is ``inotify_simple``; what this module adds is the batching above it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import anyio
from inotify_simple import INotify, flags

__all__ = ("CLOSED_QUIET", "Event", "Inotify", "batches")

FOLDER_EVENTS: int = (
    flags.MODIFY
    | flags.ATTRIB
    | flags.CLOSE_WRITE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.CREATE
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
)
"""What may change a file of a folder, or the folder itself."""

CLOSED_QUIET = 0.001
"""Seconds of quiet that end a batch whose files were all closed, renamed or deleted:
what comes closer than that after a write (the next file of a checkout) joins it."""

Event = tuple[Path, int]
"""The path an event is on (an entry of a watched folder, or the folder), and its mask."""


class Inotify:
    """One inotify descriptor watching folders (not recursively)."""

    def __init__(self) -> None:
        # Non-blocking, so that a read never holds the event loop (it reads only what
        # is waiting anyway); not inherited by the processes the loop starts.
        self._notify = INotify(nonblocking=True)
        self.fd: int = self._notify.fd
        self._folders: dict[int, Path] = {}

    def add(self, folder: Path) -> None:
        """Watch the entries of ``folder`` and the folder itself (OSError when it is no
        folder, or is gone)."""
        try:
            wd: int = self._notify.add_watch(folder, FOLDER_EVENTS | flags.ONLYDIR)
        except OSError as error:  # the binding's error names no path: say which
            what = f"inotify_add_watch: {error.strerror}"
            raise OSError(error.errno, what, str(folder)) from None
        self._folders[wd] = folder

    def read(self) -> list[Event]:
        """The events waiting, in order (a folder's own path for events on the folder,
        and for a lost queue on every folder); empty when none waits."""
        events: list[Event] = []
        for wd, mask, _, name in self._notify.read(timeout=0):
            if mask & flags.Q_OVERFLOW:  # events were lost: anything may have changed
                events += [(folder, mask) for folder in self._folders.values()]
            elif wd in self._folders:
                folder = self._folders[wd]
                events.append((folder / name if name else folder, mask))
        return events

    def close(self) -> None:
        self._notify.close()

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
        if mask & (flags.CREATE | flags.MODIFY) and not mask & flags.ISDIR:
            writing.add(path)
        if mask & (flags.CLOSE_WRITE | flags.MOVED_FROM | flags.DELETE):
            writing.discard(path)
    return writing


def _nothing() -> None:
    pass


async def batches(
    notify: Inotify,
    counts: Callable[[Path], bool],
    *,
    quiet: float,
    longest: float,
    tick: float,
    noticed: Callable[[], None] = _nothing,
) -> AsyncGenerator[bool, None]:
    """True after each batch of events that count (on paths for which ``counts`` holds),
    ended as the module says; False when ``tick`` seconds passed without any (so the
    caller can look around). ``noticed()`` is called as soon as events that count are
    read, before the batch they begin or join ends (a caller may start reading the
    folder meanwhile, and knows its read is stale if it is called again)."""
    while True:
        events = await _counted(notify, counts, tick)
        if not events:
            yield False
            continue
        noticed()
        ends = time.monotonic() + longest
        writing = _written(set(), events)
        while events:
            wait = quiet if writing else min(quiet, CLOSED_QUIET)
            events = await _counted(notify, counts, min(wait, max(ends - time.monotonic(), 0)))
            if events:
                noticed()
            writing = _written(writing, events)
        yield True
