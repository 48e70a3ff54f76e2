"""Host forwards' data plane: what a forward to a bridge container carries, against the
host's own loopback, for each port handler.

(a) a 256 MiB HTTP download through a forward (busybox httpd in the container, read on
the host into a 1 MiB buffer: a client fast enough not to be the limit, where busybox
``nc`` was), vs the same download from busybox httpd on the host's loopback; (b) small
requests: one TCP connection per ``GET /`` of a 6-byte page, one after another, the time
of each; the host's loopback and the forwards take turns in both, round by round, so a
machine that gets busier slows them alike; (c) the start of a networked httpd: create +
start until its first answer through the forward, on the network already up; (d) a
forward added to and removed from a running container (``add_port``, ``remove_port``).

The forwards go through the port handler (``splice``, the default) and through the
shared slirp4netns (``slirp4netns``, the other choice), one container each. Figures are
printed and saved with ``bench/results.py`` as ``bench/out/dataplane.json``.

    python bench/dataplane.py [--rounds 8] [--requests 250] [--starts 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from networks import SIZE
from networks import httpd as bridge_httpd
from results import Results, parse

from runtime.api.spec import ContainerSpec, PortMapping
from runtime.client.linux import LinuxRuntime
from runtime.settings import PORT_HANDLERS, RuntimeSettings
from tests.support import free_port

SMALL = b"small\n"


def httpd(name: str, site: Path, port: int) -> ContainerSpec:
    """busybox httpd serving ``site`` on a bridge network, forwarded from ``port``."""
    ports = (PortMapping(container=80, host=port),)
    return bridge_httpd(name, site, "bridge").model_copy(update={"ports": ports})


def get(port: int) -> bytes:
    """One ``GET /`` on its own connection; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answering(port: int) -> None:
    for _ in range(20_000):
        try:
            if get(port).endswith(SMALL):
                return
        except OSError:
            pass
        time.sleep(0.0005)
    raise RuntimeError(f"nothing answers on port {port}")


def busybox() -> str:
    found = shutil.which("busybox")
    if found is None:
        raise RuntimeError("busybox is not installed on the host")
    return found


def download(port: int) -> float:
    """Seconds to download the 256 MiB file from 127.0.0.1:PORT whole."""
    start = time.perf_counter()
    received, buffer = 0, bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /f HTTP/1.0\r\n\r\n")
        while chunk := sock.recv_into(buffer):
            received += chunk
    if received < SIZE:  # a 404 would look very fast
        raise RuntimeError(f"the download on port {port} carried {received} bytes")
    return time.perf_counter() - start


def request(port: int) -> float:
    """µs for one small request."""
    start = time.perf_counter()
    if not get(port).endswith(SMALL):
        raise RuntimeError(f"a wrong answer on port {port}")
    return (time.perf_counter() - start) * 1e6


def in_turns(ports: dict[str, int], rounds: int, each: int) -> dict[str, dict[str, list[float]]]:
    """Downloads and small requests, each target in turn every round (a first round, a
    warm-up, dropped)."""
    taken: dict[str, dict[str, list[float]]] = {
        what: {"download": [], "request": []} for what in ports
    }
    for n in range(rounds + 1):
        for what, port in ports.items():
            seconds = download(port)
            requests = [request(port) for _ in range(each)]
            if n:
                taken[what]["download"].append(seconds)
                taken[what]["request"] += requests
    return taken


