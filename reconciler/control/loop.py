"""The controller loop: observe, plan, converge; again whenever something may have changed.

The loop reads a :class:`reconciler.desired.source.Source` (today a folder), whose watch
only says *something changed*: each pass loads the whole desired state again and
observes every container, so a lost or merged event can never leave a wrong state
(compare states, not events). Passes are triggered by

- the source's changes (a folder's file events: inotify, waited for by the event loop,
  a batch ending after a few quiet milliseconds, so one edit is applied within
  milliseconds and a burst, such as a git checkout, becomes one pass; the pass begins
  with the batch's first event and acts once the batch has ended, see
  :attr:`reconciler.desired.source.Snapshot.current`);
- the exit of any container's init (a pidfd per running container), so a command that
  exits is handled at once;
- a periodic resync that catches the rest of the drift (a forward removed behind our
  back, a file event that was lost);
- the earliest back-off deadline, so a crash-looping container restarts on time;
- the moment a file written in place has been quiet long enough to apply
  (:attr:`reconciler.desired.source.Snapshot.settle_in`).
- the end of the linger of a network nothing joins any more (:attr:`Reconciler.network_linger`).

SDK layers are prepared in the background (:mod:`reconciler.control.prepare`): a pass
never waits for a download or an unpack, and a job that ends triggers a pass.

One task group owns every task; SIGINT/SIGTERM end the loop (cancelling preparations)
and leave containers running for the next ``run`` to adopt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from reconciler.control.converge import Converger, Outcome
from reconciler.control.prepare import Preparer
from reconciler.control.status import LoopRecord, StatusStore, Writer, state_disk_condition
from reconciler.desired.source import Changed, Source
from reconciler.desired.types import DesiredState
from reconciler.planning.networks import network_managed_by
from reconciler.planning.plan import (
    ActionKind,
    ConditionKind,
    NetworkLinger,
    Plan,
    RemovalWindow,
    is_leftover,
    is_managed_by,
    plan,
    settled,
)
from reconciler.settings import Settings
from runtime.api import ContainerInfo, NetworkInfo, Runtime
from runtime.util.processes import raise_fd_limit

__all__ = ("PassResult", "Reconciler", "raise_fd_limit", "run_loop")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    plan: Plan
    outcomes: tuple[Outcome, ...]
    started_at: float
    duration: float
    trigger: str
    revision: str | None = None
    """The source's revision this pass applied."""
    crashing: tuple[str, ...] = ()
    """The containers in a crash loop after this pass."""

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)


