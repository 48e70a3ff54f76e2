"""The runtime end to end: real namespaces, real slirp4netns, as an unprivileged user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.api.interface import ContainerState
from runtime.api.spec import BindMount, ContainerSpec
from runtime.client import records
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerExists, ContainerNotFound, ContainerStartError, RootRefused
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.support import BUSYBOX, shell


def run_to_end(rt: LinuxRuntime, spec: ContainerSpec) -> tuple[int, str]:
    rt.run(spec)
    code = rt.wait(spec.name, timeout=60)
    return code, rt.logs(spec.name).decode()


def test_refuses_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(RootRefused, match="refuses to run as root"):
        LinuxRuntime(state=tmp_path / "s", cache=tmp_path / "c")


@rootless
def test_container_starts_and_records_exit_code(rt: LinuxRuntime) -> None:
    info = rt.run(shell("exit-code", "echo started; exit 7"))
    # run() returns once the command started; it may have ended by the time it answers.
    assert info.state in (ContainerState.RUNNING, ContainerState.EXITED)
    assert info.started_at is not None
    assert rt.wait("exit-code", timeout=60) == 7
    after = rt.inspect("exit-code")
    assert after.state is ContainerState.EXITED
    assert after.exit_code == 7
    assert rt.logs("exit-code") == b"started\n"


@rootless
def test_env_reaches_the_command(rt: LinuxRuntime) -> None:
    code, out = run_to_end(
        rt, shell("env", 'echo "$GREETING/$OTHER"', env={"GREETING": "héllo", "OTHER": "a b"})
    )
    assert (code, out) == (0, "héllo/a b\n")


@rootless
def test_command_sees_its_own_pid_namespace(rt: LinuxRuntime) -> None:
    code, out = run_to_end(
        rt, shell("pidns", "echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '")
    )
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "2"  # init is 1, the command is 2
    pids = {int(p) for p in lines[1].split()}
    assert 1 in pids
    assert max(pids) < 10, f"the container sees host processes: {sorted(pids)}"


@rootless
def test_isolation_basics(rt: LinuxRuntime) -> None:
    script = (
        "id -u; hostname; cat /etc/hostname; ls /dev | tr '\\n' ' '; echo;"
        "touch /tmp/ok && echo tmp-writable; grep ' /tmp ' /proc/mounts | cut -d' ' -f3;"
        "touch /should-fail 2>/dev/null || echo root-read-only;"
        "touch /etc/x 2>/dev/null || echo etc-read-only;"
        "cat /proc/self/uid_map | tr -s ' ' | head -1"
    )
    code, out = run_to_end(rt, shell("iso", script, hostname="box"))
    lines = out.splitlines()
    assert code == 0, out
    assert lines[0] == "0"
    assert lines[1:3] == ["box", "box"]
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"} <= set(
        lines[3].split()
    )
    assert lines[4:8] == ["tmp-writable", "tmpfs", "root-read-only", "etc-read-only"]
    assert lines[8].split() == ["0", str(os.getuid()), "1"]


@rootless
def test_bind_mount_read_only_by_default_and_rw_when_asked(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    data = os.urandom(4096) + b"\x00end"
    ro_dir, rw_dir = tmp_path / "ro", tmp_path / "rw"
    ro_dir.mkdir()
    rw_dir.mkdir()
    (ro_dir / "blob.bin").write_bytes(data)
    spec = shell(
        "binds",
        "cat /app/ro/blob.bin > /data/copy.bin; touch /app/ro/x 2>/dev/null || echo ro-refused;"
        "echo written-inside > /data/new.txt",
        binds=(
            BindMount(source=str(ro_dir), target="/app/ro"),
            BindMount(source=str(rw_dir), target="/data", rw=True),
        ),
    )
    code, out = run_to_end(rt, spec)
    assert (code, out) == (0, "ro-refused\n")
    assert (rw_dir / "copy.bin").read_bytes() == data
    assert (rw_dir / "new.txt").read_text() == "written-inside\n"
    assert not (ro_dir / "x").exists()


@rootless
def test_stop_sends_sigterm_to_the_command(rt: LinuxRuntime) -> None:
    rt.run(
        shell(
            "term", "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done"
        )
    )
    # stopped before its shell set the trap, SIGTERM would end it (143)
    while b"ready" not in rt.logs("term"):
        time.sleep(0.005)
    info = rt.stop("term", timeout=30)
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 3
    assert b"got-term" in rt.logs("term")


@rootless
def test_stop_kills_after_the_grace_period(rt: LinuxRuntime) -> None:
    rt.run(
        shell(
            "stubborn", "trap '' TERM; while true; do echo beat; sleep 0.01; done", stop_timeout=0.2
        )
    )
    # stopped before its shell ignored TERM, SIGTERM would end it (143), not the SIGKILL
    while b"beat" not in rt.logs("stubborn"):
        time.sleep(0.005)
    before = rt.inspect("stubborn")
    info = rt.stop("stubborn")
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 128 + signal.SIGKILL
    assert before.pid is not None and before.pid_start_time is not None
    assert not ProcessId(before.pid, before.pid_start_time).alive()
    beats = rt.logs("stubborn").count(b"beat")
    time.sleep(0.1)
    assert rt.logs("stubborn").count(b"beat") == beats, "the command kept running"


@rootless
def test_start_again_after_exit_counts_a_restart(rt: LinuxRuntime) -> None:
    rt.run(shell("again", "echo run"))
    rt.wait("again", timeout=60)
    info = rt.start("again")
    rt.wait("again", timeout=60)
    assert rt.inspect("again").restarts == 1
    assert info.restarts == 1
    assert rt.logs("again") == b"run\nrun\n"


@rootless
def test_container_outlives_the_process_that_started_it(
    rt: LinuxRuntime, state_path: Path, cache_path: Path
) -> None:
    program = (
        "import sys; from pathlib import Path; from runtime.client.linux import LinuxRuntime;"
        "from runtime.api.spec import ContainerSpec, RootfsRef;"
        f"rt = LinuxRuntime(state=Path({str(state_path)!r}), cache=Path({str(cache_path)!r}));"
        "rt.run(ContainerSpec(name='outlives', rootfs=RootfsRef(kind='busybox', version='builtin'),"
        " argv=('sleep', '600'), network='none'))"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=120)
    info = rt.inspect("outlives")
    assert info.state is ContainerState.RUNNING
    assert info.pid is not None and info.pid_start_time is not None
    assert ProcessId(info.pid, info.pid_start_time).alive()


@rootless
def test_errors_name_the_problem(rt: LinuxRuntime, tmp_path: Path) -> None:
    with pytest.raises(ContainerNotFound):
        rt.inspect("nope")
    rt.create(shell("dup", "true"))
    with pytest.raises(ContainerExists):
        rt.create(shell("dup", "true"))
    with pytest.raises(ContainerStartError, match="not-a-program"):
        rt.run(
            ContainerSpec(name="noexec", rootfs=BUSYBOX, argv=("not-a-program",), network="none")
        )
    with pytest.raises(ContainerNotFound):
        rt.inspect("noexec")  # a failed run leaves nothing behind
    missing = tmp_path / "missing"
    with pytest.raises(ContainerStartError, match="does not exist"):
        rt.create(shell("nobind", "true", binds=(BindMount(source=str(missing), target="/x"),)))


@rootless
def test_a_record_is_parsed_again_only_once_it_was_replaced(
    rt: LinuxRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass observes every container: meta.json and run.json are only ever
    replaced (a new inode each write), so one that was not is not parsed again."""
    parsed: list[Path | str] = []

    def counted(path: Path | str) -> object:
        parsed.append(path)
        return read_json(path)

    monkeypatch.setattr(records, "read_json", counted)
    path = tmp_path / "run.json"
    write_json_atomic(path, {"n": 1})
    assert rt._record(tmp_path, "run.json") == {"n": 1} == rt._record(tmp_path, "run.json")
    assert len(parsed) == 1
    write_json_atomic(path, {"n": 2})  # the same size, within the same timestamp tick
    assert rt._record(tmp_path, "run.json") == {"n": 2}
    path.unlink()
    assert rt._record(tmp_path, "run.json") is None


