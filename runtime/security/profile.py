"""seccomp profiles as data: Docker-format profile files and the rules they hold, read and
checked without compiling them (no ctypes, no libseccomp).

The squishfile model validates a profile with :func:`read_profile`: the file is a small
regular file holding JSON, its keys, actions, operators, conditions and syscall names are
well formed. Whether libseccomp knows every name and whether the program fits the kernel's
limit is learnt when the rules are compiled (:mod:`runtime.security.seccomp`).

The default profile's rules are data too (:mod:`runtime.security.default_profile`).

A profile file uses Docker's JSON format (``defaultAction``, ``defaultErrnoRet`` and
``syscalls`` with ``names``, ``action``, ``errnoRet`` and ``args``); only the native
architecture is filtered and other architectures' syscalls kill the process.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.sandbox.capabilities import DEFAULT_CAPABILITIES as GRANTED_CAPABILITIES

__all__ = (
    "ACT_ALLOW",
    "ACT_KILL_PROCESS",
    "ACT_KILL_THREAD",
    "ACT_LOG",
    "ACT_NOTIFY",
    "ACT_TRAP",
    "COMPARISONS",
    "MAX_PROFILE_BYTES",
    "ProfileCheck",
    "ProfileError",
    "Rule",
    "errno_action",
    "kernel_before",
    "kernel_version",
    "parse_profile",
    "read_profile",
    "read_profile_bytes",
)

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_LOG = 0x7FFC0000
ACT_NOTIFY = 0x7FC00000
"""SECCOMP_RET_USER_NOTIF: the call waits for the filter's listener to answer it."""
ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000

COMPARISONS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
"""libseccomp's comparison operators (``enum scmp_compare``) by their Docker names."""
MAX_PROFILE_BYTES = 1024 * 1024
"""Largest profile file read."""


class ProfileError(ValueError):
    """A seccomp profile that cannot be read, is malformed, or cannot be compiled."""


ProfileCheck = Callable[[Mapping[str, Any]], object]
"""A further check of a profile document that :func:`read_profile` accepted (compiling
it: :func:`runtime.security.seccomp.compile_profile`); raises :class:`ProfileError`."""


@dataclass(frozen=True)
class Rule:
    """``action`` for ``names`` when every comparison holds: (arg index, op, a, b)."""

    names: tuple[str, ...]
    action: int
    args: tuple[tuple[int, str, int, int], ...] = ()


def errno_action(code: int) -> int:
    return _ACT_ERRNO | (code & 0xFFFF)


def kernel_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release or version (``"6.1.0-18-amd64"``, ``"4.8"``,
    ``"5"``); None when ``text`` is not one."""
    parts = text.split("-")[0].split(".")
    major, minor = parts[0], parts[1] if len(parts) > 1 else "0"
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def kernel_before(version: tuple[int, int]) -> bool:
    """Whether the running kernel is older than ``version`` (or unknown)."""
    running = kernel_version(os.uname().release)
    return running is None or running < version  # unknown: the older, stricter case


# -- Docker-format profile files ---------------------------------------------------------

_ACTIONS = {
    "SCMP_ACT_ALLOW": ACT_ALLOW,
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_LOG": ACT_LOG,
}


def _action(name: object, errno_ret: object, where: str) -> int:
    if name == "SCMP_ACT_ERRNO":
        code = errno.EPERM if errno_ret is None else errno_ret
        if not isinstance(code, int) or not 0 <= code <= 4095:
            raise ProfileError(f"{where}: errnoRet must be an integer 0-4095")
        return errno_action(code)
    if not isinstance(name, str) or name not in _ACTIONS:
        known = ", ".join(["SCMP_ACT_ERRNO", *_ACTIONS])
        raise ProfileError(f"{where}: unknown action {name!r}; expected one of: {known}")
    return _ACTIONS[name]


def _args(raw: object, where: str) -> tuple[tuple[int, str, int, int], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProfileError(f"{where}.args must be an array")
    found = []
    for i, arg in enumerate(raw):
        if not isinstance(arg, dict):
            raise ProfileError(f"{where}.args[{i}] must be an object")
        index, op = arg.get("index"), arg.get("op")
        value, two = arg.get("value", 0), arg.get("valueTwo", 0)
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise ProfileError(f"{where}.args[{i}].index must be 0-5")
        if op not in COMPARISONS:
            raise ProfileError(f"{where}.args[{i}].op must be one of: {', '.join(COMPARISONS)}")
        if not all(isinstance(v, int) and 0 <= v < 1 << 64 for v in (value, two)):
            raise ProfileError(
                f"{where}.args[{i}]: value and valueTwo must be integers 0 to 2**64-1"
            )
        found.append((index, str(op), value, two))
    return tuple(found)


_SYSCALL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
"""What a syscall name looks like (``_llseek``, ``epoll_pwait2``); whether the kernel has
it is libseccomp's to say, when the profile is compiled."""


