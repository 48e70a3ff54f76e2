"""Tiny static x86_64 programs that make one syscall and exit with its errno.

Each probe is a hand-assembled ELF (no compiler needed): it loads the syscall number and
six arguments, makes the call, and exits with ``-result`` when it failed, else with 0. So
inside a container ``/probes/keyctl; echo $?`` prints 1 when seccomp refused it (EPERM).
"""

from __future__ import annotations

import platform
import struct
from pathlib import Path

__all__ = ("SUPPORTED", "write_probe")

SUPPORTED = platform.machine() == "x86_64"

_BASE = 0x400000
_HEADERS = 64 + 56
_ARG_REGISTERS = (b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8", b"\x49\xb9")
"""movabs into rdi, rsi, rdx, r10, r8, r9: the syscall argument registers."""


def _code(number: int, args: tuple[int, ...]) -> bytes:
    code = b"\x48\xc7\xc0" + struct.pack("<i", number)  # mov rax, number
    for register, value in zip(_ARG_REGISTERS, (*args, 0, 0, 0, 0, 0, 0), strict=False):
        code += register + struct.pack("<q" if value < 0 else "<Q", value)
    code += b"\x0f\x05"  # syscall
    code += b"\x48\x89\xc7"  # mov rdi, rax
    code += b"\x48\xf7\xdf"  # neg rdi: the errno when it failed
    code += b"\x48\x85\xc0"  # test rax, rax
    code += b"\x78\x02"  # js: failed, keep the errno
    code += b"\x31\xff"  # xor edi, edi: succeeded, exit 0
    code += b"\xb8\xe7\x00\x00\x00"  # mov eax, 231 (exit_group)
    code += b"\x0f\x05"  # syscall
    return code


def write_probe(path: Path, number: int, *args: int) -> None:
    """Write an executable that calls syscall ``number`` with ``args``."""
    code = _code(number, args)
    size = _HEADERS + len(code)
    elf = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9),
        2,  # an executable
        0x3E,  # x86_64
        1,
        _BASE + _HEADERS,  # entry: right after the headers
        64,  # program headers follow the ELF header
        0,
        0,
        64,
        56,
        1,
        0,
        0,
        0,
    )
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    path.write_bytes(elf + segment + code)
    path.chmod(0o755)
