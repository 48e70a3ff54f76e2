"""Converging: the only place that calls the runtime.

A plan is applied in two phases (phase 0 frees ports and names, phase 1 takes them),
each phase's actions concurrently under a bound. An action that fails does not hold up
the others: it is recorded, and its container backs off before the next attempt
(client-go style: a few milliseconds, doubling, capped). A container whose command keeps
exiting is restarted with a crash back-off (100 ms doubling to 60 s by default), reset
once it has run for a while; it never delays anyone else.

Runtime calls block, so they run in worker threads (``anyio.to_thread``); the clock is
injected so tests control time.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    DesiredContainer,
    HealthCheck,
    replacement_name,
    retired_name,
)
from reconciler.planning.plan import Action, ActionKind, Plan
from runtime.api.interface import ContainerInfo, ContainerState, Runtime
from runtime.api.spec import PortMapping
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

__all__ = ("Backoff", "Converger", "Outcome")


@dataclass(frozen=True)
class Backoff:
    """Delays, in seconds. ``failure_*`` after a failed action, ``crash_*`` between restarts."""

    failure_initial: float = 0.005
    failure_max: float = 30.0
    crash_initial: float = 0.1
    crash_max: float = 60.0
    crash_reset: float = 60.0
    """A container that ran this long before exiting starts its crash back-off afresh."""

    def failure_delay(self, failures: int) -> float:
        return min(self.failure_initial * 2.0 ** max(failures - 1, 0), self.failure_max)

    def crash_delay(self, crashes: int) -> float:
        return min(self.crash_initial * 2.0 ** max(crashes - 1, 0), self.crash_max)


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
class Converger:
    runtime: Runtime
    limit: int = 8
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.time
    _tracks: dict[str, _Track] = field(default_factory=dict)

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

    def not_before(self, actual: Sequence[ContainerInfo]) -> dict[str, float]:
        """Per container, the later of its failure and crash holds."""
        holds = self.failure_holds()
        for name, at in self.restart_holds(actual).items():
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

    def forget(self, names: set[str]) -> None:
        """Drop what is remembered about containers that are gone for good."""
        for name in set(self._tracks) - names:
            del self._tracks[name]

    # -- acting -----------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Delete what a client killed in the middle of a create or a remove left (a
        controller killed mid-pass, a CLI user's Ctrl-C); its container may be gone from
        the folder since, so no action of a plan would ever name it."""
        return self.runtime.sweep()

    async def apply(self, plan: Plan) -> list[Outcome]:
        limiter = anyio.CapacityLimiter(self.limit)
        outcomes: list[Outcome] = []
        failed: set[str] = set()
        for phase in (0, 1):
            batch = [a for a in plan.phase(phase) if a.name not in failed]
            if phase == 1:
                batch += [a for a in plan.phase(0) if a.kind is ActionKind.RECREATE]
                batch = [a for a in batch if a.name not in failed]
            results: list[Outcome] = []
            async with anyio.create_task_group() as group:
                for action in batch:
                    group.start_soon(self._run_one, action, phase, limiter, results)
            failed |= {o.action.name for o in results if not o.ok}
            outcomes += results
        return outcomes

    async def _run_one(
        self, action: Action, phase: int, limiter: anyio.CapacityLimiter, out: list[Outcome]
    ) -> None:
        try:
            await anyio.to_thread.run_sync(self._call, action, phase, limiter=limiter)
        except Exception as exc:
            out.append(Outcome(action, f"{type(exc).__name__}: {exc}"))
            self._failed(action.name, f"{action.kind.value} failed: {exc}")
            return
        if phase == 1 or action.kind is not ActionKind.RECREATE:
            out.append(Outcome(action))  # a recreate is reported once, when it is complete
            self._succeeded(action)

    def _call(self, action: Action, phase: int) -> None:
        runtime, name = self.runtime, action.name
        start_first = (
            action.kind is ActionKind.RECREATE
            and action.desired is not None
            and action.desired.update == "start-first"
            and len(replacement_name(name)) <= 63
        )
        if start_first and phase == 0:
            return  # the old container keeps serving until its replacement is ready
        if start_first:
            assert action.desired is not None
            self._replace_start_first(action.desired)
        elif action.kind is ActionKind.DESTROY or (
            action.kind is ActionKind.RECREATE and phase == 0
        ):
            runtime.remove(name, force=True)  # SIGTERM first, SIGKILL after stop_timeout
        elif action.kind in (ActionKind.CREATE, ActionKind.RECREATE):
            assert action.desired is not None
            runtime.run(action.desired.spec)
        elif action.kind is ActionKind.START:
            runtime.start(name)
        elif action.kind is ActionKind.HEAL:
            try:
                runtime.restore_network(name)
            except NetworkLost:  # only a new container gets a network back now
                assert action.desired is not None
                runtime.remove(name, force=True)
                runtime.run(action.desired.spec)
        elif action.kind is ActionKind.UNBIND:
            for port in action.ports:
                runtime.remove_port(name, port)
        elif action.kind is ActionKind.BIND:
            for port in action.ports:
                runtime.add_port(name, port)
        elif action.kind is ActionKind.RESIZE:
            assert action.desired is not None
            runtime.update_resources(name, action.desired.spec.resources)

    def _replace_start_first(self, want: DesiredContainer) -> None:
        """Start the replacement without forwards, wait until it is ready, move the
        forwards over one by one, stop the old container, give the new one its name.
        A replacement that never gets ready is removed and the old one kept; a failure
        while the forwards move puts them back."""
        runtime, name = self.runtime, want.name
        temp = replacement_name(name)
        self._clear_leftover(temp, want)
        runtime.run(want.spec.model_copy(update={"name": temp, "ports": ()}))
        moved: list[PortMapping] = []
        try:
            self._wait_ready(temp, want)
            old = runtime.inspect(name)
            live = set(old.ports) if old.slirp_pid is not None else set()
            for port in want.spec.ports:  # the gap per port: one remove and one add
                if port in live:
                    runtime.move_port(name, temp, port)
                    moved.append(port)
                else:
                    runtime.add_port(temp, port)
        except BaseException:
            for port in moved:  # undo: the old container serves as before
                with contextlib.suppress(Exception):
                    runtime.move_port(temp, name, port)
            with contextlib.suppress(Exception):
                runtime.remove(temp, force=True)
            raise
        time.sleep(want.drain)  # requests the old one accepted just before may finish
        # The name never goes missing: the old one steps aside, the new one takes the
        # name, then the old one stops (SIGTERM, SIGKILL after its stop_timeout).
        retired = retired_name(name)
        self._clear_leftover(retired, want)  # from an interrupted replacement
        runtime.rename(name, retired)
        runtime.rename(temp, name)
        runtime.remove(retired, force=True)

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

    def _wait_ready(self, temp: str, want: DesiredContainer) -> None:
        health = want.health
        for _ in range(health.retries if health else 1):
            if health is None:
                if self.runtime.inspect(temp).state is ContainerState.RUNNING:
                    return
            elif self._probe(temp, health):
                return
            time.sleep(health.interval if health else 0)
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
        if action.kind is ActionKind.DESTROY:
            self._tracks.pop(action.name, None)
