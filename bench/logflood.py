"""A log flood: `yes` in a container for a while, with the default log cap.

Prints how many bytes the log files hold at the end against the cap, and how long the
calls behind `reconciler status` (``list`` and ``inspect``) took meanwhile. The figures
go to bench/out/logflood.json (bench/results.py).

    python bench/logflood.py [--seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results import Results, parse

from runtime.api.spec import ContainerSpec, LogLimits, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.images.rootfs import busybox_rootfs

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def log_bytes(log_path: Path) -> int:
    folder = log_path.parent
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(log_path.name))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    seconds = parse(parser, seconds=5.0).seconds
    work = Path(tempfile.mkdtemp(prefix="squish-flood-"))
    state = Path("/dev/shm") / f"sqf-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")
    busybox_rootfs(work / "cache")
    limits = LogLimits()
    spec = ContainerSpec(name="flood", rootfs=BUSYBOX, argv=("/bin/yes",), network="none")
    calls: list[float] = []
    try:
        rt.run(spec)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            rt.list()
            info = rt.inspect("flood")
            calls.append((time.perf_counter() - began) * 1000)
            time.sleep(0.5)
        log_path = Path(info.log_path)
        held = log_bytes(log_path)
        rt.remove("flood", force=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    cap = limits.max_size * limits.max_files
    out = Results("logflood")
    out.figure(f"{seconds:.0f} s of yes: the logs hold", held / 2**20, "MiB")
    out.figure("the log cap", cap / 2**20, "MiB")
    out.distribution("list + inspect during the flood", calls)
    out.save()
    calls.sort()
    mib = 2**20
    print(f"{seconds:.0f} s of yes: the logs hold {held / mib:.1f} MiB, cap {cap / mib:.0f} MiB")
    print(
        f"list + inspect meanwhile ({len(calls)} calls): p50 {calls[len(calls) // 2]:.1f} ms, "
        f"max {calls[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
