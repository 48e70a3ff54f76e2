"""Throughput of `yes` into a container's log: through the log pump (a pipe, `splice`,
rotation at the cap) against straight into a file (what the init did before the pump).

Run: ``python bench/logs.py [FOLDER] [--mib 1024] [--tries 3] [--quick]`` (in a
temporary folder made there; default /tmp, on disk).
Each way moves the same 1 GiB (``yes | head -c``), three times; the best run counts.
The figures go to bench/out/logs.json (bench/results.py): the pump against the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for runtime

from results import Results, parse

from runtime.holder import logpump

CAP, FILES = 64 << 20, 2


def producer(total: int) -> list[str]:
    return ["/bin/sh", "-c", f"yes | head -c {total}"]


def straight(folder: Path, total: int) -> float:
    """Seconds for the producer to write into a file it holds itself."""
    path = folder / "straight.log"
    with path.open("wb") as file:
        began = time.perf_counter()
        subprocess.run(producer(total), stdout=file, check=True)
        took = time.perf_counter() - began
    path.unlink()
    return took


def pumped(folder: Path, total: int) -> float:
    """Seconds until the producer's output is all in the (rotated) log."""
    path = str(folder / "pumped" / "output.log")
    read_end, write_end = logpump.log_pipe()
    began = time.perf_counter()
    pump = logpump.start_pump(read_end, logpump.open_log(path), path, CAP, FILES)
    os.close(read_end)
    subprocess.run(producer(total), stdout=write_end, check=True)
    os.close(write_end)
    os.waitpid(pump, 0)
    took = time.perf_counter() - began
    for name in os.listdir(os.path.dirname(path)):
        os.unlink(os.path.join(os.path.dirname(path), name))
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="/tmp")
    parser.add_argument("--mib", type=int, default=1024, help="moved by each way, each time")
    parser.add_argument("--tries", type=int, default=3, help="the best of these counts")
    args = parse(parser, mib=256, tries=1)
    total = args.mib << 20
    ways: dict[str, Callable[[Path, int], float]] = {
        "straight to a file": straight,
        "through the log pump": pumped,
    }
    rates = {}
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for name, way in ways.items():
            best = min(way(Path(tmp), total) for _ in range(args.tries))
            rates[name] = args.mib / best
            print(f"{name}: {rates[name]:.0f} MiB/s ({best:.2f} s for {args.mib} MiB)")
    out = Results("logs")
    out.figure(
        "yes through the log pump",
        rates["through the log pump"],
        "MiB/s",
        anchor="straight to a file",
        anchor_value=rates["straight to a file"],
        lower_is_better=False,
    )
    out.save()


if __name__ == "__main__":
    main()
