"""The folder watch alone: how soon a written squishfile is told, and what waiting costs.

    python bench/watch.py [-n 50] [--files 1000] [--idle 10]

No containers and no passes: a :class:`FolderSource` watches a temporary folder in this
process and each write (renamed into place, and rewritten in place, one at a time) is
timed until the watch tells it (a batch's first event: the loop's pass begins) and
until the batch has ended (what that pass waits for before it acts, woken as the pass
is); then the process's CPU use while the watch waits, with FILES squishfiles in the
folder. The batch's end is the batching step of the loop's latency (file → pass);
docs/benchmarks.md puts it next to the whole loop's.
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


class Tells:
    """When the watch first told a change, since :meth:`reset`."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.told = anyio.Event()

    def __call__(self, _: str) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.told.set()

    def reset(self) -> None:
        self.first, self.told = None, anyio.Event()


async def told_after(
    source: FolderSource, tells: Tells, write: object, path: Path, text: str
) -> tuple[float, float]:
    """Milliseconds from the write until the watch tells it, and until its batch has
    ended (the watch tells a batch once, as it begins)."""
    assert callable(write)
    tells.reset()
    start = time.perf_counter()
    write(path, text)
    with anyio.fail_after(30):
        await tells.told.wait()
        await source.batch_ended()
    end = time.perf_counter()
    assert tells.first is not None
    return (tells.first - start) * 1000, (end - start) * 1000


async def measure(folder: Path, runs: int, idle: float) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    tells = Tells()
    stop = anyio.Event()
    source = FolderSource(folder, Settings())
    async with anyio.create_task_group() as group:
        group.start_soon(source.watch, tells, stop)
        await anyio.sleep(0.5)
        for n in range(runs):
            for how, write in (("renamed", write_atomically), ("in place", write_in_place)):
                text = f"# {n} {how}\n"
                first, end = await told_after(source, tells, write, folder / "w.toml", text)
                samples.setdefault(f"{how}, told", []).append(first)
                samples.setdefault(how, []).append(end)
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
        told = statistics.median(samples[f"{how}, told"])
        print(f"written, {how} -> the watch tells it (a pass begins): p50 {told:.2f} ms")
        out.figure(f"written, {how} -> the watch tells it (a pass begins), p50", told, "ms")
        p50 = statistics.median(samples[how])
        print(f"written, {how} -> its batch ends (the pass may act): p50 {p50:.2f} ms")
        out.figure(f"written, {how} -> its batch ends, p50", p50, "ms")
        out.samples(f"written, {how} -> its batch ends", samples[how])
    print(f"waiting, {args.files} files in the folder: {samples['idle'][0]:.2f} % of a core")
    out.figure(f"the watch waiting, {args.files} files", samples["idle"][0], "% of a core")
    print(f"recorded in {out.save()}")


if __name__ == "__main__":
    main()
