"""The cgroup driver interface, in the parts that need no cgroup: what each driver's
placement adds to a launch request and undoes, and what ``NoCgroups`` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.api.spec import Resources
from runtime.cgroups.driver import NoCgroups
from runtime.cgroups.fs import Leaf, LeafPlacement
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


def test_a_leaf_the_holder_cannot_use_is_dropped_only_without_limits(tmp_path: Path) -> None:
    (tmp_path / "web.1").mkdir()
    limited = LeafPlacement(Leaf(tmp_path / "web.1"), limited=True)
    assert limited.request(REQUEST).cgroup == str(tmp_path / "web.1")
    assert not limited.unplaced_after(move_refused=True)
    free = LeafPlacement(Leaf(tmp_path / "web.1"), limited=False)
    assert not free.unplaced_after(move_refused=False)
    assert free.unplaced_after(move_refused=True)
    assert free.request(REQUEST).cgroup == "" and not (tmp_path / "web.1").exists()


def test_an_unused_leaf_is_discarded_and_a_used_one_kept(tmp_path: Path) -> None:
    used, unused = Leaf(tmp_path / "a.1"), Leaf(tmp_path / "b.1")
    used.path.mkdir()
    unused.path.mkdir()
    LeafPlacement(used, limited=False).discard_unused(Leaf(tmp_path / "a.1"))
    LeafPlacement(unused, limited=False).discard_unused(None)
    assert used.path.exists() and not unused.path.exists()


def test_the_systemd_driver_describes_a_scope_for_the_launcher() -> None:
    placement = SystemdDriver("/run/user/7/bus").place("g1", "web", Resources(pids=64))
    scope = placement.request(REQUEST).systemd_scope
    assert scope["bus"] == "/run/user/7/bus"
    assert scope["unit"].startswith("squish-g1-web-") and scope["unit"].endswith(".scope")
    assert scope["properties"] == [("TasksMax", ("t", 64))]
    assert placement.request(REQUEST).cgroup == ""
    assert not placement.unplaced_after(move_refused=True)
