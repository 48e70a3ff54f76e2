"""A holder killed (SIGKILL) leaves nothing broken: the helpers it started end with it,
a container restarted later is not blocked by what it left, and a new holder takes the
running containers over (their commands run, their networks heal)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from runtime.api.spec import ContainerSpec, NetworkAttachment, PortMapping
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerUnreachable
from runtime.holder.protocol import HOLDER_PROTOCOL, HOLDER_RECORD
from runtime.network import slirp
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from runtime.wire import Forward
from tests.conftest import rootless
from tests.support import (
    BUSYBOX,
    free_port,
    free_ports,
    http_get,
    kill_slirp,
    processes_mentioning,
    shell,
    start_controller,
)
from tests.test_controller_kills import NAMES, SEED, STARTS_FIRST, change_the_folder, squishfile
from tests.test_reconciler_e2e import cli, cli_env, eventually, make_site

pytestmark = rootless

SERVE = "echo served > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


def served(name: str, port: int) -> ContainerSpec:
    """A web server forwarded from 127.0.0.1:``port``."""
    return shell(
        name,
        SERVE,
        network="slirp4netns",
        ports=(PortMapping(container=80, host=port),),
        stop_timeout=0,
    )


def kill_holder(rt: LinuxRuntime) -> None:
    """SIGKILL the holder this test's runtime started and wait until it is gone."""
    holder = rt.holder.identity()
    assert holder is not None
    assert holder.send(signal.SIGKILL)
    assert holder.wait_gone(30.0)


def test_a_restored_helper_ends_with_the_holder_and_the_container_starts_again(
    rt: LinuxRuntime,
) -> None:
    port = free_port()
    rt.run(served("orphan", port))
    kill_slirp(rt, "orphan")
    healed = rt.restore_network("orphan").slirp_pid
    assert healed is not None
    restored = ProcessId.of(healed)
    assert restored is not None
    kill_holder(rt)
    assert restored.wait_gone(30.0)  # its exit pipe was the holder's
    rt.stop("orphan")
    rt.start("orphan")
    assert http_get(port, "/index.html") == b"served\n"


def _record_helper(rt: LinuxRuntime, name: str, helper: ProcessId) -> None:
    """Make the stopped container's run record name ``helper`` as its slirp4netns, as a
    holder that gave a restored helper no exit pipe (an older squish) leaves it."""
    run_file = rt.containers / name / "run.json"
    run = read_json(run_file)
    assert isinstance(run, dict)
    write_json_atomic(run_file, {**run, "slirp": helper.to_json()})


