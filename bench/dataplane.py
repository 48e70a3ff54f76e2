"""Host forwards' data plane: what a forward to a bridge container carries, against the
host's own loopback, for each port handler.

(a) a 256 MiB HTTP download through a forward (busybox httpd in the container, busybox
``nc`` on the host), vs the same download from busybox httpd on the host's loopback, in
the same run; (b) small requests: one TCP connection per ``GET /`` of a 6-byte page, one
after another, the time of each; (c) the start of a networked httpd: create + start
until its first answer through the forward, on the network already up.

The forwards go through the port handler (``splice``, the default) and through the
shared slirp4netns (``slirp4netns``, the other choice), one container each. Figures are
printed and saved with ``bench/results.py`` as ``bench/out/dataplane.json``.

    python bench/dataplane.py [--fetches 5] [--requests 2000] [--starts 30]
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

from networks import REQUEST, SIZE, received, seconds
from networks import httpd as bridge_httpd
from results import Results

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


def downloads(port: int, fetches: int) -> list[float]:
    """Seconds per 256 MiB download from 127.0.0.1:PORT (the first, a warm-up, dropped)."""
    script = f"{REQUEST} | {busybox()} nc 127.0.0.1 {port}"
    check = subprocess.run(["/bin/sh", "-c", f"{script} | wc -c"], capture_output=True, text=True)
    received(check.stdout)
    fetch = lambda: subprocess.run(["/bin/sh", "-c", f"{script} > /dev/null"], check=True)  # noqa: E731
    return [seconds(fetch) for _ in range(fetches + 1)][1:]


def latencies(port: int, count: int) -> list[float]:
    """µs per small request (after 50 not counted)."""
    samples = []
    for n in range(count + 50):
        start = time.perf_counter()
        if not get(port).endswith(SMALL):
            raise RuntimeError(f"a wrong answer on port {port}")
        if n >= 50:
            samples.append((time.perf_counter() - start) * 1e6)
    return samples


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
    out.samples(f"small request ({handler})", taken["request"])
    out.samples(f"start to first answer ({handler})", taken["start"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fetches", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="squish-dataplane-"))
    work.chmod(0o755)
    site = work / "site"
    site.mkdir(mode=0o755)
    (site / "index.html").write_bytes(SMALL)
    with open(site / "f", "wb") as big:
        big.truncate(SIZE)
    state = Path("/dev/shm") / f"sqd-{secrets.token_hex(4)}"
    out = Results("dataplane")
    measured: dict[str, dict[str, list[float]]] = {}
    try:
        with host_httpd(site) as port:
            host = {
                "download": downloads(port, args.fetches),
                "request": latencies(port, args.requests),
            }
        for handler in PORT_HANDLERS:
            settings = dataclasses.replace(RuntimeSettings.from_environ(), port_handler=handler)
            rt = LinuxRuntime(state=state, cache=work / "cache", settings=settings)
            port = free_port()
            rt.run(httpd(f"dp-{handler}", site, port))
            answering(port)
            measured[handler] = {
                "download": downloads(port, args.fetches),
                "request": latencies(port, args.requests),
                "start": starts(rt, site, args.starts),
            }
            rt.remove(f"dp-{handler}", force=True)
    finally:
        LinuxRuntime(state=state, cache=work / "cache").shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    for handler, taken in measured.items():
        report(out, handler, taken, host)
    out.samples("small request (host loopback)", host["request"])
    print(f"\nsaved {out.save()}")


if __name__ == "__main__":
    main()
