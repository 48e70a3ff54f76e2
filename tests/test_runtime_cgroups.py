"""Each container's cgroup v2 leaf, on this machine's v2 hierarchy: membership, cgroup
namespace, cgroup.kill, freeze, events, refusal of limits whose controller is missing.

Runs where a cgroup v2 folder is delegated to the test account (``make test`` as root
sets one up: scripts/host-setup.sh); the limits themselves are proven in a VM
(tests/test_cgroups_vm.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from runtime.api.spec import BindMount, ContainerSpec, Resources
from runtime.cgroups import fs as cgroups
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerPaused, ContainerStartError, HostSetupError
from runtime.util.files import read_json
from tests.conftest import rootless
from tests.support import descendants_of, detected_cgroups, processes_mentioning, shell
from tests.test_holder_death import kill_holder
from tests.test_reconciler_e2e import eventually

FOUND = detected_cgroups()
DELEGATED = FOUND if isinstance(FOUND, cgroups.CgroupfsDriver) else None
pytestmark = [
    rootless,
    pytest.mark.skipif(DELEGATED is None, reason=f"no cgroup v2 folder delegated: {FOUND.problem}"),
]


def sleeper(name: str, script: str = "exec sleep 1000", **fields: object) -> ContainerSpec:
    fields.setdefault("stop_timeout", 0.2)
    return shell(name, script, **fields)


def leaf_of(pid: int) -> cgroups.Leaf:
    folder = cgroups.cgroup_of(pid)
    assert folder is not None
    return cgroups.Leaf(folder)


def test_a_container_lives_in_its_own_leaf_which_is_its_cgroup_root(rt: LinuxRuntime) -> None:
    info = rt.run(sleeper("leafy"))
    assert info.pid is not None
    leaf = leaf_of(info.pid)
    assert DELEGATED is not None
    assert leaf.path.parent == DELEGATED.root / "squish" / rt._group
    assert leaf.path.name.startswith("run.")  # the leaf a spare made ahead
    run = read_json(rt._dir("leafy") / "run.json")
    assert isinstance(run, dict) and run["cgroup"] == str(leaf.path)
    assert str(info.pid) in (leaf.path / "cgroup.procs").read_text().split()
    inside = rt.exec_command("leafy", ["cat", "/proc/1/cgroup", "/proc/self/cgroup"])
    assert [line for line in inside.output.splitlines() if line.startswith("0::")] == [
        "0::/",
        "0::/",
    ]  # the init and an exec'd command both see their leaf as the root
    rt.remove("leafy", force=True)
    assert not leaf.path.exists()


def test_cgroup_kill_takes_every_process_at_once_even_a_double_forked_one(
    rt: LinuxRuntime,
) -> None:
    script = "trap '' TERM; (sleep 1000 &); echo forked; exec sleep 1000"
    info = rt.run(sleeper("escapee", script))
    assert info.pid is not None
    for _ in range(1000):
        if rt.logs("escapee") == b"forked\n":
            break
        time.sleep(0.005)
    leaf = leaf_of(info.pid)
    members = [int(p) for p in (leaf.path / "cgroup.procs").read_text().split()]
    assert len(members) >= 3  # the init, the command, the orphaned sleep
    described = {p: Path(f"/proc/{p}/stat").read_text()[:60] for p in members}
    assert leaf.kill()
    # An empty cgroup means every member is past the kernel's cgroup_exit(); the last
    # steps of its exit (becoming a zombie) may still be under way on a busy machine.
    for pid in members:
        assert _dies(pid), (pid, described)
    assert rt.wait("escapee", timeout=30) == 128 + signal.SIGKILL  # killed, not exited


def _dies(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie within a few thousand looks."""
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(2000):
        try:
            if ") Z " in stat.read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.001)
    return False


def test_stop_ends_a_container_that_ignores_sigterm(rt: LinuxRuntime) -> None:
    info = rt.run(sleeper("stubborn", "trap '' TERM; (sleep 1000 &); exec sleep 1000"))
    assert info.pid is not None
    leaf = leaf_of(info.pid)
    stopped = rt.stop("stubborn")
    assert stopped.state.value == "exited"
    assert not leaf.populated()


