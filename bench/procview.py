"""What the /proc view costs: a read of /proc/meminfo through it against the kernel's
file, what it adds to a container's start, and the memory of its server.

Reads are timed by a Python process in the holder's user namespace (the view's mounts
let only that namespace in: ``allow_other`` in a user namespace), through the
``/proc/PID/root`` of a container with the view and of one without it: open, read to
EOF, close, as ``free`` does. Starts are ``run`` + ``remove`` of busybox containers,
view on and off in turns, while one container keeps the view's server running. The
server's memory (PSS, private) is read with one container and with ``--containers``;
healing is timed from a SIGKILL of the server to the answer of a read begun at once.

The intercepted calls: a static C program (built with ``cc`` here) times ``--calls``
``sysinfo`` and ``sched_getaffinity`` calls as a container's command, answered by the
view's server, against the kernel's answers in a container with the view off, in turns;
the server's CPU time per answered call is read from its ``/proc/PID/stat``. With
``--against TREE`` (another copy of the project, with its ``.venv``), starts of this
tree and of that one alternate, each in its own runtime (and holder): what this tree
adds to a start against that one (e.g. the filter, against the tree before it).

    python bench/procview.py [-n 300] [--starts 30] [--containers 20] [--kills 10]
                             [--calls 2000] [--against TREE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, parse

from runtime.api.spec import BindMount
from runtime.client.linux import LinuxRuntime
from runtime.holder.protocol import HOLDER_RECORD
from runtime.holder.views import SERVER_RECORD
from runtime.procview import intercept
from runtime.sandbox import syscalls as sc
from runtime.util.fdpass import receive_with_fds, send_with_fds
from runtime.util.files import read_json
from runtime.util.processes import ProcessId, parent_pids
from tests.support import shell

READER = """
import json, sys, time
paths, rounds = sys.argv[1:-1], int(sys.argv[-1])
times = {p: [] for p in paths}
for _ in range(rounds):
    for path in paths:
        began = time.perf_counter()
        with open(path, "rb", buffering=0) as file:
            while file.read(65536):
                pass
        times[path].append(time.perf_counter() - began)
print(json.dumps(times))
"""


HEALER = """
import sys, time
path = sys.argv[1]
print("ready", flush=True)
while sys.stdin.readline():  # one line per kill of the server: read at once, say how long
    began = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        while file.read(65536):
            pass
    print(time.perf_counter() - began, flush=True)