@dataclass
class Reconciler:
    """One source's reconciler: a pass is load → observe → plan → converge → record."""

    source: Source
    runtime: Runtime
    converger: Converger
    store: StatusStore | None = None
    clock: Callable[[], float] = time.time
    record: LoopRecord = field(default_factory=LoopRecord)
    allow_mass_delete: bool = False
    mass_delete_window: float = Settings.mass_delete_window
    """Seconds over which the mass-deletion guard counts this loop's removals."""
    writer: Writer = "loop"
    """Whose record :meth:`save` writes: a loop's, or a one-off ``apply``'s."""
    preparer: Preparer | None = None
    """Prepares SDK layers in the background while :func:`run_loop` runs (None: a
    ``create`` prepares its layers itself, inside the pass)."""
    _holds: dict[str, float] = field(default_factory=dict)
    revision: str | None = None
    """The source's revision the last pass (or dry run) loaded."""
    networks: list[NetworkInfo] = field(default_factory=list)
    """The networks the last pass (or dry run) observed."""
    _running: set[int] = field(default_factory=set)
    _restart_at: dict[str, float] = field(default_factory=dict)
    _crashing: list[str] = field(default_factory=list)
    _removed_at: list[float] = field(default_factory=list)
    """When each removal the guard counts was applied, within the window (memory only:
    a restarted loop starts counting afresh)."""
    _settles_at: float | None = None
    """When a file the source is waiting for (written in place, or deleted) may be applied."""
    network_linger: float = 0.0
    """Seconds a network this folder made is kept once nothing joins it
    (:attr:`Settings.network_linger`; 0: it goes with its last container)."""
    _unjoined_since: dict[str, float] = field(default_factory=dict)
    """Since when each network kept for its linger has been unjoined (memory only)."""
    _current: Callable[[], Awaitable[bool]] | None = None
    """The last snapshot's :attr:`~reconciler.desired.source.Snapshot.current`."""

    @property
    def folder(self) -> Path:
        """The source's folder: containers carry it as a label."""
        return self.source.folder

    def _observe(self) -> tuple[DesiredState, list[ContainerInfo]]:
        snapshot = self.source.load()
        self.revision = snapshot.revision
        settle = snapshot.settle_in
        self._settles_at = None if settle is None else self.clock() + settle
        self._current = snapshot.current
        actual = self.runtime.list()
        self.networks = self.runtime.list_networks()
        return snapshot.desired, actual

    def dry_run(self) -> tuple[DesiredState, list[ContainerInfo], Plan]:
        """Observe and plan, changing nothing. The desired state returned has its
        duplicate names decided as the plan decided them (:func:`settled`): the file
        whose container runs keeps the name, and its policy is the one that counts."""
        loaded, actual = self._observe()
        desired = settled(loaded, actual)
        self.converger.observe(actual)
        self._restart_at = self._restart_holds(desired, actual)
        todo = plan(
            desired,
            actual,
            now=self.clock(),
            not_before=self.converger.failure_holds(),
            restart_not_before=self._restart_at,
            allow_mass_delete=self.allow_mass_delete,
            removal_window=RemovalWindow(self.mass_delete_window, tuple(self._removed_at)),
            networks=self.networks,
            linger=NetworkLinger(self.network_linger, dict(self._unjoined_since)),
        )
        self.converger.settle({a.name for a in todo.actions} | _held(todo))
        full = None if self.store is None else state_disk_condition(self.store.state, actual)
        if full is not None:
            todo = dataclasses.replace(todo, conditions=(*todo.conditions, full))
        return desired, actual, todo

    def _restart_holds(
        self, desired: DesiredState, actual: Sequence[ContainerInfo]
    ) -> dict[str, float]:
        """Crash back-off, only for containers whose policy restarts them after this exit."""
        holds = self.converger.restart_holds(actual)
        by_name = {info.name: info for info in actual}
        return {
            name: at
            for name, at in holds.items()
            if name in desired.containers
            and desired.containers[name].restarts_after(by_name[name].exit_code)
        }

    async def reconcile(self, trigger: str = "manual") -> PassResult:
        started = self.clock()
        begin = time.perf_counter()
        swept_badly = None
        try:
            await anyio.to_thread.run_sync(self.converger.sweep)
        except Exception as exc:  # housekeeping: a failure must not cost the pass
            swept_badly = f"sweeping leftovers failed: {type(exc).__name__}: {exc}"
        desired, actual, todo = await anyio.to_thread.run_sync(self.dry_run)
        if not await self._still_current():
            desired, actual, todo = await anyio.to_thread.run_sync(self.dry_run)
        since = self._unjoined_since
        self._unjoined_since = {n: since.get(n, started) for n in todo.lingering}
        now, refused = self._hold_back(todo)
        outcomes = refused + (await self.converger.apply(now) if now.actions else [])
        todo = Plan(now.actions + tuple(o.action for o in refused), now.conditions)
        self._count_removals(desired, actual, outcomes)
        by_name = {info.name: info for info in actual}
        self._crashing = sorted(
            n
            for n, want in desired.containers.items()
            if self.converger.crash_looping(n)
            and (n not in by_name or want.restarts_after(by_name[n].exit_code))
        )
        result = PassResult(
            todo,
            tuple(outcomes),
            started,
            time.perf_counter() - begin,
            trigger,
            self.revision,
            tuple(self._crashing),
        )
        self.record.passed(
            result.started_at,
            result.duration,
            trigger,
            [str(a) for a in todo.actions],
            result.revision,
        )
        if swept_badly is not None:
            self.record.failed(swept_badly)
        try:
            await anyio.to_thread.run_sync(self.save)
        except OSError as exc:  # a full state disk: what was done stays done
            log.warning("cannot record the pass: %s", exc)
            self.record.failed(f"recording the pass failed: {type(exc).__name__}: {exc}")
        self.converger.forget(
            {info.name for info in actual}
            | set(desired.containers)
            | {n.name for n in self.networks}
            | {a.name for a in todo.actions if a.for_network}
        )
        self._holds = self.converger.not_before(self._restart_at)  # this pass's outcomes count
        folder = str(self.folder)  # once: the source builds its path anew each time
        self._running = {
            pid
            for info in actual
            if is_managed_by(info, folder)
            for pid in (info.pid, info.slirp_pid)
            if pid is not None
        }
        return result

    async def _still_current(self) -> bool:
        """Whether what the last dry run loaded still holds once the batch of changes
        it was loaded amid has ended (the pass loads and plans while the batch gathers,
        and acts only on the whole batch, as if it had begun after it)."""
        current, self._current = self._current, None
        return current is None or await current()

    def _count_removals(
        self, desired: DesiredState, actual: Sequence[ContainerInfo], outcomes: Sequence[Outcome]
    ) -> None:
        """Remember the removals this pass applied (not a replacement's leftovers), and
        forget those the window has left behind."""
        now = self.clock()
        by_name = {info.name: info for info in actual}
        removed = [
            o.action.name
            for o in outcomes
            if o.ok
            and o.action.kind is ActionKind.DESTROY
            and not is_leftover(desired, o.action.name, by_name[o.action.name])
        ]
        kept = [at for at in self._removed_at if now - at < self.mass_delete_window]
        self._removed_at = kept + [now] * len(removed)

    def _hold_back(self, todo: Plan) -> tuple[Plan, list[Outcome]]:
        """What this pass applies (not what waits for its layers), and the failures of
        the actions whose layers could not be prepared."""
        if self.preparer is None:
            return todo, []
        now, failed = self.preparer.hold_back(todo)
        return now, [self.converger.refuse(action, error) for action, error in failed]

    def save(self) -> None:
        """Record the loop's state, errors and back-off for ``status`` and a restart."""
        if self.store is not None:
            self.store.write(
                self.writer,
                self.record,
                self.converger.last_errors(),
                self._crashing,
                self.converger.export(),
            )

    def __post_init__(self) -> None:
        if self.store is not None:  # a restarted controller keeps counting where it was
            saved = self.store.read().get("backoff")
            if isinstance(saved, dict):
                self.converger.restore(saved)

    def drop_lingering(self) -> list[str]:
        """Remove the networks kept for their linger that nothing joins still: the loop
        stops, and no pass would end their linger (``apply`` removes them at once). What
        fails is logged, never raised; the names removed are returned."""
        lingering, self._unjoined_since = self._unjoined_since, {}
        if not lingering:
            return []
        folder = str(self.folder)
        try:
            unjoined = [
                info.name
                for info in self.runtime.list_networks()
                if info.name in lingering
                and not info.containers
                and network_managed_by(info, folder)
            ]
        except Exception as exc:  # the loop is stopping: say so, keep stopping
            log.warning("lingering networks stay: %s: %s", type(exc).__name__, exc)
            return []
        return [name for name in unjoined if self._dropped(name)]

    def _dropped(self, network: str) -> bool:
        try:
            self.runtime.remove_network(network)
        except Exception as exc:  # the loop is stopping: say so, keep stopping
            log.warning("network %s stays: %s: %s", network, type(exc).__name__, exc)
            return False
        return True

    def running_pids(self) -> set[int]:
        """Pids whose exit must wake the loop: the inits of this folder's running
        containers and their slirp4netns, as last observed."""
        return set(self._running)

    def next_deadline(self) -> float:
        """Seconds until the earliest back-off ends, a file written in place or deleted
        may be applied or a network's linger is over (inf when nothing waits)."""
        now = self.clock()
        waits = [t - now for t in self._holds.values() if t > now]
        waits += [max(t + self.network_linger - now, 0.0) for t in self._unjoined_since.values()]
        if self._settles_at is not None:  # overdue: the next pass applies it
            waits.append(max(self._settles_at - now, 0.0))
        return min(waits, default=math.inf)


