"""Reading a container's log in chunks: all of it, or following it across rotations.

The log pump (``runtime.holder.logpump``) writes ``output.log`` and rotates it to
``output.log.1``, ``.2``... Reading never holds more than one chunk: a reader gets the
rotated files oldest first, then the current one. Following is ``tail -F``: read to the
end, wait, read what was added; when the path names another file (rotated), finish the
old one (it is complete once renamed) and go on from the start of the new one.

The log folders of every state folder share one place on disk, while a state folder is
usually in memory: a reboot empties it and leaves its logs. So each log folder names
the state folder whose container writes it (``OWNER_FILE``, written at each start), and
a sweep of that state folder removes the log folders it owns that no record there
names any more (:func:`orphans`). A folder without the file (made by an older squish)
is never taken.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from runtime.util.files import write_atomic

__all__ = (
    "CHUNK",
    "OWNER_FILE",
    "Owners",
    "claim",
    "discard",
    "follow",
    "orphans",
    "read_all",
    "rotated",
)

CHUNK = 64 * 1024
"""The most a reader holds at once."""
POLL_INTERVAL = 0.2
"""How often a follower looks for more output."""
OWNER_FILE = "state"
"""In a log folder: the path of the state folder whose container writes it."""


def rotated(path: Path) -> list[Path]:
    """The rotated copies of ``path`` that exist, oldest first."""
    found: list[tuple[int, Path]] = []
    for sibling in path.parent.glob(f"{path.name}.*"):
        suffix = sibling.name[len(path.name) + 1 :]
        if suffix.isdigit():
            found.append((int(suffix), sibling))
    return [p for _, p in sorted(found, reverse=True)]


def _open(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb", buffering=0)
    except FileNotFoundError:
        return None


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    """What is left in ``file``, a chunk at a time."""
    while chunk := file.read(CHUNK):
        yield chunk


def read_all(path: Path) -> Iterator[bytes]:
    """The whole log (rotated copies first), a chunk at a time. Every file is opened
    before the first is read, so a rotation meanwhile neither hides nor repeats one."""
    files = [f for f in map(_open, [*rotated(path), path]) if f is not None]
    try:
        for file in files:
            yield from _chunks(file)
    finally:
        for file in files:
            file.close()


def _replaced(file: BinaryIO, path: Path) -> bool:
    """Whether ``path`` now names a file other than ``file`` (or nothing)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    mine = os.fstat(file.fileno())
    return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)


def follow(
    path: Path,
    writing: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """The whole log, then what is added to it, for as long as ``writing()`` says a
    writer is there (checked only when everything written so far was read)."""
    files = [f for f in map(_open, rotated(path)) if f is not None]
    for file in files:
        with file:
            yield from _chunks(file)
    current = _open(path)
    try:
        while True:
            if current is not None:
                yield from _chunks(current)
            if current is None or _replaced(current, path):
                following = _open(path)
                if following is not None:
                    if current is not None:  # renamed: complete; what came last is read
                        yield from _chunks(current)
                        current.close()
                    current = following
                    continue
            if not writing():
                if current is not None:
                    yield from _chunks(current)
                return
            sleep(POLL_INTERVAL)
    finally:
        if current is not None:
            current.close()


def claim(folder: Path, state: Path) -> None:
    """Make the log folder ``folder`` if missing, owned by the state folder ``state``."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (folder / OWNER_FILE).is_file():
        write_atomic(folder / OWNER_FILE, str(state).encode(), sync=False)


def orphans(owned: Iterable[Path], named: Callable[[], set[Path]]) -> list[Path]:
    """The log folders of ``owned`` (those a state folder owns: :meth:`Owners.owned`)
    that no record names.

    ``named()`` gives the log folders the records of that state folder name; it is asked
    after the folders were listed (a folder made later is named already: a record names
    its log before any start makes it), and once more for the folders it did not name (a
    record renamed meanwhile may be missed by one listing)."""
    first = named()  # once per listing: it reads every record
    unnamed = [f for f in owned if f not in first]
    if not unnamed:
        return []
    again = named()
    return [f for f in unnamed if f not in again]


class Owners:
    """The state folder that owns each log folder, each read once: a log folder's owner
    is written when it is made and never changes (its name is random)."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def owned(self, logs: Path, state: Path) -> frozenset[str]:
        """The names of the log folders in ``logs`` that ``state`` owns."""
        try:
            names = set(os.listdir(logs))
        except FileNotFoundError:
            return frozenset()
        self._known = {name: owner for name, owner in self._known.items() if name in names}
        for name in names - set(self._known):
            owner = _owner(logs / name)
            if owner is not None:  # not written yet: read again next time
                self._known[name] = owner
        return frozenset(name for name, owner in self._known.items() if owner == str(state))


def _owner(folder: Path) -> str | None:
    try:
        return (folder / OWNER_FILE).read_text()
    except OSError:  # not a folder, no owner recorded, unreadable
        return None


def discard(path: Path) -> None:
    """Delete the log and its rotated copies, then its folder if that is left empty."""
    for file in (*rotated(path), path, path.parent / OWNER_FILE):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()