"""


def _heal_times(rt: LinuxRuntime, kills: int) -> list[float]:
    """Seconds from a SIGKILL of the view's server to the answer of a read begun at once
    (the read waits in the kernel until the holder's new server takes it)."""
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None
    path = f"/proc/{_command_pid(rt, 'view')}/root/proc/meminfo"
    argv = ["nsenter", "-U", "--preserve-credentials", "-t", str(holder.pid)]
    argv += [sys.executable, "-c", HEALER, path]
    reader = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdin is not None and reader.stdout is not None
    times = []
    try:
        assert reader.stdout.readline().strip() == "ready"
        for _ in range(kills):
            server = ProcessId.from_json(read_json(rt.state / SERVER_RECORD))
            assert server is not None and server.send(signal.SIGKILL)
            began = time.perf_counter()
            reader.stdin.write("go\n")
            reader.stdin.flush()
            reader.stdout.readline()
            times.append(time.perf_counter() - began)
            server.wait_gone(5.0)
            time.sleep(1.1)  # past the holder's guard against a server that dies at start
    finally:
        reader.stdin.close()
        reader.wait(10)
    return times


def _command_pid(rt: LinuxRuntime, name: str) -> int:
    init = rt.inspect(name).pid
    for pid, parent in parent_pids().items():
        if parent == init:
            return pid
    raise RuntimeError(f"{name} runs no command")


def _read_times(rt: LinuxRuntime, rounds: int) -> tuple[list[float], list[float]]:
    holder = ProcessId.from_json(read_json(rt.state / HOLDER_RECORD))
    assert holder is not None
    view = f"/proc/{_command_pid(rt, 'view')}/root/proc/meminfo"
    kernel = f"/proc/{_command_pid(rt, 'kernel')}/root/proc/meminfo"
    argv = ["nsenter", "-U", "--preserve-credentials", "-t", str(holder.pid)]
    argv += [sys.executable, "-c", READER, view, kernel, str(rounds)]
    times = json.loads(subprocess.run(argv, check=True, capture_output=True).stdout)
    return times[view], times[kernel]


def _start_times(rt: LinuxRuntime, starts: int) -> tuple[list[float], list[float]]:
    """Starts with the view on and off, in turns, while a container keeps the view's
    server running (as on any host that runs containers)."""
    on: list[float] = []
    off: list[float] = []
    for index in range(starts):
        for view, into in ((True, on), (False, off)):
            spec = shell(f"s{index}{int(view)}", "exec sleep 600", stop_timeout=0, proc_view=view)
            began = time.perf_counter()
            rt.run(spec)
            into.append(time.perf_counter() - began)
            rt.remove(spec.name, force=True)
    return on, off


def _server_memory_kb(rt: LinuxRuntime) -> tuple[int, int]:
    """The view server's PSS and private memory (kB)."""
    server = ProcessId.from_json(read_json(rt.state / SERVER_RECORD))
    assert server is not None
    rollup = {}
    for line in Path(f"/proc/{server.pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        rollup[key] = int(value.split()[0])
    return rollup["Pss"], rollup["Private_Clean"] + rollup["Private_Dirty"]


def _memory_with(rt: LinuxRuntime, count: int) -> tuple[int, int]:
    """The server's memory once ``count`` containers (with the view) run and each was read."""
    running = sum(1 for info in rt.list() if info.spec.proc_view)
    for index in range(running, count):
        rt.run(shell(f"m{index}", "exec sleep 600", stop_timeout=0))
    for info in rt.list():
        rt.exec_command(info.name, ["cat", "/proc/meminfo", "/proc/stat", "/proc/uptime"])
    return _server_memory_kb(rt)


CALLS = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sysinfo.h>
#include <time.h>

static long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    return (*(const long *)a > *(const long *)b) - (*(const long *)a < *(const long *)b);
}

int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    long *took = calloc(n, sizeof *took);
    struct sysinfo info;
    cpu_set_t set;
    for (int kind = 0; kind < 2; kind++) {
        for (int i = 0; i < n; i++) {
            long began = now();
            if (kind == 0 ? sysinfo(&info) : sched_getaffinity(0, sizeof set, &set)) return 1;
            took[i] = now() - began;
        }
        qsort(took, n, sizeof *took, by_value);
        printf("%s %ld\n", kind == 0 ? "sysinfo" : "sched_getaffinity", took[n / 2]);
    }
    return 0;
}
"""
"""Times ``argv[1]`` calls of each kind; prints each kind's p50 in ns."""


def _build_calls(folder: Path) -> Path | None:
    """The call timer, built static (it runs in a busybox container); None without cc."""
    compiler = shutil.which("cc")
    if compiler is None:
        return None
    source = folder / "calls.c"
    source.write_text(CALLS)
    subprocess.run(
        [compiler, "-O2", "-static", "-o", str(folder / "calls"), str(source)], check=True
    )
    return folder / "calls"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_calls(
    rt: LinuxRuntime, name: str, program: Path, calls: int, view: bool
) -> dict[str, float]:
    """p50 ns of each call kind, timed as the command of a container (view on or off)."""
    binds = (BindMount(source=str(program.parent), target="/timer"),)
    rt.run(shell(name, f"/timer/calls {calls}", binds=binds, proc_view=view))
    assert rt.wait(name, timeout=300) == 0, rt.logs(name)
    found = dict(line.split() for line in rt.logs(name).decode().splitlines())
    rt.remove(name, force=True)
    return {kind: float(ns) for kind, ns in found.items()}


def _call_times(rt: LinuxRuntime, calls: int, rounds: int) -> dict[str, list[float]] | None:
    """p50 latencies (ns) of the intercepted calls and of the kernel's, in turns, and the
    server's CPU time per answered call (ns), one figure per round."""
    folder = Path(tempfile.mkdtemp(prefix="sqcalls-"))
    os.chmod(folder, 0o755)
    program = _build_calls(folder)
    if program is None:
        return None
    times: dict[str, list[float]] = {}
    for index in range(rounds):
        server = ProcessId.from_json(read_json(rt.state / SERVER_RECORD))
        assert server is not None
        cpu = _cpu_seconds(server.pid)
        for kind, ns in _timed_calls(rt, f"c{index}", program, calls, True).items():
            times.setdefault(kind, []).append(ns)
        times.setdefault("server_cpu", []).append(
            (_cpu_seconds(server.pid) - cpu) / (2 * calls) * 1e9
        )
        for kind, ns in _timed_calls(rt, f"k{index}", program, calls, False).items():
            times.setdefault(f"kernel {kind}", []).append(ns)
    shutil.rmtree(folder)
    return times


