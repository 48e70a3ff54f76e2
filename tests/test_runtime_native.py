"""The native init and log pump (runtime.native), and the Python ones they stand in for."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.client.linux import LinuxRuntime
from runtime.native import SOURCE, binary_name, installed
from runtime.settings import BadSetting, RuntimeSettings
from runtime.util.files import read_json
from tests.conftest import rootless, short_folder
from tests.support import shell

native = pytest.mark.skipif(
    installed() is None, reason="the native binary is not installed (scripts/host-setup.sh)"
)

_WHO_IS_INIT = "cat /proc/1/comm; tr -d '\\000' </proc/1/cmdline; echo"


def _run(rt: LinuxRuntime, name: str, script: str, **fields: object) -> tuple[int, str]:
    rt.run(shell(name, script, **fields))
    return rt.wait(name, timeout=60), rt.logs(name).decode()


def _processes(rt: LinuxRuntime, name: str) -> dict[str, str]:
    """The names (comm) of a running container's init and log pump."""
    run = read_json(rt.containers / name / "run.json")
    assert isinstance(run, dict)
    return {
        kind: Path(f"/proc/{run[key]['pid']}/comm").read_text().strip()
        for kind, key in (("init", "init"), ("pump", "log_pump"))
    }


@rootless
@native
def test_a_running_container_keeps_the_native_init_and_pump(rt: LinuxRuntime) -> None:
    rt.run(shell("kept", "exec sleep 600", stop_timeout=0))
    assert _processes(rt, "kept")["init"] == "squish-init"  # it reported the start
    for _ in range(2000):  # the pump's process execs on its own, after the fork
        if _processes(rt, "kept")["pump"] == "squish-pump":
            break
        time.sleep(0.005)
    assert _processes(rt, "kept") == {"init": "squish-init", "pump": "squish-pump"}


@rootless
@native
def test_the_container_sees_an_init_named_and_nothing_more(rt: LinuxRuntime) -> None:
    # Its arguments (descriptor numbers, the command line) are blanked once read.
    assert _run(rt, "seen", _WHO_IS_INIT) == (0, "squish-init\nsquish-init\n")


@rootless
@native
def test_the_native_init_records_how_the_command_ended(rt: LinuxRuntime) -> None:
    assert _run(rt, "three", "echo out; echo err >&2; exit 3") == (3, "out\nerr\n")
    rt.run(shell("stopped", "exec sleep 600", stop_timeout=5))
    rt.stop("stopped")  # SIGTERM, forwarded to the command
    assert rt.wait("stopped", timeout=60) == 128 + signal.SIGTERM
    exited = read_json(rt.containers / "stopped" / "exit.json")
    assert isinstance(exited, dict)
    assert (exited["exit_code"], exited["signal"]) == (143, signal.SIGTERM)
    assert isinstance(exited["finished_at"], float)


@rootless
@native
def test_a_profile_refusing_execveat_keeps_the_python_init(rt: LinuxRuntime) -> None:
    refuse = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["execveat"], "action": "SCMP_ACT_ERRNO"}],
    }
    code, output = _run(rt, "no-execveat", _WHO_IS_INIT, seccomp=refuse)
    assert code == 0
    assert not output.startswith("squish-init"), output


@pytest.fixture
def python_rt(cache_path: Path) -> Iterator[LinuxRuntime]:
    """A runtime of its own (its own holder) with SQUISH_NATIVE=0."""
    settings = dataclasses.replace(RuntimeSettings.from_environ(), native=False)
    with short_folder("sqn") as state:
        runtime = LinuxRuntime(state=state, cache=cache_path, settings=settings)
        try:
            yield runtime
        finally:
            for info in runtime.list():
                runtime.remove(info.name, force=True)
            runtime.shutdown()


@rootless
def test_without_the_native_binary_python_does_the_same(python_rt: LinuxRuntime) -> None:
    rt = python_rt
    code, output = _run(rt, "py", f"echo out; {_WHO_IS_INIT}; exit 3")
    assert code == 3
    out, name, command_line = output.splitlines()
    assert out == "out" and name != "squish-init"  # the Python init's own name
    assert command_line == "squish-init"  # not the holder's (the host's paths)
    rt.run(shell("py-stopped", "exec sleep 600", stop_timeout=5))
    assert "squish" not in " ".join(_processes(rt, "py-stopped").values())
    rt.stop("py-stopped")
    assert rt.wait("py-stopped", timeout=60) == 128 + signal.SIGTERM


def test_only_a_binary_of_the_current_source_is_used(tmp_path: Path) -> None:
    me = os.getuid()
    assert installed(tmp_path, me) is None
    (tmp_path / binary_name(b"an older source")).write_bytes(b"")
    assert installed(tmp_path, me) is None
    current = tmp_path / binary_name(SOURCE.read_bytes())
    current.write_bytes(b"")
    current.chmod(0o711)
    assert installed(tmp_path, me) == current