@contextmanager
def host_httpd(site: Path) -> Iterator[int]:
    """busybox httpd serving ``site`` on the host's loopback; its port."""
    port = free_port()
    argv = [busybox(), "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(site)]
    server = subprocess.Popen(argv)
    try:
        answering(port)
        yield port
    finally:
        server.kill()
        server.wait()


def starts(rt: LinuxRuntime, site: Path, count: int) -> list[float]:
    """ms from create to the first answer through the forward (one warm-up dropped)."""
    samples = []
    for _ in range(count + 1):
        port = free_port()
        start = time.perf_counter()
        rt.run(httpd("start", site, port))
        answering(port)
        samples.append((time.perf_counter() - start) * 1000)
        rt.remove("start", force=True)
    return samples[1:]


def live_changes(rt: LinuxRuntime, name: str, count: int) -> dict[str, list[float]]:
    """ms per ``add_port`` (until it returns; its port then answers) and ``remove_port``."""
    taken: dict[str, list[float]] = {"add_port": [], "remove_port": []}
    for _ in range(count):
        mapping = PortMapping(container=80, host=free_port())
        start = time.perf_counter()
        rt.add_port(name, mapping)
        taken["add_port"].append((time.perf_counter() - start) * 1000)
        answering(mapping.host)
        start = time.perf_counter()
        rt.remove_port(name, mapping)
        taken["remove_port"].append((time.perf_counter() - start) * 1000)
    return taken


def p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q * 100) - 1]


def report(
    out: Results, handler: str, taken: dict[str, list[float]], host: dict[str, list[float]]
) -> None:
    mib = SIZE / 2**20
    rate = mib / statistics.median(taken["download"])
    host_rate = mib / statistics.median(host["download"])
    what = f"256 MiB through a forward ({handler})"
    loopback = "host loopback"
    out.figure(what, rate, "MiB/s", anchor=loopback, anchor_value=host_rate, lower_is_better=False)
    print(f"\n{handler}:\n  {what}: {rate:.0f} MiB/s, loopback {host_rate:.0f} MiB/s")
    for q in (0.5, 0.9):
        mine, base = p(taken["request"], q), p(host["request"], q)
        what = f"small request p{int(q * 100)} ({handler})"
        out.figure(what, mine, "µs", anchor=loopback, anchor_value=base)
        print(f"  {what}: {mine:.0f} µs, loopback {base:.0f} µs")
    start = statistics.median(taken["start"])
    what = f"bridge httpd create to first answer through the forward p50 ({handler})"
    out.figure(what, start, "ms")
    print(f"  {what}: {start:.1f} ms (p90 {p(taken['start'], 0.9):.1f} ms)")
    for change in ("add_port", "remove_port"):
        ms = statistics.median(taken[change])
        out.figure(f"{change} of a running bridge container p50 ({handler})", ms, "ms")
        print(f"  {change} p50: {ms:.1f} ms")
    out.samples(f"small request ({handler})", taken["request"])
    out.samples(f"start to first answer ({handler})", taken["start"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="per target and round")
    parser.add_argument("--starts", type=int, default=30)
    args = parse(parser, rounds=2, requests=50, starts=5)
    work = Path(tempfile.mkdtemp(prefix="squish-dataplane-"))
    work.chmod(0o755)
    site = work / "site"
    site.mkdir(mode=0o755)
    (site / "index.html").write_bytes(SMALL)
    with open(site / "f", "wb") as big:
        big.truncate(SIZE)
    state = Path("/dev/shm") / f"sqd-{secrets.token_hex(4)}"
    out = Results("dataplane")
    runtimes = {
        handler: LinuxRuntime(
            state=state,
            cache=work / "cache",
            settings=dataclasses.replace(RuntimeSettings.from_environ(), port_handler=handler),
        )
        for handler in PORT_HANDLERS
    }
    try:
        with host_httpd(site) as host_port:
            ports = {"host": host_port}
            for handler, rt in runtimes.items():
                ports[handler] = free_port()
                rt.run(httpd(f"dp-{handler}", site, ports[handler]))
                answering(ports[handler])
            measured = in_turns(ports, args.rounds, args.requests)
        for handler, rt in runtimes.items():
            measured[handler] |= live_changes(rt, f"dp-{handler}", args.starts)
            rt.remove(f"dp-{handler}", force=True)
            measured[handler]["start"] = starts(rt, site, args.starts)
    finally:
        runtimes[PORT_HANDLERS[0]].shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    host = measured.pop("host")
    for handler, taken in measured.items():
        report(out, handler, taken, host)
    out.samples("small request (host loopback)", host["request"])
    print(f"\nsaved {out.save()}")


if __name__ == "__main__":
    main()