def _install_times(samples: int) -> list[float]:
    """Seconds an init spends on the filter: install it (each in a fresh child: a second
    listener in one chain is refused) and send its listener on a socket pair."""
    program = intercept.program()
    assert isinstance(program, bytes), program
    times = []
    for _ in range(samples):
        ours, theirs = socket.socketpair()
        child = os.fork()
        if child == 0:
            sc.prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: an unprivileged filter needs it
            began = time.perf_counter()
            listener = sc.seccomp_listener(program)
            send_with_fds(theirs, b"L", [listener])
            theirs.send(struct.pack("d", time.perf_counter() - began))
            os._exit(0)
        theirs.close()
        _, fds = receive_with_fds(ours, 1, 1)
        times.append(struct.unpack("d", ours.recv(8))[0])
        for fd in fds:
            os.close(fd)
        ours.close()
        os.waitpid(child, 0)
    return times


STARTER = """
import sys, tempfile, time
from pathlib import Path
from runtime.client.linux import LinuxRuntime
from tests.support import shell
state = Path(tempfile.mkdtemp(prefix="sqbench-", dir="/dev/shm"))
rt = LinuxRuntime(state=state, cache=Path.home() / ".cache" / "squish-bench")
try:
    rt.run(shell("keep", "exec sleep 600", stop_timeout=0))  # the view's server runs
    print("ready", flush=True)
    for index, _ in enumerate(sys.stdin):
        spec = shell(f"s{index}", "exec sleep 600", stop_timeout=0)
        began = time.perf_counter()
        rt.run(spec)
        print(time.perf_counter() - began, flush=True)
        rt.remove(spec.name, force=True)
finally:
    for info in rt.list():
        rt.remove(info.name, force=True)
    rt.shutdown()
"""
"""Starts a container per line read, in the runtime of the tree it runs from; prints each
start's seconds."""


