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

Extraction goes to a temporary directory next to ``dest`` that is renamed into place
only when complete, so a crash never leaves a half-extracted tree under the final name.
"""

from __future__ import annotations

import errno
import gzip
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ArchiveError

__all__ = (
    "MAX_ENTRIES",
    "MAX_TOTAL_BYTES",
    "extract_tar",
    "publish_tree",
    "remove_tree",
    "unpack_download",
)

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PERMISSION_BITS = 0o777
_CHUNK_SIZE = 256 * 1024
MAX_TOTAL_BYTES = 8 * 1024**3
"""Largest sum of file sizes an archive may unpack to (a rootfs or an SDK is far less)."""
MAX_ENTRIES = 1_000_000
"""Most entries an archive may hold."""
_CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def extract_tar(
    archive: Path,
    dest: Path,
    *,
    before_publish: Callable[[Path], None] | None = None,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> None:
    """Extract the ``.tar``/``.tar.gz``/``.tar.xz`` ``archive`` into the new directory ``dest``.

    ``before_publish`` may adjust the extracted tree (still under its temporary name,
    all directories owner-writable) before it is renamed to ``dest``. Raises
    :class:`ArchiveError` for an unsafe or corrupt archive and :class:`FileExistsError`
    if ``dest`` exists (also when another process published it first). An archive of more
    than ``max_entries`` entries, or whose files add up to more than ``max_total_bytes``
    (a decompression bomb), is refused as it is read, before the excess is written.
    """
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "extraction target already exists", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        extractor = _Extractor(str(archive), staging, max_total_bytes, max_entries)
        extractor.run(archive)
        if before_publish is not None:
            before_publish(staging)
        extractor.apply_directory_modes()
        publish_tree(staging, dest)
    except BaseException:
        remove_tree(staging)
        raise


def unpack_download(
    archive: Path, final: Path, *, before_publish: Callable[[Path], None] | None = None
) -> Path:
    """Extract a downloaded ``archive`` into the cache folder ``final`` and return it.

    Another process publishing the same tree first is fine. An archive that cannot be
    extracted safely is deleted along with the error, so that nothing of it stays cached
    and a repaired mirror is asked again.
    """
    try:
        extract_tar(archive, final, before_publish=before_publish)
    except FileExistsError:
        if not final.is_dir():
            raise
    except ArchiveError:
        archive.unlink(missing_ok=True)
        raise
    return final


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
    """Remove ``path`` recursively, first making its directories owner-accessible."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    _make_owner_accessible(path)
    for parent, dirnames, _files in os.walk(path):
        for name in dirnames:
            child = Path(parent, name)
            if not child.is_symlink():
                _make_owner_accessible(child)
    shutil.rmtree(path)


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
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_entries: int = MAX_ENTRIES
    total_bytes: int = 0
    entries: int = 0
    directory_modes: dict[tuple[str, ...], _DirectoryMode] = field(default_factory=dict)
    linkable: set[tuple[str, ...]] = field(default_factory=set)
    skipped_special: list[str] = field(default_factory=list)

    def run(self, archive: Path) -> None:
        current = ""
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    current = member.name
                    self._count(member)
                    self._extract_member(tar, member)
        except _CORRUPT_ARCHIVE_ERRORS as exc:
            raise ArchiveError(self.label, current, f"corrupt or truncated archive: {exc}") from exc
        if self.skipped_special:
            log.info(
                "%s: skipped %d device node(s)/fifo(s): %s",
                self.label,
                len(self.skipped_special),
                ", ".join(self.skipped_special[:10]),
            )

    def _count(self, member: tarfile.TarInfo) -> None:
        """Refuse an archive that would unpack to absurd sizes, before writing the entry."""
        self.entries += 1
        if self.entries > self.max_entries:
            raise ArchiveError(self.label, member.name, f"more than {self.max_entries} entries")
        if member.isreg():
            self.total_bytes += member.size
            if self.total_bytes > self.max_total_bytes:
                raise ArchiveError(
                    self.label,
                    member.name,
                    f"unpacks to more than {self.max_total_bytes} bytes",
                )

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
