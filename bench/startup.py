"""Start + exit of `/bin/true`, each run followed by the bwrap anchor (interleaved).

`bench/run.py` measures squish and bwrap one block after the other; on a shared machine
the load moves between the blocks. Here every squish run is followed by one bwrap run,
so both see the same load, and the ratio means something even on a busy machine.

With `--against TREE` (another checkout of squish, e.g. the commit before a change)
each round also runs the same container from that tree, in a process of its own with
its own holder, in alternating order; both trees' figures are printed side by side.
Besides the wall times it gives the CPU time of a whole cycle (the client's, plus
the holder's and everything the holder reaped: spares, inits, pumps), which the load
of other work inflates far less, against the CPU of a bwrap run (bwrap and the processes
it reaped; the kernel's teardown of a network namespace, later in a worker of its own,
is charged to neither). With `--burst K` each tree runs K rounds one right
after the other before the next tree's (starts back to back, as in `bench/run.py`).

    python bench/startup.py [-n 200] [--against ../squish-before] [--pause-ms 50] [--burst 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from results import Results, parse  # noqa: E402

Round = Callable[[], tuple[float, float, float]]
"""One round: (start+exit, create+start+exit+remove, CPU of the cycle), in ms."""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def squish_rounds() -> Iterator[tuple[Round, Path]]:
    """Rounds of `/bin/true` through the runtime of the tree first on ``sys.path``, and
    the busybox rootfs it built (for the anchor)."""
    from runtime.api.spec import ContainerSpec, RootfsRef
    from runtime.client.linux import LinuxRuntime
    from runtime.images.rootfs import busybox_rootfs

    spec = ContainerSpec(
        name="b",
        rootfs=RootfsRef(kind="busybox", version="builtin"),
        argv=("/bin/true",),
        network="none",
    )
    work = Path(tempfile.mkdtemp(prefix="squish-bench-"))
    state = Path("/dev/shm") / f"sqs-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")

    def cpu() -> float:
        """Seconds of CPU: this process's, the holder's and its reaped children's."""
        stat = Path(f"/proc/{rt.holder.ensure().pid}/stat").read_text()
        ticks = sum(int(field) for field in stat.rsplit(")", 1)[1].split()[11:15])
        own = resource.getrusage(resource.RUSAGE_SELF)
        return ticks / os.sysconf("SC_CLK_TCK") + own.ru_utime + own.ru_stime

    def one_round() -> tuple[float, float, float]:
        used = cpu()
        began = time.perf_counter()
        rt.create(spec)
        created = time.perf_counter()
        rt.start("b")
        rt.wait("b")
        exited = time.perf_counter()
        rt.remove("b")
        removed = time.perf_counter()
        cycle = (cpu() - used) * 1000
        return (exited - created) * 1000, (removed - began) * 1000, cycle

    try:
        rootfs = busybox_rootfs(work / "cache")
        one_round()  # warm-up, not counted
        yield one_round, rootfs
    finally:
        rt.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def serve(tree: Path) -> None:
    """The other tree's side of ``--against``: a round per line read, its figures
    written back as one line."""
    sys.path.insert(0, str(tree))
    with squish_rounds() as (one_round, _):
        print("ready", flush=True)
        for _ in sys.stdin:
            print(" ".join(f"{value:.4f}" for value in one_round()), flush=True)


@contextmanager
def other_tree(tree: Path) -> Iterator[Round]:
    """Rounds run by :func:`serve` in a child process, from ``tree``."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(tree.resolve())]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    def one_round() -> tuple[float, float, float]:
        stdin.write("go\n")
        stdin.flush()
        start, full, cycle = (float(value) for value in stdout.readline().split())
        return start, full, cycle

    try:
        if stdout.readline().strip() != "ready":
            raise RuntimeError(f"{tree}: the other tree's runtime did not start")
        yield one_round
    finally:
        stdin.close()
        child.wait()


def timed_bwrap(argv: list[str]) -> tuple[float, float]:
    """ms of one bwrap run, and of its CPU (bwrap's and what it reaped: its init and
    the command; a network namespace's teardown runs later in a kernel worker, charged
    to nobody)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(argv, check=True)
    taken = (time.perf_counter() - began) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return taken, cpu * 1000


