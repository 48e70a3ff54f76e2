"""Limits that bite, on a real cgroup v2 kernel with every controller.

This machine cannot offer that (hybrid cgroups, no controllers on v2), so these tests
run inside a VM: ``make test-vm`` (also the last step of ``make test``) boots the Debian
kernel under qemu with virtme-ng, delegates a cgroup v2 folder with cpu, memory and pids
to the test account (scripts/vm-guest.sh) and runs this file there. Elsewhere they skip.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from runtime.api.spec import ContainerSpec, Resources
from runtime.cgroups import fs as cgroups
from runtime.client.linux import LinuxRuntime
from runtime.holder.protocol import HOLDER_LOG
from runtime.util.files import read_json
from tests.conftest import rootless
from tests.support import detected_cgroups, shell

DELEGATED = detected_cgroups()
READY = DELEGATED.name == "systemd" or (
    isinstance(DELEGATED, cgroups.CgroupfsDriver)
    and {"cpu", "memory", "pids"} <= DELEGATED.controllers
)
if os.environ.get("SQUISH_VM_TIER") and not READY:  # in the VM a skip would hide a failure
    raise RuntimeError(f"the VM offers no delegated cpu/memory/pids: {DELEGATED}")
pytestmark = [
    rootless,
    pytest.mark.skipif(
        not READY,
        reason="needs cgroup v2 with cpu, memory and pids delegated (make test-vm provides it)",
    ),
]


def limited(name: str, script: str, resources: Resources | None) -> ContainerSpec:
    return shell(name, script, stop_timeout=0.2, resources=resources)


def leaf(rt: LinuxRuntime, name: str) -> cgroups.Leaf:
    pid = rt.inspect(name).pid
    assert pid is not None
    folder = cgroups.cgroup_of(pid)
    assert folder is not None
    return cgroups.Leaf(folder)


def test_going_over_the_memory_limit_is_an_oom_kill_reported_in_inspect(
    rt: LinuxRuntime,
) -> None:
    limits = Resources(memory=32 * 1024**2, memory_swap=0)
    rt.run(limited("hog", "sleep 0.2; dd if=/dev/zero of=/dev/null bs=96M count=1", limits))
    assert rt.wait("hog", timeout=120) == 137  # SIGKILL by the OOM killer
    assert rt.inspect("hog").oom_kills >= 1


def test_the_limits_are_in_the_leaf_the_records_name_from_the_start(rt: LinuxRuntime) -> None:
    limits = Resources(memory=48 * 1024**2, cpus=0.25, pids=9)
    rt.run(limited("ahead", "exec sleep 1000", limits))
    group = leaf(rt, "ahead")
    if DELEGATED.name == "cgroupfs":  # made ahead by the spare (systemd: a scope per start)
        assert group.path.name.startswith("run.")
    run = read_json(rt._dir("ahead") / "run.json")
    assert isinstance(run, dict) and run["cgroup"] == str(group.path)
    written = {
        f: (group.path / f).read_text().strip() for f in ("memory.max", "cpu.max", "pids.max")
    }
    assert written == {"memory.max": str(48 * 1024**2), "cpu.max": "25000 100000", "pids.max": "9"}


def test_the_pids_limit_makes_forks_fail_inside(rt: LinuxRuntime) -> None:
    script = "sleep 0.5; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 3 & done; wait"
    rt.run(limited("forky", script, Resources(pids=6)))
    group = leaf(rt, "forky")
    most = 0
    for _ in range(3000):  # the shell may give up (and exit) at its first refused fork
        try:
            most = max(most, len((group.path / "cgroup.procs").read_text().split()))
        except OSError as exc:  # a systemd scope goes as soon as it is empty: gone, or
            if exc.errno not in (errno.ENOENT, errno.ENODEV):  # removed while being read
                raise
            break
        if b"can't fork" in rt.logs("forky"):
            break
        time.sleep(0.01)
    rt.wait("forky", timeout=60)
    assert b"can't fork" in rt.logs("forky"), rt.logs("forky")
    assert rt.inspect("forky").pids_refused >= 1  # from the leaf, or as the init recorded it
    assert most <= 6


def test_cpu_max_holds_a_busy_loop_near_its_share(rt: LinuxRuntime) -> None:
    rt.run(limited("spin", "while :; do :; done", Resources(cpus=0.5)))
    group = leaf(rt, "spin")

    def usage() -> int:
        line = (group.path / "cpu.stat").read_text().splitlines()[0]
        return int(line.split()[1])  # usage_usec

    time.sleep(0.5)
    used, began = usage(), time.monotonic()
    time.sleep(3.0)
    share = (usage() - used) / 1e6 / (time.monotonic() - began)
    assert 0.4 <= share <= 0.6, f"used {share:.2f} CPUs with cpus = 0.5"


def test_limits_change_live_without_a_restart(rt: LinuxRuntime) -> None:
    info = rt.run(limited("live", "exec sleep 1000", Resources(pids=50)))
    group = leaf(rt, "live")
    assert (group.path / "pids.max").read_text().strip() == "50"
    after = rt.update_resources("live", Resources(pids=20, memory=64 * 1024**2))
    assert after.pid == info.pid
    assert (group.path / "pids.max").read_text().strip() == "20"
    assert (group.path / "memory.max").read_text().strip() == str(64 * 1024**2)
    assert rt.inspect("live").spec.resources == Resources(pids=20, memory=64 * 1024**2)


def test_cgroup_kill_removes_a_double_forked_escapee(rt: LinuxRuntime) -> None:
    rt.run(limited("escapee", "(sleep 1000 &); echo forked; exec sleep 1000", Resources(pids=20)))
    for _ in range(3000):
        if b"forked" in rt.logs("escapee"):
            break
        time.sleep(0.01)
    group = leaf(rt, "escapee")
    assert len((group.path / "cgroup.procs").read_text().split()) >= 3
    assert group.kill()
    assert not group.populated()


@pytest.mark.skipif(DELEGATED.name != "cgroupfs", reason="the cgroupfs driver's own folders")
def test_a_container_started_without_limits_gets_them_live(rt: LinuxRuntime) -> None:
    # A runtime of its own: a cgroup folder where no earlier test enabled a controller.
    fresh = LinuxRuntime(state=Path(f"/dev/shm/sqvm-{os.getpid()}"), cache=rt.cache)
    try:
        info = fresh.run(limited("late", "exec sleep 1000", None))
        group = leaf(fresh, "late")
        assert "memory" not in (group.path.parent / "cgroup.subtree_control").read_text()
        after = fresh.update_resources("late", Resources(memory=48 * 1024**2))
        assert after.pid == info.pid
        assert (group.path / "memory.max").read_text().strip() == str(48 * 1024**2)
    finally:
        fresh.shutdown()


@pytest.mark.skipif(DELEGATED.name != "systemd", reason="runs with the systemd driver")
def test_the_systemd_driver_puts_each_container_in_a_delegated_scope(rt: LinuxRuntime) -> None:
    info = rt.run(limited("scoped", "exec sleep 1000", Resources(memory=40 * 1024**2, pids=30)))
    group = leaf(rt, "scoped")
    assert group.path.name.startswith("squish-") and group.path.name.endswith(".scope")
    assert "user@" in str(group.path)  # in the user's systemd, not in a folder of ours
    assert (group.path / "memory.max").read_text().strip() == str(40 * 1024**2)  # systemd's
    assert (group.path / "pids.max").read_text().strip() == "30"
    assert group.path.stat().st_uid == os.getuid()  # Delegate=yes
    rt.update_resources("scoped", Resources(memory=40 * 1024**2, pids=12))
    shown = subprocess.run(
        ["systemctl", "--user", "show", "-p", "TasksMax", "--value", group.path.name],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "12"  # changed through systemd, which knows it now
    assert (group.path / "pids.max").read_text().strip() == "12"
    rt.remove("scoped", force=True)
    assert info.pid is not None


# -- the /proc view (runtime.procview) tells the container its limits ---------------------


def _inside(rt: LinuxRuntime, name: str, script: str) -> str:
    result = rt.exec_command(name, ["sh", "-c", script])
    assert result.exit_code == 0, result.output
    return result.output


def _mem_kb(rt: LinuxRuntime, name: str, field: str) -> int:
    line = _inside(rt, name, f"grep '^{field}:' /proc/meminfo")
    return int(line.split()[1])


def test_meminfo_reports_the_memory_limit_and_usage_moves_with_an_allocation(
    rt: LinuxRuntime,
) -> None:
    rt.run(limited("sized", "exec sleep 1000", Resources(memory=256 * 1024**2)))
    assert rt.inspect("sized").proc_view == "on"
    assert _mem_kb(rt, "sized", "MemTotal") == 256 * 1024
    # busybox free takes its total from sysinfo(2), which no file changes; its
    # "available" column is read from /proc/meminfo: the view's.
    available = _inside(rt, "sized", "free | sed -n 2p").split()[-1]
    assert int(available) <= 256 * 1024
    free_before = _mem_kb(rt, "sized", "MemFree")
    _inside(rt, "sized", "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null")
    free_after = _mem_kb(rt, "sized", "MemFree")
    assert free_before - free_after >= 60 * 1024, (free_before, free_after)


def test_cpus_round_up_in_nproc_cpuinfo_and_online(rt: LinuxRuntime) -> None:
    rt.run(limited("wide", "exec sleep 1000", Resources(cpus=1.5)))
    rt.run(limited("narrow", "exec sleep 1000", Resources(cpus=0.5)))
    assert _inside(rt, "wide", "nproc").strip() == "2"
    assert _inside(rt, "wide", "cat /sys/devices/system/cpu/online") == "0-1\n"
    assert _inside(rt, "narrow", "grep -c ^processor /proc/cpuinfo").strip() == "1"
    assert _inside(rt, "narrow", "cat /sys/devices/system/cpu/online") == "0\n"
    assert _inside(rt, "narrow", "grep -c '^cpu[0-9]' /proc/stat").strip() == "1"


def test_a_live_resize_shows_in_the_view_at_once(rt: LinuxRuntime) -> None:
    info = rt.run(limited("grow", "exec sleep 1000", Resources(memory=256 * 1024**2)))
    assert _mem_kb(rt, "grow", "MemTotal") == 256 * 1024
    after = rt.update_resources("grow", Resources(memory=128 * 1024**2, cpus=0.5))
    assert after.pid == info.pid
    assert _mem_kb(rt, "grow", "MemTotal") == 128 * 1024
    assert _inside(rt, "grow", "cat /sys/devices/system/cpu/online") == "0\n"


# sysinfo(2) and sched_getaffinity(2), answered by the view's server: what these check
# runs as the container's command, its log read, once the start is over and the test
# says go: under TCG the start keeps the VM's CPUs so busy that an answer may miss the
# view's bound (then the kernel answers, as designed).


def _holder_log(rt: LinuxRuntime) -> str:
    """The end of the holder's log (the view's server logs a call it left to the kernel)."""
    return (rt.state / HOLDER_LOG).read_text()[-4000:]


def _go(rt: LinuxRuntime, name: str, fifo: str = "/tmp/go") -> None:
    """Let the command of ``name`` past its ``read x < FIFO``; ``x`` is then the pid of
    the exec'd shell that wrote it (see :func:`_command_output`)."""
    _inside(rt, name, f"until [ -p {fifo} ]; do sleep 0.05; done; echo $$ > {fifo}")


