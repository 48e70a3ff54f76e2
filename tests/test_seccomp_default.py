"""The default seccomp profile, an allow list in Docker's form: refused with EPERM unless
named, ``clone3`` with ENOSYS, ``socket`` and ``personality`` by argument, io_uring never.

Checked three ways: inside a real container, one static probe per syscall family (run
confined and unconfined, so that each refusal is seen to be the filter's); through the
compiled filter for every syscall number; and the rule list itself, as data."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from runtime.client.linux import LinuxRuntime
from runtime.sandbox.capabilities import DEFAULT_CAPABILITIES
from runtime.security import default_profile, profile, seccomp
from tests.bpf import (
    AUDIT_ARCH_I386,
    libseccomp_version,
    run_filter,
    steps_and_result,
    syscall_number,
)
from tests.conftest import rootless
from tests.support import run_probes
from tests.syscall_probes import SUPPORTED, write_probe

needs_x86_64 = pytest.mark.skipif(not SUPPORTED, reason="the probes are x86_64 programs")

SIGCHLD = 17
CLONE_NEWUSER = 0x10000000
AT_FDCWD = -100
PAST_SECCOMP = {335, 336}
"""uretprobe and uprobe: the kernel does not filter them (since 6.11 and 6.16); called from
anywhere but a probe's trampoline they fail (SIGILL, ENXIO) and do nothing."""

Probe = tuple[int, tuple[int, ...], int]
"""A probe: its syscall's x86_64 number, the arguments, the errno it exits with."""

REFUSED: dict[str, Probe] = {
    # syscall name or what it probes: (x86_64 number, arguments, errno in the container)
    "unassigned-1000": (1000, (), errno.EPERM),  # the kernel says ENOSYS
    "statmount": (457, (0, 0, 0, 0), errno.EPERM),
    "listmount": (458, (0, 0, 0, 0), errno.EPERM),
    "mseal": (462, (0, 0, 0), errno.EPERM),
    "clone3": (435, (0, 0), errno.ENOSYS),  # the C library falls back to clone
    "clone-newuser": (56, (CLONE_NEWUSER | SIGCHLD,), errno.EPERM),
    "socket-alg": (41, (38, 5, 0), errno.EPERM),  # AF_ALG, SOCK_SEQPACKET
    "socket-vsock": (41, (40, 1, 0), errno.EPERM),  # AF_VSOCK, SOCK_STREAM
    "personality-addr-no-randomize": (135, (0x0040000,), errno.EPERM),
    "io_uring_setup": (425, (1, 0), errno.EPERM),
    "io_uring_enter": (426, (-1, 0, 0, 0, 0, 0), errno.EPERM),
    "io_uring_register": (427, (-1, 0, 0, 0), errno.EPERM),
    "keyctl": (250, (0, -3, 0), errno.EPERM),  # KEYCTL_GET_KEYRING_ID of the session
    "unshare-newuser": (272, (CLONE_NEWUSER,), errno.EPERM),
    "process_madvise": (440, (-1, 0, 0, 0, 0), errno.EPERM),  # needs SYS_PTRACE
}

ALLOWED: dict[str, Probe] = {
    # the kernel's own answer, confined or not (EFAULT: a NULL path or buffer)
    "getpid": (39, (), 0),
    "fork": (57, (), 0),
    "clone-plain": (56, (SIGCHLD,), 0),
    "execve-null": (59, (0, 0, 0), errno.EFAULT),
    "mmap-anonymous": (9, (0, 4096, 1, 0x22, -1, 0), 0),  # PROT_READ, MAP_PRIVATE|ANONYMOUS
    "openat-null": (257, (AT_FDCWD, 0, 0), errno.EFAULT),
    "fchmodat2-null": (452, (AT_FDCWD, 0, 0, 0), errno.EFAULT),
    "chroot-null": (161, (0,), errno.EFAULT),  # SYS_CHROOT is granted
    "socket-unix": (41, (1, 1, 0), 0),
    "socket-inet": (41, (2, 1, 0), 0),
    "socket-inet-udp": (41, (2, 2, 0), 0),
    "socket-netlink": (41, (16, 3, 0), 0),  # NETLINK_ROUTE
    "socketpair-null": (53, (1, 1, 0, 0), errno.EFAULT),
    "personality-query": (135, (0xFFFFFFFF,), 0),
    "personality-linux": (135, (0,), 0),
    "rt_sigtimedwait-null": (128, (0, 0, 0, 8), errno.EFAULT),
    "wait4-no-child": (61, (-1, 0, 0, 0), errno.ECHILD),
}