def measure(runs: int, against: Path | None, pause: float, burst: int) -> dict[str, list[Any]]:
    """Per turn: ``burst`` rounds of this tree, of the other tree (if any) and of bwrap,
    one right after the other; ``pause`` seconds before each container's round."""
    columns: dict[str, list[Any]] = {"here": [], "there": [], "bwrap": [], "bwrap_cpu": []}
    with squish_rounds() as (here, rootfs):
        bwrap = ["bwrap", "--unshare-all", "--ro-bind", str(rootfs), "/"]
        bwrap += ["--proc", "/proc", "--dev", "/dev", "/bin/true"]
        with other_tree(against) if against else _no_tree() as there:
            for index in range(max(1, runs // burst)):
                order = [("here", here), ("there", there)] if there else [("here", here)]
                for name, one_round in order if index % 2 == 0 else reversed(order):
                    for _ in range(burst):
                        time.sleep(pause)
                        columns[name].append(one_round())
                for taken, cpu in (timed_bwrap(bwrap) for _ in range(burst)):
                    columns["bwrap"].append(taken)
                    columns["bwrap_cpu"].append(cpu)
    return columns


@contextmanager
def _no_tree() -> Iterator[None]:
    yield None


def row(what: str, samples: list[float], out: Results) -> None:
    """Print one line of p50 and p90; record the samples."""
    p50, high = statistics.median(samples), percentile(samples, 0.9)
    print(f"{what:<56} {p50:>8.2f} {high:>8.2f}")
    out.samples(what, samples)


def report(args: argparse.Namespace, columns: dict[str, list[Any]]) -> None:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    pause = f", {args.pause_ms:g} ms apart" if args.pause_ms else ""
    burst = f", {args.burst} in a row per tree" if args.burst > 1 else ""
    print(f"{args.runs} interleaved rounds{pause}{burst}, load average {load}\n")
    print(f"{'what':<56} {'p50 ms':>8} {'p90 ms':>8}")
    out = Results("startup")
    trees = [("", columns["here"])]
    if args.against:
        trees.append((f" [{args.against}]", columns["there"]))
    bwrap_cpu = statistics.mean(columns["bwrap_cpu"])
    for label, rounds in trees:
        start, full, cycle = (list(column) for column in zip(*rounds, strict=True))
        row(f"squish /bin/true start+exit{label}", start, out)
        row(f"squish /bin/true create+start+exit+remove{label}", full, out)
        cpu = statistics.mean(cycle)
        print(f"{'  CPU of a whole cycle (all its processes), mean':<56} {cpu:>8.2f}")
        what = f"CPU of a whole cycle, mean{label}"
        out.figure(what, cpu, "ms", anchor="bwrap (its processes)", anchor_value=bwrap_cpu)
    anchor = columns["bwrap"]
    row("bwrap --unshare-all /bin/true (anchor)", anchor, out)
    print(f"{'  CPU of a bwrap run (bwrap and what it reaped), mean':<56} {bwrap_cpu:>8.2f}")
    anchor_p50 = statistics.median(anchor)
    for what, column in (("start+exit p50", 0), ("full cycle p50", 1)):
        p50 = statistics.median(r[column] for r in columns["here"])
        print(f"bwrap p50 / squish {what}: {anchor_p50 / p50:.2f}x")
        out.figure(f"/bin/true {what}", p50, "ms", anchor="bwrap", anchor_value=anchor_p50)
    out.save()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=200)
    parser.add_argument("--against", type=Path, help="another squish tree, run interleaved")
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=0.0,
        help="wait before each round (a start after a quiet spell finds its spare warm)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        help="rounds of one tree in a row before the other's (back to back, as a burst)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    if "--serve" in sys.argv:
        serve(parser.parse_args().serve)
        return
    args = parse(parser, runs=20)
    report(args, measure(args.runs, args.against, args.pause_ms / 1000, max(1, args.burst)))


if __name__ == "__main__":
    main()
