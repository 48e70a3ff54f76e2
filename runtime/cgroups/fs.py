"""cgroup v2 for containers, inside the subtree delegated to the user (the cgroupfs driver).

A rootless runtime may only create cgroups where it has been given a subtree: systemd's
``user@UID.service`` (``Delegate=yes``) on most distributions, or a folder an
administrator created and chowned. :func:`delegated_subtree` finds it: the topmost
ancestor of the caller's own cgroup that belongs to the caller. Each container gets a
leaf below it, ``<delegated>/squish/<state id>/run.<random>``: a warm spare makes it and
its waiting init is moved there ahead of any request (a move waits for an RCU grace
period, paid while idle), the launch writes the limits into it, and the init then starts
a new cgroup namespace, so inside the container its leaf is ``/``. A spare without a
leaf of its own makes ``<name>.<random>`` at launch and moves the init then.

The leaf is what limits apply to (``memory.max``, ``memory.swap.max``, ``cpu.max``,
``cpu.weight``, ``pids.max``), what ``cgroup.kill`` empties at once (every process,
whatever it forked), what ``cgroup.freeze`` pauses, and where ``memory.events`` and
``pids.events`` count OOM kills and refused forks. A systemd scope's folder is a
:class:`Leaf` too once systemd made it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import HostSetupError
from runtime.util.files import read_small
from runtime.wire import LaunchRequest

if TYPE_CHECKING:  # the holder's launcher imports this module: no pydantic there
    from runtime.api.spec import Resources

__all__ = (
    "CGROUP_NOTE",
    "DELEGATE_FIX",
    "CgroupfsDriver",
    "FolderPlacement",
    "Leaf",
    "cgroup_of",
    "delegated_subtree",
    "limit_files",
    "needed_controllers",
    "v2_mount",
)

CGROUP_NOTE = "docs/cgroups.md"

DELEGATE_FIX = (
    "on a systemd host: sudo mkdir -p /etc/systemd/system/user@.service.d && printf "
    "'[Service]\\nDelegate=cpu cpuset io memory pids\\n' | sudo tee "
    "/etc/systemd/system/user@.service.d/delegate.conf && sudo systemctl daemon-reload, "
    f"then log in again (see {CGROUP_NOTE})"
)


def needed_controllers(resources: Resources | None) -> list[str]:
    """The cgroup v2 controllers the limits in ``resources`` need."""
    if resources is None:
        return []
    needed = []
    if resources.memory is not None or resources.memory_swap is not None:
        needed.append("memory")
    if resources.cpus is not None or resources.cpu_weight is not None:
        needed.append("cpu")
    if resources.pids is not None:
        needed.append("pids")
    return needed


def limit_files(resources: Resources | None, present: set[str], swap: bool) -> dict[str, str]:
    """The files of a leaf with the controllers ``present`` that hold the limits of
    ``resources``, and what to write in each; a limit left out is lifted ("max").
    ``swap``: whether the kernel accounts swap (the leaf has ``memory.swap.max``)."""
    memory, swap_limit, cpus, weight, pids = (
        (None,) * 5
        if resources is None
        else (
            resources.memory,
            resources.memory_swap,
            resources.cpus,
            resources.cpu_weight,
            resources.pids,
        )
    )
    files = {}
    if "memory" in present:
        files["memory.max"] = "max" if memory is None else str(memory)
        if swap:
            files["memory.swap.max"] = "max" if swap_limit is None else str(swap_limit)
        elif swap_limit is not None:
            raise HostSetupError(
                "memory_swap needs swap accounting, which this kernel does not offer",
                fix="drop memory_swap, or boot with swap accounting enabled",
            )
    if "cpu" in present:
        period = 100_000
        quota = "max" if cpus is None else str(max(1000, round(cpus * period)))
        files["cpu.max"] = f"{quota} {period}"
        files["cpu.weight"] = str(weight or 100)
    if "pids" in present:
        files["pids.max"] = "max" if pids is None else str(pids)
    return files


def _v2_mount(mountinfo: str) -> tuple[Path, bool] | None:
    """Where the cgroup v2 hierarchy is mounted, and whether v1 hierarchies exist too."""
    found: Path | None = None
    v1 = False
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0]
        if fstype == "cgroup2" and found is None and left.split()[3] == "/":
            found = Path(left.split()[4].replace("\\040", " "))
        elif fstype == "cgroup":
            v1 = True
    return None if found is None else (found, v1)


def v2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (None: nowhere)."""
    found = _v2_mount(_read(Path("/proc/self/mountinfo")))
    return None if found is None else found[0]


def cgroup_of(pid: int, mount: Path | None = None) -> Path | None:
    """The cgroup v2 folder of process ``pid`` (None without a v2 hierarchy);
    ``mount``: :func:`v2_mount`, when the caller knows it already."""
    mount = mount or v2_mount()
    own = _own_cgroup(_read(Path(f"/proc/{pid}/cgroup")))
    if mount is None or own is None:
        return None
    return mount / own.lstrip("/")


