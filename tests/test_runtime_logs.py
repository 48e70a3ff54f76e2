"""Container logs on real rootless containers: a flood stays within its cap, logs live
on disk under the state home, the CLI streams them and follows them across rotations."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.api import ContainerState, LogLimits
from runtime.client import logfiles
from runtime.client.linux import LinuxRuntime
from runtime.client.paths import log_dir
from runtime.client.records import leaf_of
from runtime.holder.logpump import PIPE_SIZE
from tests.conftest import rootless
from tests.support import REPO, shell

pytestmark = [pytest.mark.userns, rootless]


def _log_files(log_path: str) -> list[Path]:
    path = Path(log_path)
    return [*logfiles.rotated(path), *([path] if path.exists() else [])]


def _wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_a_flood_stays_within_its_cap_while_the_container_is_observed(rt: LinuxRuntime) -> None:
    limits = LogLimits(max_size=1 << 20, max_files=2)
    info = rt.run(shell("flood", "exec yes", logs=limits))
    _wait_for(lambda: len(_log_files(info.log_path)) == 2, "a rotation")
    for _ in range(15):  # a few seconds of `yes`, observed all along
        assert rt.inspect("flood").state is ContainerState.RUNNING
        assert [i.name for i in rt.list()] == ["flood"]
        time.sleep(0.2)
    rt.stop("flood")
    files = _log_files(info.log_path)
    sizes = [f.stat().st_size for f in files]
    assert sum(sizes) <= limits.max_size * limits.max_files + PIPE_SIZE, sizes
    assert all(size <= limits.max_size for size in sizes), sizes
    assert sizes[0] == limits.max_size  # the rotated copy was filled
    assert set(files[0].read_bytes()) == set(b"y\n")


def test_the_log_lands_under_the_state_home_not_in_the_state_folder(rt: LinuxRuntime) -> None:
    info = rt.run(shell("placed", "echo placed"))
    assert rt.wait("placed", timeout=60) == 0
    log = Path(info.log_path)
    assert log.is_relative_to(log_dir(rt.settings))
    assert not log.is_relative_to(rt.state)
    assert log.read_bytes() == b"placed\n" == rt.logs("placed")
    assert not list(rt.state.rglob("output.log*")), "nothing of the log in the state folder"
    meta = json.loads((rt.state / "containers" / "placed" / "meta.json").read_text())
    assert meta["log_path"] == str(log)  # the record finds it
    rt.rename("placed", "moved")
    assert rt.inspect("moved").log_path == str(log) and rt.logs("moved") == b"placed\n"
    rt.remove("moved")
    assert not log.parent.exists(), "removing the container removes its log"


def test_the_logs_no_record_names_any_more_are_swept(rt: LinuxRuntime) -> None:
    """The state folder is in memory and a reboot empties it; the logs are on disk. The
    next sweep of the same state folder removes the logs its records no longer name, and
    keeps those of its containers and of other state folders."""
    kept = rt.run(shell("kept", "echo kept"))
    lost = rt.run(shell("lost", "echo lost"))
    assert rt.wait("kept", timeout=60) == 0 and rt.wait("lost", timeout=60) == 0
    cdir = rt.state / "containers" / "lost"
    leaf = leaf_of(json.loads((cdir / "run.json").read_text()))
    if leaf is not None:
        leaf.remove()
    shutil.rmtree(cdir)  # as a reboot empties the state folder
    elsewhere = Path(lost.log_path).parent.with_name(f"other-{os.getpid()}")
    rt.sweep()
    assert not Path(lost.log_path).parent.exists()
    logfiles.claim(elsewhere, rt.state.with_name(f"{rt.state.name}-other"))
    rt.sweep()
    assert elsewhere.is_dir(), "another state folder's log"
    assert rt.logs("kept") == b"kept\n" == Path(kept.log_path).read_bytes()
    logfiles.discard(elsewhere / "output.log")
    assert not elsewhere.exists()


def test_a_sweep_reads_the_records_again_only_once_a_listing_changed(
    rt: LinuxRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass of a loop sweeps: with nothing made or removed since a sweep that found
    every log named, no record is read (they are 1,000 at scale), and a record that goes
    afterwards still has its log swept."""
    rt.run(shell("kept", "echo kept"))
    lost = rt.run(shell("lost", "echo lost"))
    assert rt.wait("kept", timeout=60) == 0 and rt.wait("lost", timeout=60) == 0
    reads: list[int] = []
    named = rt._named_logs

    def counted() -> set[Path]:
        reads.append(1)
        return named()

    monkeypatch.setattr(rt, "_named_logs", counted)
    rt.sweep()
    assert reads and Path(lost.log_path).exists()
    before = len(reads)
    rt.sweep()
    assert len(reads) == before
    cdir = rt.state / "containers" / "lost"
    leaf = leaf_of(json.loads((cdir / "run.json").read_text()))
    if leaf is not None:
        leaf.remove()
    shutil.rmtree(cdir)  # as a reboot empties the state folder
    rt.sweep()
    assert len(reads) > before and not Path(lost.log_path).parent.exists()


