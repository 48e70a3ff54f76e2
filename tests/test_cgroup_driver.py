"""The cgroup driver interface, in the parts that need no cgroup: what each driver's
placement adds to a launch request and undoes, and what ``NoCgroups`` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.api.spec import Resources
from runtime.cgroups.driver import NoCgroups
from runtime.cgroups.fs import CgroupfsDriver, FolderPlacement, limit_files
from runtime.cgroups.scopes import SystemdDriver
from runtime.errors import HostSetupError
from runtime.wire import LaunchRequest

REQUEST = LaunchRequest(name="web", container_dir="/state/web", rootfs="/r", argv=("true",))


def test_without_a_driver_limits_are_refused_and_nothing_is_placed() -> None:
    none = NoCgroups("this host has no cgroup v2 hierarchy (cgroup v1 only)")
    with pytest.raises(HostSetupError, match="need cgroup v2 delegated to you: this host"):
        none.place("g", "web", Resources(pids=10))
    placement = none.place("g", "web", None)
    assert placement.request(REQUEST) == REQUEST
    assert not placement.unplaced_after(move_refused=True)


def test_a_folder_the_holder_cannot_use_is_dropped_only_without_limits(tmp_path: Path) -> None:
    limited = FolderPlacement(tmp_path, {"pids.max": "10"}, limited=True)
    asked = limited.request(REQUEST)
    assert (asked.cgroup_parent, asked.cgroup_limits) == (str(tmp_path), {"pids.max": "10"})
    assert not limited.unplaced_after(move_refused=True)
    free = FolderPlacement(tmp_path, {}, limited=False)
    assert not free.unplaced_after(move_refused=False)
    assert free.unplaced_after(move_refused=True)
    assert free.request(REQUEST) == REQUEST


def test_the_launcher_writes_the_limits_a_leaf_made_before_would_get() -> None:
    limits = Resources(memory=64 << 20, cpus=0.5, pids=32)
    files = limit_files(limits, {"memory", "cpu", "pids"}, swap=True)
    assert files == {
        "memory.max": str(64 << 20),
        "memory.swap.max": "max",
        "cpu.max": "50000 100000",
        "cpu.weight": "100",
        "pids.max": "32",
    }
    assert limit_files(limits, {"pids"}, swap=False) == {"pids.max": "32"}
    with pytest.raises(HostSetupError, match="swap accounting"):
        limit_files(Resources(memory_swap=1 << 20), {"memory"}, swap=False)


def test_only_the_cgroupfs_driver_has_its_spares_make_leaves_ahead(tmp_path: Path) -> None:
    assert CgroupfsDriver(tmp_path).ahead("g1") == tmp_path / "squish" / "g1"
    assert SystemdDriver("/run/user/7/bus").ahead("g1") is None
    assert NoCgroups("none here").ahead("g1") is None


def test_the_systemd_driver_describes_a_scope_for_the_launcher() -> None:
    placement = SystemdDriver("/run/user/7/bus").place("g1", "web", Resources(pids=64))
    scope = placement.request(REQUEST).systemd_scope
    assert scope["bus"] == "/run/user/7/bus"
    assert scope["unit"].startswith("squish-g1-web-") and scope["unit"].endswith(".scope")
    assert scope["properties"] == [("TasksMax", ("t", 64))]
    assert placement.request(REQUEST).cgroup == ""
    assert not placement.unplaced_after(move_refused=True)
