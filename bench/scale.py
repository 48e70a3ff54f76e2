"""Scale benchmark: many idle containers under one real ``reconciler run``.

    python bench/scale.py [--counts 200,1000] [--idle 30] [--status-runs 5] [--bridge]
                          [--compare TREE [--compare-loop]]

For each count N: N squishfiles (busybox ``sleep``, ``network = "none"``: a bridge
network's /24 holds 253 containers, and this is about the loop, not the network) are
dropped into an empty folder and a loop is started on it; measured are

- converge from empty: the loop's start until every container runs;
- ``reconciler status FOLDER --json``: wall and CPU time of the whole command as the
  console script runs it (``python -m reconciler``: asked of the running loop, which
  works the document out at the request; a tree without that entry runs the command
  line itself, which reads the folder and every container), medians, and the CPU the
  loop used meanwhile (its part of the answer);
- the idle loop's CPU use over IDLE seconds once converged.

``--compare TREE`` also times ``status`` as the project tree TREE has it (a checkout of
an earlier commit, say), against the same containers, each run of it right after a run
of this tree's: a before and an after under the same load. With ``--compare-loop``,
after each count TREE's own loop converges the same folder afresh and idles too.

The figures go to bench/out/scale.json (:mod:`results`); podman has no equivalent of
a folder's status at 1,000 containers here, so each count's anchor is the same run's
smallest count, scaled linearly (the ratio then says how much better than linear).
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for runtime, tests
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for results

from results import Results, parse

from runtime.api import ContainerState
from runtime.client.linux import LinuxRuntime
from tests.support import SLEEPER, free_ports, start_controller

FORWARDED = """\
[layers]
busybox = "builtin"

[run]
command = "httpd"
args = ["-f", "-p", "80"]

[[ports]]
container = 80
host = {port}
"""
"""``--bridge``: the folder's bridge network (the default) and a forward each."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def started(state: Path) -> int:
    """How many containers of ``state`` were started (one stat each: listing 1,000
    containers through the runtime every poll would take a core from the loop)."""
    return sum(1 for _ in (state / "containers").glob("*/run.json"))


def all_running(state: Path, count: int) -> bool:
    infos = LinuxRuntime(state=state).list()
    return len(infos) == count and all(i.state is ContainerState.RUNNING for i in infos)


def start_loop(folder: Path, env: dict[str, str], tree: Path | None) -> subprocess.Popen[bytes]:
    """``reconciler run FOLDER`` of this tree, or of ``tree`` (run from its folder)."""
    if tree is None:
        return start_controller(folder, env)
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "run", str(folder)],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def converge(
    folder: Path, state: Path, count: int, env: dict[str, str], tree: Path | None = None
) -> tuple[float, int]:
    """Seconds from the loop's start (this tree's, or ``tree``'s) until ``count``
    containers run, and the loop's pid (the loop keeps running)."""
    start = time.perf_counter()
    loop = start_loop(folder, env, tree)
    while not (started(state) >= count and all_running(state, count)):
        if loop.poll() is not None or time.perf_counter() - start > 900:
            raise RuntimeError("the fleet never came up")
        time.sleep(0.1)
    return time.perf_counter() - start, loop.pid


def status_command(tree: Path | None) -> list[str]:
    """``reconciler status`` as the console script runs it: the quick entry
    (``python -m reconciler``) where the tree has one, else the command line itself."""
    root = tree or Path(__file__).resolve().parent.parent
    entry = "reconciler" if (root / "reconciler" / "__main__.py").exists() else "reconciler.cli"
    return [sys.executable, "-m", entry, "status"]


