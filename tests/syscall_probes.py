"""Tiny static x86_64 programs that make one syscall and exit with its errno.

Each probe is a hand-assembled ELF (no compiler needed): it loads the syscall number and
six arguments, makes the call, and exits with ``-result`` when it failed, else with 0. So
inside a container ``/probes/keyctl; echo $?`` prints 1 when seccomp refused it (EPERM).
"""

from __future__ import annotations

import platform
import struct
from pathlib import Path

__all__ = ("SUPPORTED", "write_mapped_probe", "write_probe")

SUPPORTED = platform.machine() == "x86_64"

_BASE = 0x400000
_HEADERS = 64 + 56
_ARG_REGISTERS = (b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8", b"\x49\xb9")
"""movabs into rdi, rsi, rdx, r10, r8, r9: the syscall argument registers."""


def _code(number: int, args: tuple[int, ...]) -> bytes:
    code = b"\x48\xc7\xc0" + struct.pack("<i", number)  # mov rax, number
    for register, value in zip(_ARG_REGISTERS, (*args, 0, 0, 0, 0, 0, 0), strict=False):
        code += register + struct.pack("<q" if value < 0 else "<Q", value)
    return code + b"\x0f\x05" + _EXIT  # syscall


_EXIT = (
    b"\x48\x89\xc7"  # mov rdi, rax
    b"\x48\xf7\xdf"  # neg rdi: the errno when it failed
    b"\x48\x85\xc0"  # test rax, rax
    b"\x78\x02"  # js: failed, keep the errno
    b"\x31\xff"  # xor edi, edi: succeeded, exit 0
    b"\xb8\xe7\x00\x00\x00"  # mov eax, 231 (exit_group)
    b"\x0f\x05"  # syscall
)
"""Exit with the errno of the call whose result is in rax (0 when it succeeded)."""


def _mapped_code(number: int, file: str) -> bytes:
    """open(``file``), mmap a private writable page of it (never touched), then syscall
    ``number`` with that page's address: the first failure's errno is the exit code."""
    open_file = b"\x31\xf6\xb8\x02\x00\x00\x00\x0f\x05"  # xor esi, esi; open(rdi, O_RDONLY)
    map_page = (
        b"\x49\x89\xc0"  # mov r8, rax: the descriptor
        b"\x31\xff"  # xor edi, edi: anywhere
        b"\xbe\x00\x10\x00\x00"  # mov esi, 4096
        b"\xba\x03\x00\x00\x00"  # mov edx, PROT_READ | PROT_WRITE
        b"\x41\xba\x02\x00\x00\x00"  # mov r10d, MAP_PRIVATE
        b"\x45\x31\xc9"  # xor r9d, r9d: offset 0
        b"\xb8\x09\x00\x00\x00\x0f\x05"  # mmap
    )
    call = b"\x48\x89\xc7\xb8" + struct.pack("<i", number) + b"\x0f\x05"  # number(rax)
    failed = b"\x48\x85\xc0\x78"  # test rax, rax; js (to _EXIT)
    after_open = map_page + failed + bytes([len(call)]) + call
    body = open_file + failed + bytes([len(after_open)]) + after_open + _EXIT
    lea = b"\x48\x8d\x3d" + struct.pack("<i", len(body))  # lea rdi, [rip + file]
    return lea + body + file.encode() + b"\0"


def write_probe(path: Path, number: int, *args: int) -> None:
    """Write an executable that calls syscall ``number`` with ``args``."""
    _write_elf(path, _code(number, args))


def write_mapped_probe(path: Path, number: int, file: str) -> None:
    """Write an executable that calls syscall ``number`` with, as its first argument, the
    address of a private writable mapping of ``file``'s first page, never touched before."""
    _write_elf(path, _mapped_code(number, file))


def _write_elf(path: Path, code: bytes) -> None:
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
