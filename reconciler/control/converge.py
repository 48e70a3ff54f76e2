"""Converging: the only place that calls the runtime.

A plan is applied in four phases (phase 0 frees the ports and names phase 1 takes and
makes the networks it joins, phase 2 releases old forwards and networks left, phase 3
removes the networks nothing joins, once every container that left them did), each
phase's actions concurrently under a bound. An action that fails does not hold up the
others: it is recorded, its container has no further action in this pass (so its old
forwards are not released), and it backs off before the next attempt (client-go style:
a few milliseconds, doubling, capped). Between phases 1 and 2, every forward unbound in
phase 0 whose host side no take of phase 1 got is put back on its container: a failed
bind, create or start never costs a forward that served before; a pass cancelled in any
phase (Ctrl-C, SIGTERM) puts them back too, before it ends. A container whose command
keeps exiting is restarted with a crash back-off (100 ms doubling to 60 s by default),
reset once it has run for a while; it never delays anyone else.

Runtime calls block, so each runs in a worker thread (``anyio.to_thread``); waiting
(a start-first replacement's health checks and drain) happens between those calls, in
async sleeps, so cancelling a pass (Ctrl-C) stops a wait at once. The clock and the
sleep are injected so tests control time.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    DesiredContainer,
    HealthCheck,
    replacement_name,
    retired_name,
)
from reconciler.planning.actions import PHASES, starts_first
from reconciler.planning.conflicts import overlaps
from reconciler.planning.networks import joins
from reconciler.planning.plan import Action, ActionKind, Plan, takes
from reconciler.settings import Backoff, Settings
from runtime.api import ContainerInfo, ContainerState, PortMapping, Runtime
from runtime.errors import (
    ContainerNotFound,
    ContainerNotRunning,
    ContainerPaused,
    ContainerStartError,
    ContainerStarting,
    ContainerUnreachable,
    ExecFailed,
    NetworkLost,
)

__all__ = ("Backoff", "Converger", "Outcome", "Sleep")

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
"""An async sleep of so many seconds (``anyio.sleep``; a fake clock's in tests)."""


@dataclass(frozen=True)
class Outcome:
    action: Action
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Track:
    """What the converger remembers about one container between passes."""

    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    crashes: int = 0
    seen_finish: float | None = -math.inf
    """finished_at of the last exit counted; -inf: none yet (None is a real value: unknown)."""


@dataclass
class _Ledger:
    """The forwards one apply unbound in phase 0 and the host ports phase 1 took."""

    freed: list[tuple[str, PortMapping]] = field(default_factory=list)
    taken: list[PortMapping] = field(default_factory=list)

    def unreplaced(self) -> list[tuple[str, PortMapping]]:
        return [
            (name, port)
            for name, port in self.freed
            if not any(overlaps(port, other) for other in self.taken)
        ]


@dataclass
class _Taken:
    """What a start-first replacement has taken so far, so that it can be given back."""

    moved: list[tuple[str, PortMapping]] = field(default_factory=list)
    """(the container it came from, forward) for each forward moved to the replacement."""
    dropped: list[PortMapping] = field(default_factory=list)
    """The old container's forwards removed for a new one on their host port."""


@dataclass
class Converger:
    runtime: Runtime
    limit: int = Settings.parallel
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    sleep: Sleep = anyio.sleep
    _tracks: dict[str, _Track] = field(default_factory=dict)
    _threads: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)
    """Worker threads for runtime calls, as many as ``limit`` (made by each apply)."""
    _ledger: _Ledger = field(default_factory=_Ledger, init=False, repr=False)
    """The forwards freed and taken in the current apply."""

    # -- what the planner must respect ---------------------------------------------------

    def observe(self, actual: Sequence[ContainerInfo]) -> None:
        """Update crash counts from what runs now (call before planning)."""
        now = self.clock()
        for info in actual:
            track = self._tracks.setdefault(info.name, _Track())
            if info.state is ContainerState.RUNNING and info.started_at is not None:
                if now - info.started_at >= self.backoff.crash_reset:
                    track.crashes = 0
            elif info.state is ContainerState.EXITED and info.finished_at != track.seen_finish:
                track.seen_finish = info.finished_at
                finish = now if info.finished_at is None else info.finished_at
                ran = finish - (finish if info.started_at is None else info.started_at)
                track.crashes = 1 if ran >= self.backoff.crash_reset else track.crashes + 1

    def failure_holds(self) -> dict[str, float]:
        """Per container whose last action failed, when the next attempt may start."""
        return {name: t.retry_at for name, t in self._tracks.items() if t.failures}

    def restart_holds(self, actual: Sequence[ContainerInfo]) -> dict[str, float]:
        """Per exited container with crashes, when it may be restarted (crash back-off)."""
        holds: dict[str, float] = {}
        for info in actual:
            known = self._tracks.get(info.name)
            if known and info.state is ContainerState.EXITED and known.crashes:
                finished = self.clock() if info.finished_at is None else info.finished_at
                holds[info.name] = finished + self.backoff.crash_delay(known.crashes)
        return holds

    def not_before(self, crash_holds: Mapping[str, float]) -> dict[str, float]:
        """Per container, the later of its failure hold and its crash hold (``crash_holds``:
        :meth:`restart_holds`, less those its restart policy leaves exited)."""
        holds = self.failure_holds()
        for name, at in crash_holds.items():
            holds[name] = max(holds.get(name, 0.0), at)
        return holds

    def settle(self, planned: set[str]) -> None:
        """Forget the failures of containers no action is planned for any more (their
        file was fixed or removed): an old failure must not hold back what comes next."""
        for name, track in self._tracks.items():
            if track.failures and name not in planned and track.retry_at <= self.clock():
                track.failures = 0
                track.retry_at = 0.0

    def crash_looping(self, name: str) -> bool:
        track = self._tracks.get(name)
        return bool(track and track.crashes >= 2)

    def last_errors(self) -> Mapping[str, str]:
        return {n: t.last_error for n, t in self._tracks.items() if t.last_error}

    def export(self) -> dict[str, dict[str, Any]]:
        """What must survive a controller restart: failures and crash counts, as JSON."""
        return {
            name: {
                "failures": t.failures,
                "retry_at": t.retry_at,
                "last_error": t.last_error,
                "crashes": t.crashes,
                "seen_finish": None if t.seen_finish == -math.inf else t.seen_finish,
                "seen": t.seen_finish != -math.inf,
            }
            for name, t in self._tracks.items()
            if t.failures or t.crashes
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take back what a previous controller exported (bad entries are ignored)."""
        for name, data in saved.items():
            if not isinstance(data, dict):
                continue
            try:
                self._tracks[str(name)] = _Track(
                    failures=int(data.get("failures", 0)),
                    retry_at=float(data.get("retry_at", 0.0)),
                    last_error=data.get("last_error"),
                    crashes=int(data.get("crashes", 0)),
                    seen_finish=(
                        (None if data.get("seen_finish") is None else float(data["seen_finish"]))
                        if data.get("seen")
                        else -math.inf
                    ),
                )
            except (TypeError, ValueError):
                continue

    def refuse(self, action: Action, error: str) -> Outcome:
        """Record ``action`` as failed without running it (what it needs could not be
        prepared): its container backs off and shows ``error`` like any failure."""
        self._failed(action.name, f"{action.kind.value} failed: {error}")
        return Outcome(action, error)

    def forget(self, names: set[str]) -> None:
        """Drop what is remembered about containers that are gone for good."""
        for name in set(self._tracks) - names:
            del self._tracks[name]

    # -- acting -----------------------------------------------------------------------------

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread (runtime calls block), as many at once as
        actions may run."""
        call = functools.partial(function, *args)
        return await anyio.to_thread.run_sync(call, limiter=self._threads)

    def sweep(self) -> list[str]:
        """Delete what a client killed in the middle of a create or a remove left (a
        controller killed mid-pass, a CLI user's Ctrl-C); its container may be gone from
        the folder since, so no action of a plan would ever name it."""
        return self.runtime.sweep()

    async def apply(self, plan: Plan) -> list[Outcome]:
        limiter = anyio.CapacityLimiter(self.limit)
        # Runtime calls run in worker threads; anyio's own pool has 40, fewer than a
        # --parallel may ask for. Each action holds at most one thread at a time.
        self._threads = anyio.CapacityLimiter(self.limit)
        self._ledger = _Ledger()
        outcomes: list[Outcome] = []
        failed: set[str] = set()
        for phase in PHASES:
            batch = list(plan.phase(phase))
            if phase == 1:
                batch += [a for a in plan.phase(0) if a.kind is ActionKind.RECREATE]
            batch = [a for a in batch if failed.isdisjoint((a.name, *a.after, *joins(a)))]
            results = await self._run_phase(batch, phase, limiter)
            failed |= {o.action.name for o in results if not o.ok}
            outcomes += results
        return outcomes

    async def _run_phase(
        self, batch: Sequence[Action], phase: int, limiter: anyio.CapacityLimiter
    ) -> list[Outcome]:
        """Run one phase's actions at once; after phase 1, or when cancelled in any phase
        (Ctrl-C, SIGTERM), put back what phase 0 freed and nothing took."""
        results: list[Outcome] = []
        try:
            async with anyio.create_task_group() as group:
                for action in batch:
                    group.start_soon(self._run_one, action, phase, limiter, results)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._blocking(self._put_back)
            raise
        if phase == 1:
            results += await self._blocking(self._put_back)
        return results

    async def _run_one(
        self, action: Action, phase: int, limiter: anyio.CapacityLimiter, out: list[Outcome]
    ) -> None:
        try:
            async with limiter:
                await self._call(action, phase)
        except Exception as exc:
            out.append(Outcome(action, f"{type(exc).__name__}: {exc}"))
            self._failed(action.name, f"{action.kind.value} failed: {exc}")
            return
        if phase == 1 or action.kind is not ActionKind.RECREATE:
            out.append(Outcome(action))  # a recreate is reported once, when it is complete
            self._succeeded(action)
        if phase == 1 and action.kind not in (ActionKind.BIND, ActionKind.MOVE):  # by port
            self._ledger.taken += takes(action)

    async def _call(self, action: Action, phase: int) -> None:
        if not starts_first(action):
            await self._blocking(self._act, action, phase)
        elif phase == 1:  # in phase 0 the old container keeps serving
            await self._replace_start_first(action)

    def _act(self, action: Action, phase: int) -> None:
        """One action that needs no waiting, in a worker thread."""
        if action.kind is ActionKind.RECREATE:
            step = self._remove if phase == 0 else self._create
        else:
            step = {
                ActionKind.DESTROY: self._remove,
                ActionKind.CREATE: self._create,
                ActionKind.START: self._start,
                ActionKind.HEAL: self._heal,
                ActionKind.UNBIND: self._unbind,
                ActionKind.BIND: self._bind,
                ActionKind.MOVE: self._move,
                ActionKind.RELEASE: self._release,
                ActionKind.RESIZE: self._resize,
                ActionKind.ENSURE_NETWORK: self._ensure_network,
                ActionKind.RENEW_NETWORK: self._renew_network,
                ActionKind.CONNECT: self._connect,
                ActionKind.DISCONNECT: self._disconnect,
                ActionKind.REMOVE_NETWORK: self._remove_network,
            }[action.kind]
        step(action)

    def _remove(self, action: Action) -> None:
        self.runtime.remove(action.name, force=True)  # SIGTERM first, SIGKILL after stop_timeout

    def _create(self, action: Action) -> None:
        """Run the container, without the forwards it takes from running ones; then
        move those over (a run that fails leaves them where they serve)."""
        assert action.desired is not None
        spec = action.desired.spec
        moved = {port for _, port in action.moves}
        if moved:
            spec = spec.model_copy(update={"ports": tuple(p for p in spec.ports if p not in moved)})
        self.runtime.run(spec)
        self._move(action)

    def _start(self, action: Action) -> None:
        self.runtime.start(action.name)

    def _heal(self, action: Action) -> None:
        try:
            self.runtime.restore_network(action.name)
        except NetworkLost:  # only a new container gets a network back now
            self._remove(action)
            self._create(action)

    def _unbind(self, action: Action) -> None:
        for port in action.ports:
            self.runtime.remove_port(action.name, port)
            self._ledger.freed.append((action.name, port))

    def _bind(self, action: Action) -> None:
        for port in action.ports:
            self.runtime.add_port(action.name, port)
            self._ledger.taken.append(port)

    def _move(self, action: Action) -> None:
        """Move each forward of ``action.moves`` here, back to back (put back where it
        was when it cannot be added here)."""
        for giver, port in action.moves:
            self.runtime.move_port(giver, action.name, port)
            self._ledger.taken.append(port)

    def _release(self, action: Action) -> None:
        for port in action.ports:
            self.runtime.remove_port(action.name, port)

    def _put_back(self) -> list[Outcome]:
        """Put back each forward unbound in phase 0 whose host side no take of phase 1
        got (its replacement failed or never ran), on the container it came from."""
        outcomes = []
        unreplaced, self._ledger.freed = self._ledger.unreplaced(), []
        for name, port in unreplaced:
            reason = "put back: what was to take its host port did not get it"
            action = Action(ActionKind.BIND, name, reason, ports=(port,))
            try:
                self.runtime.add_port(name, port)
            except Exception as exc:
                outcomes.append(Outcome(action, f"{type(exc).__name__}: {exc}"))
                self._failed(name, f"putting back {port} failed: {exc}")
            else:
                outcomes.append(Outcome(action))
        return outcomes

    def _resize(self, action: Action) -> None:
        assert action.desired is not None
        self.runtime.update_resources(action.name, action.desired.spec.resources)

    def _ensure_network(self, action: Action) -> None:
        assert action.network is not None
        self.runtime.ensure_network(action.network)

    def _renew_network(self, action: Action) -> None:
        """Remake a network no container uses with its new settings."""
        self.runtime.remove_network(action.name)
        self._ensure_network(action)

    def _connect(self, action: Action) -> None:
        assert action.attachment is not None
        self.runtime.connect(action.name, action.attachment)

    def _disconnect(self, action: Action) -> None:
        assert action.attachment is not None
        self.runtime.disconnect(action.name, action.attachment.network)

    def _remove_network(self, action: Action) -> None:
        self.runtime.remove_network(action.name)

    async def _replace_start_first(self, action: Action) -> None:
        """Start the replacement without forwards, wait until it is ready, move the
        forwards over one by one (the old one's, and those ``action.moves`` takes from
        other running containers), wait out the drain, give the new one the name and stop
        the old one. A replacement that never gets ready is removed and the old one kept;
        a failure while the forwards move puts them back where they were.

        The waits (health checks, drain) are async sleeps between single runtime calls:
        cancelling the pass stops them at once. Cancelled while waiting for readiness,
        the replacement is removed; cancelled during the drain, the hand-over is finished
        at once (the new container already serves every forward)."""
        want = action.desired
        assert want is not None
        temp = replacement_name(want.name)
        await self._blocking(self._clear_leftover, temp, want)
        unbound = want.spec.model_copy(update={"name": temp, "ports": ()})
        await self._blocking(self.runtime.run, unbound)
        taken = _Taken()
        try:
            await self._wait_ready(temp, want)
            await self._blocking(self._take_forwards, temp, action, taken)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._blocking(self._undo_replacement, temp, action.name, taken)
            raise
        self._ledger.taken += want.spec.ports  # from here on the hand-over is finished
        try:
            await self.sleep(want.drain)  # requests the old one accepted may finish
        finally:
            with anyio.CancelScope(shield=True):
                await self._blocking(self._hand_over, temp, want)

    def _take_forwards(self, temp: str, action: Action, taken: _Taken) -> None:
        """Move each live forward from the old container, and each of ``action.moves``
        from its running container, to ``temp`` (the gap per port: one remove and one
        add); add the others, each just after the old container's forward on the same
        host port (to another container port) is removed. ``taken`` records each step."""
        assert action.desired is not None
        old = self.runtime.inspect(action.name)
        networked = old.spec.network != "slirp4netns" or old.slirp_pid is not None
        live = set(old.ports) if networked else set()
        givers = {port: giver for giver, port in action.moves}
        for port in action.desired.spec.ports:
            giver = action.name if port in live else givers.get(port)
            if giver is not None:
                self.runtime.move_port(giver, temp, port)
                taken.moved.append((giver, port))
                continue
            for held in [p for p in live if overlaps(p, port)]:
                self.runtime.remove_port(action.name, held)
                live.discard(held)
                taken.dropped.append(held)
            self.runtime.add_port(temp, port)

    def _undo_replacement(self, temp: str, name: str, taken: _Taken) -> None:
        """Every forward taken goes back where it was; the replacement goes."""
        for giver, port in taken.moved:
            with contextlib.suppress(Exception):
                self.runtime.move_port(temp, giver, port)
        with contextlib.suppress(Exception):
            self.runtime.remove(temp, force=True)
        for port in taken.dropped:  # its host port is free again with the replacement gone
            with contextlib.suppress(Exception):
                self.runtime.add_port(name, port)

    def _hand_over(self, temp: str, want: DesiredContainer) -> None:
        """The name never goes missing: the old one steps aside, the new one takes the
        name, then the old one stops (SIGTERM, SIGKILL after its stop_timeout)."""
        name, retired = want.name, retired_name(want.name)
        self._clear_leftover(retired, want)  # from an interrupted replacement
        self.runtime.rename(name, retired)
        self.runtime.rename(temp, name)
        self.runtime.remove(retired, force=True)

    def _clear_leftover(self, temp: str, want: DesiredContainer) -> None:
        """Remove a replacement left by an interrupted attempt, if it is ours."""
        try:
            leftover = self.runtime.inspect(temp)
        except ContainerNotFound:
            return
        labels, ours = leftover.spec.labels, want.spec.labels
        if any(labels.get(key) != ours.get(key) for key in (LABEL_FOLDER, LABEL_FILE)):
            raise ContainerStartError(
                want.name, f"a container named {temp!r} exists that this folder did not make"
            )
        self.runtime.remove(temp, force=True)

    async def _wait_ready(self, temp: str, want: DesiredContainer) -> None:
        """Probe ``temp`` until it is ready, sleeping the health check's interval between
        single probes (each probe runs in a worker thread)."""
        health = want.health
        for _ in range(health.retries if health else 1):
            if await self._blocking(self._ready, temp, health):
                return
            await self.sleep(health.interval if health else 0)
        await self._blocking(self._never_ready, temp, want)

    def _ready(self, temp: str, health: HealthCheck | None) -> bool:
        if health is None:
            return self.runtime.inspect(temp).state is ContainerState.RUNNING
        return self._probe(temp, health)

    def _never_ready(self, temp: str, want: DesiredContainer) -> None:
        """Raise why ``temp`` did not get ready."""
        health = want.health
        if self.runtime.inspect(temp).state is not ContainerState.RUNNING:
            raise ContainerStartError(want.name, "the replacement exited before it was ready")
        assert health is not None
        raise ContainerStartError(
            want.name,
            f"{health} ({health.retries} tries, {health.interval} s apart); "
            "the old one keeps running",
        )

    def _probe(self, temp: str, health: HealthCheck) -> bool:
        if health.command is None:
            assert health.tcp is not None
            return self.runtime.probe_tcp(temp, health.tcp)
        try:
            result = self.runtime.exec_command(temp, health.command, timeout=health.timeout)
        except (
            ContainerNotRunning,
            ContainerPaused,
            ContainerStarting,
            ContainerUnreachable,
            ExecFailed,
        ):
            if self.runtime.inspect(temp).state is not ContainerState.RUNNING:
                return False  # it exited meanwhile: the caller says so
            raise  # the check itself cannot run: say why, not "never exited 0"
        return result.exit_code == 0

    def _failed(self, name: str, error: str) -> None:
        track = self._tracks.setdefault(name, _Track())
        track.failures += 1
        track.last_error = error
        track.retry_at = self.clock() + self.backoff.failure_delay(track.failures)

    def _succeeded(self, action: Action) -> None:
        track = self._tracks.setdefault(action.name, _Track())
        track.failures = 0
        track.retry_at = 0.0
        track.last_error = None
        if action.kind in (ActionKind.CREATE, ActionKind.RECREATE):
            track.crashes = 0
            track.seen_finish = -math.inf
        if action.kind is ActionKind.START:
            track.seen_finish = -math.inf  # its next exit counts, even with the same time
        if action.kind in (ActionKind.DESTROY, ActionKind.REMOVE_NETWORK):
            self._tracks.pop(action.name, None)