def test_a_binary_others_may_read_or_that_is_not_root_s_is_not_used(tmp_path: Path) -> None:
    current = tmp_path / binary_name(SOURCE.read_bytes())
    current.write_bytes(b"")
    current.chmod(0o755)  # readable: an init exec'd from it would be dumpable
    assert installed(tmp_path, os.getuid()) is None
    current.chmod(0o711)
    if os.getuid() != 0:
        assert installed(tmp_path) is None  # the account's own file, not root's


def test_squish_native_is_0_or_1() -> None:
    assert RuntimeSettings.from_environ({}).native
    assert not RuntimeSettings.from_environ({"SQUISH_NATIVE": "0"}).native
    with pytest.raises(BadSetting, match="SQUISH_NATIVE"):
        RuntimeSettings.from_environ({"SQUISH_NATIVE": "no"})


def _run_native_init(
    tmp_path: Path, program: str, *argv: str, go: bytes = b"G"
) -> tuple[int, bytes]:
    """Run the native init outside any container, as the Python init would exec it
    (``go``: what the spare wrote on the go pipe before it closed it); return its exit
    code and what it reported."""
    binary = installed()
    if binary is None:
        pytest.skip("the native binary is not installed (scripts/host-setup.sh)")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n")
    (tmp_path / "pids.events").write_text("max 3\n")
    report_r, report_w = os.pipe()
    state = os.open(tmp_path, os.O_DIRECTORY)
    log = os.open(tmp_path / "output", os.O_WRONLY | os.O_CREAT, 0o600)
    oom = os.open(tmp_path / "memory.events", os.O_RDONLY)
    pids = os.open(tmp_path / "pids.events", os.O_RDONLY)
    go_r, go_w = os.pipe()
    os.write(go_w, go)
    os.close(go_w)
    fds = (go_r, state, report_w, log, report_w, oom, pids)  # any fd will do as exit pipe
    numbers = [str(fd) for fd in fds]
    init = [str(binary), "init", *numbers, "0", repr(argv[0]), program, *argv]
    try:
        done = subprocess.run(init, pass_fds=fds, check=False)
    finally:
        for fd in {*fds}:
            os.close(fd)
    with os.fdopen(report_r, "rb") as report:
        return done.returncode, report.read()


def test_the_native_init_records_the_exit_and_the_cgroup_events(tmp_path: Path) -> None:
    code, report = _run_native_init(tmp_path, "/bin/sh", "sh", "-c", "echo out; exit 7")
    assert (code, report) == (7, b"S")
    assert (tmp_path / "output").read_bytes() == b"out\n"
    exited = read_json(tmp_path / "exit.json")
    assert isinstance(exited, dict)
    assert {k: v for k, v in exited.items() if k != "finished_at"} == {
        "exit_code": 7,
        "signal": 0,
        "oom_kills": 2,
        "pids_refused": 3,
    }
    assert (tmp_path / "exit.json").stat().st_mode & 0o777 == 0o600


def test_the_native_init_reports_a_command_killed_by_a_signal(tmp_path: Path) -> None:
    code, _ = _run_native_init(tmp_path, "/bin/sh", "sh", "-c", "kill -TERM $$")
    assert code == 128 + signal.SIGTERM
    exited = read_json(tmp_path / "exit.json")
    assert isinstance(exited, dict)
    assert (exited["exit_code"], exited["signal"]) == (143, signal.SIGTERM)


def test_the_native_init_reports_a_command_that_cannot_start(tmp_path: Path) -> None:
    code, report = _run_native_init(tmp_path, str(tmp_path / "missing"), "missing")
    assert (code, report) == (127, b"E'missing' cannot start: No such file or directory")
    assert not (tmp_path / "exit.json").exists()


def test_the_native_init_starts_the_command_once_told_to_go(tmp_path: Path) -> None:
    code, report = _run_native_init(tmp_path, "/bin/sh", "sh", "-c", "echo ran")
    assert (code, report) == (0, b"S")
    assert (tmp_path / "output").read_bytes() == b"ran\n"


@pytest.mark.parametrize("go", [b"", b"X"])
def test_the_native_init_starts_nothing_without_go(tmp_path: Path, go: bytes) -> None:
    """The spare failed (its end closed) or said something else: no command runs."""
    code, report = _run_native_init(tmp_path, "/bin/sh", "sh", "-c", "echo ran", go=go)
    assert (code, report) == (125, b"")
    assert (tmp_path / "output").read_bytes() == b""
    assert not (tmp_path / "exit.json").exists()
