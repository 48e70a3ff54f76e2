"""Reconciler benchmark: a real ``reconciler run`` on a temporary folder.

    python bench/reconcile.py [-n 30] [--fleet 100] [--idle 10] [--quick]

Measures, with busybox httpd containers forwarding a port each:
- file dropped → its port answers (p50/p90 over N files, one at a time), the file
  renamed into place and written in place;
- port edited → the new port answers (p50/p90), and that no container was restarted,
  the file renamed into place, rewritten in place (which waits for the settle time) and
  deleted and made anew (as git checks a file out);
- the anchor: the same container run through the Runtime API (``run``, on a network
  that exists, as the loop's files find theirs) → its port answers, each round;
- FLEET files dropped at once → time until all answer;
- the idle loop's CPU use with FLEET containers, over IDLE seconds.
Before the rounds, one run through the API and one file dropped (and edited, and
deleted) start the holder and the network keeper of each state folder: no round's
figure holds a start of them (the loop's first drop did, 200-580 ms). "Answers" is a
GET over a plain socket, tried every 0.5 ms.
The figures go to bench/out/reconcile.json (bench/results.py), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, parse

from reconciler.desired.folder import load_desired
from runtime.client.linux import LinuxRuntime
from tests.support import free_ports, write_anew, write_atomically

PAGE = b"bench\n"

SQUISHFILE = """\
[layers]
busybox = "builtin"
site = "./site"

[run]
command = "httpd"
args = ["-f", "-p", "80", "-h", "/app/site"]

[[ports]]
container = 80
host = {port}
"""


REQUEST = b"GET /index.html HTTP/1.0\r\n\r\n"


def answers(port: int) -> bool:
    """Whether the page comes back through ``port`` now. Plain sockets, no HTTP client: a
    refused connect costs one system call, a connection the forward accepts and closes
    (its container does not listen yet) a few, so the polling takes little of the CPU
    the start needs; the 2 s timeout only ends a connection that is never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(REQUEST)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        except OSError:
            return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply[:16] and reply.endswith(PAGE)


