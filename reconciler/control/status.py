"""Status: what runs, what is wanted, and what the loop last did, for people and scripts.

A running loop records itself after every pass in
``<state dir>/reconciler/<folder hash>.json`` (written atomically); ``reconciler status``
works with or without a loop: it reads the folder and the containers itself and adds the
loop's record when there is one.

The ``--json`` output is a stable interface (``"version": 1``; fields may be added,
none removed or changed in meaning)::

    {"version": 1, "folder": "/abs/desired",
     "loop": {"running": true, "pid": 123, "pid_start_time": 456789, "started_at": 1.7e9,
              "passes": 42, "last_pass_at": 1.7e9, "last_pass_ms": 3.1,
              "last_trigger": "files changed", "last_error": null,
              "last_revision": "files:3f2a9c01d4e5",
              "last_actions": ["create web: new in web.toml"]},
     "containers": [{"name": "web", "file": "web.toml", "phase": "Running", "pid": 4242,
                     "ports": ["127.0.0.1:8080->80/tcp"], "restarts": 0, "age_s": 12.5,
                     "exit_code": null, "paused": false, "oom_kills": 0,
                     "pids_refused": 0, "last_error": null, "in_sync": true,
                     "conditions": [{"kind": "PortConflict", "message": "..."}]}],
     "conditions": [{"name": "*", "kind": "MassDeleteGuard", "message": "..."}],
     "skipped": [{"file": "UPPER.TOML", "reason": "only names ending in .toml are read, ..."}]}

``loop.running`` is false (and the other loop fields are the last recorded ones, or
null) when no loop runs. The top-level ``conditions`` concern the whole folder
(``FolderUnreadable``, ``MassDeleteGuard``, a file whose container cannot be known).
``skipped`` lists the folder's entries named like squishfiles that are not read (a
directory ``x.toml``, a file ``UPPER.TOML``), with the reason.

Phases: ``Running``, ``Pending`` (wanted, not yet running as specified), ``CrashLoopBackOff``,
``Failed`` (the last action on it failed), ``InvalidSpec`` (its file does not validate; the
last valid spec keeps running), ``PortConflict``, ``Exited`` (stopped by its restart policy),
``Terminating`` (its file is gone), ``NameTaken``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.desired.types import LABEL_FILE, DesiredState
from reconciler.planning.plan import ActionKind, Condition, Plan, is_managed_by
from runtime.api import ContainerInfo, ContainerState
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId

__all__ = ("FolderBusy", "LoopRecord", "StatusStore", "container_rows", "status_document")


@dataclass
class LoopRecord:
    """The loop's own state, as recorded after every pass."""

    pid: int | None = None
    pid_start_time: int | None = None
    started_at: float | None = None
    passes: int = 0
    last_pass_at: float | None = None
    last_pass_ms: float | None = None
    last_trigger: str | None = None
    last_actions: list[str] = field(default_factory=list)
    last_error: str | None = None
    """Why the last pass failed, if it did (the loop goes on)."""
    last_revision: str | None = None
    """The desired state's revision the last pass applied (a folder: ``files:<digest>``)."""

    def started(self, pid: int) -> None:
        identity = ProcessId.of(pid)
        self.pid = pid
        self.pid_start_time = identity.start_time if identity else None
        self.started_at = time.time()

    def passed(
        self,
        at: float,
        duration: float,
        trigger: str,
        actions: list[str],
        revision: str | None = None,
    ) -> None:
        self.passes += 1
        self.last_revision = revision
        self.last_pass_at = at
        self.last_pass_ms = round(duration * 1000, 3)
        self.last_trigger = trigger
        self.last_error = None
        if actions:
            self.last_actions = actions[-20:]

    def failed(self, error: str) -> None:
        self.last_error = error

    def running(self) -> bool:
        if self.pid is None or self.pid_start_time is None:
            return False
        return ProcessId(self.pid, self.pid_start_time).alive()


class FolderBusy(RuntimeError):
    """Another reconciler already controls this folder."""


class StatusStore:
    """Where a folder's loop records itself."""

    def __init__(self, state: Path, folder: Path) -> None:
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        self.path = state / "reconciler" / f"{digest}.json"
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self._lock_fd: int | None = None

    def claim(self) -> None:
        """Become the one controller of this folder, or raise ``FolderBusy``.

        Held until the process exits: two loops on one folder would fight.
        """
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            record = self.read().get("loop") or {}
            raise FolderBusy(
                f"another reconciler (pid {record.get('pid', '?')}) already manages this "
                "folder; stop it first (it applies changes itself)"
            ) from None
        self._lock_fd = fd

    def write(
        self,
        record: LoopRecord,
        errors: Mapping[str, str],
        crashing: Sequence[str],
        backoff: Mapping[str, Any] | None = None,
    ) -> None:
        """Conditions are not stored: ``status`` plans afresh and finds them itself."""
        write_json_atomic(
            self.path,
            {
                "backoff": dict(backoff or {}),
                "loop": asdict(record),
                "errors": dict(errors),
                "crashing": list(crashing),
            },
        )

    def read(self) -> dict[str, Any]:
        data = read_json(self.path)
        return data if isinstance(data, dict) else {}


