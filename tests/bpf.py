"""A small interpreter of classic BPF, enough to run a compiled seccomp program in a test.

It answers "what would the kernel's filter return for this syscall" for a program that
libseccomp produced: loads from ``struct seccomp_data``, jumps, AND, returns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct

__all__ = (
    "AUDIT_ARCH_I386",
    "AUDIT_ARCH_X86_64",
    "libseccomp_version",
    "run_filter",
    "steps_and_result",
    "syscall_number",
)

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003


def _data(nr: int, arch: int, args: tuple[int, ...]) -> bytes:
    padded = (*args, 0, 0, 0, 0, 0, 0)[:6]
    return struct.pack("<iIQ6Q", nr, arch, 0, *padded)


def run_filter(program: bytes, nr: int, *args: int, arch: int = AUDIT_ARCH_X86_64) -> int:
    """The value the filter returns for syscall ``nr`` with ``args``."""
    return steps_and_result(program, nr, *args, arch=arch)[1]


def steps_and_result(
    program: bytes, nr: int, *args: int, arch: int = AUDIT_ARCH_X86_64
) -> tuple[int, int]:
    """How many instructions the filter runs for syscall ``nr`` with ``args``, and the
    value it returns."""
    data = _data(nr, arch, args)
    acc = 0
    memory = [0] * 16
    x = 0
    pc = 0
    count = len(program) // 8
    for step in range(1, count + 2):  # classic BPF only jumps forward
        code, jt, jf, k = struct.unpack_from("<HBBI", program, pc * 8)
        pc += 1
        if code == 0x20:  # ld w abs
            (acc,) = struct.unpack_from("<I", data, k)
        elif code == 0x00:  # ld imm
            acc = k
        elif code == 0x60:  # ld mem
            acc = memory[k]
        elif code == 0x02:  # st
            memory[k] = acc
        elif code == 0x01:  # ldx imm
            x = k
        elif code == 0x54:  # and k
            acc &= k
        elif code == 0x05:  # ja
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset (k)
            taken = {
                0x15: acc == k,
                0x25: acc > k,
                0x35: acc >= k,
                0x45: bool(acc & k),
            }[code]
            pc += jt if taken else jf
        elif code == 0x06:  # ret k
            return step, int(k)
        else:
            raise ValueError(f"BPF instruction {code:#x} is not interpreted here (x={x})")
    raise ValueError("the program ran off its end")


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    return lib


class _Version(ctypes.Structure):
    _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint))


def libseccomp_version() -> tuple[int, int]:
    """The (major, minor) version of the libseccomp loaded."""
    lib = _libseccomp()
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    version = lib.seccomp_version().contents
    return version.major, version.minor


def syscall_number(name: str) -> int | None:
    """The number of syscall ``name`` on this architecture (libseccomp's table), or None
    if it has none here."""
    number = int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))
    return number if number >= 0 else None
