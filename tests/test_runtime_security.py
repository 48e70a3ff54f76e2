"""Confinement inside the container: seccomp, no_new_privs, capabilities, masked paths."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from runtime.api.spec import BindMount
from runtime.client.linux import LinuxRuntime
from runtime.sandbox.capabilities import CAPABILITY_NUMBERS, DEFAULT_CAPABILITIES
from runtime.sandbox.mounts import MASKED, READ_ONLY
from runtime.security import profile, seccomp
from tests.bpf import AUDIT_ARCH_I386, run_filter, syscall_number
from tests.conftest import rootless
from tests.support import shell
from tests.syscall_probes import SUPPORTED, write_probe

pytestmark = rootless

NAMESPACE_FLAGS = {
    "newns": 0x00020000,
    "newcgroup": 0x02000000,
    "newuts": 0x04000000,
    "newipc": 0x08000000,
    "newuser": 0x10000000,
    "newpid": 0x20000000,
    "newnet": 0x40000000,
}
SIGCHLD = 17


def compiled_profile(path: Path) -> bytes:
    """A profile file read as validation reads it, then compiled as create compiles it."""
    return seccomp.compile_profile(profile.read_profile(path)[0])


def run_probes(
    rt: LinuxRuntime, name: str, probes: Path, seccomp_setting: object = "default"
) -> dict[str, int]:
    """Run every probe in ``probes`` inside a container; their exit codes by name."""
    script = "for p in /probes/*; do $p; echo ${p#/probes/} $?; done"
    binds = (BindMount(source=str(probes), target="/probes"),)
    rt.run(shell(name, script, binds=binds, seccomp=seccomp_setting))
    assert rt.wait(name, timeout=60) == 0, rt.logs(name)
    found = {}
    for line in rt.logs(name).decode().splitlines():
        probe, code = line.rsplit(" ", 1)
        found[probe] = int(code)
    return found


needs_x86_64 = pytest.mark.skipif(not SUPPORTED, reason="the probes are x86_64 programs")


@needs_x86_64
def test_the_default_profile_refuses_its_list_and_allows_every_other_syscall() -> None:
    program = seccomp.compile_default()
    eperm = profile.errno_action(errno.EPERM)
    denied = {syscall_number(name) for name in profile.DEFAULT_DENIED} - {None}
    clone, clone3 = syscall_number("clone"), syscall_number("clone3")
    assert clone is not None and clone3 is not None and len(denied) > 60
    for nr in range(460):  # every x86_64 syscall number, run through the compiled filter
        got = run_filter(program, nr, SIGCHLD)
        if nr in denied:
            assert got == eperm, nr
        elif nr == clone3:
            assert got == profile.errno_action(errno.ENOSYS)
        else:
            assert got == profile.ACT_ALLOW, nr
    for flag in NAMESPACE_FLAGS.values():
        assert run_filter(program, clone, flag | SIGCHLD) == eperm
    assert run_filter(program, 20, arch=AUDIT_ARCH_I386) == profile.ACT_KILL_PROCESS


@needs_x86_64
def test_inside_a_container_every_listed_syscall_meets_the_filter(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """The same list, installed in a container, with an errno the kernel itself never
    gives for these calls: each probe proves its syscall was stopped by the filter."""
    probes = tmp_path / "probes"
    probes.mkdir()
    expected = {}
    for name in profile.DEFAULT_DENIED:
        number = syscall_number(name)
        if number is not None:  # e.g. vm86 exists on i386 only
            write_probe(probes / name, number)
            expected[name] = 200
    clone = syscall_number("clone")
    assert clone is not None
    rules: list[dict[str, object]] = [
        {"names": list(profile.DEFAULT_DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": 200},
        # ENOSYS, as in the default: the C library must fall back to clone to start /bin/sh
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    for flag_name, flag in NAMESPACE_FLAGS.items():
        write_probe(probes / f"clone-{flag_name}", clone, flag | SIGCHLD)
        expected[f"clone-{flag_name}"] = 201
        mask = {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}
        rules.append(
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 201, "args": [mask]}
        )
    clone3 = syscall_number("clone3")
    getpid = syscall_number("getpid")
    assert clone3 is not None and getpid is not None
    write_probe(probes / "clone3", clone3)  # the kernel would say EFAULT for these arguments
    expected["clone3"] = errno.ENOSYS
    write_probe(probes / "getpid", getpid)
    expected["getpid"] = 0
    document = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    assert run_probes(rt, "listed", probes, document) == expected


@needs_x86_64
def test_unconfined_and_custom_profiles(rt: LinuxRuntime, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    keyctl, getcwd = syscall_number("keyctl"), syscall_number("getcwd")
    assert keyctl is not None and getcwd is not None
    write_probe(probes / "keyctl", keyctl, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session
    write_probe(probes / "getcwd", getcwd, 0, 0)  # a NULL buffer: ERANGE when allowed
    assert run_probes(rt, "confined", probes) == {"keyctl": errno.EPERM, "getcwd": errno.ERANGE}
    assert run_probes(rt, "unconfined", probes, "unconfined") == {
        "keyctl": 0,
        "getcwd": errno.ERANGE,
    }
    document = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
            {
                "names": ["keyctl"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 1, "value": 2**64 - 3, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }
    assert run_probes(rt, "custom", probes, document) == {
        "keyctl": errno.EPERM,
        "getcwd": errno.EACCES,
    }


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _capabilities(mask: int) -> list[str]:
    """The names of the capabilities set in ``mask`` (as in /proc/PID/status)."""
    return [name for name, bit in CAPABILITY_NUMBERS.items() if mask >> bit & 1]


def test_the_command_and_exec_have_no_new_privs_and_dockers_capabilities(
    rt: LinuxRuntime,
) -> None:
    rt.run(shell("caps", "cat /proc/self/status; exec sleep 600", stop_timeout=0))
    for _ in range(2000):
        if b"Seccomp:" in rt.logs("caps"):
            break
        time.sleep(0.005)
    exec_status = rt.exec_command("caps", ["cat", "/proc/self/status"]).output
    for text in (rt.logs("caps").decode(), exec_status):
        status = _status(text)
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert sorted(_capabilities(int(status[field], 16))) == sorted(DEFAULT_CAPABILITIES), (
                field
            )
        assert int(status["CapInh"], 16) == int(status["CapAmb"], 16) == 0
        ignored = int(status["SigIgn"], 16)  # Python's SIGPIPE and SIGXFSZ are not passed on
        assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), hex(ignored)
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"


def test_kernel_files_are_masked_or_read_only(rt: LinuxRuntime) -> None:
    rt.run(shell("masks", "cat /proc/self/mountinfo; cat /proc/keys | wc -c"))
    assert rt.wait("masks", timeout=60) == 0
    lines = rt.logs("masks").decode().splitlines()
    mounts = {}
    for line in lines[:-1]:
        fields = line.split()
        mounts[fields[4]] = (fields[5], line.split(" - ")[1].split()[0])  # options, type
    for path in (p for p in MASKED if os.path.lexists(p)):  # e.g. no kcore on some kernels
        assert path in mounts, f"{path} is not masked"
        options, fstype = mounts[path]
        assert fstype in ("tmpfs", "devtmpfs") or path.startswith("/proc/"), (path, fstype)
        if os.path.isdir(path):
            assert fstype == "tmpfs" and "ro" in options.split(","), (path, mounts[path])
    for path in (p for p in READ_ONLY if os.path.lexists(p)):
        assert path in mounts and "ro" in mounts[path][0].split(","), (path, mounts.get(path))
    assert lines[-1].strip() == "0"  # /proc/keys reads as /dev/null


def test_the_init_is_out_of_reach_of_the_containers_root(rt: LinuxRuntime) -> None:
    script = (
        "cat /proc/1/environ >/dev/null 2>&1 && echo environ-read;"
        "ls /proc/1/fd >/dev/null 2>&1 && echo fds-listed;"
        "cat /proc/1/cmdline >/dev/null && echo cmdline-read"
    )
    rt.run(shell("reach", script))
    assert rt.wait("reach", timeout=60) == 0
    assert rt.logs("reach") == b"cmdline-read\n"  # what ps shows, nothing more


def test_a_profile_document_is_checked_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nope"]}]})
    )
    with pytest.raises(profile.ProfileError, match="action"):
        compiled_profile(bad)
    bad.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    with pytest.raises(profile.ProfileError, match="unknown syscall 'no_such_call'"):
        compiled_profile(bad)
    bad.write_text("{not json")
    with pytest.raises(profile.ProfileError, match="not JSON"):
        compiled_profile(bad)


def test_a_profile_is_compiled_at_create_before_anything_is_made(rt: LinuxRuntime) -> None:
    """A spec is not a squishfile: its profile document is compiled by ``create``, which
    refuses a syscall libseccomp does not know and leaves no container behind."""
    document = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["frobnicate"], "action": "SCMP_ACT_ERRNO"}],
    }
    with pytest.raises(profile.ProfileError, match="unknown syscall 'frobnicate'"):
        rt.create(shell("uncompiled", "true", seccomp=document))
    assert "uncompiled" not in {info.name for info in rt.list()}


def test_ptrace_is_refused_only_on_kernels_where_it_could_bypass_seccomp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    denied = {name for rule in profile.default_rules() for name in rule.names}
    assert "ptrace" not in denied  # this kernel is newer than 4.8
    fake = os.uname_result(("Linux", "host", "4.4.0-210-generic", "#1", "x86_64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert "ptrace" in {name for rule in profile.default_rules() for name in rule.names}


def test_docker_conditions_are_evaluated_for_squishs_capabilities_and_this_kernel() -> None:
    allow = "SCMP_ACT_ALLOW"
    document = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [],
        "syscalls": [
            {"names": ["getpid"], "action": allow},
            {"names": ["unshare"], "action": allow, "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["chroot"], "action": allow, "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["ptrace"], "action": allow, "includes": {"minKernel": "4.8"}},
            {"names": ["iopl"], "action": allow, "includes": {"arches": ["s390x"]}},
            {"names": ["getppid"], "action": allow, "excludes": {"caps": ["CAP_KILL"]}},
        ],
    }
    _, rules = profile.parse_profile(document)
    assert [rule.names for rule in rules] == [("getpid",), ("chroot",), ("ptrace",)]
    with pytest.raises(profile.ProfileError, match=r"unsupported profile key\(s\): listenerPath"):
        profile.parse_profile({**document, "listenerPath": "/run/x"})
    with pytest.raises(profile.ProfileError, match=r"unsupported key\(s\): errno"):
        profile.parse_profile({"defaultAction": allow, "syscalls": [{"names": [], "errno": 1}]})


def test_a_profile_file_must_be_a_small_regular_file(tmp_path: Path) -> None:
    with pytest.raises(profile.ProfileError, match="not a regular file"):
        compiled_profile(Path("/dev/zero"))
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (profile.MAX_PROFILE_BYTES + 1))
    with pytest.raises(profile.ProfileError, match="larger than"):
        compiled_profile(big)


def test_a_profile_past_the_kernels_instruction_limit_is_refused() -> None:
    rule = {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}
    many = [{**rule, "args": [{"index": 0, "value": n, "op": "SCMP_CMP_EQ"}]} for n in range(5000)]
    with pytest.raises(profile.ProfileError, match="BPF instructions; the kernel takes"):
        seccomp.compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": many})
