"""Bridge networks benchmark: what joining a network costs, and what it carries.

(a) create + start + first answer of a busybox httpd container, on a bridge network vs an
isolated one (its own slirp4netns) vs none, the three taking turns, each left running
until all are timed; what joining costs is the median of each round's bridge start
minus its none start (the round's pace cancels out, where a difference of two medians
kept it); "answers" is ``probe_tcp`` (a connect from inside the container's
network namespace), the same check for every mode. A bridge
container stays on the network throughout, so the shared namespace is up before timing.
(b) a 256 MiB HTTP fetch from one bridge container by ``nc`` in another, vs the same
fetch on the host's loopback (busybox httpd and nc), in the same run.
(c) DNS answer latency inside a container: N ``nslookup`` of a container's name against
its network's gateway in one exec, minus the same loop running ``/bin/true``.
(d) ``--many`` busybox httpd containers on one network, started one after another: how
long that takes, then one of them fetches a page from every other by name (``nc NAME
80`` in one exec) and the number that answered is printed.
Not a test: the figures go to ``bench/out/networks.json`` (:mod:`results`) and
docs/benchmarks.md.

    python bench/networks.py [-n 20] [--fetches 5] [--lookups 200] [--many 100]
                              [--starts-only] [--quick]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, p90, parse

from runtime.api.spec import BindMount, ContainerSpec, NetworkAttachment, RootfsRef
from runtime.client.linux import LinuxRuntime
from tests.support import free_port

BUSYBOX = RootfsRef(kind="busybox", version="builtin")
NETWORK = "b1"
SIZE = 256 * 1024 * 1024
REQUEST = r"printf 'GET /f HTTP/1.0\r\n\r\n'"
MODES: dict[str, dict[str, object]] = {
    "bridge": {"network": "bridge", "networks": (NetworkAttachment(network=NETWORK),)},
    "slirp4netns": {"network": "slirp4netns"},
    "none": {"network": "none"},
}


def httpd(name: str, site: Path, mode: str) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=("httpd", "-f", "-p", "80", "-h", "/site"),
        binds=(BindMount(source=str(site), target="/site"),),
        **MODES[mode],
    )


def answering(rt: LinuxRuntime, name: str) -> None:
    for _ in range(20_000):
        if rt.probe_tcp(name, 80):
            return
        time.sleep(0.0005)
    raise RuntimeError(f"{name}'s httpd never listened")


def start_samples(rt: LinuxRuntime, site: Path, runs: int) -> dict[str, list[float]]:
    """ms from create to the first accepted connection, per mode, the modes taking turns
    (so that no mode gets the machine in another state than the others), the first of
    a round changing each round; the first round is a warm-up."""
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    order = list(MODES)
    for run in range(runs + 1):
        order = order[1:] + order[:1]  # the modes take each place in the round in turn
        for mode in order:
            name = f"j-{mode}-{run}"
            start = time.perf_counter()
            rt.run(httpd(name, site, mode))
            answering(rt, name)
            samples[mode].append((time.perf_counter() - start) * 1000)
    for run in range(runs + 1):  # only now: a namespace's teardown in the kernel would
        for mode in MODES:  # slow down whichever start comes next
            rt.remove(f"j-{mode}-{run}", force=True)
    return {mode: taken[1:] for mode, taken in samples.items()}


def seconds(body: Callable[[], object]) -> float:
    start = time.perf_counter()
    body()
    return time.perf_counter() - start


def in_container(rt: LinuxRuntime, name: str, script: str) -> Callable[[], object]:
    def body() -> None:
        result = rt.exec_command(name, ("/bin/sh", "-c", script), timeout=600)
        if result.exit_code != 0:
            raise RuntimeError(f"{script!r} in {name}: {result.exit_code} {result.output!r}")

    return body


def received(output: str) -> None:
    """Refuse a fetch that did not carry the whole file (a 404 would look very fast)."""
    if int(output.strip() or 0) < SIZE:
        raise RuntimeError(f"the fetch carried {output.strip()} bytes, not {SIZE}+")


def host_fetch(site: Path, fetches: int) -> list[float]:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed on the host")
    port = free_port()
    server = subprocess.Popen([busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(site)])
    try:
        time.sleep(0.2)  # let it bind; the first fetch below is a warm-up anyway
        script = f"{REQUEST} | {busybox} nc 127.0.0.1 {port}"
        received(
            subprocess.run(
                ["/bin/sh", "-c", f"{script} | wc -c"], capture_output=True, text=True, check=True
            ).stdout
        )
        script += " > /dev/null"
        fetch = lambda: subprocess.run(["/bin/sh", "-c", script], check=True)  # noqa: E731
        return [seconds(fetch) for _ in range(fetches + 1)][1:]
    finally:
        server.kill()
        server.wait()


def loop(lookups: int, command: str) -> str:
    return f"i=0; while [ $i -lt {lookups} ]; do {command} >/dev/null; i=$((i+1)); done"


def report_starts(starts: dict[str, list[float]], out: Results) -> None:
    print(f"(a) create + start + first answer, {len(starts['none'])} runs each")
    print(f"{'network':<14} {'p50 ms':>8} {'p90 ms':>8}")
    base = statistics.median(starts["none"])
    for mode, samples in starts.items():
        print(f"{mode:<14} {statistics.median(samples):8.2f} {p90(samples):8.2f}")
        what = f"create + start + first answer, {mode}, p50"
        out.figure(what, statistics.median(samples), "ms", anchor="none", anchor_value=base)
        out.samples(f"create + start + first answer, {mode}", samples)
    paired = [bridge - none for bridge, none in zip(starts["bridge"], starts["none"], strict=True)]
    joining = statistics.median(paired)
    print(f"joining (bridge - none in the same round, p50): {joining:.2f} ms")
    print(f"  (bridge p50 - none p50: {statistics.median(starts['bridge']) - base:.2f} ms)")
    out.figure("joining a bridge network (bridge - none in the same round, p50)", joining, "ms")


def report_throughput(inside: list[float], host: list[float], out: Results) -> None:
    mib = SIZE / (1024 * 1024)
    rate_in, rate_host = mib / statistics.median(inside), mib / statistics.median(host)
    out.figure(
        "container to container over a bridge",
        rate_in,
        "MiB/s",
        anchor="host loopback",
        anchor_value=rate_host,
        lower_is_better=False,
    )
    print(f"\n(b) {mib:.0f} MiB fetch, median of {len(inside)}")
    print(f"container -> container over the bridge: {rate_in:8.0f} MiB/s")
    print(f"host loopback (busybox httpd + nc):     {rate_host:8.0f} MiB/s")
    print(f"ratio: {rate_in / rate_host:.2f}x")


def many_by_name(rt: LinuxRuntime, site: Path, count: int) -> tuple[float, int]:
    """Seconds to start ``count`` bridge containers, and how many answered by name."""
    names = [f"m{i:03d}" for i in range(count)]
    started = seconds(lambda: [rt.run(httpd(name, site, "bridge")) for name in names])
    for name in names:
        answering(rt, name)
    request = r"printf 'GET /page HTTP/1.0\r\n\r\n'"
    script = " ".join(
        f"{request} | nc -w 2 {name} 80 | tail -n 1 | grep -q '^hello$' && echo ok;"
        for name in names[1:]
    )
    output = rt.exec_command(names[0], ("/bin/sh", "-c", script), timeout=600).output
    for name in names:
        rt.remove(name, force=True)
    return started, output.split().count("ok")


def report_many(count: int, started: float, answered: int, out: Results) -> None:
    out.figure(f"{count} containers on one network, started one by one", started, "s")
    out.figure(f"of {count - 1} others, answered by name", answered, "containers")
    print(f"\n(d) {count} containers on one network: started one by one in {started:.2f} s")
    print(f"    ({started * 1000 / count:.1f} ms each); {answered} of {count - 1} others")
    print("    answered the first one by name")


def report_dns(lookups: int, dns: float, noop: float, out: Results) -> None:
    raw, loop_alone = dns * 1000 / lookups, noop * 1000 / lookups
    out.figure("nslookup in a container", raw, "ms", anchor="/bin/true", anchor_value=loop_alone)
    print(f"\n(c) {lookups} nslookup in one exec: {dns * 1000 / lookups:.3f} ms each raw,")
    print(f"    {noop * 1000 / lookups:.3f} ms each for the /bin/true loop,")
    print(f"    {(dns - noop) * 1000 / lookups:.3f} ms per answer after subtracting it")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--fetches", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--many", type=int, default=100)
    parser.add_argument("--starts-only", action="store_true", help="(a) alone")
    args = parse(parser, runs=3, fetches=2, lookups=50, many=10)
    work = Path(tempfile.mkdtemp(prefix="squish-nbench-"))
    state = Path("/dev/shm") / f"sqn-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")
    site = work / "site"
    site.mkdir()
    with (site / "f").open("wb") as f:
        f.truncate(SIZE)
    (site / "page").write_text("hello\n")
    out = Results("networks")
    try:
        server = rt.run(httpd("srv", site, "bridge"))
        rt.run(httpd("cli", site, "bridge"))
        answering(rt, "srv")
        report_starts(start_samples(rt, site, args.runs), out)
        if not args.starts_only:
            carried(rt, site, server.addresses[NETWORK], args, out)
    finally:
        for info in rt.list():
            rt.remove(info.name, force=True)
        for network in rt.list_networks():
            rt.remove_network(network.name)
        rt.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    print(f"\nrecorded in {out.save()}")


def carried(
    rt: LinuxRuntime, site: Path, address: str, args: argparse.Namespace, out: Results
) -> None:
    """(b), (c) and (d)."""
    script = f"{REQUEST} | nc {address} 80"
    received(rt.exec_command("cli", ("/bin/sh", "-c", f"{script} | wc -c")).output)
    fetch = in_container(rt, "cli", f"{script} > /dev/null")
    inside = [seconds(fetch) for _ in range(args.fetches + 1)][1:]
    host = host_fetch(site, args.fetches)
    report_throughput(inside, host, out)
    gateway = {n.name: n for n in rt.list_networks()}[NETWORK].gateway
    dns = seconds(in_container(rt, "cli", loop(args.lookups, f"nslookup srv {gateway}")))
    noop = seconds(in_container(rt, "cli", loop(args.lookups, "/bin/true")))
    report_dns(args.lookups, dns, noop, out)
    started, answered = many_by_name(rt, site, args.many)
    report_many(args.many, started, answered, out)


if __name__ == "__main__":
    main()