def test_a_record_a_killed_remover_left_is_swept_with_its_log(rt: LinuxRuntime) -> None:
    info = rt.run(shell("halfway", "echo some output; exec sleep 600", stop_timeout=0))
    _wait_for(lambda: Path(info.log_path).exists(), "the log")
    (rt.state / "containers" / "halfway" / "spec.json").unlink()  # a remove cut short
    assert rt.sweep() == ["halfway"]
    assert not Path(info.log_path).parent.exists()


def test_a_command_whose_log_pump_died_gets_sigpipe(rt: LinuxRuntime) -> None:
    """Like a container whose conmon died: its next write to stdout fails."""
    info = rt.run(shell("orphan", "while true; do echo tick; sleep 0.05; done"))
    _wait_for(lambda: b"tick" in rt.logs("orphan"), "output")
    run = json.loads((rt.state / "containers" / "orphan" / "run.json").read_text())
    os.kill(run["log_pump"]["pid"], signal.SIGKILL)
    assert rt.wait("orphan", timeout=60) == 128 + signal.SIGPIPE
    assert info.log_path == rt.inspect("orphan").log_path


def _env(rt: LinuxRuntime) -> dict[str, str]:
    return {**os.environ, "SQUISH_STATE_DIR": str(rt.state)}


CLI = (sys.executable, "-m", "reconciler.cli")


_MEASURE = """
import resource, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
total = 0
while chunk := child.stdout.read(1 << 20):
    total += len(chunk)
child.wait()
print(child.returncode, total, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_logs_of_a_large_log_stream_in_bounded_memory(rt: LinuxRuntime) -> None:
    info = rt.create(shell("big", "true"))
    log = Path(info.log_path)
    log.parent.mkdir(mode=0o700)
    size = 512 << 20
    with log.open("wb") as file:
        file.truncate(size)  # sparse: costs no disk, reads as zeros
    result = subprocess.run(  # `reconciler logs big` under a parent that measures it
        [sys.executable, "-c", _MEASURE, *CLI, "logs", "big"],
        cwd=REPO,
        env=_env(rt),
        capture_output=True,
        check=True,
    )
    code, total, peak_kib = map(int, result.stdout.split())
    assert (code, total) == (0, size), result.stderr
    assert peak_kib < 128 * 1024, f"peak RSS {peak_kib} KiB for a {size >> 20} MiB log"


def test_logs_follow_picks_up_rotations(rt: LinuxRuntime, tmp_path: Path) -> None:
    """``logs -f`` shows every line, although the log keeps only the last two files."""
    control = tmp_path / "control"
    control.mkdir()
    control.chmod(0o777)
    script = (
        "echo ready; until [ -e /control/go ]; do sleep 0.05; done; pad=$(printf '%0480d' 0); "
        'for i in $(seq 1 20); do echo "$i $pad"; sleep 0.25; done'
    )
    binds = ({"source": str(control), "target": "/control"},)
    limits = LogLimits(max_size=4096, max_files=2)
    rt.run(shell("chatty", script, logs=limits, binds=binds))
    follower = subprocess.Popen(
        [*CLI, "logs", "-f", "chatty"], cwd=REPO, env=_env(rt), stdout=subprocess.PIPE
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"ready\n"
        (control / "go").touch()
        rest, _ = follower.communicate()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    numbers = [int(line.split()[0]) for line in rest.splitlines()]
    assert numbers == list(range(1, 21))
    assert not rt.logs("chatty").startswith(b"ready"), "the log itself rotated the start away"
