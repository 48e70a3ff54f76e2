"""Status: what runs, what is wanted, and what the loop last did, for people and scripts.

A running loop records itself after every pass, and ``reconciler apply`` after its pass,
in ``<state dir>/reconciler/<folder hash>.json`` (written atomically): each its own
record (``loop``, ``apply``), and the containers' last known errors, crash loops and
back-off as whoever acted last left them (``recorded``: by whom, when).
``reconciler status`` works with or without a loop: it reads the folder and the
containers itself and adds what was recorded, running loop or not.

The ``--json`` output is a stable interface (``"version": 1``; fields may be added,
none removed or changed in meaning)::

    {"version": 1, "folder": "/abs/desired",
     "loop": {"running": true, "pid": 123, "pid_start_time": 456789, "started_at": 1.7e9,
              "passes": 42, "last_pass_at": 1.7e9, "last_pass_ms": 3.1,
              "last_trigger": "files changed", "last_error": null,
              "last_revision": "files:3f2a9c01d4e5",
              "last_actions": ["create web: new in web.toml"]},
     "apply": null,
     "recorded": {"by": "loop", "at": 1.7e9, "pid": 123},
     "containers": [{"name": "web", "file": "web.toml", "phase": "Running", "pid": 4242,
                     "ports": ["127.0.0.1:8080->80/tcp"], "addresses": {"default": "10.89.1.2"},
                     "restarts": 0, "age_s": 12.5,
                     "exit_code": null, "paused": false, "oom_kills": 0,
                     "pids_refused": 0, "last_error": null, "in_sync": true,
                     "conditions": [{"kind": "PortConflict", "message": "..."}]}],
     "networks": [{"name": "default", "network": "sq-desired-3f2a9c_default", "file": null,
                   "state": "Ready", "subnet": "10.89.1.0/24", "gateway": "10.89.1.1",
                   "internal": false, "dns": true, "containers": {"web": "10.89.1.2"},
                   "last_error": null, "conditions": []}],
     "conditions": [{"name": "*", "kind": "MassDeleteGuard", "message": "..."}],
     "skipped": [{"file": "UPPER.TOML", "reason": "only names ending in .toml are read, ..."}],
     "host": {"name": "web-1", "labels": {"zone": "a"}},
     "placed_elsewhere": [{"file": "db.toml", "name": "db",
                           "reason": "host \"web-1\" matches none of hosts [\"db-*\"]"}]}

``loop.running`` is false (and the other loop fields are the last recorded ones, or
null) when no loop runs. ``apply`` is the last ``reconciler apply``'s record (the same
fields as ``loop``, without ``running``), or null. ``recorded`` says who wrote the
containers' ``last_error`` and crash loops, and when (``by``: ``loop`` or ``apply``), or
is null: with no loop running they are the last known ones. The top-level
``conditions`` concern the whole folder (``FolderUnreadable``, ``MassDeleteGuard``, a
file whose container cannot be known, ``StateDiskFull``: the state folder's disk is full,
with what is free and the biggest container logs). A container whose file is gone but
whose removal the guard holds keeps its phase (``Running``...) and carries the guard's
condition, with the command that releases it. ``addresses`` are a container's addresses
by the folder's names of its networks; ``networks`` lists the folder's networks
(:mod:`reconciler.control.network_status`), whose conditions are among the top-level ones
too, with a ``network`` key. ``skipped`` lists the folder's entries
named like squishfiles that are not read (a directory ``x.toml``, a file ``UPPER.TOML``),
with the reason. With a git source, ``reconciler status`` adds ``source``: the
repository followed and its revisions (docs/reconciler.md, "Git source"). ``host`` is
the host the folder was read for (its name and labels, as ``--host`` and ``--label`` or
the defaults give them); ``placed_elsewhere`` lists the valid files whose
``[placement]`` leaves this host out, with why: they are not desired here (a container
of theirs that runs here is removed, like one whose file is gone).

Phases: ``Running``, ``Pending`` (wanted, not yet running as specified), ``CrashLoopBackOff``,
``Failed`` (the last action on it failed), ``InvalidSpec`` (its file does not validate; the
last valid spec keeps running), ``PortConflict``, ``Exited`` (stopped by its restart policy),
``Terminating`` (its file is gone and it is being removed), ``NameTaken``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.control.network_status import addresses, network_rows
from reconciler.control.places import folder_record, status_socket
from reconciler.desired.types import LABEL_FILE, DesiredState
from reconciler.planning.plan import ActionKind, Condition, ConditionKind, Plan, is_managed_by
from runtime.api import ContainerInfo, ContainerState, NetworkInfo
from runtime.util.files import parse_json, read_json, write_json_atomic
from runtime.util.processes import ProcessId

__all__ = (
    "ConditionReport",
    "FolderBusy",
    "LoopRecord",
    "StatusStore",
    "Writer",
    "container_rows",
    "release_hint",
    "state_disk_condition",
    "status_document",
)

log = logging.getLogger(__name__)

Writer = Literal["loop", "apply"]
"""Who records a pass: a ``reconciler run`` loop or a ``reconciler apply``."""


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


@dataclass
class ConditionReport:
    """What a loop's console says about conditions (rejected files, conflicts, a guard
    holding removals): each once when it appears or its message changes, and one line
    when it clears, never again pass after pass. Back-off is left out: it comes and goes
    with every restart, which the loop's action lines already show."""

    folder: str
    _shown: frozenset[tuple[str, str, str]] = frozenset()

    def changes(self, conditions: Iterable[Condition]) -> list[str]:
        """The lines to print for this pass's ``conditions``."""
        appeared, cleared = self.diff(conditions)
        lines = [self._line(name, kind, message) for name, kind, message in appeared]
        return lines + [self._line(name, kind, "cleared") for name, kind in cleared]

    def diff(
        self, conditions: Iterable[Condition]
    ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """What this pass's ``conditions`` change since the last call: those that
        appeared or say something new (name, kind, message), and those cleared (name,
        kind), each sorted."""
        messages = {
            (c.name, c.kind.value, _steady(c)): c.message
            for c in conditions
            if c.kind is not ConditionKind.BACK_OFF
        }
        now = frozenset(messages)
        appeared = [
            (name, kind, messages[name, kind, key]) for name, kind, key in sorted(now - self._shown)
        ]
        still = {(name, kind) for name, kind, _ in now}
        cleared = sorted({(name, kind) for name, kind, _ in self._shown} - still)
        self._shown = now
        return appeared, cleared

    def _line(self, name: str, kind: str, message: str) -> str:
        if kind == ConditionKind.MASS_DELETE and message != "cleared":
            message = f"{message}; to confirm, {release_hint(self.folder, loop_running=True)}"
        return f"{kind}: {message}" if name == "*" else f"{kind} {name}: {message}"


def _steady(condition: Condition) -> str:
    """What must change for the console to say a condition again: its message, except
    for a full disk, whose free space and log sizes move on every pass."""
    return "" if condition.kind is ConditionKind.STATE_DISK_FULL else condition.message


FULL_BELOW = 64 * 1024
"""Free bytes under which the state folder's disk counts as full (every record written
takes a block or more)."""


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.0f} GiB"