def _starter(tree: Path) -> subprocess.Popen[str]:
    python = tree / ".venv" / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [str(python), "-c", STARTER]
    starter = subprocess.Popen(
        argv, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None and starter.stdout.readline().strip() == "ready"
    return starter


def _ab_starts(against: Path, starts: int) -> tuple[list[float], list[float]]:
    """Starts in this tree and in ``against``, alternating (A, B, A, B...)."""
    ours, theirs = _starter(Path(__file__).resolve().parent.parent), _starter(against)
    times: tuple[list[float], list[float]] = ([], [])
    try:
        for _ in range(starts):
            for starter, into in zip((ours, theirs), times, strict=True):
                assert starter.stdin is not None and starter.stdout is not None
                starter.stdin.write("go\n")
                starter.stdin.flush()
                into.append(float(starter.stdout.readline()))
    finally:
        for starter in (ours, theirs):
            assert starter.stdin is not None
            starter.stdin.close()
            starter.wait(60)
    return times


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _report_calls(out: Results, times: dict[str, list[float]]) -> None:
    for kind in ("sysinfo", "sched_getaffinity"):
        ours, kernel = statistics.median(times[kind]), statistics.median(times[f"kernel {kind}"])
        print(f"{kind}, p50 of the rounds' p50s: answered by the view {ours / 1e3:.1f} µs, "
              f"the kernel's {kernel / 1e3:.2f} µs")  # fmt: skip
        out.figure(f"{kind} answered by the view, p50", ours / 1e3, "µs",
                   anchor=f"the kernel's {kind}", anchor_value=kernel / 1e3)  # fmt: skip
        out.samples(f"{kind}_view_ns", times[kind])
        out.samples(f"{kind}_kernel_ns", times[f"kernel {kind}"])
    cpu = statistics.median(times["server_cpu"])
    print(f"the server's CPU time per answered call: {cpu / 1e3:.1f} µs")
    out.figure("view server CPU time per answered call", cpu / 1e3, "µs")


def _report_ab(out: Results, against: Path, ours: list[float], theirs: list[float]) -> None:
    ours_ms, theirs_ms = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    print(f"start (run), p50: this tree {ours_ms:.1f} ms, {against} {theirs_ms:.1f} ms "
          f"({ours_ms - theirs_ms:+.1f} ms)")  # fmt: skip
    out.figure("start with this tree, p50", ours_ms, "ms",
               anchor=f"start with {against}", anchor_value=theirs_ms)  # fmt: skip
    out.samples("start_ours_s", ours)
    out.samples("start_against_s", theirs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--reads", type=int, default=300)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--containers", type=int, default=20, help="for the server's memory")
    parser.add_argument("--kills", type=int, default=10, help="of the server, each healed")
    parser.add_argument("--calls", type=int, default=2000, help="of each intercepted kind")
    parser.add_argument("--against", type=Path, help="another tree: starts A/B against it")
    args = parse(parser, reads=50, starts=5, containers=3, kills=2, calls=200)
    print(f"load average at the start: {_load()}")
    state = Path(tempfile.mkdtemp(prefix="sqbench-", dir="/dev/shm"))
    rt = LinuxRuntime(state=state, cache=Path.home() / ".cache" / "squish-bench")
    out = Results("procview")
    try:
        rt.run(shell("view", "exec sleep 600", stop_timeout=0))
        rt.run(shell("kernel", "exec sleep 600", stop_timeout=0, proc_view=False))
        view, kernel = _read_times(rt, args.reads)
        heals = _heal_times(rt, args.kills)
        rt.remove("kernel", force=True)
        memory = {count: _memory_with(rt, count) for count in (1, args.containers)}
        for info in rt.list():
            if info.name != "view":
                rt.remove(info.name, force=True)
        on, off = _start_times(rt, args.starts)
        calls = _call_times(rt, args.calls, max(1, args.starts // 4))
    finally:
        for info in rt.list():
            rt.remove(info.name, force=True)
        rt.shutdown()
    view_us, kernel_us = statistics.median(view) * 1e6, statistics.median(kernel) * 1e6
    on_ms, off_ms = statistics.median(on) * 1e3, statistics.median(off) * 1e3
    print(f"/proc/meminfo read, p50: view {view_us:.0f} µs, kernel {kernel_us:.0f} µs "
          f"({view_us / kernel_us:.1f} times)")  # fmt: skip
    print(f"start (run), p50: view on {on_ms:.1f} ms, off {off_ms:.1f} ms "
          f"(+{on_ms - off_ms:.1f} ms)")  # fmt: skip
    heal_ms = statistics.median(heals) * 1e3
    print(f"a read begun as the server is killed answers after, p50 {heal_ms:.1f} ms "
          f"(max {max(heals) * 1e3:.1f} ms, {len(heals)} kills)")  # fmt: skip
    out.figure("a read begun at a kill of the server, answered after, p50", heal_ms, "ms")
    out.samples("heal_s", heals)
    for count, (pss, private) in memory.items():
        print(f"view server with {count} containers: PSS {pss} kB, private {private} kB")
        out.figure(f"view server PSS, {count} containers", pss, "kB")
        out.figure(f"view server private memory, {count} containers", private, "kB")
    out.figure("meminfo read via the view, p50", view_us, "µs",
               anchor="the kernel's /proc/meminfo", anchor_value=kernel_us)  # fmt: skip
    out.figure("start with the view, p50", on_ms, "ms",
               anchor="start without the view", anchor_value=off_ms)  # fmt: skip
    out.samples("read_view_s", view)
    out.samples("read_kernel_s", kernel)
    out.samples("start_view_s", on)
    out.samples("start_kernel_s", off)
    if calls is not None:
        _report_calls(out, calls)
    installs = _install_times(args.calls // 10)
    install_us = statistics.median(installs) * 1e6
    print(f"the filter in an init (install, send its listener), p50: {install_us:.0f} µs")
    out.figure("installing the filter and sending its listener, p50", install_us, "µs")
    out.samples("install_s", installs)
    if args.against is not None:
        _report_ab(out, args.against, *_ab_starts(args.against, args.starts))
    print(f"load average at the end: {_load()}")
    print(f"saved {out.save()}")


if __name__ == "__main__":
    main()
