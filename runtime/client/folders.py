"""Container folders: claimed whole, dropped whole, and swept when a client died halfway.

A container's folder is made under a hidden name with its lock already held, then renamed
into place, so a folder under a container's name is never seen unlocked before its record
is complete. A removal renames the folder to a hidden name before deleting it. A client
killed in the middle of either leaves a hidden folder (or, from a killed writer of the
record, a folder whose record is incomplete) whose lock nobody holds: :func:`sweep`
deletes those, after ``stop_leftover`` has killed whatever they still name.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import ContainerExists, ContainerNotFound

__all__ = ("HIDDEN", "claim", "discard", "locked", "sweep")

HIDDEN = "."
"""Folders whose name starts with this are being made or removed, never containers."""

_LOCK = "lock"
log = logging.getLogger(__name__)

Check = Callable[[Path], bool]
Stop = Callable[[Path], None]


def _try_lock(folder: Path) -> int | None:
    """The fd of ``folder``'s lock, taken without waiting; ``None`` if it is held or the
    folder is gone."""
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def locked(folder: Path, name: str) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; :class:`ContainerNotFound` if the folder was
    removed or renamed while this waited for it."""
    lock = folder / _LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContainerNotFound(name) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _same_file(fd, lock):
            raise ContainerNotFound(name)
        yield folder
    finally:
        os.close(fd)


def _drop_abandoned(folder: Path, is_whole: Check, stop_leftover: Stop) -> bool:
    """Delete ``folder`` if its record is incomplete and nobody holds its lock; whether
    it is gone now."""
    if is_whole(folder):
        return False
    fd = _try_lock(folder)
    if fd is None:
        return not folder.exists()
    try:
        if not _same_file(fd, folder / _LOCK):
            return not folder.exists()  # removed meanwhile; a new one may stand there
        if is_whole(folder):
            return False  # finished by its maker between the two looks
        stop_leftover(folder)
        discard(folder)
        return True
    finally:
        os.close(fd)


def claim(containers: Path, name: str, is_whole: Check, stop_leftover: Stop) -> int:
    """Make the folder of container ``name``, locked; return the lock's fd, which the
    caller closes once the folder's record is complete. A folder already
    there whose record is incomplete and unlocked was left by a killed client: what it
    still runs is stopped and it is replaced.
    """
    target = containers / name
    for _ in range(5):
        if (target.exists() or target.is_symlink()) and not _drop_abandoned(
            target, is_whole, stop_leftover
        ):
            raise ContainerExists(name)
        staging = Path(tempfile.mkdtemp(prefix=f"{HIDDEN}new-{name}-", dir=containers))
        try:
            fd = os.open(staging / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # a sweep took the fresh folder for a dead client's: make another
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _same_file(fd, staging / _LOCK):
            os.close(fd)
            continue  # swept between the open and the lock
        try:
            os.rename(staging, target)  # fails on a non-empty folder: never overwrites
        except OSError as exc:
            os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # another client claimed the name between the look and the rename
        return fd
    raise ContainerExists(name)


def discard(folder: Path) -> None:
    """Delete ``folder``: first renamed to a hidden name, so that a kill in the middle
    leaves something :func:`sweep` recognises, never a half-deleted container."""
    for _ in range(5):
        try:
            trash = Path(tempfile.mkdtemp(prefix=f"{HIDDEN}gone-{folder.name}-", dir=folder.parent))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _discard_in_place(folder)  # a full disk: removing must still free it
            return
        try:
            os.rename(folder, trash / "c")
        except FileNotFoundError:
            if not folder.exists():
                raise
            continue  # a sweep removed the empty trash folder first: make another
        shutil.rmtree(trash, ignore_errors=True)
        return
    raise OSError(f"could not move {folder} aside to delete it")


def _discard_in_place(folder: Path) -> None:
    """Delete ``folder`` after renaming it to a hidden name of its own, made unique by
    chance (the name a fresh trash folder reserves needs a new folder, which a full disk
    may refuse)."""
    aside = folder.parent / f"{HIDDEN}gone-{folder.name}-{secrets.token_hex(8)}"
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def sweep(containers: Path, is_whole: Check, stop_leftover: Stop) -> list[str]:
    """Delete what killed clients left: hidden folders and incomplete records whose lock
    nobody holds. Return the names of the folders deleted."""
    swept = []
    for entry in containers.iterdir():
        try:
            if entry.name.startswith(HIDDEN):
                dropped = _drop_hidden(entry)
            else:
                dropped = _drop_abandoned(entry, is_whole, stop_leftover)
        except OSError as exc:  # one stubborn leftover must not stop the others (or a pass)
            log.warning("cannot sweep %s: %s", entry, exc)
            continue
        if dropped:
            swept.append(entry.name)
    return sorted(swept)


def _drop_hidden(entry: Path) -> bool:
    if entry.name.startswith(f"{HIDDEN}gone-"):
        shutil.rmtree(entry, ignore_errors=True)  # only ever deleted: no lock to honour
        return not entry.exists()
    fd = _try_lock(entry)  # a folder being made holds its lock until it is renamed
    if fd is None:
        return False
    try:
        if not _same_file(fd, entry / _LOCK):
            return False
        shutil.rmtree(entry, ignore_errors=True)
        return True
    finally:
        os.close(fd)