def _command_output(rt: LinuxRuntime, name: str, script: str, resources: Resources) -> str:
    # The exec'd shell that lets it go is a process of the container too, until it is
    # reaped: waited out, so that ``script`` sees only its own.
    gone = "while kill -0 $x 2>/dev/null; do sleep 0.05; done"
    rt.run(limited(name, f"mkfifo /tmp/go; read x < /tmp/go; {gone}; {script}", resources))
    _go(rt, name)
    assert rt.wait(name, timeout=120) == 0, rt.logs(name)
    return rt.logs(name).decode()


def test_busybox_free_and_nproc_tell_the_containers_limits(rt: LinuxRuntime) -> None:
    both = Resources(memory=256 * 1024**2, cpus=1.5)
    free_line, nproc = _command_output(rt, "told", "free | sed -n 2p; nproc", both).split("\n")[:2]
    assert int(free_line.split()[1]) == 256 * 1024, _holder_log(rt)  # kB, from sysinfo(2)
    assert nproc == "2"  # 1.5 rounded up, from sched_getaffinity(2)
    assert _command_output(rt, "halved", "nproc", Resources(cpus=0.5)) == "1\n", _holder_log(rt)


def test_a_live_resize_shows_in_free_and_nproc_at_once(rt: LinuxRuntime) -> None:
    script = (
        "mkfifo /tmp/go /tmp/ready /tmp/again; read x < /tmp/go; free | sed -n 2p; nproc;"
        " echo > /tmp/ready; read x < /tmp/again; free | sed -n 2p; nproc"
    )
    rt.run(limited("resized", script, Resources(memory=256 * 1024**2)))
    _go(rt, "resized")
    _inside(rt, "resized", "cat /tmp/ready")  # the first answers are in
    rt.update_resources("resized", Resources(memory=128 * 1024**2, cpus=0.5))
    _go(rt, "resized", "/tmp/again")
    assert rt.wait("resized", timeout=120) == 0, rt.logs("resized")
    before, cpus_before, after, cpus_after = rt.logs("resized").decode().splitlines()
    assert (int(before.split()[1]), cpus_before) == (256 * 1024, "2"), _holder_log(rt)
    assert (int(after.split()[1]), cpus_after) == (128 * 1024, "1"), _holder_log(rt)


def test_loadavg_counts_the_processes_of_the_containers_cgroup(rt: LinuxRuntime) -> None:
    script = (
        "sleep 100 & a=$!; sleep 100 & b=$!; cat /proc/loadavg > /tmp/l; kill $a $b; cat /tmp/l"
    )
    loadavg = _command_output(rt, "counted", script, Resources(memory=256 * 1024**2))
    # sh and two sleeps (and cat, unless busybox runs it in the shell); not the init
    assert loadavg.split()[3].split("/")[1] in ("3", "4"), loadavg
