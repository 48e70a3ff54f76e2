"""Zero-downtime replacement under a steady request loop.

A real ``reconciler run`` keeps one busybox httpd container (``[update] strategy =
"start-first"``, ``[health] tcp = 80``); a client thread sends requests one after another
to its forwarded port while the container's env is changed N times (each change is a
replacement). Reported (and saved with ``bench/results.py`` as
``bench/out/replace.json``): requests, failed requests, the longest time without a good
answer. ``--handler`` picks who serves the forward (``SQUISH_PORT_HANDLER``).

    python bench/replace.py [-n 20] [--strategy start-first|stop-first] [--handler splice]
"""

from __future__ import annotations

import argparse
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

from results import Results

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
    args = parser.parse_args()
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
    longest, last_good = 0.0, results[0][0]
    for at, body in results:
        if body is not None:
            longest = max(longest, at - last_good)
            last_good = at
    print(
        f"{args.strategy} ({args.handler}): {args.replacements} replacements, "
        f"{len(results)} requests, {failed} failed, "
        f"longest time without an answer {longest * 1000:.1f} ms"
    )
    out = Results("replace" if args.handler == PORT_HANDLERS[0] else f"replace-{args.handler}")
    what = f"{args.strategy}, {args.replacements} replacements ({args.handler})"
    out.figure(f"failed requests, {what}", failed, "requests")
    out.figure(f"longest time without an answer, {what}", longest * 1000, "ms")
    out.figure(f"requests answered, {what}", len(results) - failed, "requests")
    print(f"saved {out.save()}")


if __name__ == "__main__":
    main()