def _write_probes(folder: Path, probes: dict[str, Probe]) -> None:
    folder.mkdir()
    for name, (number, args, _) in probes.items():
        write_probe(folder / name, number, *args)


@rootless
@needs_x86_64
def test_the_default_profile_by_syscall_family_inside_a_container(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    probes = tmp_path / "probes"
    _write_probes(probes, REFUSED | ALLOWED)
    confined = run_probes(rt, "families", probes)
    unconfined = run_probes(rt, "families-unconfined", probes, "unconfined")
    expected = {name: code for name, (_, _, code) in (REFUSED | ALLOWED).items()}
    assert confined == expected
    for name in REFUSED:  # the refusal is the filter's: the kernel itself answers otherwise
        assert unconfined[name] != confined[name], name
    assert {name: unconfined[name] for name in ALLOWED} == {
        name: confined[name] for name in ALLOWED
    }


def _as_document(refusal_errno: int) -> dict[str, object]:
    """The default rules as a Docker-format profile refusing with ``refusal_errno`` (one
    the kernel never gives itself), with the names this host's libseccomp knows."""
    rules: list[dict[str, object]] = []
    for rule in default_profile.default_rules():
        names = [name for name in rule.names if syscall_number(name) is not None]
        entry: dict[str, object] = {"names": names, "action": "SCMP_ACT_ALLOW"}
        if rule.action != profile.ACT_ALLOW:
            entry.update(action="SCMP_ACT_ERRNO", errnoRet=rule.action & 0xFFFF)
        if rule.args:
            entry["args"] = [
                {"index": index, "op": op, "value": a, "valueTwo": b}
                for index, op, a, b in rule.args
            ]
        rules.append(entry)
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": refusal_errno, "syscalls": rules}


BY_ARGUMENT = ("socket", "personality", "clone", "clone3")


@rootless
@needs_x86_64
def test_inside_a_container_every_refused_syscall_meets_the_filter(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """The default's rules, installed in a container with a refusal errno the kernel never
    gives: every syscall number they do not allow is seen to stop at the filter."""
    allowed = {syscall_number(name) for name in default_profile.allowed_names()}
    allowed |= {syscall_number(name) for name in BY_ARGUMENT}
    allowed |= PAST_SECCOMP
    numbers = (*range(470), 1000, 4095)
    probes: dict[str, Probe] = {f"nr-{nr}": (nr, (), 200) for nr in numbers if nr not in allowed}
    assert len(probes) > 60
    probes |= {
        "socket-vsock": (41, (40, 1, 0), 200),
        "personality-addr-no-randomize": (135, (0x0040000,), 200),
        "clone-newuser": (56, (CLONE_NEWUSER | SIGCHLD,), 200),
        "clone3": (435, (0, 0), errno.ENOSYS),
        "getpid": (39, (), 0),
    }
    _write_probes(tmp_path / "probes", probes)
    found = run_probes(rt, "refused", tmp_path / "probes", _as_document(200))
    assert found == {name: code for name, (_, _, code) in probes.items()}


@needs_x86_64
def test_new_and_unknown_syscalls_are_refused_with_eperm() -> None:
    program = seccomp.compile_default()
    eperm = profile.errno_action(errno.EPERM)
    for nr in (452 + 5, 458, 462, 470, 1000):  # statmount, listmount, mseal, none yet
        assert run_filter(program, nr) == eperm, nr
    assert run_filter(program, syscall_number("fchmodat2") or 452) == profile.ACT_ALLOW
    socket, personality = syscall_number("socket"), syscall_number("personality")
    assert socket is not None and personality is not None
    assert run_filter(program, socket, 40, 1) == eperm  # AF_VSOCK
    assert run_filter(program, personality, 0x0040000) == eperm  # ADDR_NO_RANDOMIZE
    assert run_filter(program, personality, 0xFFFFFFFF) == profile.ACT_ALLOW


@needs_x86_64
def test_the_compiled_default_allows_its_list_and_refuses_every_other_number() -> None:
    program = seccomp.compile_default()
    eperm, allow = profile.errno_action(errno.EPERM), profile.ACT_ALLOW
    allowed = {syscall_number(name) for name in default_profile.allowed_names()} - {None}
    socket, personality, clone, clone3 = (syscall_number(name) for name in BY_ARGUMENT)
    assert socket is not None and personality is not None
    assert clone is not None and clone3 is not None and len(allowed) > 250
    for nr in {*range(1024), 4095} - {socket, personality, clone, clone3}:
        assert run_filter(program, nr) == (allow if nr in allowed else eperm), nr
    for family in range(64):
        expected = eperm if family in default_profile.REFUSED_SOCKET_FAMILIES else allow
        assert run_filter(program, socket, family, 1) == expected, family
    for value in (*default_profile.PERSONALITIES, 0x1, 0x0040000, 0x0400000, 2**64 - 1):
        expected = allow if value in default_profile.PERSONALITIES else eperm
        assert run_filter(program, personality, value) == expected, hex(value)
    assert run_filter(program, clone, SIGCHLD) == allow
    assert run_filter(program, clone, 0x4000 | 0x100 | SIGCHLD) == allow  # vfork's flags
    for bit in range(32):
        if default_profile.NAMESPACE_FLAGS >> bit & 1:
            assert run_filter(program, clone, 1 << bit | SIGCHLD) == eperm, hex(1 << bit)
    assert run_filter(program, clone3) == profile.errno_action(errno.ENOSYS)
    assert run_filter(program, 20, arch=AUDIT_ARCH_I386) == profile.ACT_KILL_PROCESS


@pytest.mark.skipif(
    libseccomp_version() < (2, 5), reason="libseccomp before 2.5 compiles lists only"
)
def test_the_compiled_default_finds_any_syscall_in_a_few_steps() -> None:
    """A binary search on the number, not a list: the kernel evaluates a new filter once
    for every syscall number when it is installed (to cache what it always allows), and
    every call it did not cache runs it, so the steps are paid at every start."""
    program = seccomp.compile_default()
    longest = max(steps_and_result(program, nr)[0] for nr in range(1024))
    assert longest <= 40, longest


# -- the rule list as data (no libseccomp) ---------------------------------------------


def _names(rules: list[profile.Rule], action: int = profile.ACT_ALLOW) -> set[str]:
    return {name for rule in rules if rule.action == action for name in rule.names}


def test_each_syscall_is_named_once_and_io_uring_never() -> None:
    gated = [name for names in default_profile.ALLOWED_WITH_CAPABILITY.values() for name in names]
    assert len(set(default_profile.ALLOWED)) == len(default_profile.ALLOWED)
    assert not set(default_profile.ALLOWED) & set(gated)
    every = {*default_profile.ALLOWED, *gated}
    assert not {name for name in every if name.startswith("io_uring")}
    assert not set(BY_ARGUMENT) & set(default_profile.ALLOWED)


def test_the_granted_capabilities_decide_what_else_is_allowed() -> None:
    docker = default_profile.default_rules()
    assert "chroot" in _names(docker)  # SYS_CHROOT is in Docker's default set
    assert not {"mount", "unshare", "setns", "bpf", "kcmp"} & _names(docker)
    assert _names(docker, profile.errno_action(errno.ENOSYS)) == {"clone3"}
    clone = [rule for rule in docker if rule.names == ("clone",)]
    assert [rule.args for rule in clone] == [((0, "SCMP_CMP_MASKED_EQ", 0x7E020000, 0),)]
    admin = default_profile.default_rules((*DEFAULT_CAPABILITIES, "SYS_ADMIN"))
    assert {"mount", "unshare", "setns", "clone", "clone3"} <= _names(admin)
    assert not [rule for rule in admin if rule.args and rule.names == ("clone",)]
    assert _names(admin, profile.errno_action(errno.ENOSYS)) == set()
    assert "chroot" not in _names(default_profile.default_rules(("CHOWN",)))


def test_socket_and_personality_are_allowed_by_argument_as_docker_does() -> None:
    rules = default_profile.default_rules()
    socket = sorted(rule.args for rule in rules if rule.names == ("socket",))
    assert socket == [
        ((0, "SCMP_CMP_EQ", 39, 0),),
        ((0, "SCMP_CMP_GT", 40, 0),),
        ((0, "SCMP_CMP_LT", 38, 0),),
    ]
    personality = {rule.args for rule in rules if rule.names == ("personality",)}
    values = {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert personality == {((0, "SCMP_CMP_EQ", value, 0),) for value in values}


def test_architecture_specific_syscalls_on_their_architecture_only() -> None:
    assert {"arch_prctl", "modify_ldt"} <= set(default_profile.allowed_names(machine="x86_64"))
    arm = set(default_profile.allowed_names(machine="aarch64"))
    assert "set_tls" in arm and "arch_prctl" not in arm
    s390 = default_profile.default_rules(machine="s390x")
    clone = [rule.args for rule in s390 if rule.names == ("clone",)]
    assert clone == [((1, "SCMP_CMP_MASKED_EQ", 0x7E020000, 0),)]  # flags are clone's 2nd


def test_ptrace_is_allowed_only_on_kernels_where_it_cannot_bypass_seccomp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "ptrace" in default_profile.allowed_names()  # this kernel is newer than 4.8
    fake = os.uname_result(("Linux", "host", "4.4.0-210-generic", "#1", "x86_64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert "ptrace" not in default_profile.allowed_names()


def test_a_name_libseccomp_does_not_know_is_left_out_of_the_default_only() -> None:
    """An older libseccomp than the list's newest names still compiles the default (those
    syscalls stay refused); a profile file naming one is an error, as before."""
    rules = [profile.Rule(("getpid", "no_such_call"), profile.ACT_ALLOW)]
    eperm = profile.errno_action(errno.EPERM)
    program = seccomp.compile_rules(eperm, rules, known_only=True)
    assert run_filter(program, syscall_number("getpid") or 39) == profile.ACT_ALLOW
    with pytest.raises(profile.ProfileError, match="unknown syscall 'no_such_call'"):
        seccomp.compile_rules(eperm, rules)


def test_the_intercept_filter_notifies_its_two_calls_and_allows_everything_else() -> None:
    program = seccomp.compile_intercept(("sysinfo", "sched_getaffinity"))
    for name in ("sysinfo", "sched_getaffinity"):
        number = syscall_number(name)
        assert number is not None
        assert run_filter(program, number) == profile.ACT_NOTIFY
    for name in ("read", "sched_setaffinity", "keyctl"):
        number = syscall_number(name)
        assert number is not None
        assert run_filter(program, number) == profile.ACT_ALLOW
    # another architecture's calls are the profile's to refuse, not this filter's
    assert run_filter(program, 116, arch=AUDIT_ARCH_I386) == profile.ACT_ALLOW
