"""The systemd cgroup driver's pieces that need no systemd (the rest runs in the VM tier:
tests/test_cgroups_vm.py with a user instance of systemd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.api.spec import Resources
from runtime.cgroups.bus import bus_address
from runtime.cgroups.driver import CgroupDriver, detect
from runtime.cgroups.scopes import SystemdDriver, live_properties, scope_properties
from runtime.settings import BadSetting, RuntimeSettings

ROOT = Path(__file__).resolve().parents[1]


def test_limits_become_systemd_properties() -> None:
    limits = Resources(memory=256 * 1024**2, memory_swap=0, cpus=0.5, cpu_weight=50, pids=64)
    assert scope_properties(limits) == [
        ("MemoryMax", ("t", 256 * 1024**2)),
        ("MemorySwapMax", ("t", 0)),
        ("CPUQuotaPerSecUSec", ("t", 500_000)),
        ("CPUWeight", ("t", 50)),
        ("TasksMax", ("t", 64)),
    ]
    assert scope_properties(None) == []
    lifted = 2**64 - 1  # systemd's infinity: a limit left out is lifted, as with cgroupfs
    assert live_properties(Resources(pids=64)) == [
        ("TasksMax", ("t", 64)),
        ("MemoryMax", ("t", lifted)),
        ("MemorySwapMax", ("t", lifted)),
        ("CPUQuotaPerSecUSec", ("t", lifted)),
        ("CPUWeight", ("t", 100)),
    ]


def test_the_user_bus_is_found_from_the_settings(tmp_path: Path) -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/7/bus,guid=x"}
    settings = RuntimeSettings.from_environ(env)
    assert bus_address(settings.session_bus, settings.runtime_dir) == "/run/user/7/bus"
    assert bus_address(None, tmp_path) is None  # no socket there
    (tmp_path / "bus").touch()
    settings = RuntimeSettings.from_environ({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert bus_address(settings.session_bus, settings.runtime_dir) == str(tmp_path / "bus")


def test_the_driver_is_chosen_by_what_is_reachable(tmp_path: Path) -> None:
    def detected(driver: str, root: Path | None = None) -> CgroupDriver:
        return detect(RuntimeSettings(runtime_dir=tmp_path, cgroup_driver=driver, cgroup_root=root))

    assert detected("systemd").name == "none"  # asked for, but no bus
    (tmp_path / "bus").touch()
    chosen = detected("systemd")
    assert isinstance(chosen, SystemdDriver) and chosen.bus == str(tmp_path / "bus")
    chosen.check(Resources(memory=64 * 1024**2))  # checked on the scope, after the start
    assert detected("auto").name == "systemd"  # a reachable user systemd is preferred
    forced = detected("cgroupfs", root=tmp_path)  # the bus is ignored: the subtree decides
    assert (forced.name, forced.problem is not None) == ("none", True)
    assert f"SQUISH_CGROUP_ROOT={tmp_path} is not a cgroup v2 folder" in (forced.problem or "")
    with pytest.raises(BadSetting, match="use auto, cgroupfs or systemd"):
        detected("sideways")


def test_the_holder_side_loads_no_pydantic() -> None:
    """The holder forks every container: it stays small (the launcher imports the systemd
    driver only when it is used, and that driver needs no pydantic)."""
    code = (
        "import sys, runtime.holder.server, runtime.cgroups.systemd; "
        "sys.exit(1 if 'pydantic' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_choosing_a_driver_loads_no_dbus_library(tmp_path: Path) -> None:
    """jeepney is loaded only when the client talks to systemd (a live limit change) or
    the launcher starts a scope: not to detect the driver, whichever is chosen."""
    (tmp_path / "bus").touch()
    code = (
        "import sys, runtime.client.linux; from runtime.cgroups.driver import detect; "
        "from runtime.settings import RuntimeSettings; "
        "found = RuntimeSettings.from_environ(); "
        "names = [detect(RuntimeSettings(runtime_dir=found.runtime_dir, cgroup_driver=d)).name "
        "for d in ('systemd', 'cgroupfs')]; "
        "print(names[0], 'jeepney' in sys.modules)"
    )
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "DBUS_SESSION_BUS_ADDRESS": ""},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert found.stdout.split() == ["systemd", "False"]


def test_a_holder_started_before_the_move_still_finds_the_systemd_driver() -> None:
    """An upgrade leaves the running holder (and its containers) in place; its launcher
    imports ``runtime.systemd`` lazily, from the upgraded files, to start a scope."""
    code = (
        "from runtime import systemd; import inspect; "
        "print(list(inspect.signature(systemd.start_scope).parameters))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert found.stdout.strip() == "['scope', 'pid']", found.stderr
