"""The FUSE wire protocol, the few messages a read-only view of a handful of files needs.

A request read from ``/dev/fuse`` is a ``fuse_in_header`` and its operation's body; a
reply is a ``fuse_out_header`` and the operation's answer (``<linux/fuse.h>``). This is
spoken here rather than through libfuse: a libfuse session (and so mfusepy, pyfuse3 and
llfuse, all built on it) answers every request with EIO until it has seen the ``INIT``
handshake, and a connection says ``INIT`` once, when it is mounted. A server started
again on a connection that stays mounted (the point of keeping its descriptor open) must
carry on where the last one stopped; nothing here keeps state a restart would lose.
"""

from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass

__all__ = (
    "Attr",
    "Op",
    "Request",
    "attr_reply",
    "dirent_bytes",
    "entry_reply",
    "error_reply",
    "init_reply",
    "open_reply",
    "parse_request",
    "reply",
    "statfs_reply",
    "store_notice",
)

MAX_WRITE = 128 * 1024
"""The largest write the kernel may send (the view takes none); also the read buffer's
floor: the kernel wants room for a request of that size."""
READ_BUFFER = MAX_WRITE + 4096

_IN_HEADER = struct.Struct("<IIQQIIIHH")
_OUT_HEADER = struct.Struct("<IiQ")
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
_ENTRY = struct.Struct("<QQQQII")
_ATTR_OUT = struct.Struct("<QII")
_OPEN_OUT = struct.Struct("<QIi")
_READ_IN = struct.Struct("<QQII")
_INIT_IN = struct.Struct("<IIII")
_INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
_DIRENT = struct.Struct("<QQII")
_STATFS = struct.Struct("<QQQQQIIII24x")
_STORE = struct.Struct("<QQII")
_NOTIFY_STORE = 4

KERNEL_MAJOR = 7
OUR_MINOR = 31
"""The protocol version answered: 7.31 (Linux 5.4) has every field used here."""

FOPEN_DIRECT_IO = 1 << 0
"""Every read comes to the server: the files' size says 0, as /proc's do."""


class Op(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    OPEN = 14
    READ = 15
    STATFS = 17
    RELEASE = 18
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    INTERRUPT = 36
    DESTROY = 38
    BATCH_FORGET = 42
    READDIRPLUS = 44


NO_REPLY = frozenset({Op.FORGET, Op.BATCH_FORGET})
"""Operations the kernel expects no answer to. (An INTERRUPT gets none either; the
request it names may be answered instead.)"""


@dataclass(frozen=True)
class Request:
    opcode: int
    unique: int
    nodeid: int
    pid: int
    body: bytes

    def name(self) -> str:
        """A LOOKUP's name (NUL-terminated)."""
        return self.body.split(b"\0", 1)[0].decode(errors="surrogateescape")

    def read_args(self) -> tuple[int, int, int]:
        """A READ's (or READDIR's) file handle, offset and size."""
        fh, offset, size, _ = _READ_IN.unpack_from(self.body)
        return fh, offset, size

    def interrupted(self) -> int:
        """An INTERRUPT's target: the unique id of the request it interrupts."""
        unique: int = struct.unpack_from("<Q", self.body)[0]
        return unique

    def init_args(self) -> tuple[int, int, int]:
        """An INIT's major and minor version and max_readahead."""
        major, minor, readahead, _ = _INIT_IN.unpack_from(self.body)
        return major, minor, readahead


def parse_request(data: bytes) -> Request:
    """A request as read from the device; ValueError if it is cut short."""
    if len(data) < _IN_HEADER.size:
        raise ValueError(f"a FUSE request of {len(data)} bytes is shorter than its header")
    length, opcode, unique, nodeid, _uid, _gid, pid, _extlen, _ = _IN_HEADER.unpack_from(data)
    return Request(opcode, unique, nodeid, pid, data[_IN_HEADER.size : length])


def reply(unique: int, payload: bytes = b"") -> bytes:
    return _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), 0, unique) + payload


def error_reply(unique: int, code: int) -> bytes:
    return _OUT_HEADER.pack(_OUT_HEADER.size, -code, unique)


@dataclass(frozen=True)
class Attr:
    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    def pack(self) -> bytes:
        return _ATTR.pack(
            self.ino, 0, 0, self.mtime, self.mtime, self.mtime, 0, 0, 0,
            self.mode, self.nlink, self.uid, self.gid, 0, 4096, 0,
        )  # fmt: skip


def entry_reply(unique: int, attr: Attr, valid: int) -> bytes:
    """A LOOKUP's answer: the node (its inode number) and how long the kernel may keep it."""
    return reply(unique, _ENTRY.pack(attr.ino, 0, valid, valid, 0, 0) + attr.pack())


def attr_reply(unique: int, attr: Attr, valid: int) -> bytes:
    return reply(unique, _ATTR_OUT.pack(valid, 0, 0) + attr.pack())


def open_reply(unique: int, fh: int, flags: int) -> bytes:
    return reply(unique, _OPEN_OUT.pack(fh, flags, 0))


def init_reply(unique: int, request: Request) -> bytes:
    """Answer INIT with 7.31 (or the kernel's older minor), no optional features."""
    major, minor, readahead = request.init_args()
    if major != KERNEL_MAJOR:
        return error_reply(unique, errno.EPROTO)
    minor = min(minor, OUR_MINOR)
    body = _INIT_OUT.pack(KERNEL_MAJOR, minor, readahead, 0, 16, 12, MAX_WRITE, 1, 0, 0, 0, 0)
    return reply(unique, body)


def statfs_reply(unique: int) -> bytes:
    return reply(unique, _STATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0))


def dirent_bytes(ino: int, offset: int, name: str, dtype: int) -> bytes:
    """One READDIR entry, padded to 8 bytes; ``offset`` is where the next one starts."""
    raw = name.encode()
    entry = _DIRENT.pack(ino, offset, len(raw), dtype) + raw
    return entry + b"\0" * (-len(entry) % 8)


def store_notice(nodeid: int, data: bytes) -> bytes:
    """A ``FUSE_NOTIFY_STORE``: ``data`` as the node's first bytes in the page cache, and
    its size at least ``len(data)``.

    Sent before a file's OPEN is answered: ``sendfile`` (busybox ``cat``) reads through
    the page cache up to the size the kernel knows, which a short read lowers and nothing
    raises again; the content's own length is always the floor then.
    """
    body = _STORE.pack(nodeid, 0, len(data), 0) + data
    return _OUT_HEADER.pack(_OUT_HEADER.size + len(body), _NOTIFY_STORE, 0) + body