def _biggest_logs(device: int, actual: Sequence[ContainerInfo], most: int = 3) -> str:
    """The containers whose logs take the most space on the file system ``device`` (logs
    are kept on disk, usually apart from the state folder), with their sizes (one stat
    each)."""
    sizes = []
    for info in actual:
        try:
            found = Path(info.log_path).stat()
        except OSError:
            continue
        if found.st_size and found.st_dev == device:
            sizes.append((found.st_size, info.name))
    biggest = sorted(sizes, reverse=True)[:most]
    return ", ".join(f"{name} {_size(size)}" for size, name in biggest) or "none"


def state_disk_condition(state: Path, actual: Sequence[ContainerInfo]) -> Condition | None:
    """A folder condition when the state folder's disk is full (no space or no inode
    left for this account): the folder, what is free, and the biggest container logs on
    that disk (the likely culprits when the log folder shares it, or for records made
    before logs left the state folder; found cheaply)."""
    try:
        disk, device = os.statvfs(state), os.stat(state).st_dev
    except OSError:
        return None
    free = disk.f_bavail * disk.f_frsize
    if free >= FULL_BELOW and not (disk.f_files and not disk.f_favail):
        return None
    message = (
        f"the disk of the state folder {state} is full ({_size(free)} free of "
        f"{_size(disk.f_blocks * disk.f_frsize)}): containers cannot start nor record "
        f"their exits; the biggest logs on that disk: {_biggest_logs(device, actual)}; "
        "free space there (removing a container deletes its folder and log)"
    )
    return Condition("*", ConditionKind.STATE_DISK_FULL, message)


