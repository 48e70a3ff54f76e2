"""Safe extraction of untrusted tarballs (root filesystems, SDK layers).

The host's Python (Debian's 3.11.2) predates ``tarfile``'s extraction filters, so the
checks are done here by hand, member by member:

* names that are absolute or hold a ``..`` component are refused (:class:`ArchiveError`);
* every parent directory is entered with ``O_DIRECTORY | O_NOFOLLOW`` relative to the
  previous one, so a symlink planted by an earlier member (``a -> /etc``) can never be
  followed by a later one (``a/passwd``): that member is refused;
* files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and symlinks are created
  verbatim (an absolute target is resolved inside the container, never on the host);
* hard links may only point at an earlier non-directory member of the same archive;
* device nodes and fifos are skipped (counted and logged; a rootless runtime cannot make
  them and the runtime mounts its own ``/dev``);
* setuid, setgid and sticky bits are dropped and owners are ignored (the extracting user
  owns everything); directories stay owner-writable until the end, then get their modes.

What an archive may unpack to is bounded (:class:`runtime.images.budget.Budget`: entries,
path depth, bytes; shared by all the layers of one container) and checked from each
member's header before anything of it is written (first of all from the raw headers of
the whole archive: :func:`runtime.images.headers.precount`). A
:class:`~runtime.util.cancel.Cancel` token is checked before each member and each chunk,
so an unpack stops at once.

Extraction goes to a temporary directory next to ``dest`` (``.<name>.<random>.extracting``,
locked with ``flock`` while it is filled) that is renamed into place only when complete,
so a crash never leaves a half-extracted tree under the final name; it is removed on any
failure, and :func:`sweep_staging` removes those a killed process left (their lock is
free). Nothing here recurses: a tree thousands of directories deep is removed in a loop.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import logging
import lzma
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ArchiveError
from runtime.images.budget import Budget, Usage
from runtime.images.headers import precount
from runtime.util.cancel import Cancel, never

__all__ = (
    "STAGING_SUFFIX",
    "extract_tar",
    "publish_tree",
    "remove_tree",
    "sweep_staging",
    "unpack_download",
)

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PERMISSION_BITS = 0o777
_CHUNK_SIZE = 256 * 1024
STAGING_SUFFIX = ".extracting"
"""The suffix of a tree being extracted (hidden: its name starts with a dot)."""
_STAGING_ATTEMPTS = 5
_CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def extract_tar(
    archive: Path,
    dest: Path,
    *,
    before_publish: Callable[[Path], None] | None = None,
    budget: Budget | None = None,
    cancel: Cancel | None = None,
) -> Usage:
    """Extract the ``.tar``/``.tar.gz``/``.tar.xz`` ``archive`` into the new directory
    ``dest``; return what it used (entries, bytes, depth), which ``budget`` (default: the
    default limits, for this archive alone) was charged with.

    ``before_publish`` may adjust the extracted tree (still under its temporary name,
    all directories owner-writable) before it is renamed to ``dest``. Raises
    :class:`ArchiveError` for an unsafe or corrupt archive (:class:`ArchiveRefused` for
    one over the budget, before the member that crosses it is written),
    :class:`~runtime.util.cancel.Cancelled` when ``cancel`` is set, and
    :class:`FileExistsError` if ``dest`` exists (also when another process published it
    first). The staging tree is removed on every failure.
    """
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "extraction target already exists", str(dest))
    budget, cancel = budget or Budget(), cancel or never()
    precount(archive, budget, cancel)  # a refusal from the headers alone, before any write
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _staging(dest) as staging:
        extractor = _Extractor(str(archive), staging, budget, cancel)
        extractor.run(archive)
        if before_publish is not None:
            before_publish(staging)
        extractor.apply_directory_modes()
        publish_tree(staging, dest)
    return extractor.usage


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A new locked staging directory next to ``dest``, removed unless it was published."""
    staging, lock_fd = _new_staging(dest)
    try:
        yield staging
    except BaseException:
        remove_tree(staging)
        raise
    finally:
        os.close(lock_fd)


def _new_staging(dest: Path) -> tuple[Path, int]:
    """Make and lock a staging directory. A sweep may find it in the instant before it is
    locked and remove it: then another is made."""
    for _ in range(_STAGING_ATTEMPTS):
        staging = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=STAGING_SUFFIX, dir=dest.parent)
        )
        try:
            fd = os.open(staging, _DIR_FLAGS)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_at(fd, staging):
            return staging, fd
        os.close(fd)
    raise FileNotFoundError(errno.ENOENT, "staging directories keep vanishing", str(dest.parent))


