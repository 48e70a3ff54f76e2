"""Thin, typed wrappers around the Linux syscalls the runtime needs.

Python 3.11 has no ``os.unshare``/``os.setns``, so each call goes through libc with
ctypes. Every wrapper checks the return value and raises ``OSError`` with errno and the
arguments that failed; none of them ever ignores an error.
"""

from __future__ import annotations

import ctypes
import os
import struct

__all__ = (
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "PR_SET_CHILD_SUBREAPER",
    "PR_SET_DUMPABLE",
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "capset",
    "fs_mount",
    "mount",
    "mount_setattr_rdonly",
    "move_mount",
    "open_tree_clone",
    "openat2",
    "pivot_root",
    "prctl",
    "seccomp_listener",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

MNT_DETACH = 2

PR_SET_CHILD_SUBREAPER = 36

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10

_SYS_CAPSET = 126
_SYS_PIVOT_ROOT = 155
_SYS_SECCOMP = 317
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_OPENAT2 = 437
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
OPEN_TREE_CLONE = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOUNT_ATTRS = {MS_RDONLY: 0x1, MS_NOSUID: 0x2, MS_NODEV: 0x4, MS_NOEXEC: 0x8}
"""mount(2)'s flags -> fsmount(2)'s MOUNT_ATTR_* of the same meaning."""
PR_SET_DUMPABLE = 4

# The C library this interpreter already runs on; not ``find_library``, which runs
# ``ldconfig -p`` in a subprocess when the module is imported (and every command does).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace ``fd`` refers to (single-threaded callers only)."""
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2)."""
    result = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(result, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), flags), f"umount2({target!r}, {flags})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2)."""
    result = _libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old))
    _check(result, f"pivot_root({new_root!r}, {put_old!r})")


def sethostname(name: str) -> None:
    """sethostname(2), in the caller's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments."""
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def capset(version: int, data: bytes) -> None:
    """capset(2) for the calling thread: ``data`` packs the two ``__user_cap_data_struct``."""
    header = ctypes.create_string_buffer(struct.pack("Ii", version, 0), 8)
    buf = ctypes.create_string_buffer(data, len(data))
    _check(int(_libc.syscall(_SYS_CAPSET, header, buf)), "capset")


_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3


def seccomp_listener(program: bytes) -> int:
    """seccomp(2) SECCOMP_SET_MODE_FILTER with SECCOMP_FILTER_FLAG_NEW_LISTENER: install
    the BPF ``program`` on the calling thread; return its listener (close-on-exec)."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(code))
    buf = ctypes.create_string_buffer(fprog, len(fprog))
    flags = _SECCOMP_FILTER_FLAG_NEW_LISTENER
    result = _libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flags), buf)
    return _check(int(result), "seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER)")


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` below ``dir_fd`` with RESOLVE_* restrictions."""
    how = struct.pack("QQQ", flags, mode, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    result = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        buf,
        ctypes.c_size_t(len(how)),
    )
    return _check(int(result), f"openat2({path!r})")


def mount_setattr_rdonly(fd: int) -> None:
    """mount_setattr(2): make the mount ``fd`` refers to, and every mount below it, read-only."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    result = _libc.syscall(
        _SYS_MOUNT_SETATTR,
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
        buf,
        ctypes.c_size_t(len(attr)),
    )
    _check(int(result), f"mount_setattr({fd}, MOUNT_ATTR_RDONLY, AT_RECURSIVE)")


def open_tree_clone(fd: int) -> int:
    """open_tree(2) with OPEN_TREE_CLONE | AT_RECURSIVE: a detached copy of the mount
    tree at ``fd`` (what a recursive bind mount would attach), as a new fd."""
    flags = OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH | os.O_CLOEXEC
    result = _libc.syscall(
        _SYS_OPEN_TREE, ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_uint(flags)
    )
    return _check(int(result), f"open_tree({fd}, OPEN_TREE_CLONE | AT_RECURSIVE)")


def move_mount(tree_fd: int, target_fd: int) -> None:
    """move_mount(2): attach the mount tree ``tree_fd`` on the mount point ``target_fd``."""
    result = _libc.syscall(
        _SYS_MOVE_MOUNT,
        ctypes.c_int(tree_fd),
        ctypes.c_char_p(b""),
        ctypes.c_int(target_fd),
        ctypes.c_char_p(b""),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
    )
    _check(int(result), f"move_mount({tree_fd}, {target_fd})")


def _fsconfig(fs_fd: int, command: int, key: str | None, value: str | None) -> None:
    result = _libc.syscall(
        _SYS_FSCONFIG,
        ctypes.c_int(fs_fd),
        ctypes.c_uint(command),
        ctypes.c_char_p(_b(key)),
        ctypes.c_char_p(_b(value)),
        ctypes.c_int(0),
    )
    _check(int(result), f"fsconfig({fs_fd}, {command}, {key!r}, {value!r})")


def fs_mount(fstype: str, options: dict[str, str | None], flags: int = 0) -> int:
    """fsopen(2), fsconfig(2) and fsmount(2): a new ``fstype`` file system with
    ``options`` (a value of None: a flag), as a detached mount (an fd, attached later
    with :func:`move_mount`); ``flags`` are mount(2)'s ``MS_RDONLY``, ``MS_NOSUID``,
    ``MS_NODEV`` and ``MS_NOEXEC``."""
    fs_fd = _check(
        int(
            _libc.syscall(_SYS_FSOPEN, ctypes.c_char_p(_b(fstype)), ctypes.c_uint(_FSOPEN_CLOEXEC))
        ),
        f"fsopen({fstype!r})",
    )
    try:
        for key, value in options.items():
            command = _FSCONFIG_SET_FLAG if value is None else _FSCONFIG_SET_STRING
            _fsconfig(fs_fd, command, key, value)
        _fsconfig(fs_fd, _FSCONFIG_CMD_CREATE, None, None)
        attributes = sum(attr for flag, attr in _MOUNT_ATTRS.items() if flags & flag)
        result = _libc.syscall(
            _SYS_FSMOUNT,
            ctypes.c_int(fs_fd),
            ctypes.c_uint(_FSMOUNT_CLOEXEC),
            ctypes.c_uint(attributes),
        )
        return _check(int(result), f"fsmount({fstype!r}, {flags:#x})")
    finally:
        os.close(fs_fd)
