"""Confinement inside the container: seccomp, no_new_privs, capabilities, masked paths."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from runtime.api.spec import BindMount, ContainerSpec
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerStartError
from runtime.sandbox.capabilities import CAPABILITY_NUMBERS, DEFAULT_CAPABILITIES
from runtime.sandbox.mounts import MASKED, READ_ONLY
from runtime.security import profile, seccomp
from tests.bpf import syscall_number
from tests.conftest import rootless
from tests.support import BUSYBOX, run_probes, shell
from tests.syscall_probes import SUPPORTED, write_probe

pytestmark = rootless


def compiled_profile(path: Path) -> bytes:
    """A profile file read as validation reads it, then compiled as create compiles it."""
    return seccomp.compile_profile(profile.read_profile(path)[0])


needs_x86_64 = pytest.mark.skipif(not SUPPORTED, reason="the probes are x86_64 programs")


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


def _getcwd_refusing(name: str, tmp_path: Path, refused: list[str]) -> ContainerSpec:
    """A container whose command is a static probe calling getcwd with a NULL buffer
    (exit code ERANGE when allowed), with a profile refusing ``refused`` (EPERM)."""
    probes = tmp_path / "probes"
    probes.mkdir()
    getcwd = syscall_number("getcwd")
    assert getcwd is not None
    write_probe(probes / "getcwd", getcwd, 0, 0)
    document = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": refused, "action": "SCMP_ACT_ERRNO"}],
    }
    binds = (BindMount(source=str(probes), target="/probes"),)
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=("/probes/getcwd",),
        network="none",
        binds=binds,
        seccomp=document,
    )


@needs_x86_64
def test_a_profile_refusing_what_the_command_never_calls_still_starts_it(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """The init seals itself with the container's filter before it says it is mounted:
    what it still does after the seal must not depend on calls a profile may refuse
    (here every stat and close_range, which a static command does without)."""
    refused = ["stat", "lstat", "fstat", "newfstatat", "statx", "close_range"]
    rt.run(_getcwd_refusing("sealed", tmp_path, refused))
    assert rt.wait("sealed", timeout=60) == errno.ERANGE


@needs_x86_64
def test_a_command_named_without_a_path_is_found_whatever_the_profile_refuses(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """The command is looked up in the container's PATH (stat and access calls) before
    the init seals itself: a profile refusing those calls, which the command itself
    never makes, must not make it "not found"."""
    refused = ["stat", "lstat", "fstat", "newfstatat", "statx", "access", "faccessat"]
    refused.append("faccessat2")
    spec = _getcwd_refusing("by-name", tmp_path, refused)
    rt.run(spec.model_copy(update={"argv": ("getcwd",), "env": {"PATH": "/probes:/bin"}}))
    assert rt.wait("by-name", timeout=60) == errno.ERANGE


@needs_x86_64
def test_a_profile_refusing_ioctl_still_starts_the_command(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """The init hands its descriptors to the native init with ioctl (FIONCLEX) under the
    container's filter: refused, it starts the command itself, as when execveat is."""
    rt.run(_getcwd_refusing("no-ioctl", tmp_path, ["ioctl"]))
    assert rt.wait("no-ioctl", timeout=60) == errno.ERANGE


def test_a_profile_refusing_fcntl_leaves_the_command_none_of_the_inits_descriptors(
    rt: LinuxRuntime,
) -> None:
    """The native init marks its own descriptors close-on-exec under the container's
    filter: where the profile refuses that, the command must not start with them (the
    container's folder, outside its root, among them)."""
    document = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["fcntl"], "action": "SCMP_ACT_ERRNO"}],
    }
    spec = ContainerSpec(
        name="fds",
        rootfs=BUSYBOX,
        argv=("/bin/ls", "/proc/self/fd"),
        network="none",
        seccomp=document,
    )
    try:
        rt.run(spec)
    except ContainerStartError as exc:  # the native init: it cannot mark them
        assert "cannot start: Operation not permitted" in str(exc)
        return
    assert rt.wait("fds", timeout=60) == 0  # the Python init: they are close-on-exec
    assert rt.logs("fds").split() == [b"0", b"1", b"2", b"3"], rt.logs("fds")


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


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"includes": {"caps": 5}}, r"syscalls\[0\]\.includes\.caps must be an array of strings"),
        ({"excludes": {"arches": 5}}, r"syscalls\[0\]\.excludes\.arches must be an array"),
        ({"includes": {"arches": [1]}}, r"includes\.arches must be an array of strings"),
        ({"args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 2**80}]}, "0 to 2\\*\\*64-1"),
        ({"args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": -1}]}, "0 to 2\\*\\*64-1"),
        ({"args": [{"index": 0, "op": "SCMP_CMP_EQ", "valueTwo": 2**64}]}, "0 to 2\\*\\*64-1"),
    ],
)
def test_a_rule_of_the_wrong_shape_is_a_profile_error(
    rule: dict[str, object], message: str
) -> None:
    """Found probing as a user: a TypeError escaped, or a value was cut to 64 bits."""
    rule = {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", **rule}
    document = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}
    with pytest.raises(profile.ProfileError, match=message):
        profile.parse_profile(document)


def test_a_profile_nested_too_deeply_is_a_profile_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(profile.ProfileError, match="nested too deeply"):
        profile.read_profile(deep)


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