def test_pause_freezes_every_process_and_resume_thaws_them(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    counter = tmp_path / "n"
    counter.write_text("0")
    script = "i=0; while :; do i=$((i+1)); echo $i > /data/n; usleep 5000; done"
    rt.run(
        sleeper("ticker", script, binds=(BindMount(source=str(tmp_path), target="/data", rw=True),))
    )

    def ticks() -> int:
        """The last count written; 0 while empty (``echo`` truncates first: an empty read
        is read again a few times, but a container frozen mid-write leaves it empty)."""
        for _ in range(50):
            if text := counter.read_text().strip():
                return int(text)
            time.sleep(0.001)
        return 0

    eventually(lambda: ticks() > 3, "the ticker counting")
    assert rt.pause("ticker").paused
    frozen_at = ticks()
    time.sleep(0.2)  # a tick every 5 ms would have counted ~40 by now
    assert ticks() == frozen_at
    assert rt.inspect("ticker").paused
    with pytest.raises(ContainerPaused, match="paused"):
        rt.exec_command("ticker", ["true"])
    assert not rt.resume("ticker").paused
    eventually(lambda: ticks() > frozen_at, "the ticker counting again")


def test_an_exited_containers_leaf_is_empty_and_kept_until_it_is_removed(
    rt: LinuxRuntime,
) -> None:
    info = rt.run(sleeper("brief", "sleep 0.2; exit 3"))
    assert info.pid is not None
    leaf = leaf_of(info.pid)
    assert rt.wait("brief", timeout=30) == 3
    for _ in range(1000):
        if not leaf.populated():
            break
        time.sleep(0.005)
    assert not leaf.populated() and leaf.path.exists()
    after = rt.inspect("brief")
    assert (after.oom_kills, after.pids_refused) == (0, 0)
    rt.remove("brief")
    assert not leaf.path.exists()


@pytest.mark.skipif(
    DELEGATED is not None and {"memory", "pids"} <= DELEGATED.controllers,
    reason="the controllers are delegated here",
)
def test_limits_whose_controller_is_missing_are_refused_before_anything_is_made(
    rt: LinuxRuntime,
) -> None:
    limited = sleeper("limited", resources=Resources(memory=64 * 1024**2, pids=10))
    with pytest.raises(HostSetupError) as caught:
        rt.create(limited)
    assert "memory" in str(caught.value) and "not delegated" in str(caught.value)
    assert "Delegate=" in caught.value.fix
    assert "limited" not in {i.name for i in rt.list()}
    rt.run(sleeper("unlimited"))  # containers without limits still run
    assert os.path.exists(rt.state / "containers" / "unlimited")


def test_a_paused_container_is_thawed_to_stop_cleanly_and_then_not_paused(
    rt: LinuxRuntime,
) -> None:
    script = "trap 'exit 7' TERM; echo trapped; while :; do usleep 10000; done"
    rt.run(sleeper("frozen", script, stop_timeout=30))
    # paused before its shell set the trap, SIGTERM would end it (143), thawed or not
    eventually(lambda: b"trapped" in rt.logs("frozen"), "the trap set")
    assert rt.pause("frozen").paused
    stopped = rt.stop("frozen")  # without the thaw: 30 s, then SIGKILL (137)
    assert stopped.exit_code == 7
    assert not stopped.paused


def _idle_leaves(rt: LinuxRuntime) -> set[Path]:
    """The leaves of this state folder once no container runs: the warm spares' only,
    one each, each with its init in it."""
    leaves: set[Path] = set()

    def warm_spares() -> bool:
        leaves.clear()
        leaves.update(_leaves(rt))
        populated = all(cgroups.Leaf(leaf).populated() for leaf in leaves)
        return len(leaves) == rt.settings.spares and populated

    eventually(warm_spares, f"{rt.settings.spares} leaves, one per warm spare")
    return leaves


def test_a_start_that_fails_leaves_no_leaf(rt: LinuxRuntime) -> None:
    rt.run(sleeper("first", "true"))
    rt.remove("first", force=True)
    before = _idle_leaves(rt)
    with pytest.raises(ContainerStartError):
        rt.run(sleeper("nowhere", "true", workdir="/no/such/folder"))
    # the failed start's leaf (its spare's, made ahead) is gone, and only the warm
    # spares' are left: a new spare made its own
    assert len(before - _idle_leaves(rt)) == 1


def test_a_spare_killed_before_use_leaves_no_leaf(rt: LinuxRuntime) -> None:
    rt.run(sleeper("first", "true"))
    rt.remove("first", force=True)
    before = min(_idle_leaves(rt))
    (init,) = (int(p) for p in (before / "cgroup.procs").read_text().split())
    os.kill(_spare_of(rt, init), signal.SIGKILL)
    eventually(lambda: not before.exists(), "the killed spare's leaf removed")
    assert before not in _idle_leaves(rt)  # another spare took its place
    assert rt.run(sleeper("second")).pid is not None


def test_a_holder_that_exits_takes_every_spare_and_its_leaf_along(rt: LinuxRuntime) -> None:
    rt.run(sleeper("first", "true"))
    rt.remove("first", force=True)
    inits = [
        int(p) for leaf in _idle_leaves(rt) for p in (leaf / "cgroup.procs").read_text().split()
    ]
    spares = [_spare_of(rt, init) for init in inits]
    assert len(set(spares)) == len(inits) == rt.settings.spares
    rt.holder.stop()
    assert _leaves(rt) == []
    for pid in (*inits, *spares):
        eventually(partial(_gone, pid), f"{pid} gone")


def test_a_spare_that_took_a_request_too_slowly_never_launches_it_twice(
    rt: LinuxRuntime,
) -> None:
    """The holder gives up on a spare that does not say it took the request within 10 s
    and hands the request to another: the first must not launch it too when it goes on
    (it holds the request and the client's connection by then)."""
    rt.run(sleeper("first", "true"))
    rt.remove("first", force=True)
    inits = [
        int(p) for leaf in _idle_leaves(rt) for p in (leaf / "cgroup.procs").read_text().split()
    ]
    stalled = [_spare_of(rt, init) for init in inits]
    marker = f"sleep {100_000 + time.monotonic_ns() % 800_000}"  # seconds: one of ours
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        info = rt.run(sleeper("twice", f"exec {marker}"))
    finally:
        for pid in stalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert info.pid is not None
    time.sleep(1.0)  # what a stalled spare would do once it goes on (nothing, now)
    (running,) = processes_mentioning(marker)  # the container's, and no other
    assert running[0] in {pid for pid, _ in descendants_of(info.pid)} | {info.pid}


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _spare_of(rt: LinuxRuntime, init: int) -> int:
    """The spare launcher waiting with the warm init ``init``: the holder's child besides
    it that holds the pipes between them. The init's leaf is populated before the
    process that forked and placed it exits and leaves it to the holder (a subreaper):
    until then the spare is not found yet."""
    holder = rt.holder.identity()
    assert holder is not None
    return eventually(partial(_spare_beside, holder.pid, init), f"the spare of init {init}")


def _spare_beside(holder: int, init: int) -> int | None:
    tasks = Path(f"/proc/{holder}/task").iterdir()
    children = {int(c) for task in tasks for c in (task / "children").read_text().split()}
    if init not in children:  # still its placing process's
        return None
    pipes = {p for p in _fds(init) if p.startswith("pipe:")}
    return next((c for c in children - {init} if pipes & _fds(c)), None)


def _fds(pid: int) -> set[str]:
    try:
        return {os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()}
    except FileNotFoundError:  # a process that has just ended
        return set()


def test_a_new_holder_finds_the_leaf_a_spare_made_ahead(rt: LinuxRuntime) -> None:
    info = rt.run(sleeper("kept", "trap '' TERM; (sleep 1000 &); exec sleep 1000"))
    assert info.pid is not None
    leaf = leaf_of(info.pid)
    kill_holder(rt)
    # the killed holder's idle spare saw it go, and took its leaf along
    eventually(lambda: set(_leaves(rt)) == {leaf.path}, "only the container's leaf left")
    inside = rt.exec_command("kept", ["cat", "/proc/self/cgroup"])  # through a new holder
    assert "0::/" in inside.output.splitlines()
    stopped = rt.stop("kept")  # SIGTERM ignored: SIGKILL, then cgroup.kill of the leaf
    assert stopped.exit_code == 128 + signal.SIGKILL and not leaf.populated()
    rt.remove("kept")
    assert not leaf.path.exists()


def test_a_new_holder_removes_the_empty_leaves_no_record_names(rt: LinuxRuntime) -> None:
    # A spare killed with its holder (SIGKILL to both) never removes the leaf it made
    # ahead; nothing did after, and the folder of leaves stayed too.
    rt.run(sleeper("ended", "true"))
    assert rt.wait("ended", timeout=60) == 0
    run = read_json(rt._dir("ended") / "run.json")
    assert isinstance(run, dict)
    kept = Path(run["cgroup"])  # an exited container's leaf: its OOM and pids counts
    stale = kept.parent / f"run.stale{os.getpid()}"
    stale.mkdir()
    try:
        rt.holder.stop()
        assert stale.exists() and kept.exists()
        rt.holder.ensure()
        assert not stale.exists()
        assert kept.exists()
        rt.remove("ended")
        assert not kept.exists()
    finally:
        if stale.exists():
            stale.rmdir()


def _leaves(rt: LinuxRuntime) -> list[Path]:
    assert DELEGATED is not None
    return [p for p in (DELEGATED.root / "squish" / rt._group).iterdir() if p.is_dir()]


def test_a_leaf_discarded_while_a_process_moves_in_is_removed_all_the_same(
    rt: LinuxRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare's mover can put its init into the leaf between the kill and the removal of
    a discard (the holder removing the leaf of a spare that died idle): the removal fails
    busy, and the leaf was left behind. It is killed again and removed."""
    info = rt.run(sleeper("beside"))
    assert info.pid is not None
    leaf = cgroups.Leaf(leaf_of(info.pid).path.parent / f"run.late{os.getpid()}")
    leaf.path.mkdir()
    late = subprocess.Popen(["sleep", "600"])  # plays the init moved in late
    kill = cgroups.Leaf.kill

    def kill_then_move_in(self: cgroups.Leaf, timeout: float = 10.0) -> bool:
        done = kill(self, timeout)
        if late.returncode is None and late.poll() is None:
            (self.path / "cgroup.procs").write_text(str(late.pid))
        return done

    monkeypatch.setattr(cgroups.Leaf, "kill", kill_then_move_in)
    try:
        leaf.discard()
        assert not leaf.path.exists()
        assert late.wait() == -signal.SIGKILL
    finally:
        late.kill()  # by its pid, should it still run
        late.wait()
        monkeypatch.undo()
        leaf.discard()