def wait_until(predicate: Callable[[], bool], limit: float = 60.0) -> float:
    """Milliseconds until ``predicate`` holds (measured from the call)."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > limit:
            raise RuntimeError("gave up waiting")
        time.sleep(0.0005)
    return (time.perf_counter() - start) * 1000


def removed(runtime: LinuxRuntime, name: str) -> bool:
    return name not in {c.name for c in runtime.list()}


def write_in_place(path: Path, text: str) -> None:
    """Truncate and write, as nano, VS Code or ``cat >`` do (no rename)."""
    with path.open("w") as file:
        file.write(text)


WRITES: dict[str, Callable[[Path, str], None]] = {
    "renamed": write_atomically,
    "in place": write_in_place,
    "made anew": write_anew,
}
"""How a file is written, by the name its figures carry."""


def run_direct(runtime: LinuxRuntime, folder: Path, name: str) -> float:
    """Milliseconds from ``run`` of the container a squishfile of ``folder`` (not the
    loop's) asks for to its port answering, through the Runtime API alone; it is
    removed again, its network kept. ``runtime`` has a state folder of its own: its
    network keeps its own keeper running, never the loop's."""
    (port,) = free_ports(1)
    (folder / f"{name}.toml").write_text(SQUISHFILE.format(port=port))
    spec = load_desired(folder).containers[name].spec
    start = time.perf_counter()
    runtime.run(spec)
    wait_until(partial(answers, port))
    ms = (time.perf_counter() - start) * 1000
    runtime.remove(name, force=True)
    (folder / f"{name}.toml").unlink()
    return ms


def drop_and_edit(
    runtime: LinuxRuntime, path: Path, write: Callable[[Path, str], None]
) -> dict[str, float]:
    """Milliseconds until a new file's port answers, then until an edited port does
    (checking the edit kept the container); the file is removed again."""
    name = path.stem
    first, second = free_ports(2)
    write(path, SQUISHFILE.format(port=first))
    dropped = wait_until(partial(answers, first))
    pid = runtime.inspect(name).pid
    write(path, SQUISHFILE.format(port=second))
    edited = wait_until(partial(answers, second))
    after = runtime.inspect(name)
    assert after.pid == pid and after.restarts == 0, f"a port edit restarted it: {pid} {after}"
    path.unlink()
    wait_until(partial(removed, runtime, name))
    return {"file dropped -> port answers": dropped, "port edited -> new port answers": edited}


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    print(f"{name:<55} p50 {statistics.median(samples):8.1f} ms   p90 {p90:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--fleet", type=int, default=100)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parse(parser, runs=3, fleet=10, idle=2.0)
    out = Results("reconcile")
    work = Path(tempfile.mkdtemp(prefix="squish-rbench-"))
    folder, direct = work / "desired", work / "direct"
    for where in (folder, direct):
        (where / "site").mkdir(parents=True)
        (where / "site" / "index.html").write_bytes(PAGE)
    state = Path("/dev/shm") / f"sqr-{secrets.token_hex(4)}"
    env = {**os.environ, "SQUISH_STATE_DIR": str(state)}
    loop = subprocess.Popen(
        # Each sample's file is removed on purpose: the mass-deletion guard would stop
        # the third removal within its window.
        [sys.executable, "-m", "reconciler.cli", "run", "--allow-mass-delete", str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runtime = LinuxRuntime(state=state)
    anchored = LinuxRuntime(state=state.with_name(state.name + "-api"))
    try:
        time.sleep(1.0)
        print(load())
        samples: dict[str, list[float]] = {}
        anchor = "run -> port answers, Runtime API"
        run_direct(anchored, direct, "warm")  # its network made, its keeper started
        drop_and_edit(runtime, folder / "warm.toml", write_atomically)  # the loop's, too
        for i in range(args.runs):
            samples.setdefault(anchor, []).append(run_direct(anchored, direct, f"d{i}"))
            for how, write in WRITES.items():
                for what, ms in drop_and_edit(runtime, folder / f"b{i}.toml", write).items():
                    samples.setdefault(f"{what}, {how}", []).append(ms)
        for name, values in sorted(samples.items()):
            report(name, values)
            base = None if name == anchor else samples[anchor]
            out.distribution(
                name, values, anchor=None if base is None else anchor, anchor_values=base
            )
        print(load())

        ports = free_ports(args.fleet)
        staging = work / "staging"
        staging.mkdir()
        for i, port in enumerate(ports):
            (staging / f"f{i:03}.toml").write_text(SQUISHFILE.format(port=port))
        start = time.perf_counter()
        for entry in sorted(staging.iterdir()):
            entry.rename(folder / entry.name)
        pending = set(ports)
        while pending:
            pending = {p for p in pending if not answers(p)}
            if time.perf_counter() - start > 300:
                raise RuntimeError(f"{len(pending)} never answered")
        fleet_s = time.perf_counter() - start
        print(f"{args.fleet} files dropped at once -> all answering: {fleet_s:.2f} s")
        out.figure(f"{args.fleet} files dropped at once -> all answering", fleet_s, "s")

        time.sleep(2.0)
        ticks = os.sysconf("SC_CLK_TCK")
        before = cpu_ticks(loop.pid)
        time.sleep(args.idle)
        used = (cpu_ticks(loop.pid) - before) / ticks
        print(f"idle loop with {args.fleet} containers: {100 * used / args.idle:.2f} % of a core")
        out.figure(f"idle loop with {args.fleet} containers", 100 * used / args.idle, "% of a core")
        status = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "status", str(folder), "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"passes so far: {json.loads(status.stdout)['loop']['passes']}; {load()}")
        out.save()
    finally:
        loop.send_signal(signal.SIGTERM)
        loop.wait(30)
        for each in (runtime, anchored):
            each.shutdown()
            shutil.rmtree(each.state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