def _is_at(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the directory open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def sweep_staging(folder: Path) -> list[str]:
    """Remove the staging trees in ``folder`` that nobody fills any more (a killed
    process's: their lock is free; it is held while they are removed); return their names."""
    swept: list[str] = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(STAGING_SUFFIX)]
    except FileNotFoundError:
        return swept
    for entry in entries:
        path = Path(entry.path)
        try:
            if _remove_abandoned(path):
                swept.append(entry.name)
        except OSError as exc:  # one stubborn leftover must not stop the others
            log.warning("cannot remove the abandoned staging tree %s: %s", path, exc)
    return sorted(swept)


def _remove_abandoned(path: Path) -> bool:
    """Remove the staging tree ``path`` if its lock is free, holding the lock meanwhile."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        if not _is_at(fd, path):
            return False
        remove_tree(path)
        return True
    finally:
        os.close(fd)


def unpack_download(
    archive: Path,
    final: Path,
    *,
    before_publish: Callable[[Path], None] | None = None,
    budget: Budget | None = None,
    cancel: Cancel | None = None,
) -> Usage:
    """Extract a downloaded ``archive`` into the cache folder ``final``; return what it
    used (nothing when another process published the same tree first).

    An archive that cannot be extracted safely is deleted along with the error, so that
    nothing of it stays cached and a repaired mirror is asked again.
    """
    try:
        return extract_tar(
            archive, final, before_publish=before_publish, budget=budget, cancel=cancel
        )
    except FileExistsError:
        if not final.is_dir():
            raise
    except ArchiveError:
        archive.unlink(missing_ok=True)
        raise
    return Usage()


def publish_tree(staging: Path, final: Path) -> None:
    """Rename the directory ``staging`` to ``final`` atomically.

    Raises :class:`FileExistsError` if ``final`` already exists (for instance because
    another process published the same tree first); ``staging`` is then left in place
    for the caller to remove.
    """
    if os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, "already published", str(final))
    try:
        os.rename(staging, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise FileExistsError(errno.EEXIST, "already published", str(final)) from exc
        raise


def remove_tree(path: Path) -> None:
    """Remove ``path`` recursively, first making its directories owner-accessible.

    A loop, not a recursion, holding one directory open at a time: a tree of any depth
    is removed (going back up through ``..``, which in a tree of our own is its parent).
    """
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    _make_owner_accessible(path)
    fd = os.open(path, _DIR_FLAGS)
    stack = [("", _clear_files(fd))]
    try:
        while stack:
            name, pending = stack[-1]
            if pending:
                child = pending.pop()
                fd = _enter_to_remove(fd, child)
                stack.append((child, _clear_files(fd)))
                continue
            stack.pop()
            if stack:
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _enter_to_remove(fd: int, child: str) -> int:
    """Open the subdirectory ``child`` of ``fd`` (made owner-accessible); close ``fd``."""
    mode = stat.S_IMODE(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode)
    if mode & 0o700 != 0o700:
        os.chmod(child, mode | 0o700, dir_fd=fd)
    child_fd = os.open(child, _DIR_FLAGS, dir_fd=fd)
    os.close(fd)
    return child_fd


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return its subdirectories."""
    with os.scandir(fd) as listing:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
    for name, is_dir in entries:
        if not is_dir:
            os.unlink(name, dir_fd=fd)
    return [name for name, is_dir in entries if is_dir]


def _make_owner_accessible(directory: Path) -> None:
    mode = stat.S_IMODE(directory.lstat().st_mode)
    if mode & 0o700 != 0o700:
        directory.chmod(mode | 0o700)


@dataclass
class _DirectoryMode:
    parts: tuple[str, ...]
    mode: int
    mtime: float


