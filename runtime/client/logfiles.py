"""Reading a container's log in chunks: all of it, or following it across rotations.

The log pump (``runtime.holder.logpump``) writes ``output.log`` and rotates it to
``output.log.1``, ``.2``... Reading never holds more than one chunk: a reader gets the
rotated files oldest first, then the current one. Following is ``tail -F``: read to the
end, wait, read what was added; when the path names another file (rotated), finish the
old one (it is complete once renamed) and go on from the start of the new one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ("CHUNK", "discard", "follow", "read_all", "rotated")

CHUNK = 64 * 1024
"""The most a reader holds at once."""
POLL_INTERVAL = 0.2
"""How often a follower looks for more output."""


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


def discard(path: Path) -> None:
    """Delete the log and its rotated copies, then its folder if that is left empty."""
    for file in (*rotated(path), path):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()
