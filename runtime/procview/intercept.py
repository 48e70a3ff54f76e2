"""``sysinfo(2)`` and ``sched_getaffinity(2)`` answered from the view's figures.

busybox ``free`` takes its total from ``sysinfo``, and ``nproc`` (busybox's, coreutils'),
Go's runtime and many thread pools count the CPUs of ``sched_getaffinity``: no file can
change them. Each container's init therefore installs, before its command starts, a
seccomp filter that hands these two calls to a listener (user notification); the holder
keeps the listener and the view's server answers from the figures its ``/proc/meminfo``
and ``/sys/devices/system/cpu/online`` show. Anything odd is left to the kernel.

The filter is built by libseccomp (:func:`runtime.security.seccomp.compile_intercept`),
as the profiles are: the syscall numbers and the architecture check come from the same
table, and a call of another architecture is let through (the profile decides on it).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.procview import views
from runtime.procview.unotify import Call
from runtime.security.profile import ProfileError
from runtime.security.seccomp import compile_intercept, syscall_number

__all__ = ("INTERCEPTED", "Reply", "program", "reply")

INTERCEPTED = ("sysinfo", "sched_getaffinity")
_ACTIONS = Path("/proc/sys/kernel/seccomp/actions_avail")
_MASK_MOST = 4096
"""Bytes of affinity mask asked of the kernel: more than any ``cpumask_size()``."""
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@functools.cache
def program() -> bytes | str:
    """The filter a container's init (and an exec'd command) installs, or why the calls
    cannot be intercepted (found once per process)."""
    try:
        if "user_notif" not in _ACTIONS.read_text().split():
            return "this kernel has no seccomp user notification"
        return compile_intercept(INTERCEPTED)
    except (OSError, ProfileError) as exc:
        return f"no seccomp filter: {exc}"


@functools.cache
def _numbers() -> dict[int, str]:
    return {syscall_number(name): name for name in INTERCEPTED}


@dataclass(frozen=True)
class Reply:
    """The answer to a call: ``data`` written at ``address`` in the caller, then ``value``
    returned."""

    value: int
    address: int
    data: bytes


def reply(call: Call, sysinfo: Callable[[], bytes | None], cpus: Callable[[], int]) -> Reply | None:
    """What to answer ``call`` with (None: let the kernel answer). ``sysinfo`` computes
    the container's ``struct sysinfo`` (None: unknown), ``cpus`` how many CPUs its view
    says are online."""
    name = _numbers().get(call.nr)
    if name == "sysinfo":
        data = sysinfo()
        return None if data is None else Reply(0, call.args[0], data)
    if name == "sched_getaffinity":
        return _affinity(call, cpus)
    return None


def _affinity(call: Call, cpus: Callable[[], int]) -> Reply | None:
    """The caller's own mask, as the kernel gives it (the same length and return value),
    cut to its first ``cpus()`` CPUs; None for another thread's or an odd length."""
    pid, size, address = ctypes.c_int(call.args[0]).value, call.args[1] & 0xFFFFFFFF, call.args[2]
    if pid != 0 and pid != _own_pid(call.pid):
        return None
    if size > _MASK_MOST:
        if size % 8:
            return None  # the kernel's EINVAL
        size = _MASK_MOST
    mask = ctypes.create_string_buffer(size)
    written = int(_libc.syscall(_numbers_by_name()["sched_getaffinity"], call.pid, size, mask))
    if written < 0:
        return None  # EINVAL for a length too small: the kernel says it to the caller
    return Reply(written, address, views.first_cpus(mask.raw[:written], cpus()))


def _numbers_by_name() -> dict[str, int]:
    return {name: number for number, name in _numbers().items()}


def _own_pid(tid: int) -> int | None:
    """Thread ``tid`` (ours) as its own pid namespace numbers it."""
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        pass
    return None
