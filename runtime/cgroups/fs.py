"""cgroup v2 for containers, inside the subtree delegated to the user (the cgroupfs driver).

A rootless runtime may only create cgroups where it has been given a subtree: systemd's
``user@UID.service`` (``Delegate=yes``) on most distributions, or a folder an
administrator created and chowned. :func:`detect` finds it: the topmost ancestor of the
caller's own cgroup that belongs to the caller. Each container gets a leaf below it,
``<delegated>/squish/<state id>/<name>.<random>``: the launcher moves the container's init
there before the init reads its request, and the init then starts a new cgroup namespace,
so inside the container its leaf is ``/``.

The leaf is what limits apply to (``memory.max``, ``memory.swap.max``, ``cpu.max``,
``cpu.weight``, ``pids.max``), what ``cgroup.kill`` empties at once (every process,
whatever it forked), what ``cgroup.freeze`` pauses, and where ``memory.events`` and
``pids.events`` count OOM kills and refused forks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.cgroups.bus import bus_address
from runtime.errors import HostSetupError

if TYPE_CHECKING:  # the holder's launcher imports this module: no pydantic there
    from runtime.api.spec import Resources

__all__ = (
    "CGROUP_NOTE",
    "DELEGATE_FIX",
    "Cgroups",
    "Leaf",
    "cgroup_of",
    "detect",
    "needed_controllers",
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


def cgroup_of(pid: int) -> Path | None:
    """The cgroup v2 folder of process ``pid`` (None without a v2 hierarchy)."""
    mount = _v2_mount(_read(Path("/proc/self/mountinfo")))
    own = _own_cgroup(_read(Path(f"/proc/{pid}/cgroup")))
    if mount is None or own is None:
        return None
    return mount[0] / own.lstrip("/")


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
        memory, swap, cpus, weight, pids = (
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
        if "memory" in present:
            self._write("memory.max", "max" if memory is None else str(memory))
            if (self.path / "memory.swap.max").exists():
                self._write("memory.swap.max", "max" if swap is None else str(swap))
            elif swap is not None:
                raise HostSetupError(
                    "memory_swap needs swap accounting, which this kernel does not offer",
                    fix="drop memory_swap, or boot with swap accounting enabled",
                )
        if "cpu" in present:
            period = 100_000
            quota = "max" if cpus is None else str(max(1000, round(cpus * period)))
            self._write("cpu.max", f"{quota} {period}")
            self._write("cpu.weight", str(weight or 100))
        if "pids" in present:
            self._write("pids.max", "max" if pids is None else str(pids))

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
        return _field(self.path / "cgroup.events", "frozen") == 1

    def events(self) -> dict[str, int]:
        """OOM kills and forks refused by the pids limit, as the kernel counts them."""
        return {
            "oom_kills": _field(self.path / "memory.events", "oom_kill") or 0,
            "pids_refused": _field(self.path / "pids.events", "max") or 0,
        }

    def remove(self) -> None:
        """Delete the (empty) leaf (a systemd scope's may already be gone, or systemd's)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()

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


def _field(path: Path, key: str) -> int | None:
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