class FolderBusy(RuntimeError):
    """Another reconciler already controls this folder."""


def _busy(holder: Mapping[str, Any]) -> str:
    """Why a claim was refused, from what the holder wrote in the lock file."""
    pid = holder.get("pid", "?")
    if holder.get("by") == "apply":
        return f"`reconciler apply` (pid {pid}) is converging this folder; try again once it ends"
    return (
        f"another reconciler (pid {pid}) already manages this folder; stop it first "
        "(it applies changes itself)"
    )


class StatusStore:
    """Where a folder's loop (and ``apply``) records itself."""

    def __init__(self, state: Path, folder: Path) -> None:
        self.state = state
        self.path = folder_record(state, folder)
        self.socket = status_socket(state, folder)
        """Where the folder's running loop answers ``status`` (:mod:`reconciler.quick`)."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self._lock_fd: int | None = None

    def claim(self, writer: Writer = "loop") -> None:
        """Become the one controller of this folder, or raise ``FolderBusy`` naming the
        process that is (its pid and kind are kept in the lock file while it holds it).

        Held until the process exits: two loops on one folder would fight.
        """
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = parse_json(os.pread(fd, 4096, 0))
            os.close(fd)
            raise FolderBusy(_busy(holder if isinstance(holder, dict) else {})) from None
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "by": writer}).encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, unnamed
            log.warning("cannot name this process in %s", self.path.with_suffix(".lock"))

    def write(
        self,
        writer: Writer,
        record: LoopRecord,
        errors: Mapping[str, str],
        crashing: Sequence[str],
        backoff: Mapping[str, Any] | None = None,
    ) -> None:
        """Record ``writer``'s pass: its own record replaces the one of its kind and
        leaves the other's (a loop keeps the last apply's, an apply the last loop's); the
        containers' errors, crash loops and back-off are the last writer's, marked with
        who and when. Only the folder's claimant (:meth:`claim`) writes, so no other
        writer comes between the read and the write.

        Conditions are not stored: ``status`` plans afresh and finds them itself."""
        data = self.read()
        data.update(
            {
                writer: asdict(record),
                "recorded": {"by": writer, "at": record.last_pass_at, "pid": record.pid},
                "backoff": dict(backoff or {}),
                "errors": dict(errors),
                "crashing": list(crashing),
            }
        )
        write_json_atomic(self.path, data)

    def read(self) -> dict[str, Any]:
        data = read_json(self.path)
        return data if isinstance(data, dict) else {}


def _condition_json(condition: Condition) -> dict[str, str]:
    shown = {"name": condition.name, "kind": condition.kind.value, "message": condition.message}
    return shown | ({"network": condition.network} if condition.network else {})


def _ports(info: ContainerInfo | None) -> list[str]:
    return [str(p) for p in info.ports] if info is not None else []


_GUARDS = (ConditionKind.MASS_DELETE, ConditionKind.INVALID_SPEC, ConditionKind.FOLDER_UNREADABLE)
"""Folder conditions under which the planner removes nothing."""


def _guard(todo: Plan) -> Condition | None:
    """The folder condition that holds back every removal of this pass, if one does."""
    return next((c for c in todo.conditions if c.name == "*" and c.kind in _GUARDS), None)


def release_hint(folder: str, *, loop_running: bool) -> str:
    """How to confirm the removals the mass-deletion guard holds. ``apply`` cannot run
    while a loop claims the folder: then the loop itself must be restarted."""
    if loop_running:
        return (
            f"restart the loop as `reconciler run --allow-mass-delete {folder}` "
            "(and again without the flag afterwards)"
        )
    return f"run `reconciler apply --allow-mass-delete {folder}`"


def _held(guard: Condition, gone: str, folder: str, loop_running: bool) -> dict[str, str]:
    """The condition of a container kept running only because ``guard`` holds removals
    (``gone``: why no file asks for it)."""
    if guard.kind is ConditionKind.MASS_DELETE:
        hint = release_hint(folder, loop_running=loop_running)
        message = f"{gone}; the mass-deletion guard keeps it: to remove it, {hint}"
    else:
        message = f"kept while {guard.message}"
    return {"kind": guard.kind.value, "message": message}


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
    name is refused, which does not make this one invalid. ``wanted``: a file asks for
    it, or a guard keeps it."""
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


