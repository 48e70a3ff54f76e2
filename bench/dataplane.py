"""Host forwards' data plane: what a forward to a bridge container carries, against the
host's own loopback, for each port handler.

(a) a 256 MiB HTTP download through a forward (busybox httpd in the container, read on
the host into a 1 MiB buffer: a client fast enough not to be the limit, where busybox
``nc`` was), vs the same download from busybox httpd on the host's loopback; with the
CPU time each took (user + sys) of the client and of the process that relays (the port
handler, or the shared slirp4netns), which on a busy machine says more than the wall
clock; and, as the ceilings of this design, the same download by a client that joined
the container's own network namespace and connects to the container's address (the
port handler's leg inside: local delivery, no bridge), and by one in the shared
namespace across the bridge and the container's veth; (b) small requests: one TCP
connection per ``GET /`` of a 6-byte page, one after another, the time of each; the
host's loopback, the forwards and the ceilings take turns in both, round by round, so a
machine that gets busier slows them alike; (c) the start of a networked httpd: create +
start until its first answer through the forward, on the network already up; (d) a
forward added to and removed from a running container (``add_port``, ``remove_port``).

The forwards go through the port handler (``splice``, the default) and through the
shared slirp4netns (``slirp4netns``, the other choice), one container each. The anchor
of the forwards, where podman can run (``make bench`` installs it): podman's own
rootless forward (``podman run -d -p``, runc; its default port handler, rootlessport,
keeps the host's socket and relays into the container's namespace), the same busybox
httpd on the same root filesystem, in the same turns, its relay's CPU counted (every
``rootlessport`` process). With
``--send-buffer-max BYTES`` (repeatable), one more container behind the port handler per
figure, its namespace's ``net.ipv4.tcp_wmem`` cap set to it once started (the runtime
sets 1 MiB; the host's is 4 MiB here), takes the same turns: the cap's effect on the
forward, measured against the configured one in one run. Figures are printed and saved
with ``bench/results.py`` as ``bench/out/dataplane.json``.

    python bench/dataplane.py [--rounds 8] [--requests 250] [--starts 30] [--quick]
        [--send-buffer-max BYTES ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from networks import SIZE
from networks import httpd as bridge_httpd
from results import Results, parse

from runtime.api.spec import ContainerSpec, PortMapping
from runtime.client.linux import LinuxRuntime
from runtime.images.rootfs import busybox_rootfs
from runtime.network.shared import bridge_dir
from runtime.sandbox import syscalls as sc
from runtime.settings import PORT_HANDLERS, RuntimeSettings
from tests.support import free_port, processes_mentioning

SMALL = b"small\n"
INSIDE = "256 MiB in the container's namespace from its own address (the handler's inner leg)"
BRIDGE = "256 MiB from the shared namespace across the bridge and the veth"
PODMAN = "podman"
PODMAN_RUN = ("--runtime=runc", "--cgroup-manager=cgroupfs", "run")
Taken = dict[str, list[float]]
Measured = dict[str, Taken]
Runtimes = dict[str, LinuxRuntime]


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


def download(address: str, port: int) -> tuple[float, float]:
    """Seconds to download the 256 MiB file from ADDRESS:PORT whole, and this process's
    CPU seconds (user + sys) meanwhile."""
    start, cpu = time.perf_counter(), time.process_time()
    received, buffer = 0, bytearray(1 << 20)
    with socket.create_connection((address, port), timeout=60) as sock:
        sock.sendall(b"GET /f HTTP/1.0\r\n\r\n")
        while chunk := sock.recv_into(buffer):
            received += chunk
    if received < SIZE:  # a 404 would look very fast
        raise RuntimeError(f"the download from {address}:{port} carried {received} bytes")
    return time.perf_counter() - start, time.process_time() - cpu


def in_namespaces(user: int, net: int, work: Callable[[], Any]) -> Any:
    """What ``work()`` returned (JSON) in a child that joined the user namespace of
    process ``user`` (the holder's: it owns the network namespaces) and the network
    namespace of ``net``."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            for pid, kind, flag in (
                (user, "user", sc.CLONE_NEWUSER),
                (net, "net", sc.CLONE_NEWNET),
            ):
                sc.setns(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY), flag)
            os.write(write_end, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        text = answer.read()
    os.waitpid(child, 0)
    if not text:
        raise RuntimeError(f"{work} in process {net}'s namespace failed")
    return json.loads(text)


def download_in(user: int, net: int, address: str, port: int) -> tuple[float, float]:
    """:func:`download` by a child in the namespaces of :func:`in_namespaces`."""
    seconds, cpu = in_namespaces(user, net, lambda: download(address, port))
    return float(seconds), float(cpu)


def cap_send_buffers(most: int) -> list[int]:
    """The calling thread's namespace's ``net.ipv4.tcp_wmem`` with ``most`` as its last
    figure (the first kept at most that); the figures now."""
    path = Path("/proc/sys/net/ipv4/tcp_wmem")
    least, first, _ = (int(figure) for figure in path.read_text().split())
    path.write_text(f"{least} {min(first, most)} {most}\n")
    return [int(figure) for figure in path.read_text().split()]


def cpu_seconds(pid: int) -> float:
    """User + sys CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(port: int) -> float:
    """µs for one small request."""
    start = time.perf_counter()
    if not get(port).endswith(SMALL):
        raise RuntimeError(f"a wrong answer on port {port}")
    return (time.perf_counter() - start) * 1e6


@dataclass
class Target:
    """Where a download comes from: ``fetch`` does one; ``port`` (on the host's loopback)
    also takes the small requests; ``relays`` are the processes that relay it, if any."""

    fetch: Callable[[], tuple[float, float]]
    port: int | None = None
    relays: tuple[int, ...] = ()
    taken: dict[str, list[float]] = field(default_factory=dict)

    def turn(self, each: int) -> dict[str, list[float]]:
        """One download and ``each`` small requests: seconds, client and relay CPU
        seconds, µs per request."""
        relay = sum(map(cpu_seconds, self.relays))
        seconds, client = self.fetch()
        relay = sum(map(cpu_seconds, self.relays)) - relay
        requests = [request(self.port) for _ in range(each)] if self.port else []
        return {"download": [seconds], "client": [client], "relay": [relay], "request": requests}


def on_host(port: int, *relays: int) -> Target:
    return Target(lambda: download("127.0.0.1", port), port, relays)


def in_turns(targets: dict[str, Target], rounds: int, each: int) -> Measured:
    """Downloads and small requests, each target in turn every round (a first round, a
    warm-up, dropped)."""
    taken: Measured = {what: {} for what in targets}
    for n in range(rounds + 1):
        for what, target in targets.items():
            turn = target.turn(each)
            for key, values in turn.items():
                if n:
                    taken[what].setdefault(key, []).extend(values)
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


@contextmanager
def podman_httpd(site: Path, rootfs: Path) -> Iterator[Target | None]:
    """busybox httpd in a podman container serving ``site``, forwarded from a host port
    by podman's rootless port handler; None, and a line saying why, where podman cannot
    run."""
    podman = shutil.which("podman")
    if podman is None:
        print("anchor left out: podman is not installed (make bench, as root, installs it)")
        yield None
        return
    port = free_port()
    argv = [podman, *PODMAN_RUN, "-d", "-p", f"127.0.0.1:{port}:80", "-v", f"{site}:/site:ro"]
    argv += ["--rootfs", str(rootfs), "httpd", "-f", "-p", "80", "-h", "/site"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"anchor left out: podman cannot run here (exit {done.returncode}): {why}")
        yield None
        return
    try:
        answering(port)
        yield on_host(port, *(pid for pid, _ in processes_mentioning("rootlessport")))
    finally:
        remove = [podman, "rm", "--force", "--time", "0", done.stdout.strip()]
        subprocess.run(remove, capture_output=True, check=False)


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


def mib_s(taken: dict[str, list[float]]) -> float:
    return SIZE / 2**20 / statistics.median(taken["download"])


def report_download(out: Results, what: str, taken: dict[str, list[float]], host: Taken) -> None:
    """The download's rate against the loopback's, and the CPU it took, per 256 MiB."""
    rate, base, loopback = mib_s(taken), mib_s(host), "host loopback"
    out.figure(what, rate, "MiB/s", anchor=loopback, anchor_value=base, lower_is_better=False)
    print(f"\n{what}: {rate:.0f} MiB/s, loopback {base:.0f} MiB/s ({rate / base:.2f}x)")
    client, host_client = (statistics.median(t["client"]) * 1000 for t in (taken, host))
    out.figure(f"{what}: client CPU", client, "ms", anchor=loopback, anchor_value=host_client)
    print(f"  CPU (user + sys) per download: client {client:.0f} ms (loopback {host_client:.0f})")
    if any(taken["relay"]):
        relay = statistics.median(taken["relay"]) * 1000
        out.figure(f"{what}: relay CPU", relay, "ms")
        print(f"  CPU per download of the process that relays: {relay:.0f} ms")


def report(out: Results, handler: str, taken: Taken, host: Taken) -> None:
    report_download(out, f"256 MiB through a forward ({handler})", taken, host)
    for q in (0.5, 0.9):
        mine, base = p(taken["request"], q), p(host["request"], q)
        what = f"small request p{int(q * 100)} ({handler})"
        out.figure(what, mine, "µs", anchor="host loopback", anchor_value=base)
        print(f"  {what}: {mine:.0f} µs, loopback {base:.0f} µs")
    start = statistics.median(taken["start"])
    what = f"bridge httpd create to first answer through the forward p50 ({handler})"
    out.figure(what, start, "ms")
    print(f"  {what}: {start:.1f} ms (p90 {p(taken['start'], 0.9):.1f} ms)")
    for change in ("add_port", "remove_port"):
        ms = statistics.median(taken[change])
        out.figure(f"{change} of a running bridge container p50 ({handler})", ms, "ms")
        print(f"  {change} p50: {ms:.1f} ms")
    out.samples(f"small request ({handler})", taken["request"], "µs")
    out.samples(f"start to first answer ({handler})", taken["start"])


def report_podman(out: Results, podman: Taken, host: Taken, handlers: Measured) -> None:
    """podman's forward against the loopback (printed: it is an anchor, not a figure of
    squish's), and each handler's against podman's (recorded)."""
    rate, base = mib_s(podman), mib_s(host)
    relay = statistics.median(podman["relay"]) * 1000
    print(f"\nanchor: 256 MiB through podman's forward (rootlessport): {rate:.0f} MiB/s,")
    print(f"  loopback {base:.0f} MiB/s ({rate / base:.2f}x); its relay's CPU {relay:.0f} ms")
    anchor = "podman -p (rootlessport)"
    for handler, taken in handlers.items():
        what = f"256 MiB through a forward ({handler}), against podman's"
        mine, base = mib_s(taken), mib_s(podman)
        out.figure(what, mine, "MiB/s", anchor=anchor, anchor_value=base, lower_is_better=False)
        print(f"{what}: {mine:.0f} MiB/s, podman {base:.0f} MiB/s ({mine / base:.2f}x)")
        for q in (0.5, 0.9):
            mine, base = p(taken["request"], q), p(podman["request"], q)
            what = f"small request p{int(q * 100)} ({handler}), against podman's"
            out.figure(what, mine, "µs", anchor=anchor, anchor_value=base)
            print(f"  {what}: {mine:.0f} µs, podman {base:.0f} µs")
    out.samples("small request (podman)", podman["request"], "µs")


def command_of(rt: LinuxRuntime, name: str) -> int:
    """The pid of container ``name``'s command (its init's child)."""
    info = rt.inspect(name)
    return int(Path(f"/proc/{info.pid}/task/{info.pid}/children").read_text().split()[0])


def capped(most: int) -> str:
    return f"256 MiB through a forward (splice), the container's tcp_wmem cap at {most} bytes"


def targets(
    state: Path, rt: LinuxRuntime, ports: dict[str, int], caps: dict[int, int]
) -> dict[str, Target]:
    """The loopback, each handler's forward (the process relaying it named), the ceilings
    (the splice container's own namespace, and the shared one across the bridge), and a
    forward per send buffer cap in ``caps`` (cap: host port), that cap set first."""
    keeper = json.loads((bridge_dir(state) / "keeper.json").read_text())
    relays = {"splice": (keeper["porter"]["pid"],), "slirp4netns": (keeper["slirp"]["pid"],)}
    found = {what: on_host(port, *relays.get(what, ())) for what, port in ports.items()}
    address = next(iter(rt.inspect(f"dp-{PORT_HANDLERS[0]}").addresses.values()))
    command = command_of(rt, f"dp-{PORT_HANDLERS[0]}")
    user, agent = keeper["supervisor"]["pid"], keeper["agent"]["pid"]
    found[INSIDE] = Target(lambda: download_in(user, command, address, 80))
    found[BRIDGE] = Target(lambda: download_in(user, agent, address, 80))
    for most, port in caps.items():
        cap = functools.partial(cap_send_buffers, most)
        now = in_namespaces(user, command_of(rt, f"dp-cap-{most}"), cap)
        print(f"dp-cap-{most}: tcp_wmem {now}")
        found[capped(most)] = on_host(port, *relays["splice"])
    return found


def measure(args: argparse.Namespace, site: Path, state: Path, runtimes: Runtimes) -> Measured:
    """Everything, in the order that keeps the turns together; the containers removed."""
    first = runtimes[PORT_HANDLERS[0]]
    rootfs = busybox_rootfs(first.cache)
    with host_httpd(site) as host_port, podman_httpd(site, rootfs) as podman:
        ports = {"host": host_port}
        for handler, rt in runtimes.items():
            ports[handler] = free_port()
            rt.run(httpd(f"dp-{handler}", site, ports[handler]))
            answering(ports[handler])
        caps = {most: free_port() for most in args.send_buffer_max}
        for most, port in caps.items():
            first.run(httpd(f"dp-cap-{most}", site, port))
            answering(port)
        found = targets(state, first, ports, caps)
        if podman is not None:
            found[PODMAN] = podman
        measured = in_turns(found, args.rounds, args.requests)
    for most in caps:
        first.remove(f"dp-cap-{most}", force=True)
    for handler, rt in runtimes.items():
        measured[handler] |= live_changes(rt, f"dp-{handler}", args.starts)
        rt.remove(f"dp-{handler}", force=True)
        measured[handler]["start"] = starts(rt, site, args.starts)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="per target and round")
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument(
        "--send-buffer-max",
        type=int,
        action="append",
        default=[],
        metavar="BYTES",
        help="one more forward, its container's tcp_wmem cap set to BYTES (repeatable)",
    )
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
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    try:
        measured = measure(args, site, state, runtimes)
    finally:
        runtimes[PORT_HANDLERS[0]].shutdown()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    host, podman = measured.pop("host"), measured.pop(PODMAN, None)
    for ceiling in (INSIDE, BRIDGE, *map(capped, args.send_buffer_max)):
        report_download(out, ceiling, measured.pop(ceiling), host)
    if podman is not None:
        report_podman(out, podman, host, measured)
    for handler, taken in measured.items():
        report(out, handler, taken, host)
    out.samples("small request (host loopback)", host["request"], "µs")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f}\nsaved {out.save()}")


if __name__ == "__main__":
    main()
