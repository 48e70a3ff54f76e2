"""Preparing in the background: a container's SDK layers are downloaded and unpacked by a
job of their own, never inside a pass.

A pass hands its plan to :meth:`Preparer.hold_back` before converging. A ``create`` or
``recreate`` whose container has SDK layers goes ahead only once a job has prepared them
(:meth:`runtime.api.interface.Runtime.prepare`); until then it is held back (the
container stays Pending; a recreated one keeps running as it is) while the pass applies
everything else at once. A job that ends wakes the loop for another pass; one that
failed (an archive refused, a download that failed) hands its action back as failed, so
the converger records the error (``status`` shows it) and backs off as for any failure.

Jobs run in the loop's task group (:meth:`Preparer.running`), one worker thread each, at
most ``limit`` at once. Cancelling the loop (SIGTERM, Ctrl-C) cancels their token: a
download or an unpack stops at its next chunk or entry and removes what it made. A job
whose layers are no longer wanted (the file changed or went) is cancelled the same way.
Without :meth:`Preparer.running` (a one-off ``apply``) nothing is held back: ``create``
prepares the layers itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from reconciler.planning.plan import Action, ActionKind, Plan
from runtime.api import ContainerSpec, Runtime, SdkLayer
from runtime.util.cancel import Cancel, Cancelled

__all__ = ("Preparer",)

log = logging.getLogger(__name__)

_PREPARED_BY_CREATE = (ActionKind.CREATE, ActionKind.RECREATE)


@dataclass
class _Job:
    layers: tuple[SdkLayer, ...]
    cancel: Cancel = field(default_factory=Cancel)
    done: bool = False
    error: str | None = None


@dataclass
class Preparer:
    runtime: Runtime
    limit: int = 2
    """Jobs that run at once (unpacking is CPU and disk work)."""
    _jobs: dict[str, _Job] = field(default_factory=dict)
    _group: anyio.abc.TaskGroup | None = field(default=None, init=False, repr=False)
    _wake: Callable[[], None] = field(default=lambda: None, init=False, repr=False)
    _threads: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)

    @asynccontextmanager
    async def running(self, wake: Callable[[], None]) -> AsyncIterator[None]:
        """Run jobs while inside; ``wake`` is called when one ends. On the way out every
        job is cancelled and waited for (each stops at its next chunk or entry)."""
        self._threads = anyio.CapacityLimiter(self.limit)
        async with anyio.create_task_group() as group:
            self._group, self._wake = group, wake
            try:
                yield
            finally:
                self._group = None
                for job in self._jobs.values():
                    job.cancel.cancel()
                self._jobs.clear()
                group.cancel_scope.cancel()

    def hold_back(self, todo: Plan) -> tuple[Plan, list[tuple[Action, str]]]:
        """Split ``todo`` into what this pass may apply and the actions whose preparation
        failed (with why); actions waiting for a job are left out of both."""
        if self._group is None:
            return todo, []
        go: list[Action] = []
        failed: list[tuple[Action, str]] = []
        for action in todo.actions:
            job = self._job_for(action)
            if job is None or (job.done and job.error is None):
                go.append(action)
            elif job.done:
                failed.append((action, f"preparing its layers failed: {job.error}"))
            if job is not None and job.done:
                del self._jobs[action.name]
        self._drop_unwanted({a.name for a in todo.actions})
        return Plan(tuple(go), todo.conditions), failed

    def preparing(self) -> list[str]:
        """Containers whose layers a job prepares now."""
        return sorted(name for name, job in self._jobs.items() if not job.done)

    def _job_for(self, action: Action) -> _Job | None:
        """The job ``action`` waits for (started now if needed); None if it waits for none."""
        if action.kind not in _PREPARED_BY_CREATE or action.desired is None:
            return None
        spec = action.desired.spec
        if not spec.sdks:
            return None
        job = self._jobs.get(action.name)
        if job is not None and job.layers != spec.sdks:
            job.cancel.cancel()  # the file changed its layers: prepare the new ones
            job = None
        if job is None:
            job = self._jobs[action.name] = _Job(spec.sdks)
            assert self._group is not None
            self._group.start_soon(self._run, job, spec)
            log.info("%s: preparing its layers in the background", action.name)
        return job

    def _drop_unwanted(self, planned: set[str]) -> None:
        for name in set(self._jobs) - planned:
            self._jobs.pop(name).cancel.cancel()

    async def _run(self, job: _Job, spec: ContainerSpec) -> None:
        async with anyio.create_task_group() as watch:
            watch.start_soon(_cancel_when_cancelled, job.cancel)
            error = await anyio.to_thread.run_sync(
                self._prepare, spec, job.cancel, limiter=self._threads
            )
            cancelled = job.cancel.cancelled  # ending the watch cancels the token too
            watch.cancel_scope.cancel()
        if cancelled:
            return
        job.error, job.done = error, True
        self._wake()

    def _prepare(self, spec: ContainerSpec, cancel: Cancel) -> str | None:
        """In a worker thread: prepare, return why it failed (None: it did not)."""
        try:
            cancel.check()  # cancelled while it waited for a thread
            self.runtime.prepare(spec, cancel)
        except Cancelled:
            return None
        except Exception as exc:  # reported with the container, retried after back-off
            return f"{type(exc).__name__}: {exc}"
        return None


async def _cancel_when_cancelled(cancel: Cancel) -> None:
    """Cancel the token when this task is cancelled (the job's thread cannot be)."""
    try:
        await anyio.sleep_forever()
    finally:
        cancel.cancel()
