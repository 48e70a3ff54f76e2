"""The long load run: 100 containers, then 1,000 edits in a row (ports, env, deletions,
re-creations) as fast as files can be written, against a real ``reconciler run``.

    python bench/load.py [--containers 100] [--edits 1000] [--pause-ms 0] [--quick]

The figures go to bench/out/load.json (bench/results.py).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import Results, parse

from runtime.client.linux import LinuxRuntime
from tests.loadgen import run_load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--pause-ms", type=float, default=0.0, help="between edits")
    args = parse(parser, containers=10, edits=100)
    work = Path(tempfile.mkdtemp(prefix="squish-load-"))
    state = Path("/dev/shm") / f"sql-{secrets.token_hex(4)}"
    try:
        result = run_load(
            work / "desired", state, args.containers, args.edits, pause=args.pause_ms / 1000
        )
    finally:
        LinuxRuntime(state=state).shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{result.containers} containers, {result.edits} edits written in "
        f"{result.edit_seconds:.2f} s; converged {result.converge_seconds:.2f} s later"
    )
    print(
        f"loop RSS {result.rss_before_kib} KiB before the edits, {result.rss_after_kib} KiB after"
    )
    print("problems:", "none" if not result.problems else "; ".join(result.problems))
    out = Results("load")
    what = f"{result.containers} containers, {result.edits} edits"
    out.figure(f"{what}: written in", result.edit_seconds, "s")
    out.figure(f"{what}: converged after the last edit", result.converge_seconds, "s")
    out.figure(f"{what}: loop RSS before the edits", result.rss_before_kib / 1024, "MiB")
    out.figure(f"{what}: loop RSS after", result.rss_after_kib / 1024, "MiB")
    out.figure(f"{what}: problems", len(result.problems), "problems")
    out.save()


if __name__ == "__main__":
    main()
