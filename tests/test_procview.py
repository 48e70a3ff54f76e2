"""The /proc and /sys view (``runtime.procview``), end to end in real rootless containers.

This host has no cgroup v2 controllers: a container has no limits, so the view gives
the host's figures (its uptime and load excepted: those are the container's own). The
limits themselves are tested in the VM tier (tests/test_cgroups_vm.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from runtime.client.linux import LinuxRuntime
from runtime.holder.protocol import HOLDER_RECORD
from runtime.holder.views import SERVER_RECORD
from runtime.util.files import read_json
from runtime.util.processes import ProcessId, descendants
from tests.conftest import rootless
from tests.support import shell

pytestmark = rootless

_VIEWED = ("/proc/meminfo", "/proc/uptime", "/sys/devices/system/cpu/online")


def _running(rt: LinuxRuntime, name: str, **fields: object) -> None:
    rt.run(shell(name, "exec sleep 600", stop_timeout=0, **fields))


def _inside(rt: LinuxRuntime, name: str, script: str) -> str:
    result = rt.exec_command(name, ["sh", "-c", script])
    assert result.exit_code == 0, result.output
    return result.output


def _view_mounts(rt: LinuxRuntime, name: str) -> list[str]:
    """The mount points of the view in the container (fuse.squish mounts)."""
    lines = _inside(rt, name, "cat /proc/self/mountinfo").splitlines()
    return sorted(line.split()[4] for line in lines if " - fuse.squish " in line)


def _server(rt: LinuxRuntime) -> ProcessId:
    server = ProcessId.from_json(read_json(rt.state / SERVER_RECORD))
    assert server is not None and server.alive(), "no view server runs"
    return server


def _host_mem_total() -> str:
    return Path("/proc/meminfo").read_text().splitlines()[0]


def test_without_limits_the_view_gives_the_hosts_cpus_and_memory(rt: LinuxRuntime) -> None:
    _running(rt, "plain")
    assert rt.inspect("plain").proc_view == "on"
    assert set(_VIEWED) <= set(_view_mounts(rt, "plain"))
    assert int(_inside(rt, "plain", "nproc")) == os.cpu_count()
    online = Path("/sys/devices/system/cpu/online").read_text()
    assert _inside(rt, "plain", "cat /sys/devices/system/cpu/online") == online
    assert _inside(rt, "plain", "head -n 1 /proc/meminfo").strip() == _host_mem_total()
    total_kb = int(_host_mem_total().split()[1])
    free_total = _inside(rt, "plain", "free | sed -n 2p").split()[1]
    assert int(free_total) == total_kb  # busybox free: the same total
    cpus = _inside(rt, "plain", "grep -c ^processor /proc/cpuinfo")
    assert int(cpus) == os.cpu_count()


def test_uptime_counts_from_the_containers_start(rt: LinuxRuntime) -> None:
    _running(rt, "young")
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    first = float(_inside(rt, "young", "cat /proc/uptime").split()[0])
    assert first < host_uptime - 1 or host_uptime < 60  # not the host's (booted long ago)
    assert 0 <= first < 60
    time.sleep(1.1)
    later = float(_inside(rt, "young", "cat /proc/uptime").split()[0])
    assert later - first >= 1.0
    loadavg = _inside(rt, "young", "cat /proc/loadavg").split()
    running, total = loadavg[3].split("/")
    assert int(total) >= 1 and int(running) <= int(total)  # its own processes


def test_a_killed_server_heals_while_the_container_runs(rt: LinuxRuntime) -> None:
    _running(rt, "heal")
    before = rt.inspect("heal").pid
    server = _server(rt)
    assert server.send(signal.SIGKILL)
    assert server.wait_gone(5.0)
    # The first read after the kill answers (how soon: bench/procview.py measures it).
    answer = rt.exec_command("heal", ["head", "-n", "1", "/proc/meminfo"])
    assert (answer.exit_code, answer.output.strip()) == (0, _host_mem_total())
    assert rt.inspect("heal").pid == before  # the same container, never restarted
    assert _server(rt).pid != server.pid


def test_switched_off_the_container_reads_the_kernels_files(rt: LinuxRuntime) -> None:
    _running(rt, "kernel", proc_view=False)
    assert rt.inspect("kernel").proc_view == "off"
    assert _view_mounts(rt, "kernel") == []
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    inside = float(_inside(rt, "kernel", "cat /proc/uptime").split()[0])
    assert abs(inside - host_uptime) < 30  # the host's uptime, not the container's


def test_masked_paths_stay_masked_with_the_view(rt: LinuxRuntime) -> None:
    _running(rt, "masked")
    assert _inside(rt, "masked", "cat /proc/timer_list; ls /sys/firmware | wc -l") == "0\n"


def test_nothing_is_left_after_remove(rt: LinuxRuntime) -> None:
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None and holder.alive()
    _running(rt, "gone")
    server = _server(rt)
    assert server.pid in _fuse_holders(holder.pid)
    rt.remove("gone", force=True)
    assert server.wait_gone(5.0)  # the last connection went: so did the server
    for _ in range(500):  # the warm spare (and its init) hold one not mounted: only they
        if len(_fuse_holders(holder.pid)) == 2:
            break
        time.sleep(0.01)
    assert len(_fuse_holders(holder.pid)) == 2


def _fuse_holders(holder: int) -> list[int]:
    """The holder's descendants that hold /dev/fuse open."""
    return [pid for pid in descendants(holder) if _holds_fuse(pid)]


def _holds_fuse(pid: int) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in fds)
    except OSError:
        return False
