"""The systemd cgroup driver, on the client's side: each container's transient scope
described for the launcher, and its limits changed live through systemd.

The launcher starts the scope (:func:`runtime.cgroups.systemd.start_scope`) from the
description this driver puts in the launch request. The D-Bus module (and jeepney) is
imported only when a running scope's limits change: choosing this driver loads none.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.cgroups.fs import Leaf
from runtime.wire import LaunchRequest

if TYPE_CHECKING:
    from runtime.api.spec import Resources

__all__ = ("ScopePlacement", "SystemdDriver", "live_properties", "scope_properties")

_log = logging.getLogger(__name__)

Properties = list[tuple[str, tuple[str, Any]]]

_UNLIMITED = 2**64 - 1
"""systemd's "infinity"."""


def scope_properties(resources: Resources | None) -> Properties:
    """systemd unit properties for the limits in ``resources`` (computed by the client:
    the holder gets them as JSON and never loads pydantic)."""
    props: Properties = []
    if resources is None:
        return props
    if resources.memory is not None:
        props.append(("MemoryMax", ("t", resources.memory)))
    if resources.memory_swap is not None:
        props.append(("MemorySwapMax", ("t", resources.memory_swap)))
    if resources.cpus is not None:
        props.append(("CPUQuotaPerSecUSec", ("t", round(resources.cpus * 1_000_000))))
    if resources.cpu_weight is not None:
        props.append(("CPUWeight", ("t", resources.cpu_weight)))
    if resources.pids is not None:
        props.append(("TasksMax", ("t", resources.pids)))
    return props


def live_properties(resources: Resources | None) -> Properties:
    """The properties that make a running scope's limits those of ``resources``: a limit
    left out is lifted, as with cgroupfs."""
    props = scope_properties(resources)
    given = {name for name, _ in props}
    for name in ("MemoryMax", "MemorySwapMax", "CPUQuotaPerSecUSec", "TasksMax"):
        if name not in given:
            props.append((name, ("t", _UNLIMITED)))
    if "CPUWeight" not in given:
        props.append(("CPUWeight", ("t", 100)))
    return props


class SystemdDriver:
    """The systemd driver: the user's systemd, reachable at ``bus``, makes each
    container's cgroup (a delegated transient scope)."""

    name = "systemd"
    problem: str | None = None

    def __init__(self, bus: str) -> None:
        self.bus = bus

    def __repr__(self) -> str:
        return f"SystemdDriver({self.bus!r})"

    def check(self, resources: Resources | None) -> None:
        """Nothing to check before the start: the scope's controllers are checked once
        systemd made it (:meth:`ScopePlacement.check_started`)."""

    def place(self, group: str, name: str, resources: Resources | None) -> ScopePlacement:
        scope = {
            "bus": self.bus,
            "host_uid": os.getuid(),
            "unit": f"squish-{group}-{name}-{secrets.token_hex(3)}.scope",
            "properties": scope_properties(resources),
        }
        return ScopePlacement(scope, resources)

    def apply_live(self, leaf: Leaf, resources: Resources | None) -> None:
        """Change the scope's limits through systemd, then check it has their controllers."""
        from runtime.cgroups import systemd  # jeepney: loaded only to talk to systemd

        systemd.set_properties(self.bus, leaf.path.name, live_properties(resources))
        leaf.check_controllers(resources)

    def release(self, group: str) -> None:
        """Nothing to remove: systemd collects a scope once it is empty."""

    def ahead(self, group: str) -> Path | None:
        """None: a scope is started for each container at launch, with the init's pid
        (systemd names the unit after the container; nothing is made ahead)."""
        return None

    def separate(self, pid: int) -> None:
        """A transient scope of its own, as podman's pause process gets: without it the
        holder stays in the caller's unit, whose stop would kill it. A refusal is logged
        and the holder stays where it is (as before: stopping its caller's unit then
        takes it along)."""
        from runtime.cgroups import systemd  # jeepney: loaded only to talk to systemd

        scope = {
            "bus": self.bus,
            "host_uid": os.getuid(),
            "unit": f"squish-holder-{secrets.token_hex(3)}.scope",
            "description": "squish namespace holder (its containers' networks and helpers)",
            "properties": [],
        }
        try:
            systemd.start_scope(scope, pid)
        except OSError as exc:
            _log.warning("the namespace holder stays in its caller's cgroup: %s", exc)


class ScopePlacement:
    """One start in a new transient scope (see :class:`runtime.cgroups.driver.Placement`)."""

    def __init__(self, scope: dict[str, Any], resources: Resources | None) -> None:
        self.scope = scope
        self.resources = resources

    def request(self, request: LaunchRequest) -> LaunchRequest:
        return dataclasses.replace(request, systemd_scope=self.scope)

    def unplaced_after(self, move_refused: bool) -> bool:
        return False

    def check_started(self, leaf: Leaf) -> None:
        """Refuse a scope without a controller the limits need (the user's systemd does
        not delegate it)."""
        leaf.check_controllers(self.resources)

    def discard_unused(self, used: Leaf | None) -> None:
        """Nothing to discard: an unused scope is collected by systemd."""
