"""Every benchmark in bench/, one after another, then the charts: what `make bench` runs.

A bench is any bench/*.py with a ``__main__`` guard that takes ``--quick``: through
``results.parse`` (which adds it) or an option of its own. Those named in ORDER run
first, in that order: start-up first, on the quietest machine, the long and heavy ones
(hundreds of containers) last; any other bench found runs after them, by name, so a new
one needs no edit here. bench/out/ is emptied first: every
figure recorded, charted and summed up below was measured in this run. A bench that
fails is reported and the others still run; the exit status says whether all passed.

    python bench/suite.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results import OUT, line

HERE = Path(__file__).resolve().parent
ORDER = (
    "run",
    "startup",
    "responder",
    "logs",
    "replace",
    "reconcile",
    "watch",
    "networks",
    "dataplane",
    "procview",
    "logflood",
    "load",
    "gitops",
    "hostile",
    "memory",
    "scale",
)
_PARSE = re.compile(r"^from results import .*\bparse\b", re.MULTILINE)
"""A bench that takes its arguments through ``results.parse`` takes ``--quick``."""


TOOLS = ("suite", "charts")
"""Scripts that run or draw the benches, not benches."""


def is_script(path: Path) -> bool:
    return path.stem not in TOOLS and '__name__ == "__main__"' in path.read_text()


def is_bench(path: Path) -> bool:
    text = path.read_text()
    return is_script(path) and ("--quick" in text or _PARSE.search(text) is not None)


def not_benches(folder: Path = HERE) -> list[str]:
    """Scripts the suite leaves out because they take no --quick."""
    return [p.name for p in sorted(folder.glob("*.py")) if is_script(p) and not is_bench(p)]


def benches(only: list[str], folder: Path = HERE) -> list[Path]:
    """The benches to run, in order: ORDER's first, then the others by name."""
    found = {path.stem: path for path in sorted(folder.glob("*.py")) if is_bench(path)}
    if only:
        found = {name: path for name, path in found.items() if name in only}
    first = [found.pop(name) for name in ORDER if name in found]
    return first + sorted(found.values())


def run(path: Path, quick: bool) -> tuple[float, int]:
    """Seconds the bench took, and its exit status."""
    print(f"\n==> bench/{path.name}{' --quick' if quick else ''}", flush=True)
    began = time.perf_counter()
    argv = [sys.executable, str(path), *(["--quick"] if quick else [])]
    status = subprocess.run(argv, cwd=HERE.parent, check=False).returncode
    took = time.perf_counter() - began
    print(f"<== bench/{path.name}: {took:.1f} s{'' if status == 0 else f', FAILED ({status})'}")
    return took, status


def summary() -> None:
    """Every figure recorded in this run, with its anchor and ratio where it has one."""
    print("\n==> every figure of this run (ratio = how many times better than the anchor)")
    for path in sorted(OUT.glob("*.json")):
        if not path.name.startswith("_"):
            for entry in json.loads(path.read_text())["figures"]:
                print(f"{path.stem}: {line(entry)}")


def charts() -> int:
    try:
        import matplotlib  # noqa: F401  (only checks that the bench extra is installed)
    except ImportError:
        print("\nno charts: matplotlib is missing (pip install -e '.[bench]'; make bench does)")
        return 1
    print("\n==> bench/charts.py", flush=True)
    return subprocess.run([sys.executable, str(HERE / "charts.py")], check=False).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a fast check")
    parser.add_argument("--only", nargs="*", default=[], help="these benches (names, no .py)")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    began = time.perf_counter()
    load = [os.getloadavg()[0]]  # others' work on the machine slows every figure
    print(f"load average (1 min) as the benches start: {load[0]:.1f} on {os.cpu_count()} cores")
    taken: dict[str, float] = {}
    failed = []
    for name in not_benches():
        print(f"left out: bench/{name} takes no --quick (add it, e.g. with results.parse)")
    for path in benches(args.only):
        taken[path.stem], status = run(path, args.quick)
        if status != 0:
            failed.append(path.stem)
    load.append(os.getloadavg()[0])
    print(f"\nload average (1 min) as the benches end: {load[1]:.1f}")
    record = {"quick": args.quick, "seconds": taken, "failed": failed, "load": load}
    (OUT / "_suite.json").write_text(json.dumps(record, indent=1) + "\n")
    summary()
    drawn = charts()
    total = time.perf_counter() - began
    print(
        f"\n{len(taken)} benches in {total / 60:.1f} min"
        + "".join(f"; {name} {seconds:.0f} s" for name, seconds in taken.items())
    )
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    sys.exit(1 if failed or drawn != 0 else 0)


if __name__ == "__main__":
    main()
