"""Answer latency of the networks' DNS responder over UDP, against a plain UDP echo.

Run: ``python bench/responder.py [-n 5000] [--quick]`` (as any account: it listens on
free ports of 127.0.0.53 and 127.0.0.54, not on 53).
A responder on 127.0.0.53 holds 100 names (a network of 100 containers) and forwards
other names to a second responder on 127.0.0.54, which knows them. One client asks
sequentially: a known name, an unknown name answered NXDOMAIN by the second one
directly, and a name forwarded from the first to the second. The anchor, measured in
the same run: a Python process that echoes each datagram back (the floor of a
Python UDP round trip on the loopback). The figures go to bench/out/responder.json
(bench/results.py), each p50 against the echo's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
from results import Results, parse

REPO = Path(__file__).resolve().parent.parent
FRONT, BACK = "127.0.0.53", "127.0.0.54"
ANCHOR = "a Python UDP echo process"
ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.55", 0))
print(sock.getsockname()[1], flush=True)
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(data, peer)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((FRONT, 0))
        return int(sock.getsockname()[1])


def records(port: int) -> str:
    names = {f"c{index}": [f"10.89.0.{index + 2}"] for index in range(100)}
    front = {"listen": FRONT, "upstream": [f"{BACK}:{port}"], "names": names}
    back = {"listen": BACK, "upstream": [], "names": {"outside.example": ["192.0.2.1"]}}
    return json.dumps({"version": 1, "servers": [front, back]})


@contextmanager
def responder(folder: Path) -> Iterator[int]:
    """A responder serving FRONT and BACK on a free port; yields the port."""
    port = free_port()
    path = folder / "records.json"
    path.write_text(records(port))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    argv = [sys.executable, "-m", "runtime.network.dnsserver", str(path), "--port", str(port)]
    process = subprocess.Popen(argv, env=env)
    try:
        for _ in range(2000):
            with socket.socket() as probe:
                if probe.connect_ex((BACK, port)) == 0:
                    break
            time.sleep(0.005)
        yield port
    finally:
        process.terminate()
        process.wait()


@contextmanager
def echo() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def round_trips(address: tuple[str, int], wire: bytes, runs: int) -> list[float]:
    """Milliseconds from send to the answer, ``runs`` times in a row (after a warm-up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        samples = []
        for index in range(runs + 50):
            began = time.perf_counter()
            sock.send(wire)
            sock.recv(65535)
            if index >= 50:
                samples.append((time.perf_counter() - began) * 1000)
        return samples


def row(what: str, samples: list[float]) -> None:
    cuts = statistics.quantiles(samples, n=10)
    print(f"| {what} | {statistics.median(samples):.3f} | {cuts[8]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="queries per kind")
    runs = parse(parser, n=500).n
    known = dns.message.make_query("c42", "A").to_wire()
    unknown = dns.message.make_query("nowhere.example", "A").to_wire()
    outside = dns.message.make_query("outside.example", "A").to_wire()
    with tempfile.TemporaryDirectory() as tmp, responder(Path(tmp)) as port, echo() as echo_port:
        series = {
            "known name (100 on the network), UDP": round_trips((FRONT, port), known, runs),
            "unknown name, no upstream: NXDOMAIN": round_trips((BACK, port), unknown, runs),
            "forwarded upstream (to its own other address)": round_trips(
                (FRONT, port), outside, runs
            ),
        }
        anchor = round_trips(("127.0.0.55", echo_port), known, runs)
    print("| what | p50 ms | p90 ms |\n|---|---:|---:|")
    out = Results("responder")
    for what, samples in series.items():
        row(what, samples)
        out.distribution(what, samples, anchor=ANCHOR, anchor_values=anchor)
    row(f"anchor: {ANCHOR}", anchor)
    out.samples(ANCHOR, anchor)
    out.save()


if __name__ == "__main__":
    main()