@rootless
def test_an_exit_seen_while_the_folder_is_removed_is_neither_recorded_nor_reported(
    rt: LinuxRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One client looks at a container whose init died without recording its exit while
    another removes the container: the gone folder needs no exit record, and the look
    says nothing alarming about it (it said "cannot record the exit ... kept in
    memory")."""
    rt.run(shell("vanishing", "exec sleep 600", network="none", stop_timeout=0))
    init = ProcessId.of(rt.inspect("vanishing").pid or 0)
    assert init is not None and init.send(signal.SIGKILL) and init.wait_gone(10.0)
    cdir = rt.containers / "vanishing"
    aside = rt.containers / ".gone-vanishing"

    def removed_meanwhile(path: Path | str) -> object:
        if os.fspath(path) == os.fspath(cdir / "exit.json"):
            os.rename(cdir, aside)  # the other client's remove, at this moment
        return read_json(path)

    monkeypatch.setattr("runtime.client.records.read_json", removed_meanwhile)
    try:
        with caplog.at_level("WARNING"):
            rt.inspect("vanishing")
    finally:
        monkeypatch.undo()
        os.rename(aside, cdir)  # for the fixture's clean-up
    assert [r.getMessage() for r in caplog.records if "exit" in r.getMessage()] == []
    assert cdir not in rt._exits
    assert not (cdir / "exit.json").exists()
