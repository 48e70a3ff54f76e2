"""``exec_command``: a command run inside a running container, end to end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from runtime.api.spec import ContainerSpec
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerNotFound, ContainerNotRunning
from runtime.holder.exec_runner import OUTPUT_LIMIT
from runtime.util.files import read_json
from tests.conftest import rootless
from tests.support import BUSYBOX, children_of, shell

pytestmark = rootless


def sleeper(name: str, **fields: object) -> ContainerSpec:
    return shell(name, "echo inside > /tmp/mark; exec sleep 600", stop_timeout=0, **fields)


def started(rt: LinuxRuntime, spec: ContainerSpec) -> None:
    rt.run(spec)
    for _ in range(1000):  # the command writes its mark as it starts
        if rt.exec_command(spec.name, ["test", "-f", "/tmp/mark"]).exit_code == 0:
            return
        time.sleep(0.005)
    raise AssertionError("the container never wrote its mark")


def test_a_command_runs_in_the_containers_namespaces_and_environment(rt: LinuxRuntime) -> None:
    started(rt, sleeper("ex", env={"GREETING": "hello"}, hostname="boxy", workdir="/etc"))
    script = (
        "echo $GREETING; hostname; pwd; cat /tmp/mark; echo $$;"
        "ls /proc | grep -cE '^[0-9]+$'; id -u; ls /proc/self/fd | tr '\\n' ' '"
    )
    result = rt.exec_command("ex", ["sh", "-c", script])
    lines = result.output.splitlines()
    assert (result.exit_code, result.timed_out) == (0, False), result.output
    assert lines[:4] == ["hello", "boxy", "/etc", "inside"]  # env, uts, workdir, its /tmp
    assert int(lines[4]) < 10  # a pid of the container's pid namespace
    assert int(lines[5]) < 10  # it sees the container's processes only
    assert lines[6] == "0"
    assert set(lines[7].split()) <= {"0", "1", "2", "3"}  # nothing of the holder (3: ls's own)


def test_exit_codes_and_output_come_back(rt: LinuxRuntime) -> None:
    started(rt, sleeper("codes"))
    failed = rt.exec_command("codes", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (failed.exit_code, failed.output) == (3, "out\nerr\n")
    missing = rt.exec_command("codes", ["no-such-program"])
    assert missing.exit_code == 127 and "not found" in missing.output
    big = rt.exec_command("codes", ["sh", "-c", f"head -c {OUTPUT_LIMIT * 3} /dev/zero"])
    assert (big.exit_code, len(big.output)) == (0, OUTPUT_LIMIT)


def test_a_command_past_its_deadline_is_killed_with_what_it_started(rt: LinuxRuntime) -> None:
    started(rt, sleeper("slow"))
    result = rt.exec_command(
        "slow", ["sh", "-c", "sleep 300 & echo started; sleep 300"], timeout=0.3
    )
    assert (result.exit_code, result.timed_out) == (124, True)
    assert result.output == "started\n"
    left = rt.exec_command("slow", ["sh", "-c", "ps -o comm | grep -c sleep"])
    assert left.output.strip() == "1"  # only the container's own sleep is left


def test_a_command_past_its_deadline_takes_what_left_its_session_with_it(
    rt: LinuxRuntime,
) -> None:
    started(rt, sleeper("escape"))
    script = (
        "setsid sleep 301 & (setsid sleep 302 &); sh -c 'setsid sleep 303 & exec sleep 304' &"
        "echo started; exec sleep 300"
    )
    result = rt.exec_command("escape", ["sh", "-c", script], timeout=0.5)
    assert (result.exit_code, result.timed_out) == (124, True)
    assert result.output == "started\n"
    left = rt.exec_command("escape", ["ps", "-o", "args"]).output
    assert [line for line in left.splitlines() if "sleep" in line] == ["sleep 600"]


def test_what_a_finished_command_left_running_keeps_running(rt: LinuxRuntime) -> None:
    started(rt, sleeper("behind"))
    result = rt.exec_command("behind", ["sh", "-c", "setsid sleep 305 & sleep 306 &"])
    assert (result.exit_code, result.timed_out) == (0, False)
    # the shell's background children may still be forks of it, not yet `sleep`
    for _ in range(200):
        left = rt.exec_command("behind", ["ps", "-o", "args"]).output
        sleeps = sorted(line for line in left.splitlines() if "sleep" in line)
        if not any(line.startswith("sh ") for line in sleeps):
            break
        time.sleep(0.01)
    assert sleeps == ["sleep 305", "sleep 306", "sleep 600"]


def _log_pumps(rt: LinuxRuntime) -> set[int]:
    pumps = set()
    for run_file in rt.containers.glob("*/run.json"):
        run = read_json(run_file)
        if isinstance(run, dict) and run.get("log_pump") is not None:
            pumps.add(run["log_pump"]["pid"])
    return pumps


def _runners_of(rt: LinuxRuntime, holder: int) -> set[int]:
    """The holder's children that are exec runners: in the host's pid namespace (one
    NSpid entry) and not dumpable (their environ is closed to us), unlike the spare
    launchers, the warm inits and slirp4netns; and not a container's log pump (the
    native one is not dumpable either)."""
    found = set()
    pumps = _log_pumps(rt)
    for pid, _ in children_of(holder):
        if pid in pumps:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            Path(f"/proc/{pid}/environ").read_bytes()
        except PermissionError:
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            if len(nspid.split()) == 2:
                found.add(pid)
        except FileNotFoundError:
            continue
    return found


def test_a_command_leaves_no_process_in_the_holder(rt: LinuxRuntime) -> None:
    started(rt, sleeper("tidy"))
    holder = rt.holder.identity()
    assert holder is not None
    slow = threading.Thread(target=rt.exec_command, args=("tidy", ["sleep", "2"]))
    slow.start()
    seen = False
    try:  # the detector sees a runner while one works
        while slow.is_alive() and not seen:
            seen = bool(_runners_of(rt, holder.pid))
            time.sleep(0.001)
    finally:
        slow.join()
    assert seen
    for _ in range(5):
        assert rt.exec_command("tidy", ["true"]).exit_code == 0
    for _ in range(6000):  # the holder reaps each runner once it has answered
        if not _runners_of(rt, holder.pid):
            break
        time.sleep(0.01)
    assert _runners_of(rt, holder.pid) == set()


def test_only_a_running_container_takes_a_command(rt: LinuxRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        rt.exec_command("nobody", ["true"])
    rt.run(ContainerSpec(name="done", rootfs=BUSYBOX, argv=("true",), network="none"))
    rt.wait("done", timeout=60)
    with pytest.raises(ContainerNotRunning, match="not running"):
        rt.exec_command("done", ["true"])
    with pytest.raises(ValueError, match="needs a command"):
        rt.exec_command("done", [])


def test_the_keeper_of_a_command_is_out_of_reach_of_the_containers_root(
    rt: LinuxRuntime,
) -> None:
    started(rt, sleeper("keeper"))
    script = (
        "keeper=$PPID; [ $keeper -gt 1 ] && echo has-keeper;"
        "cat /proc/$keeper/environ >/dev/null 2>&1 && echo environ-read;"
        "ls /proc/$keeper/fd >/dev/null 2>&1 && echo fds-listed;"
        "cat /proc/$keeper/cmdline >/dev/null && echo cmdline-read"
    )
    result = rt.exec_command("keeper", ["sh", "-c", script])
    assert result.output == "has-keeper\ncmdline-read\n"  # what ps shows, nothing more


def test_the_keeper_shows_the_container_no_path_of_the_host(rt: LinuxRuntime) -> None:
    # A fork of the holder carries the holder's command line: the interpreter's path, the
    # state folder's and the cgroup's. ps in the container shows the keeper's instead.
    started(rt, sleeper("titled"))
    script = "cat /proc/$PPID/comm; tr -d '\\000' </proc/$PPID/cmdline; echo"
    assert rt.exec_command("titled", ["sh", "-c", script]).output == "squish-exec\n" * 2


def test_a_command_that_stops_its_keeper_still_gets_its_answer(rt: LinuxRuntime) -> None:
    started(rt, sleeper("stopper"))
    result = rt.exec_command(
        "stopper", ["sh", "-c", "kill -STOP $PPID; exec sleep 309"], timeout=0.3
    )
    assert (result.exit_code, result.timed_out) == (124, True)
    left = rt.exec_command("stopper", ["ps", "-o", "args"]).output
    assert "sleep 309" in left  # the container stopped what would have ended it
    rt.exec_command("stopper", ["pkill", "-f", "sleep 309"])
