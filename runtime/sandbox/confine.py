"""What a container's processes are confined with, applied by the caller to itself.

The container's init applies it just before it starts the command (the command inherits
it), and an exec'd command's process just before ``execve``:

1. ``PR_SET_NO_NEW_PRIVS``: no execve gains privileges (setuid bits, file capabilities);
2. capabilities reduced to Docker's default set, in the bounding, permitted and effective
   sets, none inheritable and no ambient ones (they are capabilities *in the container's user
   namespace*: the user's own uid outside);
3. the seccomp filter compiled by :mod:`runtime.security.seccomp`, if any, installed last.

What leaves the caller the capabilities it uses (no_new_privs, the bounding and ambient
sets: :func:`narrow`) a warm init does before its request comes; the rest (:func:`seal`)
once the container is assembled.

Only syscalls through ctypes and ``prctl``: nothing here may import or load files once the
caller has entered the container's root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from runtime.sandbox import syscalls as sc
from runtime.sandbox.capabilities import CAPABILITY_NUMBERS, DEFAULT_CAPABILITIES
from runtime.util.fdpass import send_with_fds

__all__ = (
    "apply",
    "hand_calls",
    "last_capability",
    "narrow",
    "seal",
)

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_CAPABILITY_VERSION_3 = 0x20080522


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def last_capability() -> int:
    """The highest capability this kernel knows (read it before entering the container)."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as file:
        return int(file.read())


def _kept() -> int:
    """Docker's default set, as a capability mask."""
    return sum(1 << CAPABILITY_NUMBERS[name] for name in DEFAULT_CAPABILITIES)


def narrow(last_capability: int) -> None:
    """The steps of confinement that leave the caller every capability it uses now (its
    effective set): no_new_privs, the bounding set narrowed to Docker's default set, no
    ambient capabilities. A warm init takes them before its request comes."""
    sc.prctl(_PR_SET_NO_NEW_PRIVS, 1)
    keep = _kept()
    for cap in range(last_capability + 1):
        if not keep >> cap & 1:
            sc.prctl(_PR_CAPBSET_DROP, cap)
    sc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


def seal(seccomp_bpf: bytes | None) -> None:
    """The rest of the confinement, after :func:`narrow`: the permitted and effective
    sets narrowed to Docker's default set, then the seccomp filter, if any."""
    keep = _kept()
    low, high = keep & 0xFFFFFFFF, keep >> 32
    # effective, permitted, inheritable: the low 32 bits, then the high ones. Inheritable
    # stays empty, as runc has made it since CVE-2022-24769.
    sc.capset(_CAPABILITY_VERSION_3, struct.pack("IIIIII", low, low, 0, high, high, 0))
    if seccomp_bpf:
        program = ctypes.create_string_buffer(seccomp_bpf, len(seccomp_bpf))
        fprog = _SockFprog(len(seccomp_bpf) // 8, ctypes.cast(program, ctypes.c_void_p))
        sc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def apply(seccomp_bpf: bytes | None, last_capability: int) -> None:
    """Confine the calling process (and what it starts afterwards): :func:`narrow`,
    then :func:`seal`."""
    narrow(last_capability)
    seal(seccomp_bpf)


_NO_LISTENER = {
    errno.EBUSY: "a seccomp listener is in place already (a container inside a container?)",
    errno.EINVAL: "this kernel has no seccomp user notification",
    errno.ENOSYS: "this kernel has no seccomp",
}


def hand_calls(program: bytes, channel: int) -> str:
    """Install ``program``, a filter that hands some calls to a listener (seccomp user
    notification, ``runtime.procview.intercept``), on the calling process and what it
    starts afterwards, and send the listener on the unix socket ``channel`` (closed in
    any case). Return why not ("" once done).

    Before :func:`apply`: the caller still holds ``CAP_SYS_ADMIN`` in its user namespace
    (no ``no_new_privs`` needed), and a profile that refuses ``seccomp`` is not in place
    yet. Nothing here waits for an answer."""
    with socket.socket(fileno=channel) as sock:
        try:
            listener = sc.seccomp_listener(program)
        except OSError as exc:
            return _NO_LISTENER.get(exc.errno or 0, f"seccomp: {exc.strerror}")
        try:
            send_with_fds(sock, b"L", [listener])
        except OSError as exc:  # the holder is gone: the calls fail with ENOSYS, as its
            return f"the listener could not be sent: {exc.strerror}"  # view's reads do
        finally:
            os.close(listener)
    return ""
