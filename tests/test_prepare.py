"""SDK layers prepared in the background, against the fake runtime: a pass never waits for
them, a job that ends wakes the loop, a refusal is the container's error, and leaving the
loop cancels what is still being prepared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from reconciler.control.converge import Converger
from reconciler.control.loop import PassResult, Reconciler
from reconciler.control.prepare import Preparer
from reconciler.desired.source import FolderSource
from reconciler.settings import Settings
from runtime.errors import ArchiveRefused
from runtime.util.cancel import Cancelled
from tests.fakes import FakeClock, FakeRuntime
from tests.support import write_atomically

SDK = '[layers]\nbusybox = "builtin"\npython = "3.12"\n\n[run]\ncommand = "sleep"\n'


def web(port: int) -> str:
    return (
        '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n\n'
        f"[[ports]]\ncontainer = 80\nhost = {port}\n"
    )


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime(clock=FakeClock(100.0))


def reconciler(folder: Path, runtime: FakeRuntime) -> Reconciler:
    clock = runtime.clock
    return Reconciler(
        # no settle time: a file written or deleted counts at the next pass
        source=FolderSource(folder, Settings(settle_ms=0)),
        runtime=runtime,
        converger=Converger(runtime, clock=clock),
        clock=clock,
        preparer=Preparer(runtime),
    )


def preparer_of(loop: Reconciler) -> Preparer:
    assert loop.preparer is not None
    return loop.preparer


async def pass_after_preparation(
    loop: Reconciler, folder: Path, between: Callable[[PassResult], None]
) -> PassResult:
    """Drop sdk.toml, run a pass (its job starts), call ``between`` with it, wait for the
    job to wake the loop, and return the pass that follows."""
    write_atomically(folder / "sdk.toml", SDK)
    woke = anyio.Event()
    async with preparer_of(loop).running(woke.set):
        between(await loop.reconcile("test"))
        await woke.wait()
        return await loop.reconcile("layers prepared")


@pytest.mark.anyio
async def test_a_stuck_preparation_holds_up_no_other_containers_change(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    write_atomically(tmp_path / "web.toml", web(8080))
    write_atomically(tmp_path / "sdk.toml", SDK)
    runtime.hold("prepare", "sdk")  # an unpack that never ends
    runtime.hold("run", "sdk")  # so that a create inside the pass would never end either
    loop = reconciler(tmp_path, runtime)
    async with preparer_of(loop).running(lambda: None):
        first = await loop.reconcile("test")
        write_atomically(tmp_path / "web.toml", web(8081))
        second = await loop.reconcile("test")
        assert preparer_of(loop).preparing() == ["sdk"]
        # Its worker thread may not have begun yet on a busy machine: wait until it is in
        # the unpack, so that leaving the loop cancels an unpack, not a job still queued.
        await anyio.to_thread.run_sync(
            runtime.wait_until, lambda: [c.method for c in runtime.in_flight] == ["prepare"]
        )
    made = [str(a).split(":")[0] for a in first.plan.actions if not a.for_network]
    assert made == ["create web"]
    assert [a.kind.value for a in second.plan.actions] == ["bind", "release"]
    assert [p.host for p in runtime.inspect("web").ports] == [8081]
    assert runtime.history("run") == [("run", "web")]
    (ended,) = runtime.ended("prepare", "sdk")  # leaving the loop cancelled it
    assert isinstance(ended.error, Cancelled)


@pytest.mark.anyio
async def test_a_finished_preparation_wakes_the_loop_and_the_container_is_made(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    gate = runtime.hold("prepare", "sdk")
    loop = reconciler(tmp_path, runtime)

    def held(first: PassResult) -> None:
        made_first = [a for a in first.plan.actions if not a.for_network]  # its network is
        assert made_first == [] and runtime.history("run") == []
        gate.set()

    made = await pass_after_preparation(loop, tmp_path, held)
    assert [a.name for a in made.plan.actions] == ["sdk"] and made.failed == ()
    assert runtime.history("prepare", "run") == [("prepare", "sdk"), ("run", "sdk")]


@pytest.mark.anyio
async def test_a_refused_layer_is_the_containers_error_and_nothing_is_made(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    refusal = ArchiveRefused("python.tar.gz", "f1001", "more than 1000 entries")
    runtime.fail("prepare", "sdk", refusal)
    loop = reconciler(tmp_path, runtime)
    failed = await pass_after_preparation(loop, tmp_path, lambda _first: None)
    (outcome,) = failed.failed
    assert outcome.action.name == "sdk" and "more than 1000 entries" in str(outcome.error)
    assert "more than 1000 entries" in loop.converger.last_errors()["sdk"]
    assert "sdk" in loop.converger.failure_holds()  # backs off like any failure
    assert runtime.history("run") == []


@pytest.mark.anyio
async def test_layers_no_longer_wanted_stop_being_prepared(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    write_atomically(tmp_path / "sdk.toml", SDK)
    runtime.hold("prepare", "sdk")
    loop = reconciler(tmp_path, runtime)
    async with preparer_of(loop).running(lambda: None):
        await loop.reconcile("test")
        (tmp_path / "sdk.toml").unlink()
        await loop.reconcile("test")
        assert preparer_of(loop).preparing() == []
        await runtime.until(lambda: bool(runtime.ended("prepare", "sdk")), "the job to end")
    (ended,) = runtime.ended("prepare", "sdk")
    assert isinstance(ended.error, Cancelled)


@pytest.mark.anyio
async def test_without_a_running_preparer_the_pass_creates_as_before(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    write_atomically(tmp_path / "sdk.toml", SDK)
    loop = reconciler(tmp_path, runtime)  # a one-off apply: nothing runs jobs
    result = await loop.reconcile("apply")
    assert [a.name for a in result.plan.actions if not a.for_network] == ["sdk"]
    assert runtime.history("prepare", "run") == [("run", "sdk")]
