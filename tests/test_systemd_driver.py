"""The systemd cgroup driver's pieces that need no systemd (the rest runs in the VM tier:
tests/test_cgroups_vm.py with a user instance of systemd)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.api.spec import Resources
from runtime.cgroups import fs as cgroups
from runtime.cgroups import systemd
from runtime.cgroups.bus import bus_address

ROOT = Path(__file__).resolve().parents[1]


def test_limits_become_systemd_properties() -> None:
    limits = Resources(memory=256 * 1024**2, memory_swap=0, cpus=0.5, cpu_weight=50, pids=64)
    assert systemd.scope_properties(limits) == [
        ("MemoryMax", ("t", 256 * 1024**2)),
        ("MemorySwapMax", ("t", 0)),
        ("CPUQuotaPerSecUSec", ("t", 500_000)),
        ("CPUWeight", ("t", 50)),
        ("TasksMax", ("t", 64)),
    ]
    assert systemd.scope_properties(None) == []


def test_the_user_bus_is_found_from_the_environment(tmp_path: Path) -> None:
    assert bus_address(
        {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/7/bus,guid=x"}
    ) == ("/run/user/7/bus")
    assert bus_address({"XDG_RUNTIME_DIR": str(tmp_path)}) is None  # no socket there
    (tmp_path / "bus").touch()
    assert bus_address({"XDG_RUNTIME_DIR": str(tmp_path)}) == str(tmp_path / "bus")


def test_the_driver_is_chosen_by_what_is_reachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SQUISH_CGROUP_DRIVER", "systemd")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    assert cgroups.detect().driver == "none"  # asked for, but no bus
    (tmp_path / "bus").touch()
    chosen = cgroups.detect()
    assert (chosen.driver, chosen.bus) == ("systemd", str(tmp_path / "bus"))
    chosen.check(Resources(memory=64 * 1024**2))  # checked on the scope, after the start
    monkeypatch.setenv("SQUISH_CGROUP_DRIVER", "auto")  # a reachable user systemd is preferred
    assert cgroups.detect().driver == "systemd"
    monkeypatch.setenv("SQUISH_CGROUP_DRIVER", "cgroupfs")  # the bus is ignored: the
    monkeypatch.setenv("SQUISH_CGROUP_ROOT", str(tmp_path))  # subtree named decides
    forced = cgroups.detect()
    assert (forced.driver, forced.bus, forced.root) == ("none", None, None)
    assert f"SQUISH_CGROUP_ROOT={tmp_path} is not a cgroup v2 folder" in (forced.problem or "")
    monkeypatch.setenv("SQUISH_CGROUP_DRIVER", "sideways")
    assert "use auto, cgroupfs or systemd" in (cgroups.detect().problem or "")


def test_the_holder_side_loads_no_pydantic() -> None:
    """The holder forks every container: it stays small (the launcher imports the systemd
    driver only when it is used, and that driver needs no pydantic)."""
    code = (
        "import sys, runtime.holder.server, runtime.cgroups.systemd; "
        "sys.exit(1 if 'pydantic' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0