def _held(todo: Plan) -> set[str]:
    return {c.name for c in todo.conditions if c.kind is ConditionKind.BACK_OFF}


def _trigger(send: MemoryObjectSendStream[str], reason: str) -> None:
    # WouldBlock: a pass is pending and will see this change too; closed: shutting down.
    with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
        send.send_nowait(reason)


async def _next_trigger(receive: MemoryObjectReceiveStream[str], wait: float) -> str:
    with anyio.move_on_after(wait):
        return await receive.receive()
    return "resync"


async def _watch_exit(
    pid: int,
    send: MemoryObjectSendStream[str],
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Trigger a pass as soon as ``pid`` (an init or a slirp4netns) exits (via a pidfd)."""
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            _trigger(send, "a process exited")
            return
        except OSError as exc:  # out of descriptors, say: the resync sees it exit
            log.warning("cannot watch process %d for its exit: %s", pid, exc)
            return
        try:
            await anyio.wait_readable(pidfd)
            _trigger(send, "a process exited")
        finally:
            os.close(pidfd)


async def _follow_exits(
    group: anyio.abc.TaskGroup,
    watching: dict[int, anyio.CancelScope],
    running: set[int],
    send: MemoryObjectSendStream[str],
) -> None:
    for pid in set(watching) - running:
        watching.pop(pid).cancel()
    for pid in running - set(watching):
        watching[pid] = await group.start(_watch_exit, pid, send)


async def run_loop(
    reconciler: Reconciler,
    *,
    settings: Settings | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
    stop: anyio.Event | None = None,
    on_ready: Callable[[Changed], None] | None = None,
    on_failed: Callable[[str], None] | None = None,
) -> None:
    """Reconcile ``reconciler.source`` until ``stop`` is set (or the task is cancelled);
    the timing comes from ``settings`` (default: :class:`Settings`' defaults).
    ``on_ready`` is handed, before the first pass, the function that asks for a pass
    as a change of the source does (call it in the loop's event loop thread).
    ``on_pass`` is told each pass's result, ``on_failed`` the error of a pass that
    failed as a whole. Once ``stop`` is set, the networks kept for their linger go
    (:meth:`Reconciler.drop_lingering`); the containers keep running."""
    settings = settings or Settings()
    resync = settings.resync
    raise_fd_limit()  # a pidfd per init and per slirp4netns it watches
    send, receive = anyio.create_memory_object_stream[str](1)
    reconciler.record.started(os.getpid())
    async with (
        anyio.create_task_group() as group,
        send,
        receive,
        _preparing(reconciler, functools.partial(_trigger, send, "layers prepared")),
    ):
        stop = stop or anyio.Event()
        if on_ready is not None:
            on_ready(functools.partial(_trigger, send))
        group.start_soon(reconciler.source.watch, functools.partial(_trigger, send), stop)
        group.start_soon(_cancel_on, stop, group.cancel_scope)
        trigger = "start"
        watching: dict[int, anyio.CancelScope] = {}
        followed_up = False
        while True:
            try:
                result = await reconciler.reconcile(trigger)
            except Exception as exc:  # the loop never dies: report, wait, try again
                log.error("pass failed: %s: %s", type(exc).__name__, exc)
                reconciler.record.failed(f"{type(exc).__name__}: {exc}")
                if on_failed is not None:
                    on_failed(f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(reconciler.save)
                trigger = await _next_trigger(receive, min(resync, settings.retry_failed_pass))
                continue
            if on_pass is not None:
                on_pass(result)
            await _follow_exits(group, watching, reconciler.running_pids(), send)
            # After changes, look again once at once: new containers get their exit watch
            # and anything that failed fast is seen without waiting for the resync.
            again = bool(result.plan.actions) and not followed_up
            followed_up = again
            wait = 0.0 if again else min(resync, reconciler.next_deadline())
            trigger = await _next_trigger(receive, wait)
    # stopped (not cancelled from outside): a network's linger ends with the loop
    await anyio.to_thread.run_sync(reconciler.drop_lingering)


@asynccontextmanager
async def _preparing(reconciler: Reconciler, wake: Callable[[], None]) -> AsyncIterator[None]:
    """Run the reconciler's background preparations (if it has a preparer) while inside."""
    if reconciler.preparer is None:
        yield
        return
    async with reconciler.preparer.running(wake):
        yield


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
