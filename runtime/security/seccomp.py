"""seccomp profiles compiled to BPF by libseccomp, on the client's side.

libseccomp (``libseccomp.so.2``, the library Docker, podman and systemd use) is called
through ctypes: its official Python binding ships only as a distribution package built for
the system interpreter, and a container start must not pay for building a filter. A
profile is compiled once (``seccomp_export_bpf``) and the container's init installs the
bytes with one ``prctl`` (:func:`runtime.sandbox.confine.apply`).

What a profile says, and the checks that need no libseccomp, live in
:mod:`runtime.security.profile`; compiling is where a syscall name libseccomp does not
know, or a program longer than the kernel takes, is found.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from runtime.security.default_profile import DEFAULT_ACTION, default_rules
from runtime.security.profile import (
    ACT_ALLOW,
    ACT_KILL_PROCESS,
    ACT_NOTIFY,
    COMPARISONS,
    ProfileError,
    Rule,
    parse_profile,
)

__all__ = (
    "MAX_INSTRUCTIONS",
    "compile_default",
    "compile_intercept",
    "compile_profile",
    "compile_rules",
    "syscall_number",
)

_FLTATR_ACT_BADARCH = 2
_FLTATR_CTL_NNP = 3
_FLTATR_CTL_OPTIMIZE = 8
_OPTIMIZE_BINARY_TREE = 2
"""libseccomp's filter layout (2.5+): a binary search on the syscall number rather than a
list. The kernel takes the default profile's filter in about a third of the time (it
evaluates a new filter for every syscall number once, to cache the calls it always
allows: 80 against 230 µs per start here), and every call it did not cache is decided in
fewer steps."""
MAX_INSTRUCTIONS = 4096
"""The kernel's limit on one seccomp program (BPF_MAXINSNS)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def _load() -> ctypes.CDLL:
    """libseccomp by its soname first: ``find_library`` runs ``ldconfig -p`` in a
    subprocess, which only a system with another soname needs to pay for."""
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        found = ctypes.util.find_library("seccomp")
        if found is None:
            raise
        return ctypes.CDLL(found, use_errno=True)


def _library() -> ctypes.CDLL:
    lib = _load()
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return lib


_lib: ctypes.CDLL | None = None


def _seccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            _lib = _library()
        except OSError as exc:
            raise ProfileError(f"libseccomp cannot be loaded ({exc}); install libseccomp2") from exc
    return _lib


def compile_rules(
    default: int,
    rules: Iterable[Rule],
    *,
    known_only: bool = False,
    bad_arch: int = ACT_KILL_PROCESS,
) -> bytes:
    """The BPF program (``struct sock_filter`` array) of ``default`` plus ``rules``.

    A syscall name libseccomp does not know is an error, or with ``known_only`` left out
    (for the default profile's allow list: an older libseccomp leaves the newest
    syscalls refused). ``bad_arch`` is what a syscall of another architecture gets."""
    lib = _seccomp()
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ProfileError("libseccomp refused the default action")
    try:
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_NNP, 0)  # the init sets no_new_privs itself
        for rule in rules:
            if rule.action == default:
                continue  # libseccomp refuses a rule that repeats the default
            for name in rule.names:
                _add(lib, ctx, rule, name, known_only)
        lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, bad_arch)
        # An older libseccomp refuses the attribute: its list decides the same.
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)
        program = _export(lib, ctx)
        if len(program) // 8 > MAX_INSTRUCTIONS:  # the tree's longer: try the list
            lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 1)
            program = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    if len(program) // 8 > MAX_INSTRUCTIONS:
        raise ProfileError(
            f"the profile compiles to {len(program) // 8} BPF instructions; the kernel takes "
            f"at most {MAX_INSTRUCTIONS}"
        )
    return program


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    """The filter ``ctx`` compiles to."""
    # Into a memfd, not a pipe: a large program would block on a full pipe.
    with os.fdopen(os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC), "w+b") as out:
        result = lib.seccomp_export_bpf(ctx, out.fileno())
        if result < 0:
            raise ProfileError(f"libseccomp could not export the filter: {os.strerror(-result)}")
        out.seek(0)
        return out.read()


def _add(lib: ctypes.CDLL, ctx: int, rule: Rule, name: str, known_only: bool) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number == -1:  # __NR_SCMP_ERROR: libseccomp knows no such syscall
        if known_only:
            return
        raise ProfileError(f"unknown syscall {name!r}")
    cmps = (_ArgCmp * max(1, len(rule.args)))()
    for i, (index, op, a, b) in enumerate(rule.args):
        cmps[i] = _ArgCmp(index, COMPARISONS[op], a, b)
    result = lib.seccomp_rule_add_array(ctx, rule.action, number, len(rule.args), cmps)
    # A syscall this architecture does not have (a negative pseudo number) is skipped.
    if result < 0 and not (number < 0 and -result in (errno.EDOM, errno.EINVAL)):
        raise ProfileError(f"libseccomp refused the rule for {name!r}: {os.strerror(-result)}")


_compiled: dict[str, bytes] = {}


def compile_default() -> bytes:
    """The default profile's BPF, compiled once per process."""
    if "default" not in _compiled:
        _compiled["default"] = compile_rules(DEFAULT_ACTION, default_rules(), known_only=True)
    return _compiled["default"]


def compile_profile(document: Mapping[str, Any]) -> bytes:
    """The BPF of a Docker-format profile document (compiled once per content)."""
    key = json.dumps(document, sort_keys=True)
    if key not in _compiled:
        default, rules = parse_profile(document)
        _compiled[key] = compile_rules(default, rules)
    return _compiled[key]


def syscall_number(name: str) -> int:
    """The native architecture's number of syscall ``name`` (libseccomp's table)."""
    number = int(_seccomp().seccomp_syscall_resolve_name(name.encode()))
    if number < 0:
        raise ProfileError(f"unknown syscall {name!r}")
    return number


def compile_intercept(names: tuple[str, ...]) -> bytes:
    """A filter that hands ``names`` to a listener (user notification) and allows all else,
    other architectures' calls included: it is installed alongside the container's profile,
    which decides what is refused (compiled once per process)."""
    key = "intercept:" + ",".join(names)
    if key not in _compiled:
        rule = Rule(names=names, action=ACT_NOTIFY)
        _compiled[key] = compile_rules(ACT_ALLOW, [rule], bad_arch=ACT_ALLOW)
    return _compiled[key]