def _own_cgroup(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


@dataclass(frozen=True)
class Leaf:
    """One container's cgroup."""

    path: Path

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def check_controllers(self, resources: Resources | None) -> set[str]:
        """The leaf's controllers; :class:`HostSetupError` if one ``resources`` needs is
        missing."""
        present = set(_read(self.path / "cgroup.controllers").split())
        missing = [c for c in needed_controllers(resources) if c not in present]
        if missing:
            raise HostSetupError(
                f"the cgroup controller(s) {', '.join(missing)} are not enabled for {self.path}",
                fix=DELEGATE_FIX,
            )
        return present

    def apply(self, resources: Resources | None) -> None:
        """Write the limits of ``resources``; a limit left out is lifted ("max")."""
        present = self.check_controllers(resources)
        swap = (self.path / "memory.swap.max").exists()
        self.write_limits(limit_files(resources, present, swap))

    def write_limits(self, files: dict[str, str]) -> None:
        """Write limit files (:func:`limit_files`) into the leaf."""
        for name, value in files.items():
            self._write(name, value)

    def populated(self) -> bool:
        return _field(self.path / "cgroup.events", "populated") == 1

    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process in the leaf (``cgroup.kill``); True once it is empty."""
        if not self.path.exists():
            return True
        if (self.path / "cgroup.kill").exists():
            self._write("cgroup.kill", "1")
            return self._until(lambda: not self.populated(), timeout)

        # Before Linux 5.14: one by one, again and again, until nothing is left.
        def empty() -> bool:
            for pid in _read(self.path / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            return not self.populated()

        return self._until(empty, timeout)

    def freeze(self, frozen: bool, timeout: float = 10.0) -> bool:
        """Freeze or thaw every process in the leaf; True once the kernel says it is."""
        if not (self.path / "cgroup.freeze").exists():
            raise HostSetupError("pausing needs cgroup.freeze (Linux 5.2 or later)")
        self._write("cgroup.freeze", "1" if frozen else "0")
        return self._until(
            lambda: _field(self.path / "cgroup.events", "frozen") == int(frozen), timeout
        )

    def frozen(self) -> bool:
        return _field(f"{self.path}/cgroup.events", "frozen") == 1

    def events(self) -> dict[str, int]:
        """OOM kills and forks refused by the pids limit, as the kernel counts them (read
        for every container at every pass: the paths are strings, no Path is built)."""
        return {
            "oom_kills": _field(f"{self.path}/memory.events", "oom_kill") or 0,
            "pids_refused": _field(f"{self.path}/pids.events", "max") or 0,
        }

    def discard(self, tries: int = 3) -> None:
        """Kill whatever is still in a leaf no container uses, and remove it. A process
        moved in after the kill (a spare's mover, late) makes the removal fail busy:
        killed in turn, another try."""
        for _ in range(tries):
            self.kill()
            if not self.remove():
                return

    def remove(self) -> bool:
        """Delete the (empty) leaf (a systemd scope's may already be gone, or systemd's);
        True when it could not be as a process is in it."""
        try:
            self.path.rmdir()
        except OSError as exc:
            return exc.errno == errno.EBUSY
        return False

    @staticmethod
    def _until(done: Callable[[], bool], timeout: float) -> bool:
        ends = time.monotonic() + timeout
        while not done():
            if time.monotonic() > ends:
                return False
            time.sleep(0.002)
        return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, OSError):
        return ""


def _field(path: Path | str, key: str) -> int | None:
    """A counter of a small flat-keyed file (``cgroup.events``, ``memory.events``)."""
    try:
        text = read_small(path).decode()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


class CgroupfsDriver:
    """The cgroupfs driver: a leaf per container, made by the client in the user's
    delegated subtree ``root``."""

    name = "cgroupfs"
    problem: str | None = None

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"CgroupfsDriver({str(self.root)!r})"

    @property
    def controllers(self) -> set[str]:
        """The controllers the subtree offers."""
        return set(_read(self.root / "cgroup.controllers").split())

    def check(self, resources: Resources | None) -> None:
        """Raise :class:`HostSetupError` unless every limit of ``resources`` can apply."""
        needed = needed_controllers(resources)
        offered = self.controllers if needed else set()
        missing = [c for c in needed if c not in offered]
        if missing:
            shown = " ".join(sorted(offered)) or "none"
            raise HostSetupError(
                f"the cgroup controller(s) {', '.join(missing)} are not delegated to you "
                f"(your subtree {self.root} offers: {shown})",
                fix=DELEGATE_FIX,
            )

    def place(self, group: str, name: str, resources: Resources | None) -> FolderPlacement:
        """This state folder's ``group`` folder, its controllers enabled, and the limit
        files the launcher writes into the leaf it starts the container in."""
        self.check(resources)
        parent = self.folder(group)
        parent.mkdir(parents=True, exist_ok=True)
        self.enable(parent, needed_controllers(resources))
        files = {}
        if resources is not None:  # a new leaf has no limits already
            present = set(_read(parent / "cgroup.subtree_control").split())
            files = limit_files(resources, present, (parent / "memory.swap.max").exists())
        return FolderPlacement(parent, files, bool(needed_controllers(resources)))

    def folder(self, group: str) -> Path:
        """Where the leaves of the state folder's ``group`` are."""
        return self.root / "squish" / group

    def ahead(self, group: str) -> Path | None:
        """The leaves are made ahead, by the warm spares, in the ``group``'s folder."""
        return self.folder(group)

    def apply_live(self, leaf: Leaf, resources: Resources | None) -> None:
        """Write the new limits: the kernel enforces them at once."""
        self.enable(leaf.path.parent, needed_controllers(resources))
        leaf.apply(resources)

    def release(self, group: str) -> None:
        """Remove this state folder's cgroup folder, once it is empty."""
        with contextlib.suppress(OSError):
            (self.root / "squish" / group).rmdir()

    def separate(self, pid: int) -> None:
        """Nothing: the holder stays in its caller's cgroup, which is in the user's own
        delegated subtree (a systemd unit gets the systemd driver)."""

    def enable(self, parent: Path, controllers: list[str]) -> None:
        """Enable ``controllers`` on the way from the subtree's root down to ``parent``."""
        if not controllers:
            return
        parts = parent.relative_to(self.root).parts
        for folder in (self.root.joinpath(*parts[:i]) for i in range(len(parts) + 1)):
            enabled = set(_read(folder / "cgroup.subtree_control").split())
            todo = [c for c in controllers if c not in enabled]
            if not todo:
                continue
            try:
                (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in todo))
            except OSError as exc:
                why = (
                    "it has processes of its own (cgroup v2 allows controllers only for "
                    "folders without processes)"
                    if exc.errno == errno.EBUSY
                    else exc.strerror
                )
                raise HostSetupError(
                    f"cannot enable {', '.join(todo)} in {folder}: {why}", fix=DELEGATE_FIX
                ) from exc


class FolderPlacement:
    """One start in a leaf the launcher makes (or made ahead) in ``parent``, with the
    limit files ``limits`` (see :class:`runtime.cgroups.driver.Placement`)."""

    def __init__(self, parent: Path, limits: dict[str, str], limited: bool) -> None:
        self.parent: Path | None = parent
        self.limits = limits
        self.limited = limited

    def request(self, request: LaunchRequest) -> LaunchRequest:
        if self.parent is None:
            return request
        return replace(request, cgroup_parent=str(self.parent), cgroup_limits=self.limits)

    def unplaced_after(self, move_refused: bool) -> bool:
        """A holder started from another cgroup cannot move the init into ours; without
        limits the container runs without a leaf of its own."""
        if self.parent is None or self.limited or not move_refused:
            return False
        self.parent = None
        return True

    def check_started(self, leaf: Leaf) -> None:
        """Nothing to check: the controllers were enabled before the launch."""

    def discard_unused(self, used: Leaf | None) -> None:
        """Nothing: the launcher removes a leaf its failed launch made."""


def delegated_subtree(uid: int, explicit: Path | None) -> tuple[Path | None, str | None]:
    """The caller's delegated cgroup v2 subtree (``explicit`` names one), or why there is
    none."""
    mount = _v2_mount(_read(Path("/proc/self/mountinfo")))
    if explicit is not None:
        root = explicit
        own = _own_cgroup(_read(Path("/proc/self/cgroup")))
        if mount is None or own is None or not _ours(root, uid):
            return None, f"SQUISH_CGROUP_ROOT={root} is not a cgroup v2 folder of yours"
        if not (mount[0] / own.lstrip("/")).is_relative_to(root):
            return None, f"SQUISH_CGROUP_ROOT={root} does not contain your cgroup {own}"
        return root, None
    if mount is None:
        return None, "this host has no cgroup v2 hierarchy (cgroup v1 only)"
    where, hybrid = mount
    own = _own_cgroup(_read(Path("/proc/self/cgroup")))
    if own is None:
        return None, "this process has no cgroup v2 membership"
    current = where / own.lstrip("/")
    mode = "hybrid (v1 and v2)" if hybrid else "unified (v2)"
    if not _ours(current, uid):
        why = f"cgroups here are {mode} and your cgroup {own} ({current}) is not delegated to you"
        return None, why
    root = current
    while root != where and _ours(root.parent, uid):
        root = root.parent
    return root, None


def _ours(folder: Path, uid: int) -> bool:
    try:
        return folder.stat().st_uid == uid and (folder / "cgroup.procs").stat().st_uid == uid
    except OSError:
        return False
