"""One interface over the ways a container gets its cgroup, and the choice among them.

- :class:`runtime.cgroups.scopes.SystemdDriver`: the user's systemd makes a delegated
  transient scope per container (when its bus is reachable);
- :class:`runtime.cgroups.fs.CgroupfsDriver`: the client makes a leaf per container in the
  cgroup v2 subtree delegated to the user;
- :class:`NoCgroups`: neither; a container without limits still runs.

The client asks the driver what it needs and never which one it is: :meth:`~CgroupDriver.check`
limits before anything is made, :meth:`~CgroupDriver.ahead` where the holder's spares
make leaves ahead, :meth:`~CgroupDriver.place` a start (a :class:`Placement`
that adds itself to the launch request), :meth:`~CgroupDriver.apply_live` new limits,
:meth:`~CgroupDriver.release` the state folder's cgroups. Once a container runs, its cgroup
is a :class:`runtime.cgroups.fs.Leaf` whatever the driver (a scope's folder is delegated to
the user): kill, freeze, events and remove are cgroupfs writes there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runtime.cgroups.bus import bus_address
from runtime.cgroups.fs import (
    DELEGATE_FIX,
    CgroupfsDriver,
    Leaf,
    delegated_subtree,
    needed_controllers,
)
from runtime.cgroups.scopes import SystemdDriver
from runtime.errors import HostSetupError
from runtime.settings import RuntimeSettings
from runtime.wire import LaunchRequest

if TYPE_CHECKING:
    from runtime.api.spec import Resources

__all__ = ("CgroupDriver", "NoCgroups", "Placement", "detect")


class Placement(Protocol):
    """Where one start puts the container's init, and what is undone if no run uses it."""

    def request(self, request: LaunchRequest) -> LaunchRequest:
        """``request`` with the cgroup (or the scope to start) filled in."""

    def unplaced_after(self, move_refused: bool) -> bool:
        """Whether to launch again without a cgroup when the holder could not move the
        init into this one (``move_refused``); the placement then names none."""

    def check_started(self, leaf: Leaf) -> None:
        """Raise :class:`HostSetupError` if the started container's cgroup cannot hold
        its limits."""

    def discard_unused(self, used: Leaf | None) -> None:
        """Undo what this start made unless the recorded run (``used``) uses it."""


class CgroupDriver(Protocol):
    """How containers get cgroups here."""

    @property
    def name(self) -> str:
        """``systemd``, ``cgroupfs`` or ``none``."""

    @property
    def problem(self) -> str | None:
        """Why limits cannot be applied here (None when they can)."""

    def check(self, resources: Resources | None) -> None:
        """Raise :class:`HostSetupError` when the limits of ``resources`` cannot apply."""

    def place(self, group: str, name: str, resources: Resources | None) -> Placement:
        """Prepare container ``name``'s cgroup for one start (``group``: the state folder's)."""

    def apply_live(self, leaf: Leaf, resources: Resources | None) -> None:
        """Make ``resources`` the limits of a running container's cgroup."""

    def release(self, group: str) -> None:
        """Remove what the driver keeps for the state folder's ``group`` (once empty)."""

    def ahead(self, group: str) -> Path | None:
        """The folder in which the holder's warm spares make the leaf of the next start
        of the state folder's ``group`` ahead of it (its init moved in while idle), or
        None: each start is placed at launch."""

    def separate(self, pid: int) -> None:
        """Put a new namespace holder (``pid``, before it forks anything) in a cgroup of
        its own, outside its caller's: a systemd unit running ``reconciler run`` then
        stops without taking the holder, its containers' networks and helpers along."""


class _Unplaced:
    """A start without a cgroup of its own."""

    def request(self, request: LaunchRequest) -> LaunchRequest:
        return request

    def unplaced_after(self, move_refused: bool) -> bool:
        return False

    def check_started(self, leaf: Leaf) -> None:
        pass

    def discard_unused(self, used: Leaf | None) -> None:
        pass


class NoCgroups:
    """No driver: the containers run in no cgroup of their own, and limits are refused
    (never dropped)."""

    name = "none"

    def __init__(self, problem: str) -> None:
        self.problem: str | None = problem

    def __repr__(self) -> str:
        return f"NoCgroups({self.problem!r})"

    def check(self, resources: Resources | None) -> None:
        if needed_controllers(resources):
            raise HostSetupError(
                f"resource limits need cgroup v2 delegated to you: {self.problem}",
                fix=DELEGATE_FIX,
            )

    def place(self, group: str, name: str, resources: Resources | None) -> Placement:
        self.check(resources)
        return _Unplaced()

    def apply_live(self, leaf: Leaf, resources: Resources | None) -> None:
        leaf.apply(resources)  # a leaf made before: only limits that need no controller

    def release(self, group: str) -> None:
        pass

    def ahead(self, group: str) -> Path | None:
        return None

    def separate(self, pid: int) -> None:
        """Nothing to separate it with: it stays in its caller's cgroup."""


def detect(settings: RuntimeSettings, uid: int | None = None) -> CgroupDriver:
    """How containers get cgroups here: the user's systemd over D-Bus when a user bus is
    reachable, else the caller's delegated cgroup v2 subtree (``settings.cgroup_root``
    names one), else none. ``settings.cgroup_driver`` (auto, cgroupfs, systemd) forces
    one (``$SQUISH_CGROUP_DRIVER``, ``$SQUISH_CGROUP_ROOT``: :mod:`runtime.settings`)."""
    uid = os.getuid() if uid is None else uid
    driver, root = settings.cgroup_driver, settings.cgroup_root
    if driver != "cgroupfs":
        bus = bus_address(settings.session_bus, settings.runtime_dir)
        if bus is not None:  # the user's systemd is reachable: it makes the cgroups
            return SystemdDriver(bus)
        if driver == "systemd":
            return NoCgroups("SQUISH_CGROUP_DRIVER=systemd, but no user bus is reachable")
    found, problem = delegated_subtree(uid, root)
    if found is not None:
        return CgroupfsDriver(found)
    if driver == "auto":
        return NoCgroups(f"{problem}, and no user systemd bus is reachable")
    return NoCgroups(str(problem))