def status_once(
    folder: Path, env: dict[str, str], tree: Path | None, loop: int
) -> tuple[float, float, float]:
    """Wall and CPU (user + system) milliseconds of one ``status`` command, run from
    ``tree`` when given (its folder first on the path: ``-m`` puts the working folder
    ahead of everything), and the CPU the loop ``loop`` used meanwhile (answering it, or
    a resync that came then)."""
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    loop_before = cpu_seconds(loop)
    start = time.perf_counter()
    subprocess.run(
        [*status_command(tree), str(folder), "--json"],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, used * 1000, (cpu_seconds(loop) - loop_before) * 1000


def status_ms(
    folder: Path, env: dict[str, str], runs: int, compare: Path | None, loop: int
) -> dict[str, list[float]]:
    """Wall and CPU milliseconds of each ``status`` command (on a host other work
    shares, the CPU figure moves less), the loop's CPU meanwhile, and the same of
    ``compare``'s right after each."""
    got: dict[str, list[float]] = {}
    trees = {"": None} if compare is None else {"": None, " (compared tree)": compare}
    for _ in range(runs):
        for label, tree in trees.items():
            wall, cpu, loop_cpu = status_once(folder, env, tree, loop)
            got.setdefault(f"status{label}", []).append(wall)
            got.setdefault(f"status CPU{label}", []).append(cpu)
            got.setdefault(f"status loop CPU{label}", []).append(loop_cpu)
    return got


def idle_percent(pid: int, seconds: float) -> float:
    time.sleep(2.0)  # the follow-up pass after the last creates
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / seconds


def measure(count: int, args: argparse.Namespace, tree: Path | None = None) -> dict[str, float]:
    """Converge, idle loop and ``status`` at ``count`` containers, the loop (and its
    holder) this tree's or ``tree``'s (then ``status`` is not timed)."""
    work = Path(tempfile.mkdtemp(prefix="squish-scale-"))
    folder = work / "desired"
    folder.mkdir()
    ports = free_ports(count) if args.bridge else [0] * count
    for i, port in enumerate(ports):
        text = FORWARDED.format(port=port) if args.bridge else SLEEPER
        (folder / f"s{i:04}.toml").write_text(text)
    state = Path("/dev/shm") / f"sqs-{secrets.token_hex(4)}"
    env = {**os.environ, "SQUISH_STATE_DIR": str(state)}
    pid = None
    try:
        seconds, pid = converge(folder, state, count, env, tree)
        idle = idle_percent(pid, args.idle)
        runs = args.status_runs if tree is None else 0
        timed = status_ms(folder, env, runs, args.compare, pid)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        LinuxRuntime(state=state).shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    medians = {what: statistics.median(values) for what, values in timed.items()}
    return {"converge": seconds, **medians, "idle": idle, "load": os.getloadavg()[0]}


def record_compared(out: Results, count: int, got: dict[str, float], tree: Path) -> None:
    """``status`` of this tree against the compared tree's, timed alternately."""
    print(
        f"  {tree}: status {got['status (compared tree)']:.0f} ms "
        f"({got['status CPU (compared tree)']:.0f} ms CPU, the loop's meanwhile "
        f"{got['status loop CPU (compared tree)']:.0f} ms)"
    )
    if "converge (compared tree)" in got:
        print(
            f"  {tree}: converge {got['converge (compared tree)']:.2f} s, idle loop "
            f"{got['idle (compared tree)']:.2f} % of a core"
        )
        for what, unit in (("converge", "s"), ("idle", "% of a core")):
            out.figure(
                f"{count} containers: {what}, this tree against {tree}",
                got[what],
                unit,
                anchor=f"{tree}, its own loop right after this tree's",
                anchor_value=got[f"{what} (compared tree)"],
            )
    for what in ("status", "status CPU", "status loop CPU"):
        out.figure(
            f"{count} containers: {what}, this tree against {tree}",
            got[what],
            "ms",
            anchor=f"{tree}, same containers, alternating",
            anchor_value=got[f"{what} (compared tree)"],
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="200,1000")
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--status-runs", type=int, default=5)
    parser.add_argument(
        "--bridge", action="store_true", help="httpd on the folder's network, one forward each"
    )
    parser.add_argument(
        "--compare", type=Path, help="a project tree whose `status` is timed as well"
    )
    parser.add_argument(
        "--compare-loop",
        action="store_true",
        help="with --compare: that tree's loop converges and idles too, after this one's",
    )
    args = parse(parser, counts="20", idle=3.0, status_runs=2)
    counts = sorted(int(c) for c in args.counts.split(","))
    out = Results("scale-bridge" if args.bridge else "scale")
    base: dict[str, float] | None = None
    for count in counts:
        got = measure(count, args)
        if args.compare is not None and args.compare_loop:
            theirs = measure(count, args, args.compare)
            got |= {f"{what} (compared tree)": theirs[what] for what in ("converge", "idle")}
        base = base or got
        scale = count / counts[0]
        anchor = f"{counts[0]} containers, same run, x{scale:g}"
        print(
            f"{count} containers: converge {got['converge']:.2f} s, status "
            f"{got['status']:.0f} ms ({got['status CPU']:.0f} ms CPU, the loop's meanwhile "
            f"{got['status loop CPU']:.0f} ms), "
            f"idle loop {got['idle']:.2f} % of a core; load {got['load']:.1f}"
        )
        measured = (
            ("converge", "s"),
            ("status", "ms"),
            ("status CPU", "ms"),
            ("status loop CPU", "ms"),
        )
        for what, unit in measured:
            out.figure(
                f"{count} containers: {what}",
                got[what],
                unit,
                anchor=anchor,
                anchor_value=base[what] * scale,
            )
        out.figure(f"{count} containers: idle loop", got["idle"], "% of a core")
        out.figure(f"{count} containers: load average (1 min) at the end", got["load"], "")
        if args.compare is not None:
            record_compared(out, count, got, args.compare)
    print(f"recorded in {out.save()}")


if __name__ == "__main__":
    main()
