"""Zero-downtime replacement under a steady request loop.

A real ``reconciler run`` keeps one busybox httpd container (``[update] strategy =
"start-first"``, ``[health] tcp = 80``); a client thread sends requests one after another
to its forwarded port while the container's env is changed N times (each change is a
replacement). Reported: requests, failed requests, the longest time without a good answer
(over the run, and for each replacement: bench/out/replace.json, bench/results.py).

``--handler`` picks who serves the forward (``SQUISH_PORT_HANDLER``).

    python bench/replace.py [-n 20] [--strategy start-first|stop-first] [--handler splice]
                            [--quick]
"""

from __future__ import annotations

import argparse
import bisect
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, parse

from runtime.client.linux import LinuxRuntime
from runtime.settings import PORT_HANDLERS
from tests.support import free_port, page, write_atomically

SQUISHFILE = """\
[layers]
busybox = "builtin"

[run]
command = "/bin/sh"
args = [
  "-c",
  "mkdir -p /tmp/www; echo $GREETING > /tmp/www/index.html; exec httpd -f -p 80 -h /tmp/www",
]

[env]
GREETING = "{greeting}"

[[ports]]
container = 80
host = {port}

[update]
strategy = "{strategy}"

[health]
tcp = 80
interval = 0.02
retries = 500
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--replacements", type=int, default=20)
    parser.add_argument("--strategy", default="start-first", choices=["start-first", "stop-first"])
    parser.add_argument("--handler", default=PORT_HANDLERS[0], choices=PORT_HANDLERS)
    args = parse(parser, replacements=3)
    work = Path(tempfile.mkdtemp(prefix="squish-replace-"))
    folder = work / "desired"
    folder.mkdir()
    state = Path("/dev/shm") / f"sqrp-{secrets.token_hex(4)}"
    port = free_port()
    path = folder / "web.toml"

    def write(greeting: str) -> None:
        text = SQUISHFILE.format(greeting=greeting, port=port, strategy=args.strategy)
        write_atomically(path, text)

    write("v0")
    env = {**os.environ, "SQUISH_STATE_DIR": str(state), "SQUISH_PORT_HANDLER": args.handler}
    loop = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "run", str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: list[tuple[float, bytes | None]] = []
    writes: list[float] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            results.append((time.perf_counter(), page(port)))

    try:
        while page(port) != b"v0\n":
            time.sleep(0.01)
        thread = threading.Thread(target=client)
        thread.start()
        for n in range(1, args.replacements + 1):
            writes.append(time.perf_counter())
            write(f"v{n}")
            while not results or results[-1][1] != f"v{n}\n".encode():
                time.sleep(0.005)
            time.sleep(0.1)
        stop.set()
        thread.join()
    finally:
        loop.send_signal(signal.SIGTERM)
        loop.wait(60)
        LinuxRuntime(state=state).shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(1 for _, body in results if body is None)
    per_replacement = longest_gaps(results, writes)
    longest = max(per_replacement)
    print(
        f"{args.strategy} ({args.handler}): {args.replacements} replacements, "
        f"{len(results)} requests, "
        f"{failed} failed, longest time without an answer {longest:.1f} ms"
    )
    out = Results("replace" if args.handler == PORT_HANDLERS[0] else f"replace-{args.handler}")
    what = f"{args.strategy} ({args.handler})"
    out.figure(f"{what}: failed requests", failed, "requests")
    out.figure(f"{what}: requests sent", len(results), "requests")
    out.figure(f"{what}: longest time without an answer", longest, "ms")
    out.samples(f"{what}: longest time without an answer, per replacement", per_replacement)
    out.save()


def longest_gaps(results: list[tuple[float, bytes | None]], writes: list[float]) -> list[float]:
    """For each replacement (from its write to the next one), the longest time in ms
    between two good answers; a gap counts for the replacement in which it ends."""
    longest = [0.0] * len(writes)
    last_good = results[0][0]
    for at, body in results:
        if body is not None:
            which = max(0, bisect.bisect_right(writes, at) - 1)
            longest[which] = max(longest[which], (at - last_good) * 1000)
            last_good = at
    return longest


if __name__ == "__main__":
    main()