@dataclass(frozen=True)
class Cgroups:
    """The user's delegated cgroup subtree, or why there is none."""

    root: Path | None
    problem: str | None = None
    """Why limits cannot be applied here (None when they can)."""
    bus: str | None = None
    """With the systemd driver: the user's bus socket (then ``root`` is None)."""

    @property
    def driver(self) -> str:
        return "systemd" if self.bus else "cgroupfs" if self.root else "none"

    @property
    def controllers(self) -> set[str]:
        return set(_read(self.root / "cgroup.controllers").split()) if self.root else set()

    def check(self, resources: Resources | None) -> None:
        """Raise :class:`HostSetupError` unless every limit of ``resources`` can apply."""
        needed = needed_controllers(resources)
        if not needed or self.bus:  # systemd: checked on the scope it made, after the start
            return
        if self.root is None:
            raise HostSetupError(
                f"resource limits need cgroup v2 delegated to you: {self.problem}",
                fix=DELEGATE_FIX,
            )
        offered = self.controllers
        missing = [c for c in needed if c not in offered]
        if missing:
            shown = " ".join(sorted(offered)) or "none"
            raise HostSetupError(
                f"the cgroup controller(s) {', '.join(missing)} are not delegated to you "
                f"(your subtree {self.root} offers: {shown})",
                fix=DELEGATE_FIX,
            )

    def make_leaf(self, group: str, name: str, resources: Resources | None) -> Leaf | None:
        """Create a container's leaf with its limits; None when there is no subtree."""
        self.check(resources)  # limits without a subtree: refused here too, not dropped
        if self.root is None or self.bus:
            return None
        parent = self.root / "squish" / group
        parent.mkdir(parents=True, exist_ok=True)
        self.enable(parent, needed_controllers(resources))
        leaf = Leaf(parent / f"{name}.{secrets.token_hex(3)}")
        leaf.path.mkdir()
        if resources is None:
            return leaf  # a new leaf has no limits already
        try:
            leaf.apply(resources)
        except BaseException:
            leaf.remove()
            raise
        return leaf

    def enable(self, parent: Path, controllers: list[str]) -> None:
        """Enable ``controllers`` on the way from the subtree's root down to ``parent``."""
        assert self.root is not None
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


def detect(uid: int | None = None, *, driver: str = "auto", root: Path | None = None) -> Cgroups:
    """How containers get cgroups here: the user's systemd over D-Bus when a user bus is
    reachable, else the caller's delegated cgroup v2 subtree (``root`` names one), else
    none. ``driver`` (auto, cgroupfs, systemd) forces a driver. Both come from the
    runtime's settings (``$SQUISH_CGROUP_DRIVER``, ``$SQUISH_CGROUP_ROOT``)."""
    uid = os.getuid() if uid is None else uid
    if driver not in ("auto", "cgroupfs", "systemd"):
        return Cgroups(None, f"SQUISH_CGROUP_DRIVER={driver!r}: use auto, cgroupfs or systemd")
    if driver != "cgroupfs":
        bus = bus_address()
        if bus is not None:  # the user's systemd is reachable: it makes the cgroups
            return Cgroups(None, None, bus)
        if driver == "systemd":
            return Cgroups(None, "SQUISH_CGROUP_DRIVER=systemd, but no user bus is reachable")
    found = _cgroupfs(uid, root)
    if found.root is None and driver == "auto":
        return Cgroups(None, f"{found.problem}, and no user systemd bus is reachable")
    return found


def _cgroupfs(uid: int, explicit: Path | None) -> Cgroups:
    mount = _v2_mount(_read(Path("/proc/self/mountinfo")))
    if explicit is not None:
        root = explicit
        own = _own_cgroup(_read(Path("/proc/self/cgroup")))
        if mount is None or own is None or not _ours(root, uid):
            return Cgroups(None, f"SQUISH_CGROUP_ROOT={root} is not a cgroup v2 folder of yours")
        if not (mount[0] / own.lstrip("/")).is_relative_to(root):
            return Cgroups(None, f"SQUISH_CGROUP_ROOT={root} does not contain your cgroup {own}")
        return Cgroups(root)
    if mount is None:
        return Cgroups(None, "this host has no cgroup v2 hierarchy (cgroup v1 only)")
    where, hybrid = mount
    own = _own_cgroup(_read(Path("/proc/self/cgroup")))
    if own is None:
        return Cgroups(None, "this process has no cgroup v2 membership")
    current = where / own.lstrip("/")
    mode = "hybrid (v1 and v2)" if hybrid else "unified (v2)"
    if not _ours(current, uid):
        return Cgroups(
            None,
            f"cgroups here are {mode} and your cgroup {own} ({current}) is not delegated to you",
        )
    root = current
    while root != where and _ours(root.parent, uid):
        root = root.parent
    return Cgroups(root)


def _ours(folder: Path, uid: int) -> bool:
    try:
        return folder.stat().st_uid == uid and (folder / "cgroup.procs").stat().st_uid == uid
    except OSError:
        return False
