"""The loop's own bookkeeping, against the fake runtime."""

from __future__ import annotations

import errno
import math
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from reconciler.control.converge import Converger
from reconciler.control.loop import PassResult, Reconciler, _watch_exit, raise_fd_limit, run_loop
from reconciler.control.network_status import network_rows
from reconciler.control.status import StatusStore
from reconciler.desired.source import FolderSource
from reconciler.planning.plan import ConditionKind
from reconciler.settings import Settings
from reconciler.squishfile.networks import runtime_network_name
from tests.fakes import FakeClock, FakeRuntime
from tests.support import write_anew


def reconciler(tmp_path: Path, clock: FakeClock) -> Reconciler:
    runtime = FakeRuntime(clock=clock)
    return Reconciler(
        # no settle time: a file written or deleted counts at the next pass
        source=FolderSource(tmp_path, Settings(settle_ms=0)),
        runtime=runtime,
        converger=Converger(runtime, clock=clock),
        clock=clock,
    )


def test_deadlines_in_the_past_never_wake_the_loop(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    loop = reconciler(tmp_path, clock)
    loop._holds = {"done": 50.0, "failed-long-ago": 99.0}
    assert loop.next_deadline() == math.inf  # a finished job must not make the loop spin


def test_the_earliest_future_deadline_wakes_the_loop(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    loop = reconciler(tmp_path, clock)
    loop._holds = {"a": 103.0, "b": 101.5, "old": 10.0}
    assert loop.next_deadline() == 1.5


@pytest.mark.anyio
async def test_a_pass_sweeps_what_killed_clients_left_before_looking(tmp_path: Path) -> None:
    loop = reconciler(tmp_path, FakeClock(100.0))
    assert isinstance(loop.runtime, FakeRuntime)
    await loop.reconcile("test")
    assert [c.method for c in loop.runtime.calls][:2] == ["sweep", "list"]


def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(
        '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
    )
    loop = reconciler(tmp_path, FakeClock(100.0))
    assert isinstance(loop.runtime, FakeRuntime)
    _, _, todo = loop.dry_run()
    assert [a.name for a in todo.actions if not a.for_network] == ["web"]  # something to do
    assert [c.method for c in loop.runtime.calls] == ["list", "list_networks"]
    assert loop.runtime.list() == []


@pytest.mark.anyio
async def test_a_failed_sweep_is_reported_and_does_not_cost_the_pass(tmp_path: Path) -> None:
    loop = reconciler(tmp_path, FakeClock(100.0))
    assert isinstance(loop.runtime, FakeRuntime)
    loop.runtime.fail("sweep", "", PermissionError(13, "a leftover is not ours"))
    result = await loop.reconcile("test")
    assert [c.method for c in loop.runtime.calls][:2] == ["sweep", "list"]
    assert result.failed == ()
    assert loop.record.last_error is not None and "a leftover is not ours" in loop.record.last_error


@pytest.fixture
def waiting_child() -> Iterator[subprocess.Popen[bytes]]:
    """A child process that exits once its stdin is closed."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield child
    child.kill()
    child.wait()


@pytest.mark.anyio
async def test_the_exit_of_a_watched_process_triggers_a_pass(
    waiting_child: subprocess.Popen[bytes],
) -> None:
    assert waiting_child.stdin is not None
    send, receive = anyio.create_memory_object_stream[str](1)
    async with send, receive, anyio.create_task_group() as group:
        await group.start(_watch_exit, waiting_child.pid, send)
        assert receive.statistics().current_buffer_used == 0  # it still runs
        waiting_child.stdin.close()
        assert await receive.receive() == "a process exited"


@pytest.mark.anyio
async def test_a_process_that_cannot_be_watched_costs_its_exit_watch_not_the_loop(
    waiting_child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pidfd per running init (and slirp4netns): a thousand containers reach the
    usual limit of 1,024 descriptors. The resync still sees that process exit."""

    def out_of_descriptors(pid: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", out_of_descriptors)
    send, receive = anyio.create_memory_object_stream[str](1)
    async with send, receive, anyio.create_task_group() as group:
        await group.start(_watch_exit, waiting_child.pid, send)
    assert receive.statistics().current_buffer_used == 0  # no pass for a process that runs
    assert waiting_child.stdin is not None
    waiting_child.stdin.close()


def test_the_loop_may_open_as_many_descriptors_as_the_hard_limit_allows() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(hard, 1 << 16)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.anyio
async def test_a_refused_duplicate_does_not_decide_the_running_containers_back_off(
    tmp_path: Path,
) -> None:
    """web.toml runs "web" and keeps the name; aaa.toml, refused, must not lend its policy."""
    app = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
    (tmp_path / "web.toml").write_text(app)
    loop = reconciler(tmp_path, FakeClock(100.0))
    assert isinstance(loop.runtime, FakeRuntime)
    await loop.reconcile("test")
    loop.runtime.finish("web", 1)
    (tmp_path / "aaa.toml").write_text(f'name = "web"\n{app}\n[restart]\npolicy = "never"\n')
    desired, _, todo = loop.dry_run()
    assert desired.containers["web"].file.name == "web.toml"
    assert todo.actions == ()
    assert sorted((c.name, c.kind.value) for c in todo.conditions) == [
        ("web", "BackOff"),
        ("web", "DuplicateName"),
    ]
    assert loop._restart_at.keys() == {"web"}


class _FullStore(StatusStore):
    """A status store on a disk with no space left."""

    def write(self, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.anyio
async def test_a_pass_that_cannot_record_itself_keeps_what_it_did(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "web.toml").write_text('[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n')
    loop = reconciler(folder, FakeClock(100.0))
    (tmp_path / "state").mkdir()
    loop.store = _FullStore(tmp_path / "state", folder)
    result = await loop.reconcile("test")
    assert [(str(o.action.kind), o.ok) for o in result.outcomes] == [
        ("ensure-network", True),
        ("create", True),
    ]
    assert loop.record.last_error is not None and "No space left" in loop.record.last_error


@pytest.mark.anyio
async def test_the_mass_deletion_guard_counts_removals_over_its_window(tmp_path: Path) -> None:
    """40 files deleted one per pass, half a second apart: no single pass removes more than
    one, but within the window more than half of the folder goes, and there it holds."""
    app = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
    for i in range(40):
        (tmp_path / f"c{i:02}.toml").write_text(app)
    clock = FakeClock(100.0)
    loop = reconciler(tmp_path, clock)
    assert isinstance(loop.runtime, FakeRuntime)
    await loop.reconcile("test")
    assert len(loop.runtime.list()) == 40
    guarded_at = None
    for i in range(40):
        (tmp_path / f"c{i:02}.toml").unlink()
        clock.advance(0.5)
        result = await loop.reconcile("files changed")
        guards = [c for c in result.plan.conditions if c.kind is ConditionKind.MASS_DELETE]
        if guards and guarded_at is None:
            guarded_at = i
            assert "21 of the folder's 40" in guards[0].message
            assert "within the last 5 min" in guards[0].message
    assert guarded_at == 20  # 20 of 40 is not more than half; the 21st is
    assert len(loop.runtime.list()) == 20


@pytest.mark.anyio
async def test_a_file_dropped_soon_after_the_last_one_went_finds_its_network_made(
    tmp_path: Path,
) -> None:
    """The loop keeps the folder's network, once nothing joins it, for its linger: a
    file dropped meanwhile starts its container on it (making a network is what costs a
    bridge container's first start most), and the network goes once the linger is over."""
    app = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
    clock = FakeClock(100.0)
    loop = reconciler(tmp_path, clock)
    loop.network_linger = 60.0
    runtime = loop.runtime
    assert isinstance(runtime, FakeRuntime)
    (tmp_path / "a.toml").write_text(app)
    await loop.reconcile("files changed")
    (tmp_path / "a.toml").unlink()
    await loop.reconcile("files changed")
    assert runtime.list() == [] and len(runtime.list_networks()) == 1
    assert loop.next_deadline() == 60.0  # a pass then removes it
    desired, _, todo = loop.dry_run()
    (row,) = network_rows(desired, loop.networks, todo)
    assert (row["name"], row["state"]) == ("default", "Lingering")  # not Ready: it waits to go
    clock.advance(30.0)
    (tmp_path / "b.toml").write_text(app)
    await loop.reconcile("files changed")
    assert [c.name for c in runtime.list()] == ["b"]
    (tmp_path / "b.toml").unlink()
    clock.advance(30.0)
    await loop.reconcile("files changed")
    clock.advance(59.0)
    await loop.reconcile("resync")
    assert len(runtime.list_networks()) == 1  # its linger counts from when b left
    clock.advance(1.0)
    await loop.reconcile("deadline")
    assert runtime.list_networks() == [] and loop.next_deadline() == math.inf
    assert runtime.history("ensure_network", "remove_network") == [
        ("ensure_network", runtime_network_name(tmp_path, "default")),
        ("remove_network", runtime_network_name(tmp_path, "default")),
    ]


@pytest.mark.anyio
async def test_with_no_linger_the_last_container_takes_its_network_along(tmp_path: Path) -> None:
    app = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
    loop = reconciler(tmp_path, FakeClock(100.0))
    assert isinstance(loop.runtime, FakeRuntime) and loop.network_linger == 0.0
    (tmp_path / "a.toml").write_text(app)
    await loop.reconcile("files changed")
    (tmp_path / "a.toml").unlink()
    await loop.reconcile("files changed")
    assert loop.runtime.list_networks() == [] and loop.next_deadline() == math.inf


@pytest.mark.anyio
async def test_a_stopped_loop_takes_the_networks_it_kept_for_their_linger_along(
    tmp_path: Path,
) -> None:
    """No pass ends a linger once the loop stops: the network (and, for the user's only
    bridge network, the shared namespace's keeper) would stay until an ``apply``."""
    app = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
    (tmp_path / "a.toml").write_text(app)
    (tmp_path / "b.toml").write_text(app.replace("[layers]", 'networks = ["back"]\n[layers]'))
    loop = reconciler(tmp_path, FakeClock(100.0))
    loop.network_linger = 60.0
    runtime = loop.runtime
    assert isinstance(runtime, FakeRuntime)
    await loop.reconcile("start")
    (tmp_path / "a.toml").unlink()
    stop = anyio.Event()

    def on_pass(result: PassResult) -> None:
        if not result.plan.actions:  # a is gone, its network kept
            stop.set()

    await run_loop(loop, settings=Settings(resync=3600.0), on_pass=on_pass, stop=stop)
    assert [c.name for c in runtime.list()] == ["b"]
    assert [n.name for n in runtime.list_networks()] == [runtime_network_name(tmp_path, "back")]


@pytest.mark.anyio
async def test_a_port_edit_checked_out_with_a_pause_keeps_its_container(tmp_path: Path) -> None:
    """git checks a file out by unlink, then create: a pass that runs between the two
    (the checkout paused) must not destroy the container, or the edit restarts it."""
    clock = FakeClock(100.0)
    runtime = FakeRuntime(clock=clock)
    loop = Reconciler(
        source=FolderSource(tmp_path, clock=clock),  # the default settle time, 300 ms
        runtime=runtime,
        converger=Converger(runtime, clock=clock),
        clock=clock,
    )
    app = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n\n[[ports]]\n'
    path = tmp_path / "web.toml"
    path.write_text(app + "container = 80\nhost = 8080\n")
    await loop.reconcile("files changed")
    [before] = runtime.list()
    path.unlink()
    clock.advance(0.05)
    between = await loop.reconcile("files changed")
    write_anew(path, app + "container = 80\nhost = 8081\n")
    clock.advance(0.05)
    edited = await loop.reconcile("files changed")
    [after] = runtime.list()
    assert between.plan.actions == ()
    assert {a.kind.value for a in edited.plan.actions} == {"bind", "release"}
    assert (after.pid, [p.host for p in after.ports]) == (before.pid, [8081])
