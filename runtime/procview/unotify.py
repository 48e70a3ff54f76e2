"""seccomp user notification, the listener's side: receive a call, answer it (seccomp_unotify(2)).

A container's init installs a filter that hands ``sysinfo`` and ``sched_getaffinity`` to a
listener (:mod:`runtime.procview.intercept`); the view's server reads each call here,
writes the answer into the caller's memory and sets the call's return value, or lets the
kernel answer it (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``). The caller's memory is written
through ``/proc/PID/mem``, opened *before* the call's id is checked to be still waiting
(``SECCOMP_IOCTL_NOTIF_ID_VALID``): a pid reused meanwhile is never written to.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

__all__ = ("Call", "answer", "let_kernel_answer", "receive", "write_to_caller")

_NOTIF = struct.Struct("<QIIiIQ6Q")
"""struct seccomp_notif: id, pid, flags, then struct seccomp_data (nr, arch, ip, args)."""
_RESPONSE = struct.Struct("<QqiI")
"""struct seccomp_notif_resp: id, val, error, flags."""
_IOCTL_RECV = 0xC0000000 | _NOTIF.size << 16 | ord("!") << 8 | 0
_IOCTL_SEND = 0xC0000000 | _RESPONSE.size << 16 | ord("!") << 8 | 1
_IOCTL_ID_VALID = 0x80000000 | 8 << 16 | ord("!") << 8 | 2
"""As first defined (``_IOR``): every kernel with user notification takes it."""
_FLAG_CONTINUE = 1


@dataclass(frozen=True)
class Call:
    """A call waiting for its answer: ``pid`` is the calling thread in our pid namespace."""

    id: int
    pid: int
    nr: int
    args: tuple[int, ...]


def receive(listener: int) -> Call | None:
    """The next waiting call, or None when it went away first (its caller was killed)."""
    buf = bytearray(_NOTIF.size)  # zeroed, as the kernel requires
    try:
        fcntl.ioctl(listener, _IOCTL_RECV, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    call_id, pid, _, nr, _, _, *args = _NOTIF.unpack(buf)
    return Call(call_id, pid, nr, tuple(args))


def _send(listener: int, call: Call, value: int, flags: int) -> None:
    response = _RESPONSE.pack(call.id, value, 0, flags)
    with contextlib.suppress(FileNotFoundError):  # its caller was interrupted meanwhile
        fcntl.ioctl(listener, _IOCTL_SEND, response)


def answer(listener: int, call: Call, value: int) -> None:
    """End ``call`` with return value ``value``."""
    _send(listener, call, value, 0)


def let_kernel_answer(listener: int, call: Call) -> None:
    """Let the kernel carry out ``call`` as if nothing had intercepted it."""
    _send(listener, call, 0, _FLAG_CONTINUE)


def write_to_caller(listener: int, call: Call, address: int, data: bytes) -> None:
    """Write ``data`` at ``address`` in the caller's memory, if ``call`` still waits
    (OSError otherwise, or when not all of it could be written)."""
    mem = os.open(f"/proc/{call.pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(listener, _IOCTL_ID_VALID, struct.pack("<Q", call.id))
        if os.pwrite(mem, data, address) != len(data):
            raise OSError(errno.EFAULT, "short write into the caller's memory")
    finally:
        os.close(mem)
