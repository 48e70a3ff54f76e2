"""The /proc and /sys view (``runtime.procview``), end to end in real rootless containers.

This host has no cgroup v2 controllers: a container has no limits, so the view gives
the host's figures (its uptime and load excepted: those are the container's own). The
limits themselves are tested in the VM tier (tests/test_cgroups_vm.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.api.spec import BindMount
from runtime.client.linux import LinuxRuntime
from runtime.holder.protocol import HOLDER_RECORD
from runtime.holder.views import SERVER_RECORD
from runtime.util.files import read_json
from runtime.util.processes import ProcessId, descendants
from runtime.wire import VIEW_FILES
from tests.bpf import syscall_number
from tests.conftest import rootless
from tests.support import built_static, run_probes, shell
from tests.syscall_probes import SUPPORTED, write_mapped_probe, write_probe

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
    # The warm spares' connections do not keep it: the last container's went, so did it.
    assert server.wait_gone(5.0)
    for _ in range(500):  # the holder keeps one per warm init; nothing below it holds one
        if _only_warm_connections(holder.pid, rt.settings.spares):
            break
        time.sleep(0.01)
    assert _only_warm_connections(holder.pid, rt.settings.spares), _fuse_fds(holder.pid)
    again = ProcessId.from_json(read_json(rt.state / SERVER_RECORD))
    assert again is None or not again.alive(), "a server was started again"


def test_a_warm_init_has_its_view_bound_before_any_request(rt: LinuxRuntime) -> None:
    """While a container runs (its view's server with it), the warm init of a spare
    forked after its start binds the view's files into the root it mounted ahead: the
    server answered its lookups before any request came."""
    _running(rt, "first")
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None
    for _ in range(500):
        if any(_bound_ahead(pid) for pid in _warm_inits(holder.pid, rt)):
            break
        time.sleep(0.01)
    bound = {pid: _bound_ahead(pid) for pid in _warm_inits(holder.pid, rt)}
    assert any(bound.values()), bound
    _running(rt, "second")  # on that root, its view bound already: served as any other
    assert _view_mounts(rt, "second") == sorted(VIEW_FILES.values())
    assert _inside(rt, "second", "head -n 1 /proc/meminfo").strip() == _host_mem_total()


def test_a_warm_init_that_dies_unused_releases_its_connection(rt: LinuxRuntime) -> None:
    _running(rt, "before")  # a holder, its spares forked with a root ahead, a server
    rt.remove("before", force=True)
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None
    for _ in range(1000):  # the server goes LINGER seconds after that container
        if _only_warm_connections(holder.pid, rt.settings.spares):
            break
        time.sleep(0.01)
    assert _only_warm_connections(holder.pid, rt.settings.spares), _fuse_fds(holder.pid)
    victim = _warm_inits(holder.pid, rt)[0]
    os.kill(victim, signal.SIGKILL)
    # The holder reaps it and closes its copy; its spare is let go and another forked
    # (whose new namespaces may take seconds on a loaded machine).
    for _ in range(3000):
        if not Path(f"/proc/{victim}").exists() and _only_warm_connections(
            holder.pid, rt.settings.spares
        ):
            break
        time.sleep(0.01)
    assert not Path(f"/proc/{victim}").exists()  # reaped by the holder
    assert _only_warm_connections(holder.pid, rt.settings.spares), _fuse_fds(holder.pid)
    _running(rt, "after")
    assert rt.inspect("after").proc_view == "on"


def test_the_warm_inits_a_killed_server_served_are_let_go(rt: LinuxRuntime) -> None:
    """A lookup of a warm init's bind that the killed server had read is never
    answered (the next server cannot know it): such an init would never take its
    request. Every warm init the server was handed is let go, and others forked."""
    _running(rt, "served")
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None
    for _ in range(3000):  # the container's connection and one per warm init
        before = set(_warm_inits(holder.pid, rt))
        if len(_fuse_fds(holder.pid)) == 1 + len(before) == 1 + rt.settings.spares:
            break
        time.sleep(0.01)
    assert len(before) == rt.settings.spares
    server = _server(rt)
    assert server.send(signal.SIGKILL)
    assert server.wait_gone(5.0)
    for _ in range(3000):
        if not before & set(_warm_inits(holder.pid, rt)):
            break
        time.sleep(0.01)
    assert not before & set(_warm_inits(holder.pid, rt))
    _running(rt, "next")  # on a spare forked since
    assert _inside(rt, "next", "head -n 1 /proc/meminfo").strip() == _host_mem_total()


def _only_warm_connections(holder: int, spares: int) -> bool:
    """The holder keeps one connection per warm init (``spares`` of them), and none of
    its descendants holds one: the warm inits keep their view as a mount, and no
    server runs."""
    return len(_fuse_fds(holder)) == spares and not _fuse_holders(holder)


def _warm_inits(holder: int, rt: LinuxRuntime) -> list[int]:
    """The holder's descendants that are pid 1 of their namespace and no container's
    init (a warm init is the holder's child once the spare's intermediate child exited)."""
    running = {info.pid for info in rt.list()}
    return [pid for pid in descendants(holder) if _is_an_init(pid) and pid not in running]


def _is_an_init(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    return nspid.split()[-1] == "1" and len(nspid.split()) > 2


def _bound_ahead(pid: int) -> bool:
    """Whether the init ``pid`` has the view's files bound into its root made ahead."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(
        line.split()[4].endswith("/premount/root/proc/meminfo") and " - fuse.squish " in line
        for line in lines
    )