def _names(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    names = raw.get("names", [raw["name"]] if "name" in raw else None)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProfileError(f"{where}.names must be an array of syscall names")
    for name in names:
        if not _SYSCALL_NAME.fullmatch(name):
            raise ProfileError(f"{where}.names: {name!r} is not a syscall name")
    return tuple(names)


_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls"}
_RULE_KEYS = {"name", "names", "action", "errnoRet", "args", "includes", "excludes", "comment"}
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def _kernel_at_least(text: object, where: str) -> bool:
    version = kernel_version(text) if isinstance(text, str) else None
    if version is None:
        raise ProfileError(f'{where}.minKernel {text!r} is not a kernel version such as "4.8"')
    return not kernel_before(version)


def _applies(raw: Mapping[str, Any], where: str) -> bool:
    """Docker's ``includes``/``excludes`` for a container with squish's capabilities on
    this architecture and kernel: whether the rule is part of the profile here."""
    granted = {f"CAP_{name}" for name in GRANTED_CAPABILITIES}
    arch = _GO_ARCH.get(platform.machine(), platform.machine())
    conditions = []
    for key in ("includes", "excludes"):
        found = raw.get(key) or {}
        if not isinstance(found, dict) or set(found) - {"caps", "arches", "minKernel"}:
            raise ProfileError(f"{where}.{key} may hold only caps, arches and minKernel")
        for listed in ("caps", "arches"):
            names = found.get(listed, [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ProfileError(f"{where}.{key}.{listed} must be an array of strings")
        conditions.append(found)
    includes, excludes = conditions
    if any(cap in granted for cap in excludes.get("caps", [])):
        return False
    if arch in excludes.get("arches", []):
        return False
    if "minKernel" in excludes and _kernel_at_least(excludes["minKernel"], where):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not all(cap in granted for cap in includes.get("caps", [])):
        return False
    return "minKernel" not in includes or _kernel_at_least(includes["minKernel"], where)


def parse_profile(document: Mapping[str, Any]) -> tuple[int, list[Rule]]:
    """The default action and rules of a Docker-format profile, as they apply to a
    squish container (Docker's default capabilities, this architecture and kernel)."""
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise ProfileError(f"unsupported profile key(s): {', '.join(sorted(unknown))}")
    default = _action(
        document.get("defaultAction"), document.get("defaultErrnoRet"), "defaultAction"
    )
    raw_rules = document.get("syscalls", [])
    if not isinstance(raw_rules, list):
        raise ProfileError("syscalls must be an array")
    rules = []
    for i, raw in enumerate(raw_rules):
        where = f"syscalls[{i}]"
        if not isinstance(raw, dict):
            raise ProfileError(f"{where} must be an object")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ProfileError(f"{where}: unsupported key(s): {', '.join(sorted(unknown))}")
        names = _names(raw, where)
        action = _action(raw.get("action"), raw.get("errnoRet"), f"{where}.action")
        args = _args(raw.get("args"), where)
        if _applies(raw, where):
            rules.append(Rule(names, action, args))
    return default, rules


def read_profile_bytes(path: Path) -> bytes:
    """The bytes of a profile file: a regular file of at most ``MAX_PROFILE_BYTES`` (never
    a device, a fifo or a socket, which could block or never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(f"{path} is not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path} is larger than {MAX_PROFILE_BYTES} bytes")
        return file.read(MAX_PROFILE_BYTES + 1)[:MAX_PROFILE_BYTES]


def read_profile(path: Path) -> tuple[dict[str, Any], bytes]:
    """Read a profile file and check its structure (it is not compiled); return its JSON
    document and the bytes it was read from."""
    try:
        raw = read_profile_bytes(path)
        document = json.loads(raw)
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ProfileError(f"{path} is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProfileError(f"{path} is nested too deeply to be a profile") from exc
    if not isinstance(document, dict):
        raise ProfileError(f"{path} must hold a JSON object")
    parse_profile(document)
    return document, raw
