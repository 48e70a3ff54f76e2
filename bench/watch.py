"""The folder watch alone: how soon a written squishfile is told, and what waiting costs.

    python bench/watch.py [-n 50] [--files 1000] [--idle 10]

No containers and no passes: a :class:`FolderSource` watches a temporary folder in this
process and each change it tells is timed from the write (renamed into place, and
rewritten in place), one at a time; then the process's CPU use while the watch waits,
with FILES squishfiles in the folder. This is the batching step of the loop's latency
(file → pass); docs/benchmarks.md puts it next to the whole loop's.
Figures go to bench/out/watch.json (no anchor: a component of squish's own loop).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for reconciler, tests
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for results

from results import Results, parse

from reconciler.desired.source import FolderSource
from reconciler.settings import Settings
from tests.support import write_atomically


def write_in_place(path: Path, text: str) -> None:
    with path.open("w") as file:
        file.write(text)


async def told_after(told: anyio.Event, write: object, path: Path, text: str) -> float:
    """Milliseconds from the write until the watch tells a change."""
    assert callable(write)
    start = time.perf_counter()
    write(path, text)
    with anyio.fail_after(30):
        await told.wait()
    return (time.perf_counter() - start) * 1000


async def measure(folder: Path, runs: int, idle: float) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"renamed": [], "in place": []}
    told = anyio.Event()

    def changed(_: str) -> None:
        told.set()

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(FolderSource(folder, Settings()).watch, changed, stop)
        await anyio.sleep(0.5)
        for n in range(runs):
            for how, write in (("renamed", write_atomically), ("in place", write_in_place)):
                told = anyio.Event()
                ms = await told_after(told, write, folder / "w.toml", f"# {n} {how}\n")
                samples[how].append(ms)
                await anyio.sleep(0.05)  # the batch is over: the next write starts another
        before = time.process_time()
        await anyio.sleep(idle)
        samples["idle"] = [100 * (time.process_time() - before) / idle]
        stop.set()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=50)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parse(parser, runs=5, files=100, idle=2.0)
    out = Results("watch")
    with tempfile.TemporaryDirectory(prefix="squish-watch-") as temp:
        folder = Path(temp)
        for i in range(args.files):
            (folder / f"f{i:04}.toml").write_text("# idle\n")
        samples = anyio.run(measure, folder, args.runs, args.idle)
    for how in ("renamed", "in place"):
        p50 = statistics.median(samples[how])
        print(f"written, {how} -> the watch tells it: p50 {p50:.2f} ms")
        out.figure(f"written, {how} -> the watch tells it, p50", p50, "ms")
        out.samples(f"written, {how} -> the watch tells it", samples[how])
    print(f"waiting, {args.files} files in the folder: {samples['idle'][0]:.2f} % of a core")
    out.figure(f"the watch waiting, {args.files} files", samples["idle"][0], "% of a core")
    print(f"recorded in {out.save()}")


if __name__ == "__main__":
    main()