@dataclass(frozen=True)
class _Rows:
    """What every row of one status needs to know."""

    desired: DesiredState
    todo: Plan
    errors: Mapping[str, str]
    crashing: frozenset[str]
    now: float
    loop_running: bool
    pending: frozenset[str]
    """Containers with an action other than ``destroy`` to do."""
    destroying: frozenset[str]
    guard: Condition | None
    """The folder condition that holds back every removal of this pass, if one does."""

    def _keeping(self, name: str, info: ContainerInfo | None, wanted: bool) -> Condition | None:
        """The guard that alone keeps this container running (no file asks for it, and
        nothing else explains why it stays), if one does."""
        if info is None or wanted or name in self.destroying:
            return None
        if any(c.name == name for c in self.todo.conditions):
            return None
        return self.guard

    def _gone(self, name: str, file: str | None) -> str:
        """Why no file asks for container ``name`` here: its file is gone, or placed
        elsewhere."""
        placed = next((p for p in self.desired.placed_elsewhere if p.name == name), None)
        if placed is not None:
            return f"{placed.file.name} is placed elsewhere ({placed.reason})"
        return f"{file or 'its file'} is gone"

    def row(self, name: str, info: ContainerInfo | None) -> dict[str, Any]:
        desired, now = self.desired, self.now
        want = desired.containers.get(name)
        conditions = [c for c in self.todo.conditions if c.name == name]
        kinds = {c.kind.value for c in conditions}
        file = want.file.name if want else (info.spec.labels.get(LABEL_FILE) if info else None)
        if file is None:
            file = next((e.file.name for e in desired.errors if e.name == name), None)
        claimed = any(e.name == name for e in desired.errors)
        guard = self._keeping(name, info, want is not None or claimed)
        shown = [{k: v for k, v in _condition_json(c).items() if k != "name"} for c in conditions]
        if guard is not None:
            shown.append(
                _held(guard, self._gone(name, file), str(desired.folder), self.loop_running)
            )
        return {
            "name": name,
            "file": file,
            "phase": _phase(
                info,
                kinds,
                name in self.pending,
                name in self.errors,
                name in self.crashing,
                want is not None or claimed or guard is not None,
                kept=want is not None,
            ),
            "pid": info.pid if info else None,
            "ports": _ports(info),
            "addresses": addresses(desired.folder, info),
            "restarts": info.restarts if info else 0,
            "age_s": round(now - info.started_at, 3) if info and info.started_at else None,
            "exit_code": info.exit_code if info else None,
            "paused": info.paused if info else False,
            "oom_kills": info.oom_kills if info else 0,
            "pids_refused": info.pids_refused if info else 0,
            "proc_view": info.proc_view if info else None,
            "last_error": self.errors.get(name),
            "in_sync": not shown
            and name not in self.pending
            and (want is not None) == (info is not None),
            "conditions": shown,
        }


