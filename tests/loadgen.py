"""A load generator for the reconciler: a fleet, then a burst of edits as fast as files can
be written (ports, env, deletions, re-creations), then a check that the final state is
exactly the desired one and nothing leaked. Used by ``tests/test_load.py`` (short) and
``bench/load.py`` (100 containers, 1,000 edits).
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.client.linux import LinuxRuntime
from tests.support import children_of, free_ports, page, start_controller, write_atomically

__all__ = ("LoadResult", "run_load")


def _squishfile(port: int, greeting: str) -> str:
    return f"""\
network = "isolated"  # one slirp4netns per container: the load test is about the loop

[layers]
busybox = "builtin"
site = "./site"

[run]
command = "httpd"
args = ["-f", "-p", "80", "-h", "/app/site"]

[env]
GREETING = "{greeting}"

[[ports]]
container = 80
host = {port}
"""


def _answers(port: int) -> bool:
    return page(port, "/index.html") is not None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class LoadResult:
    containers: int
    edits: int
    edit_seconds: float
    converge_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    problems: tuple[str, ...]


def run_load(
    folder: Path,
    state: Path,
    containers: int,
    edits: int,
    seed: int = 7,
    limit: float = 300.0,
    pause: float = 0.0,
) -> LoadResult:
    """Drive a real ``reconciler run`` on ``folder`` (which must be empty) and check it."""
    rng = random.Random(seed)
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "index.html").write_text("load\n")
    env = {**os.environ, "SQUISH_STATE_DIR": str(state)}
    runtime = LinuxRuntime(state=state)
    desired: dict[str, tuple[int, str]] = {}
    for i, port in enumerate(free_ports(containers)):
        desired[f"l{i:03}"] = (port, "first")
        write_atomically(folder / f"l{i:03}.toml", _squishfile(port, "first"))
    # The edits delete one file at a time and keep more than half, but the guard also
    # counts the removals of the last 5 min: how many of the files' passing states the
    # loop applies depends on its pace, and a loaded machine let it apply enough
    # deletions to trip it. Each pass alone is what the edits promise to stay under.
    loop = start_controller(folder, env, "--mass-delete-window", "0")
    problems: list[str] = []
    try:
        deadline = time.monotonic() + limit
        while not all(_answers(port) for port, _ in desired.values()):
            if time.monotonic() > deadline or loop.poll() is not None:
                raise RuntimeError("the fleet never came up")
            time.sleep(0.1)
        rss_before = _rss_kib(loop.pid)
        pool = free_ports(edits + 2)
        start = time.perf_counter()
        for n in range(edits):
            kind = rng.random()
            name = rng.choice(sorted(desired))  # never empty: deletions keep half
            if kind < 0.4 and name in desired:  # move the port: applied live
                desired[name] = (pool.pop(), desired[name][1])
            elif kind < 0.7 and name in desired:  # change env: a recreate
                desired[name] = (desired[name][0], f"edit{n}")
            elif kind < 0.85 and name in desired and len(desired) > containers // 2:
                del desired[name]  # a deletion (one at a time: never the mass guard)
                (folder / f"{name}.toml").unlink()
                if pause:
                    time.sleep(pause)
                continue
            else:  # a re-creation of a deleted one, or a new port for a present one
                gone = [f"l{i:03}" for i in range(containers) if f"l{i:03}" not in desired]
                name = rng.choice(gone) if gone else name
                desired[name] = (pool.pop(), "again")
            port, greeting = desired[name]
            write_atomically(folder / f"{name}.toml", _squishfile(port, greeting))
            if pause:
                time.sleep(pause)  # spread the edits over many passes
        edit_seconds = time.perf_counter() - start

        def converged() -> bool:
            every = runtime.list()  # a container still being removed is not converged yet
            live = {i.name: i for i in every if i.state.value == "running"}
            return {i.name for i in every} == set(live) == set(desired) and all(
                live[n].ports
                and live[n].ports[0].host == port
                and live[n].spec.env.get("GREETING") == greeting
                for n, (port, greeting) in desired.items()
            )

        while not converged():
            if time.monotonic() > deadline or loop.poll() is not None:
                problems.append("never converged to the final state")
                break
            time.sleep(0.1)
        converge_seconds = time.perf_counter() - start - edit_seconds
        # A container just started may not listen yet: each must answer, in time.
        while dead := [n for n, (port, _) in desired.items() if not _answers(port)]:
            if time.monotonic() > deadline or loop.poll() is not None:
                problems.append(f"not answering: {dead}")
                break
            time.sleep(0.1)
        rss_after = _rss_kib(loop.pid)
        holder = runtime.holder.identity()
        if holder is not None:
            slirps = [c for _, c in children_of(holder.pid) if "slirp4netns" in c.split()[0]]
            if len(slirps) != len(desired):
                problems.append(f"{len(slirps)} slirp4netns for {len(desired)} containers")
        folders = {p.name for p in (state / "containers").iterdir()}
        if folders != set(desired):
            problems.append(f"state folders differ: {sorted(folders ^ set(desired))}")
    finally:
        loop.send_signal(signal.SIGTERM)
        loop.wait(60)
    return LoadResult(
        containers, edits, edit_seconds, converge_seconds, rss_before, rss_after, tuple(problems)
    )
