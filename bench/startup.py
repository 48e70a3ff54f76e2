"""Start + exit of `/bin/true`, each run followed by the bwrap anchor (interleaved).

`bench/run.py` measures squish and bwrap one block after the other; on a shared machine
the load moves between the blocks. Here every squish run is followed by one bwrap run,
so both see the same load, and the ratio means something even on a busy machine.

    python bench/startup.py [-n 200]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import Results, parse

from runtime.api.spec import ContainerSpec, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.images.rootfs import busybox_rootfs

SPEC = ContainerSpec(
    name="b",
    rootfs=RootfsRef(kind="busybox", version="builtin"),
    argv=("/bin/true",),
    network="none",
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round(rt: LinuxRuntime, bwrap: list[str]) -> tuple[float, float, float]:
    """(start+exit, create+start+exit+remove, bwrap) in ms."""
    began = time.perf_counter()
    rt.create(SPEC)
    created = time.perf_counter()
    rt.start("b")
    rt.wait("b")
    exited = time.perf_counter()
    rt.remove("b")
    removed = time.perf_counter()
    subprocess.run(bwrap, check=True)
    anchored = time.perf_counter()
    return (exited - created) * 1000, (removed - began) * 1000, (anchored - removed) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=200)
    runs = parse(parser, runs=20).runs
    work = Path(tempfile.mkdtemp(prefix="squish-bench-"))
    state = Path("/dev/shm") / f"sqs-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")
    rootfs = busybox_rootfs(work / "cache")
    bwrap = ["bwrap", "--unshare-all", "--ro-bind", str(rootfs), "/"]
    bwrap += ["--proc", "/proc", "--dev", "/dev", "/bin/true"]
    try:
        one_round(rt, bwrap)  # warm-up, not counted
        rounds = [one_round(rt, bwrap) for _ in range(runs)]
    finally:
        rt.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    start, full, anchor = (list(column) for column in zip(*rounds, strict=True))
    out = Results("startup")
    anchor_p50 = statistics.median(anchor)
    print(f"{runs} interleaved rounds\n\n{'what':<44} {'p50 ms':>8} {'p90 ms':>8}")
    for what, samples in (
        ("squish /bin/true start+exit", start),
        ("squish /bin/true create+start+exit+remove", full),
        ("bwrap --unshare-all /bin/true (anchor)", anchor),
    ):
        print(f"{what:<44} {statistics.median(samples):>8.2f} {percentile(samples, 0.9):>8.2f}")
        out.samples(what, samples)
    for what, samples in (("start+exit p50", start), ("full cycle p50", full)):
        p50 = statistics.median(samples)
        print(f"bwrap p50 / squish {what}: {anchor_p50 / p50:.2f}x")
        out.figure(f"/bin/true {what}", p50, "ms", anchor="bwrap", anchor_value=anchor_p50)
    out.save()


if __name__ == "__main__":
    main()
