"""What the /proc view costs: a read of /proc/meminfo through it against the kernel's
file, what it adds to a container's start, and the memory of its server.

Reads are timed by a Python process in the holder's user namespace (the view's mounts
let only that namespace in: ``allow_other`` in a user namespace), through the
``/proc/PID/root`` of a container with the view and of one without it: open, read to
EOF, close, as ``free`` does. Starts are ``run`` + ``remove`` of busybox containers,
view on and off in turns, while one container keeps the view's server running. The
server's memory (PSS, private) is read with one container and with ``--containers``;
healing is timed from a SIGKILL of the server to the answer of a read begun at once.

    python bench/procview.py [-n 300] [--starts 30] [--containers 20] [--kills 10]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, parse

from runtime.client.linux import LinuxRuntime
from runtime.holder.protocol import HOLDER_RECORD
from runtime.holder.views import SERVER_RECORD
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--reads", type=int, default=300)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--containers", type=int, default=20, help="for the server's memory")
    parser.add_argument("--kills", type=int, default=10, help="of the server, each healed")
    args = parse(parser, reads=50, starts=5, containers=3, kills=2)
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
    print(f"saved {out.save()}")


if __name__ == "__main__":
    main()