def _condition_json(condition: Condition) -> dict[str, str]:
    return {"name": condition.name, "kind": condition.kind.value, "message": condition.message}


def _ports(info: ContainerInfo | None) -> list[str]:
    return [str(p) for p in info.ports] if info is not None else []


def _phase(
    info: ContainerInfo | None,
    kinds: set[str],
    pending: bool,
    failed: bool,
    crashing: bool,
    wanted: bool,
    *,
    kept: bool,
) -> str:
    """``kept``: a valid file asks for this container; another file declaring the same
    name is refused, which does not make this one invalid."""
    for kind in ("InvalidSpec", "DuplicateName", "NameTaken", "PortConflict"):
        if kind in kinds and not (kind == "DuplicateName" and kept):
            return "InvalidSpec" if kind == "DuplicateName" else kind
    if not wanted:
        return "Terminating"
    if crashing and (info is None or info.state is not ContainerState.RUNNING or pending):
        return "CrashLoopBackOff"
    if failed:
        return "Failed"
    if info is not None and info.state is ContainerState.RUNNING and not pending:
        return "Running"
    if info is not None and info.state is ContainerState.EXITED and not pending:
        return "Exited"
    return "Pending"


def container_rows(
    desired: DesiredState,
    actual: Sequence[ContainerInfo],
    todo: Plan,
    *,
    errors: Mapping[str, str] | None = None,
    crashing: Iterable[str] = (),
    now: float | None = None,
) -> list[dict[str, Any]]:
    """One row per container that is wanted, managed by this folder, or blocked.

    ``desired`` is settled (:func:`reconciler.planning.plan.settled`, as a dry run returns
    it): a name two files declare shows the file that keeps it (the one whose container
    runs) and that container's phase; the refused file is a condition."""
    now = time.time() if now is None else now
    errors = errors or {}
    crash = set(crashing)
    folder = str(desired.folder)
    by_name = {i.name: i for i in actual}
    ours = {n: i for n, i in by_name.items() if is_managed_by(i, folder)}
    names = set(desired.containers) | set(ours) | {c.name for c in todo.conditions if c.name != "*"}
    pending = {a.name for a in todo.actions if a.kind is not ActionKind.DESTROY}
    rows = []
    for name in sorted(names):
        info = ours.get(name)
        want = desired.containers.get(name)
        conditions = [c for c in todo.conditions if c.name == name]
        kinds = {c.kind.value for c in conditions}
        file = want.file.name if want else (info.spec.labels.get(LABEL_FILE) if info else None)
        if file is None:
            file = next((e.file.name for e in desired.errors if e.name == name), None)
        claimed = any(e.name == name for e in desired.errors)
        rows.append(
            {
                "name": name,
                "file": file,
                "phase": _phase(
                    info,
                    kinds,
                    name in pending,
                    name in errors,
                    name in crash,
                    want is not None or claimed,
                    kept=want is not None,
                ),
                "pid": info.pid if info else None,
                "ports": _ports(info),
                "restarts": info.restarts if info else 0,
                "age_s": round(now - info.started_at, 3) if info and info.started_at else None,
                "exit_code": info.exit_code if info else None,
                "paused": info.paused if info else False,
                "oom_kills": info.oom_kills if info else 0,
                "pids_refused": info.pids_refused if info else 0,
                "last_error": errors.get(name),
                "in_sync": not conditions
                and name not in pending
                and (want is not None) == (info is not None),
                "conditions": [
                    {k: v for k, v in _condition_json(c).items() if k != "name"} for c in conditions
                ],
            }
        )
    return rows


def status_document(
    desired: DesiredState,
    actual: Sequence[ContainerInfo],
    todo: Plan,
    stored: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``status --json`` document (see the module docstring); ``desired`` settled,
    as :meth:`reconciler.control.loop.Reconciler.dry_run` returns it."""
    loop = dict(stored.get("loop") or {})
    record = LoopRecord(**{k: v for k, v in loop.items() if k in LoopRecord.__dataclass_fields__})
    alive = record.running()
    errors = stored.get("errors", {}) if alive else {}
    crashing = stored.get("crashing", []) if alive else []
    loop_view = {"running": alive, **asdict(record)}
    if record.pid == os.getpid():
        loop_view["running"] = True
    return {
        "version": 1,
        "folder": str(desired.folder),
        "loop": loop_view,
        "containers": container_rows(desired, actual, todo, errors=errors, crashing=crashing),
        "conditions": [_condition_json(c) for c in todo.conditions if c.name == "*"],
        "skipped": [{"file": s.file.name, "reason": s.reason} for s in desired.skipped],
    }
