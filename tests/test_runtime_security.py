"""Confinement inside the container: seccomp, no_new_privs, capabilities, masked paths."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from runtime import seccomp
from runtime.confine import DEFAULT_CAPABILITIES, capability_names
from runtime.linux import LinuxRuntime
from runtime.mounts import MASKED, READ_ONLY
from runtime.spec import BindMount, ContainerSpec, RootfsRef
from tests.conftest import rootless
from tests.syscall_probes import SUPPORTED, write_probe

pytestmark = rootless

BUSYBOX = RootfsRef(kind="busybox", version="builtin")
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


def run_probes(
    rt: LinuxRuntime, name: str, probes: Path, seccomp_setting: object = "default"
) -> dict[str, int]:
    """Run every probe in ``probes`` inside a container; their exit codes by name."""
    script = "for p in /probes/*; do $p; echo ${p#/probes/} $?; done"
    spec = ContainerSpec.model_validate(
        {
            "name": name,
            "rootfs": BUSYBOX,
            "argv": ("/bin/sh", "-c", script),
            "network": "none",
            "binds": (BindMount(source=str(probes), target="/probes"),),
            "seccomp": seccomp_setting,
        }
    )
    rt.run(spec)
    assert rt.wait(name, timeout=60) == 0, rt.logs(name)
    found = {}
    for line in rt.logs(name).decode().splitlines():
        probe, code = line.rsplit(" ", 1)
        found[probe] = int(code)
    return found


needs_x86_64 = pytest.mark.skipif(not SUPPORTED, reason="the probes are x86_64 programs")


@needs_x86_64
def test_every_denied_syscall_fails_with_eperm(rt: LinuxRuntime, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    expected = {}
    for name in seccomp.DEFAULT_DENIED:
        number = seccomp.syscall_number(name)
        if number is not None:  # e.g. vm86 exists on i386 only
            write_probe(probes / name, number)
            expected[name] = errno.EPERM
    clone = seccomp.syscall_number("clone")
    assert clone is not None
    for flag_name, flag in NAMESPACE_FLAGS.items():
        write_probe(probes / f"clone-{flag_name}", clone, flag | SIGCHLD)
        expected[f"clone-{flag_name}"] = errno.EPERM
    clone3 = seccomp.syscall_number("clone3")
    assert clone3 is not None
    write_probe(probes / "clone3", clone3)
    expected["clone3"] = errno.ENOSYS  # so that C libraries fall back to clone
    getpid = seccomp.syscall_number("getpid")
    assert getpid is not None
    write_probe(probes / "getpid", getpid)
    expected["getpid"] = 0  # the filter lets the rest through
    assert len(expected) > 60
    assert run_probes(rt, "denied", probes) == expected


@needs_x86_64
def test_unconfined_and_custom_profiles(rt: LinuxRuntime, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    keyctl, getcwd = seccomp.syscall_number("keyctl"), seccomp.syscall_number("getcwd")
    assert keyctl is not None and getcwd is not None
    write_probe(probes / "keyctl", keyctl, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session
    write_probe(probes / "getcwd", getcwd, 0, 0)  # a NULL buffer: ERANGE when allowed
    assert run_probes(rt, "confined", probes) == {"keyctl": errno.EPERM, "getcwd": errno.ERANGE}
    assert run_probes(rt, "unconfined", probes, "unconfined") == {
        "keyctl": 0,
        "getcwd": errno.ERANGE,
    }
    profile = {
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
    assert run_probes(rt, "custom", probes, profile) == {
        "keyctl": errno.EPERM,
        "getcwd": errno.EACCES,
    }


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_the_command_and_exec_have_no_new_privs_and_dockers_capabilities(
    rt: LinuxRuntime,
) -> None:
    rt.run(
        ContainerSpec(
            name="caps",
            rootfs=BUSYBOX,
            argv=("/bin/sh", "-c", "cat /proc/self/status; exec sleep 600"),
            network="none",
            stop_timeout=0,
        )
    )
    for _ in range(2000):
        if b"Seccomp:" in rt.logs("caps"):
            break
    exec_status = rt.exec_command("caps", ["cat", "/proc/self/status"]).output
    for text in (rt.logs("caps").decode(), exec_status):
        status = _status(text)
        for field in ("CapEff", "CapPrm", "CapBnd", "CapInh"):
            assert sorted(capability_names(int(status[field], 16))) == sorted(
                DEFAULT_CAPABILITIES
            ), field
        assert int(status["CapAmb"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"


def test_kernel_files_are_masked_or_read_only(rt: LinuxRuntime) -> None:
    checks = [
        f"if [ -d {p} ]; then echo {p} dir $(ls -A {p} | wc -l); "
        f"elif [ -e {p} ]; then echo {p} file $(wc -c < {p}); fi"
        for p in MASKED
    ]
    checks += [
        f"if [ -e {p} ]; then touch {p}/x 2>/dev/null || echo > {p} 2>/dev/null "
        f"|| echo {p} read-only; fi"
        for p in READ_ONLY
    ]
    checks.append("echo other > /proc/sys/kernel/hostname 2>/dev/null || echo hostname kept")
    rt.run(
        ContainerSpec(
            name="masks",
            rootfs=BUSYBOX,
            argv=("/bin/sh", "-c", "; ".join(checks)),
            network="none",
        )
    )
    assert rt.wait("masks", timeout=60) == 0
    lines = rt.logs("masks").decode().splitlines()
    shown = [line.split() for line in lines if line.startswith(("/proc", "/sys"))]
    assert shown, lines
    for path, kind, *rest in (entry for entry in shown if entry[1] in ("dir", "file")):
        assert rest == ["0"], f"{path} ({kind}) is not masked: {rest}"
    on_this_kernel = {p for p in MASKED if os.path.lexists(p)}  # e.g. no kcore on some
    assert {"/proc/keys", "/sys/firmware"} <= on_this_kernel <= {entry[0] for entry in shown}
    read_only = {entry[0] for entry in shown if entry[1] == "read-only"}
    assert {p for p in READ_ONLY if Path(p).exists()} <= read_only
    assert "hostname kept" in lines


def test_a_profile_document_is_checked_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nope"]}]})
    )
    with pytest.raises(seccomp.ProfileError, match="action"):
        seccomp.load_profile(bad)
    bad.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    with pytest.raises(seccomp.ProfileError, match="unknown syscall 'no_such_call'"):
        seccomp.load_profile(bad)
    bad.write_text("{not json")
    with pytest.raises(seccomp.ProfileError, match="not JSON"):
        seccomp.load_profile(bad)


def test_ptrace_is_refused_only_on_kernels_where_it_could_bypass_seccomp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    denied = {name for rule in seccomp.default_rules() for name in rule.names}
    assert "ptrace" not in denied  # this kernel is newer than 4.8
    fake = os.uname_result(("Linux", "host", "4.4.0-210-generic", "#1", "x86_64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert "ptrace" in {name for rule in seccomp.default_rules() for name in rule.names}
