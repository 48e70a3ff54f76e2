"""Throughput of `yes` into a container's log: through the log pump (a pipe, `splice`,
rotation at the cap) against straight into a file (what the init did before the pump).

Run: ``python -m bench.logs [FOLDER]`` (in a temporary folder made there; default /tmp,
on disk).
Each way moves the same 1 GiB (``yes | head -c``), three times; the best run counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime.holder import logpump

TOTAL = 1 << 30
PRODUCER = ["/bin/sh", "-c", f"yes | head -c {TOTAL}"]
CAP, FILES = 64 << 20, 2


def straight(folder: Path) -> float:
    """Seconds for the producer to write into a file it holds itself."""
    path = folder / "straight.log"
    with path.open("wb") as file:
        began = time.perf_counter()
        subprocess.run(PRODUCER, stdout=file, check=True)
        took = time.perf_counter() - began
    path.unlink()
    return took


def pumped(folder: Path) -> float:
    """Seconds until the producer's output is all in the (rotated) log."""
    path = str(folder / "pumped" / "output.log")
    read_end, write_end = logpump.log_pipe()
    began = time.perf_counter()
    pump = logpump.start_pump(read_end, logpump.open_log(path), path, CAP, FILES)
    os.close(read_end)
    subprocess.run(PRODUCER, stdout=write_end, check=True)
    os.close(write_end)
    os.waitpid(pump, 0)
    took = time.perf_counter() - began
    for name in os.listdir(os.path.dirname(path)):
        os.unlink(os.path.join(os.path.dirname(path), name))
    return took


def main() -> None:
    mib = TOTAL / (1 << 20)
    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else "/tmp") as tmp:
        for name, way in (("straight to a file", straight), ("through the log pump", pumped)):
            best = min(way(Path(tmp)) for _ in range(3))
            print(f"{name}: {mib / best:.0f} MiB/s ({best:.2f} s for {mib:.0f} MiB)")


if __name__ == "__main__":
    main()