def test_a_leftover_helper_holding_the_port_is_ended_before_the_port_check(
    rt: LinuxRuntime, tmp_path: Path, started_here: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    rt.run(served("left", port))
    rt.stop("left")
    netns = subprocess.Popen(["unshare", "-Urn", "sleep", "600"])
    started_here.append(netns)
    for _ in range(3000):  # unshare runs sleep once its namespaces exist
        if Path(f"/proc/{netns.pid}/comm").read_text() == "sleep\n":
            break
        time.sleep(0.001)
    leftover = slirp.spawn(tmp_path, False, 10.0, target_pid=netns.pid)
    try:
        slirp.add_forward(tmp_path / slirp.API_SOCKET, Forward("tcp", "127.0.0.1", port, 80))
        _record_helper(rt, "left", leftover)
        rt.start("left")
        assert not leftover.alive()
    finally:
        leftover.send(signal.SIGKILL)  # the slirp4netns this test started, if it still runs
        with contextlib.suppress(ChildProcessError):
            os.waitpid(leftover.pid, 0)  # this process's child: no zombie left behind
    assert http_get(port, "/index.html") == b"served\n"


def test_a_recorded_helper_pid_that_is_another_program_now_is_left_alone(
    rt: LinuxRuntime, started_here: list[subprocess.Popen[bytes]]
) -> None:
    rt.run(served("reused", free_port()))
    rt.stop("reused")
    stranger = subprocess.Popen(["sleep", "600"])
    started_here.append(stranger)
    identity = ProcessId.of(stranger.pid)
    assert identity is not None
    _record_helper(rt, "reused", identity)
    rt.start("reused")
    assert identity.alive()


def test_a_new_holder_takes_over_the_running_containers(rt: LinuxRuntime) -> None:
    port = free_port()
    before = rt.run(served("kept", port))
    assert http_get(port, "/index.html") == b"served\n"
    kill_holder(rt)
    ran = rt.exec_command("kept", ["cat", "/tmp/index.html"])
    assert (ran.exit_code, ran.output) == (0, "served\n")
    assert rt.probe_tcp("kept", 80)
    kill_slirp(rt, "kept")
    healed = rt.restore_network("kept")  # in place: no recreate
    assert (healed.pid, healed.pid_start_time) == (before.pid, before.pid_start_time)
    assert http_get(port, "/index.html") == b"served\n"
    rt.run(shell("beside", "exec sleep 600", stop_timeout=0))  # the new holder's own
    assert rt.exec_command("beside", ["true"]).exit_code == 0


def test_a_holder_an_older_version_started_is_replaced_and_its_containers_kept(
    rt: LinuxRuntime,
) -> None:
    """After an upgrade the holder still running would refuse the requests' new fields:
    the next call asks it to exit, and the new holder takes its containers over."""
    port = free_port()
    before = rt.run(served("kept", port))
    older = rt.holder.identity()
    assert older is not None
    record = read_json(rt.state / HOLDER_RECORD)
    assert isinstance(record, dict) and record.get("protocol") == HOLDER_PROTOCOL
    write_json_atomic(rt.state / HOLDER_RECORD, older.to_json())  # as an older holder wrote it
    rt.run(shell("beside", "exec sleep 600", stop_timeout=0))
    newer = rt.holder.identity()
    assert newer is not None and newer.pid != older.pid
    assert older.wait_gone(30.0)
    info = rt.inspect("kept")
    assert (info.pid, info.pid_start_time) == (before.pid, before.pid_start_time)
    assert rt.exec_command("kept", ["cat", "/tmp/index.html"]).output == "served\n"
    assert http_get(port, "/index.html") == b"served\n"
    rt.run(shell("third", "exec sleep 600", stop_timeout=0))
    kept = rt.holder.identity()  # a holder of this version is kept
    assert kept is not None and (kept.pid, kept.start_time) == (newer.pid, newer.start_time)


def test_a_container_the_new_holder_cannot_reach_says_why(rt: LinuxRuntime) -> None:
    rt.run(shell("old", "exec sleep 600", stop_timeout=0))
    run_file = rt.containers / "old" / "run.json"
    run = read_json(run_file)
    assert isinstance(run, dict)
    run.pop("namespaces", None)  # as a launcher of an older squish recorded it
    write_json_atomic(run_file, run)
    kill_holder(rt)
    reason = (
        "the holder that started old is gone and its namespaces cannot be reached: "
        "its run record names no namespaces"
    )
    with pytest.raises(ContainerUnreachable, match=reason):
        rt.exec_command("old", ["true"])


def _namespaces_held_by(pid: int) -> set[str]:
    """The namespaces process ``pid`` holds descriptors of (``net:[INODE]`` ...)."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.endswith("]") and ":[" in target:
                held.add(target)
    return held


def test_a_container_taken_over_is_let_go_when_it_ends(rt: LinuxRuntime) -> None:
    rt.run(shell("brief", "exec sleep 600", stop_timeout=0))
    run = read_json(rt.containers / "brief" / "run.json")
    assert isinstance(run, dict)
    its_net = f"net:[{run['namespaces']['net']}]"
    kill_holder(rt)
    assert rt.exec_command("brief", ["true"]).exit_code == 0
    holder = rt.holder.identity()
    assert holder is not None
    assert its_net in _namespaces_held_by(holder.pid)
    rt.stop("brief")
    for _ in range(3000):  # the holder's loop sees the init end through a pidfd
        if its_net not in _namespaces_held_by(holder.pid):
            break
        time.sleep(0.001)
    assert its_net not in _namespaces_held_by(holder.pid)


ROUNDS = int(os.environ.get("SQUISH_HOLDER_KILL_ROUNDS", "4"))
"""Rounds of :func:`test_holder_kills_in_a_row_leave_nothing_broken` (more on demand)."""


def _helpers(state_path: Path) -> list[int]:
    """The slirp4netns processes of this test run's state folder."""
    return [pid for pid, cmd in processes_mentioning(str(state_path)) if "slirp4netns" in cmd]


def _restore(rt: LinuxRuntime, name: str) -> ProcessId:
    """Restore the network of ``name``; return its new slirp4netns."""
    healed = rt.restore_network(name).slirp_pid
    identity = None if healed is None else ProcessId.of(healed)
    assert identity is not None
    return identity


def test_holder_kills_in_a_row_leave_nothing_broken(rt: LinuxRuntime, state_path: Path) -> None:
    ports = {name: free_port() for name in ("a", "b")}
    for name, port in ports.items():
        rt.run(served(name, port))
    restored: dict[str, ProcessId] = {}  # helpers the holder alive now started again
    for round_ in range(ROUNDS):
        name = "ab"[round_ % 2]
        kill_slirp(rt, name)
        restored[name] = _restore(rt, name)
        kill_holder(rt)
        for each in sorted(restored):  # every one ended with the holder; the new one heals
            assert restored[each].wait_gone(30.0), (round_, each)
            restored[each] = _restore(rt, each)
        for each, port in ports.items():
            assert http_get(port, "/index.html") == b"served\n", (round_, each)
            script = "setsid sleep 307 & exec sleep 308"
            slow = rt.exec_command(each, ["sh", "-c", script], timeout=0.2)
            assert slow.timed_out, (round_, each)
        assert len(_helpers(state_path)) == 2, round_  # one each, none left over
    for name in ports:
        left = rt.exec_command(name, ["ps", "-o", "args"]).output
        assert "sleep 30" not in left, left
    rt.stop("a")
    rt.start("a")  # its restored helper never blocks its ports
    assert http_get(ports["a"], "/index.html") == b"served\n"


KILL_ROUNDS = int(os.environ.get("SQUISH_HOLDER_KILL_ROUNDS", "4")) + 2
"""Rounds of the random test below: a few more than the plain one."""


def test_controller_and_holder_killed_at_random_moments_lose_nothing(
    tmp_path: Path, state_path: Path, cache_path: Path, session_runtime: LinuxRuntime
) -> None:
    """As ``test_killing_the_controller_at_random_moments_loses_nothing``, with the holder
    killed too (at a random moment of the pass, every other round) and slirp4netns
    killed (so that holders restart helpers that then lose their holder)."""
    rng = random.Random(SEED)
    folder = tmp_path / "desired"
    folder.mkdir()
    make_site(folder, "site", "killed and back\n")
    env = cli_env(state_path, cache_path)
    versions: Counter[str] = Counter()
    holders_killed = 0
    pool = free_ports(4 + KILL_ROUNDS)
    ports = {name: pool.pop() for name in NAMES[:4]}
    for name, port in ports.items():
        (folder / f"{name}.toml").write_text(squishfile(port, 0, start_first=name in STARTS_FIRST))
    try:
        for round_ in range(KILL_ROUNDS):
            change_the_folder(folder, rng, ports, pool, versions)
            _kill_a_helper(session_runtime, folder, rng)
            loop = start_controller(folder, env)
            time.sleep(rng.uniform(0.25, 0.8))  # start-up takes ~0.3 s: kill mid-pass
            if round_ % 2:
                holders_killed += _kill_the_holder_if_any(session_runtime)
            loop.send_signal(signal.SIGKILL)  # a process this test started
            loop.wait(30)
        eventually(lambda: cli(env, "apply", str(folder)).returncode == 0, "one apply")
        _converged(session_runtime, state_path, folder, ports, versions)
        assert holders_killed > 0
    finally:
        down = cli(env, "down", str(folder))
        assert down.returncode == 0, down.stderr


def _kill_the_holder_if_any(rt: LinuxRuntime) -> bool:
    """SIGKILL the holder if one runs now: a pass needs none when it only reads records
    and removes (the keeper, not a holder, restarts a killed shared slirp4netns)."""
    holder = rt.holder.identity()
    if holder is None or not holder.send(signal.SIGKILL):
        return False
    assert holder.wait_gone(30.0)
    return True


def _kill_a_helper(rt: LinuxRuntime, folder: Path, rng: random.Random) -> None:
    """SIGKILL the slirp4netns of one running container of ``folder``, if any."""
    running = [
        info
        for info in rt.list()
        if info.spec.labels.get("squish.folder") == str(folder) and info.slirp_pid is not None
    ]
    if running:
        victim = ProcessId.of(rng.choice(running).slirp_pid or 0)
        if victim is not None and victim.name() == "slirp4netns":  # one this test's runtime started
            victim.send(signal.SIGKILL)


def _converged(
    rt: LinuxRuntime,
    state_path: Path,
    folder: Path,
    ports: dict[str, int],
    versions: Counter[str],
) -> None:
    wanted = {p.stem for p in folder.glob("*.toml")}
    mine = {i.name: i for i in rt.list() if i.spec.labels.get("squish.folder") == str(folder)}
    assert set(mine) == wanted
    for name in wanted:
        assert mine[name].state.value == "running", mine[name]
        assert mine[name].spec.env == {"VERSION": str(versions[name])}
        assert http_get(ports[name], "/index.html") == b"killed and back\n"
        ran = rt.exec_command(name, ["true"])  # whichever holder started it
        assert ran.exit_code == 0, name
    live = {i.slirp_pid for i in rt.list() if i.slirp_pid is not None}
    assert set(_helpers(state_path)) == live  # one slirp4netns per running container


def test_a_deleted_state_folder_takes_its_holder_keeper_and_containers_along(
    cache_path: Path,
) -> None:
    """A holder (and a network keeper) whose state folder was deleted could never be
    reached again, nor its containers: they stayed for good (and then the cgroup leaves
    of its containers and idle spares did)."""
    state = Path("/dev/shm") / f"sqd-{os.getpid()}"
    state.mkdir(mode=0o700)
    runtime = LinuxRuntime(state=state, cache=cache_path)
    try:
        alone = runtime.run(ContainerSpec(name="d1", rootfs=BUSYBOX, argv=("sleep", "1000")))
        bridged = runtime.run(
            ContainerSpec(
                name="d2",
                rootfs=BUSYBOX,
                argv=("sleep", "1000"),
                network="bridge",
                networks=(NetworkAttachment(network="n"),),
            )
        )
        holder = runtime.holder.identity()
        assert holder is not None and alone.pid and bridged.pid
        keeper = read_json(state / "bridge" / "keeper.json")
        assert isinstance(keeper, dict)
        supervisor = ProcessId.from_json(keeper["supervisor"])
        assert supervisor is not None
        inits = [ProcessId(i.pid, i.pid_start_time or 0) for i in (alone, bridged) if i.pid]
        group = runtime.cgroups.ahead(runtime._group)
    except BaseException:
        runtime.shutdown()
        raise
    subprocess.run(["rm", "-rf", "--", str(state)], check=True)
    for process in (holder, supervisor, *inits):
        assert process.wait_gone(60.0), process  # the holders check every 10 s of quiet
    # the holder's spares (forked from it: its command line) see it gone in their own time
    eventually(lambda: not processes_mentioning(str(state)), "no process of the state left")
    if group is not None:  # its containers' and spares' cgroup leaves went too, and their folder
        assert not group.exists(), sorted(p.name for p in group.iterdir() if p.is_dir())