def container_rows(
    desired: DesiredState,
    actual: Sequence[ContainerInfo],
    todo: Plan,
    *,
    errors: Mapping[str, str] | None = None,
    crashing: Iterable[str] = (),
    now: float | None = None,
    loop_running: bool = False,
) -> list[dict[str, Any]]:
    """One row per container that is wanted, managed by this folder, or blocked.

    ``desired`` is settled (:func:`reconciler.planning.plan.settled`, as a dry run returns
    it): a name two files declare shows the file that keeps it (the one whose container
    runs) and that container's phase; the refused file is a condition. A container whose
    file is gone but whose removal a guard holds keeps its phase and carries the guard's
    condition, with the command that releases it (``loop_running`` decides which)."""
    folder = str(desired.folder)
    ours = {i.name: i for i in actual if is_managed_by(i, folder)}
    names = set(desired.containers) | set(ours) | {c.name for c in todo.conditions if c.name != "*"}
    rows = _Rows(
        desired,
        todo,
        errors or {},
        frozenset(crashing),
        time.time() if now is None else now,
        loop_running,
        frozenset(a.name for a in todo.actions if a.kind is not ActionKind.DESTROY),
        frozenset(a.name for a in todo.actions if a.kind is ActionKind.DESTROY),
        _guard(todo),
    )
    return [rows.row(name, ours.get(name)) for name in sorted(names)]


def _record(data: Any) -> LoopRecord | None:
    """A stored record (of the loop or of an apply), or None when there is none."""
    if not isinstance(data, dict):
        return None
    return LoopRecord(**{k: v for k, v in data.items() if k in LoopRecord.__dataclass_fields__})


def status_document(
    desired: DesiredState,
    actual: Sequence[ContainerInfo],
    todo: Plan,
    stored: Mapping[str, Any],
    *,
    now: float | None = None,
    networks: Sequence[NetworkInfo] = (),
    source: object = None,
) -> dict[str, Any]:
    """The ``status --json`` document (see the module docstring); ``desired`` settled,
    as :meth:`reconciler.control.loop.Reconciler.dry_run` returns it. The errors and
    crash loops stored are shown whether a loop runs or not: they are the last known
    (with no loop, a crash loop only while its container is still there: ``down`` or
    ``rm`` ended it). A ``source`` that has a ``describe()`` (a git source) adds what
    it returns as ``source``."""
    record = _record(stored.get("loop")) or LoopRecord()
    applied = _record(stored.get("apply"))
    alive = record.running() or record.pid == os.getpid()
    errors = stored.get("errors")
    stored_crashing = stored.get("crashing")
    crashing: list[str] = stored_crashing if isinstance(stored_crashing, list) else []
    if not alive:
        crashing = [name for name in crashing if any(i.name == name for i in actual)]
    recorded = stored.get("recorded")
    describe = getattr(source, "describe", None)
    extra = {"source": describe()} if callable(describe) else {}
    return {
        "version": 1,
        "folder": str(desired.folder),
        "loop": {"running": alive, **asdict(record)},
        "apply": asdict(applied) if applied else None,
        "recorded": recorded if isinstance(recorded, dict) else None,
        "containers": container_rows(
            desired,
            actual,
            todo,
            errors=errors if isinstance(errors, dict) else {},
            crashing=crashing,
            now=now,
            loop_running=alive,
        ),
        "networks": network_rows(
            desired, networks, todo, errors if isinstance(errors, dict) else {}
        ),
        "conditions": [_condition_json(c) for c in todo.conditions if c.name == "*"],
        "skipped": [{"file": s.file.name, "reason": s.reason} for s in desired.skipped],
        "host": desired.host.describe() if desired.host else None,
        "placed_elsewhere": [
            {"file": p.file.name, "name": p.name, "reason": p.reason}
            for p in desired.placed_elsewhere
        ],
        **extra,
    }
