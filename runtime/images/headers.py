"""Counting an archive's entries from its raw tar headers, before anything of it is written.

``tarfile`` parses each header in Python (about 14 µs each): an archive of a million
empty entries took 1.4 s of parsing alone to reach the 100,001st, on top of unpacking
the first 100,000. Reading the 512-byte headers directly (checksum checked) takes about
4 µs each, so :func:`precount` charges a throwaway usage with every entry and every stored size
first, and refuses an archive that cannot fit before the first member is written.

It counts the way ``tarfile`` does: pax (``x``, ``g``, ``X``) and GNU long name headers
(``L``, ``K``) are no entries; a pax ``size`` replaces the next header's; data follows
only regular and unknown types. A sparse file's stored size is charged only in the old
GNU format (it never exceeds what it unpacks to); a pax sparse file, whose map is
stored with its data, is charged nothing here, and at its size by the unpacking. It
may only count less than the unpacking will, never more: it gives up (and leaves the
verdict to the unpacking) at the first header whose checksum is wrong, anything it does
not know, or once it has read ``SCAN_BYTES_PER_ENTRY`` bytes per entry the budget has
left, so a large archive that fits is not read through twice (at most about 150 MB of
it with the default limits).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from runtime.errors import ArchiveError
from runtime.images.budget import Budget, Usage
from runtime.util.cancel import Cancel

__all__ = ("SCAN_BYTES_PER_ENTRY", "precount")

SCAN_BYTES_PER_ENTRY = 3 * 512
"""What one entry may take in the stream before the count gives up: a long name header,
its name and the entry's own header."""
_BLOCK = 512
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_NAME_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_MAX = 1 << 20
_CANCEL_EVERY = 1024
_HIGH_BYTES = bytes(range(128, 256))
_OPENERS: tuple[tuple[bytes, Callable[[Path], io.BufferedIOBase]], ...] = (
    (b"\x1f\x8b", gzip.GzipFile),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
    (b"BZh", bz2.BZ2File),
)


class _GiveUp(Exception):
    """The headers cannot be read this way: the unpacking decides."""


def precount(archive: Path, budget: Budget, cancel: Cancel) -> None:
    """Raise :class:`~runtime.errors.ArchiveRefused` if the entries and stored sizes
    of ``archive`` (``.tar``, ``.tar.gz``, ``.tar.xz``, ``.tar.bz2``) cannot fit in
    ``budget``; ``budget`` itself is not charged."""
    own = Usage()
    scan_limit = (budget.limits.entries - budget.used.entries + 1) * SCAN_BYTES_PER_ENTRY
    try:
        with _open(archive) as stream:
            for count, (name, size) in enumerate(_entries(stream, scan_limit)):
                if count % _CANCEL_EVERY == 0:
                    cancel.check()
                budget.charge(str(archive), name, own, depth=0, size=size)
    except ArchiveError:
        raise
    except (_GiveUp, OSError, EOFError, ValueError, lzma.LZMAError):
        return  # gzip.BadGzipFile is an OSError, a bad size a ValueError


def _open(archive: Path) -> io.BufferedIOBase:
    with archive.open("rb") as raw:
        head = raw.read(6)
    for magic, opener in _OPENERS:
        if head.startswith(magic):
            return opener(archive)
    return archive.open("rb")


def _entries(stream: io.BufferedIOBase, scan_limit: int) -> Iterator[tuple[str, int]]:
    """(name, stored size of a regular file, else 0) of each entry until the end."""
    pax_size: int | None = None  # an extended header's size, for the next entry
    sparse = False  # the next entry is a pax sparse file: it unpacks to another size
    while (header := _read(stream, _BLOCK, scan_limit)) is not None:
        kind = header[156:157]
        own_size = _number(header[124:136])
        if kind in _META_TYPES:
            records = _read(stream, _padded(own_size), scan_limit, _PAX_MAX) or b""
            found = _pax_size(records)
            if kind != tarfile.XGLTYPE:
                pax_size, sparse = found, b" GNU.sparse." in records
            elif found is not None or b" GNU.sparse." in records:
                raise _GiveUp  # for every later entry: too odd to follow
            continue
        if kind in _NAME_TYPES:
            _skip(stream, own_size, scan_limit)
            continue
        size, pax_size = (own_size if pax_size is None else pax_size), None
        if kind == tarfile.GNUTYPE_SPARSE and header[482]:
            _skip_sparse_extensions(stream, scan_limit)
        has_data = kind in tarfile.REGULAR_TYPES or kind not in tarfile.SUPPORTED_TYPES
        yield _name(header), size if has_data and not sparse else 0
        sparse = False
        if has_data:
            _skip(stream, size, scan_limit)


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _read(
    stream: io.BufferedIOBase, size: int, scan_limit: int, most: int | None = None
) -> bytes | None:
    """The next ``size`` bytes; None at the end of the archive (a zero block). Gives up
    past ``scan_limit`` (or ``most``), at a short read or at a header whose checksum is
    wrong."""
    if stream.tell() + size > scan_limit or (most is not None and size > most):
        raise _GiveUp
    data = stream.read(size)
    if len(data) != size:
        raise _GiveUp
    if size == _BLOCK and most is None:
        if data == bytes(_BLOCK):
            return None
        if not _checksum_fits(data):
            raise _GiveUp
    return data


def _skip(stream: io.BufferedIOBase, size: int, scan_limit: int) -> None:
    """Skip a member's data (read through, for a compressed stream)."""
    target = stream.tell() + _padded(size)
    if target > scan_limit:
        raise _GiveUp
    stream.seek(target)


def _skip_sparse_extensions(stream: io.BufferedIOBase, scan_limit: int) -> None:
    """Skip the extension blocks of an old GNU sparse header (each says if one follows)."""
    while True:
        block = _read(stream, _BLOCK, scan_limit, _BLOCK)
        if block is None or not block[504]:
            return


def _checksum_fits(header: bytes) -> bool:
    """Whether the header's checksum (unsigned or signed sum, as ``tarfile`` takes
    either) is right: data taken for a header never passes."""
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 8 * ord(" ")
    if stored == unsigned:
        return True
    high = len(header) - len(header.translate(None, _HIGH_BYTES))
    return stored == unsigned - 256 * (high - sum(b > 127 for b in header[148:156]))


def _number(field: bytes) -> int:
    """A numeric header field: octal, or base-256 (its first byte 0x80)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise _GiveUp  # negative
    digits = field.replace(b"\0", b" ").strip()
    return int(digits or b"0", 8)


def _pax_size(records: bytes) -> int | None:
    """The ``size`` of pax records (``LENGTH key=value\\n`` each), if they give one."""
    size, at = None, 0
    while at < len(records) and records[at] != 0:
        space = records.index(b" ", at)
        length = int(records[at:space])
        if length <= space - at:
            raise _GiveUp
        key, _, value = records[space + 1 : at + length - 1].partition(b"=")
        if key == b"size":
            size = int(value)
        at += length
    return size


def _name(header: bytes) -> str:
    """The member's name as its header has room for (a long one is in a record before)."""
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name.decode("utf-8", "replace")