def _fuse_holders(holder: int) -> list[int]:
    """The holder's descendants that hold /dev/fuse open."""
    return [pid for pid in descendants(holder) if _fuse_fds(pid)]


def _fuse_fds(pid: int) -> list[str]:
    """The descriptors of ``pid`` open on /dev/fuse."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        return [fd for fd in fds if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse"]
    except OSError:
        return []


# -- sysinfo(2) and sched_getaffinity(2), answered by the view's server ------------------
# Most of these run what they check as the container's command and read its log.


def _command_output(rt: LinuxRuntime, name: str, script: str, **fields: object) -> str:
    rt.run(shell(name, script, **fields))
    assert rt.wait(name, timeout=60) == 0, rt.logs(name)
    return rt.logs(name).decode()


def _busybox_uptime_seconds(line: str) -> int:
    """The uptime busybox ``uptime`` printed (to the minute): ``up 2 days, 3:04``,
    ``up 5 min``."""
    match = re.search(r"up +(?:(\d+) days?, +)?(?:(\d+):(\d+)|(\d+) min)", line)
    assert match is not None, line
    days, hours, minutes, only_minutes = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes + only_minutes) * 60


def _host_free_total() -> int:
    return int(Path("/proc/meminfo").read_text().split()[1])


def test_free_and_nproc_of_the_command_give_the_hosts_without_limits(rt: LinuxRuntime) -> None:
    output = _command_output(rt, "counted", "free | sed -n 2p; nproc")
    free_line, nproc = output.splitlines()
    assert int(free_line.split()[1]) == _host_free_total()
    assert int(nproc) == len(os.sched_getaffinity(0))


def test_sysinfo_uptime_counts_from_the_containers_start(rt: LinuxRuntime) -> None:
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    if host_uptime < 180:
        pytest.skip("the host booted less than 3 minutes ago: its uptime looks like a container's")
    output = _command_output(rt, "awake", "cat /proc/uptime; uptime")
    view, line = output.splitlines()
    assert _busybox_uptime_seconds(line) == int(float(view.split()[0])) // 60 * 60
    assert _busybox_uptime_seconds(line) < 120  # not the host's


def test_with_the_view_off_sysinfo_is_the_kernels(rt: LinuxRuntime) -> None:
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    line = _command_output(rt, "plainer", "uptime", proc_view=False)
    assert abs(_busybox_uptime_seconds(line) - host_uptime) <= 120


def test_after_the_server_is_killed_the_calls_are_answered_again(rt: LinuxRuntime) -> None:
    script = (
        "mkfifo /tmp/ready /tmp/go; uptime; echo > /tmp/ready; read x < /tmp/go;"
        " uptime; free | sed -n 2p"
    )
    rt.run(shell("healed", script))
    # Killed between two calls: one the server had read but not answered when it died
    # would wait for a signal to its caller (docs/procview.md).
    _inside(rt, "healed", "until [ -p /tmp/ready ]; do sleep 0.01; done; cat /tmp/ready")
    server = _server(rt)
    assert server.send(signal.SIGKILL)
    assert server.wait_gone(5.0)
    _inside(rt, "healed", "echo > /tmp/go")
    assert rt.wait("healed", timeout=60) == 0, rt.logs("healed")
    first, later, free_line = rt.logs("healed").decode().splitlines()
    assert _busybox_uptime_seconds(first) < 120  # the container's, not the host's
    assert _busybox_uptime_seconds(later) < 120
    assert int(free_line.split()[1]) == _host_free_total()  # one run: never restarted


@pytest.mark.skipif(not SUPPORTED, reason="the probes are x86_64 programs")
def test_a_profile_that_refuses_sysinfo_still_refuses_it(rt: LinuxRuntime, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    number = syscall_number("sysinfo")
    assert number is not None
    write_probe(probes / "sysinfo", number, 0)  # a NULL buffer: EFAULT when it runs
    refusing = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["sysinfo"], "action": "SCMP_ACT_ERRNO"}],
    }
    assert run_probes(rt, "refused", probes, refusing) == {"sysinfo": errno.EPERM}
    assert run_probes(rt, "faulted", probes) == {"sysinfo": errno.EFAULT}


@pytest.mark.skipif(not SUPPORTED, reason="the probes are x86_64 programs")
def test_an_answer_written_into_a_mapping_of_the_view_is_served(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    # sysinfo's buffer is a private mapping of the view's own /proc/meminfo, never read:
    # writing the answer there has the kernel read that page from the view's server,
    # which must go on serving its connections while it writes
    probes = tmp_path / "probes"
    probes.mkdir()
    number = syscall_number("sysinfo")
    assert number is not None
    write_mapped_probe(probes / "sysinfo", number, "/proc/meminfo")
    binds = (BindMount(source=str(probes), target="/probes"),)
    rt.run(shell("mapper", "/probes/sysinfo; echo $?; head -1 /proc/meminfo", binds=binds))
    assert rt.wait("mapper", timeout=60) == 0, rt.logs("mapper")
    code, first = rt.logs("mapper").decode().splitlines()
    assert (code, first) == ("0", _host_mem_total())


def test_an_exec_d_command_gets_the_containers_answers_too(rt: LinuxRuntime) -> None:
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    if host_uptime < 180:
        pytest.skip("the host booted less than 3 minutes ago: its uptime looks like a container's")
    _running(rt, "visited")
    view, line = _inside(rt, "visited", "cat /proc/uptime; uptime").splitlines()
    assert _busybox_uptime_seconds(line) == int(float(view.split()[0])) // 60 * 60
    assert int(_inside(rt, "visited", "nproc")) == len(os.sched_getaffinity(0))


def _listeners(pid: int) -> int:
    """How many seccomp listeners process ``pid`` holds (a descriptor it closes while
    they are listed is not held)."""
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            held += "seccomp" in os.readlink(f"/proc/{pid}/fd/{fd}")
    return held


def _until_listeners(*pids: int, held: tuple[int, ...]) -> None:
    """Wait until each of ``pids`` holds as many seccomp listeners as ``held`` says."""
    while tuple(_listeners(pid) for pid in pids) != held:
        time.sleep(0.01)


def test_an_exec_d_commands_listener_is_let_go_when_it_ends(rt: LinuxRuntime) -> None:
    _running(rt, "visited")
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None
    server = _server(rt)
    # the init's listener: its holder takes it off the channel when its loop gets there,
    # after the launch was answered, and hands it to the server
    _until_listeners(holder.pid, server.pid, held=(1, 1))
    for _ in range(3):
        _inside(rt, "visited", "uptime")
    # the holder reaps each runner (after its answer came) and lets its listener go; the
    # server lets its copy go when it sees the listener end
    _until_listeners(holder.pid, server.pid, held=(1, 1))


_MAPPER = r"""
/* Map the file privately and touch it (a fault reads it through the page cache), while
   a second process opens and closes it (each open makes the view's server store the
   file's bytes in that cache), ROUNDS times each. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rounds = atoi(argv[2]);
    pid_t opener = fork();
    volatile char sink = 0;
    for (int i = 0; i < rounds; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) return 2;
        if (opener != 0) {
            char *page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
            if (page == MAP_FAILED) return 3;
            sink += page[0];
            munmap(page, 4096);
        }
        close(fd);
    }
    if (opener == 0) return 0;
    int status = 0;
    waitpid(opener, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 4;
}
"""


def test_a_container_mapping_its_meminfo_while_opening_it_stalls_no_view(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """Found in review, then reproduced: the server wrote each OPEN's store notice
    itself, and storing a page waits for the page's lock. A reader whose fault locked
    that page waits for its READ, which the server, stuck in its write, never read:
    every container's view hung (and every start, its warm init's bind waiting)."""
    built_static(_MAPPER, tmp_path)
    probe = BindMount(source=str(tmp_path), target="/probe")
    rt.run(shell("mapper", "/probe/prog /proc/meminfo 20000; echo ended $?", binds=(probe,)))
    _wait_for(lambda: b"ended" in rt.logs("mapper"), "the mapper's rounds", 60)
    assert rt.logs("mapper").split()[-1] == b"0"
    _running(rt, "other")  # a start (its warm init's binds) and a read, as before
    assert _inside(rt, "other", "head -1 /proc/meminfo").startswith("MemTotal:")


def _wait_for(done: Callable[[], bool], what: str, seconds: float) -> None:
    ends = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < ends, f"not within {seconds:.0f} s: {what}"
        time.sleep(0.1)