@dataclass
class _Extractor:
    label: str
    root: Path
    budget: Budget
    cancel: Cancel
    usage: Usage = field(default_factory=Usage)
    """What this archive used so far (the budget holds what came before it)."""
    directory_modes: dict[tuple[str, ...], _DirectoryMode] = field(default_factory=dict)
    linkable: set[tuple[str, ...]] = field(default_factory=set)
    skipped_special: list[str] = field(default_factory=list)

    def run(self, archive: Path) -> None:
        current = ""
        try:
            with tarfile.open(archive, "r:*") as tar:
                while (member := self._next(tar)) is not None:
                    current = member.name
                    self._extract_member(tar, member)
        except _CORRUPT_ARCHIVE_ERRORS as exc:
            raise ArchiveError(self.label, current, f"corrupt or truncated archive: {exc}") from exc
        self.budget.used.add(self.usage)
        if self.skipped_special:
            log.info(
                "%s: skipped %d device node(s)/fifo(s): %s",
                self.label,
                len(self.skipped_special),
                ", ".join(self.skipped_special[:10]),
            )

    def _next(self, tar: tarfile.TarFile) -> tarfile.TarInfo | None:
        """The next member, charged to the budget from its header alone. ``tarfile``
        would keep every member read in a list: it is emptied as we go (hard links are
        resolved by our own bookkeeping, never through that list)."""
        self.cancel.check()
        member = tar.next()
        tar.members.clear()  # type: ignore[attr-defined]  # an attribute typeshed omits
        if member is not None:
            depth = len(self._safe_parts(member.name, member.name))
            size = member.size if member.isreg() else 0
            self.budget.charge(self.label, member.name, self.usage, depth=depth, size=size)
        return member

    def _extract_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.ischr() or member.isblk() or member.isfifo():
            self.skipped_special.append(member.name)
            log.debug("%s: skipping special file %s", self.label, member.name)
            return
        parts = self._safe_parts(member.name, member.name)
        if not parts:
            if member.isdir():
                self.directory_modes[()] = _DirectoryMode((), member.mode, member.mtime)
                return
            raise ArchiveError(self.label, member.name, "non-directory entry for the root")
        with self._parent_directory(parts, member.name) as parent_fd:
            leaf = parts[-1]
            if member.isdir():
                self._make_directory(parent_fd, leaf, member)
                self.directory_modes[parts] = _DirectoryMode(parts, member.mode, member.mtime)
                return
            self._clear_leaf(parent_fd, leaf, member.name)
            self.linkable.discard(parts)
            if member.isreg():
                self._write_file(tar, member, parent_fd, leaf)
            elif member.issym():
                os.symlink(member.linkname, leaf, dir_fd=parent_fd)
                os.utime(
                    leaf, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False
                )
            elif member.islnk():
                self._make_hard_link(member, parts, parent_fd, leaf)
            else:
                log.warning(
                    "%s: skipping %s of unsupported type %r", self.label, member.name, member.type
                )
                return
            self.linkable.add(parts)

    def _safe_parts(self, name: str, member_name: str) -> tuple[str, ...]:
        if name.startswith("/"):
            raise ArchiveError(self.label, member_name, "absolute path")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        if ".." in parts:
            raise ArchiveError(self.label, member_name, "'..' component escapes the target")
        return parts

    @contextmanager
    def _parent_directory(self, parts: tuple[str, ...], member_name: str) -> Iterator[int]:
        """Yield an fd of the directory holding ``parts[-1]``, creating missing parents."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for name in parts[:-1]:
                child_fd = self._enter(fd, name, member_name)
                os.close(fd)
                fd = child_fd
            yield fd
        finally:
            os.close(fd)

    def _enter(self, dir_fd: int, name: str, member_name: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ArchiveError(
                    self.label,
                    member_name,
                    f"parent {name!r} is a symlink or not a directory; refusing to follow it",
                ) from None
            raise

    def _make_directory(self, parent_fd: int, leaf: str, member: tarfile.TarInfo) -> None:
        try:
            existing = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.mkdir(leaf, 0o700, dir_fd=parent_fd)
            return
        if not stat.S_ISDIR(existing.st_mode):
            raise ArchiveError(self.label, member.name, "directory would replace a non-directory")

    def _clear_leaf(self, parent_fd: int, leaf: str, member_name: str) -> None:
        """Remove an earlier non-directory entry of the same name (later members win)."""
        try:
            existing = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(existing.st_mode):
            raise ArchiveError(self.label, member_name, "entry would replace a directory")
        os.unlink(leaf, dir_fd=parent_fd)

    def _write_file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent_fd: int, leaf: str
    ) -> None:
        source = tar.extractfile(member)
        if source is None:
            raise ArchiveError(self.label, member.name, "regular file without data")
        fd = os.open(leaf, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
        with source, os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK_SIZE):
                self.cancel.check()
                out.write(chunk)
            os.fchmod(out.fileno(), member.mode & _PERMISSION_BITS)
            os.utime(out.fileno(), (member.mtime, member.mtime))

    def _make_hard_link(
        self, member: tarfile.TarInfo, parts: tuple[str, ...], parent_fd: int, leaf: str
    ) -> None:
        target = self._safe_parts(member.linkname, member.name)
        if target == parts or target not in self.linkable:
            raise ArchiveError(
                self.label,
                member.name,
                f"hard link to {member.linkname!r}, which is not an earlier entry of the archive",
            )
        with self._parent_directory(target, member.name) as target_parent_fd:
            os.link(
                target[-1],
                leaf,
                src_dir_fd=target_parent_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )

    def apply_directory_modes(self) -> None:
        """Give directories their archived modes (minus special bits), deepest first."""
        self.directory_modes.setdefault((), _DirectoryMode((), 0o755, -1.0))
        for entry in sorted(
            self.directory_modes.values(), key=lambda e: len(e.parts), reverse=True
        ):
            fd = self._open_directory(entry.parts)
            try:
                os.fchmod(fd, entry.mode & _PERMISSION_BITS)
                if entry.mtime >= 0:
                    os.utime(fd, (entry.mtime, entry.mtime))
            finally:
                os.close(fd)

    def _open_directory(self, parts: tuple[str, ...]) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        for name in parts:
            try:
                child_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = child_fd
        return fd
