"""Container start-up benchmark: the Runtime API against bwrap and podman (runc).

Runs N sequential containers of each kind in one process and prints p50/p90 and the
ratios against the anchors measured in the same run: `bwrap --unshare-all` for
/bin/true, `podman run --rm` (runc, cgroupfs: crun refuses a hybrid cgroup host) for
/bin/true and for busybox httpd with a published port until its first HTTP answer.
An anchor that cannot run here is left out with one line saying why. The figures go
to bench/out/run.json (bench/results.py).

    python bench/run.py [-n 100] [--quick]
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import ArgumentParser
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, p90, parse

from runtime.api.spec import BindMount, ContainerSpec, PortMapping, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.images.rootfs import busybox_rootfs
from tests.support import free_port, page

BUSYBOX = RootfsRef(kind="busybox", version="builtin")
PODMAN = ("--runtime=runc", "--cgroup-manager=cgroupfs", "run")
TRUE_FULL = "squish /bin/true, no network (create+start+exit+remove)"
TRUE_START = "squish /bin/true, no network (start+exit only)"
HTTP = "squish httpd + slirp4netns + 1 forward, until it answers"
BWRAP = "bwrap --unshare-all /bin/true"
PODMAN_TRUE = "podman run --rm /bin/true (runc)"
PODMAN_HTTP = "podman run -d -p httpd (runc), until it answers"


def timed(runs: int, body: Callable[[], object]) -> list[float]:
    body()  # warm-up, not counted
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        body()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def wait_http(port: int) -> None:
    for _ in range(10_000):
        if page(port, "/index.html") is not None:
            return
        time.sleep(0.0005)
    raise RuntimeError(f"no answer on port {port}")


def until_answer(
    runs: int, start: Callable[[int], object], stop: Callable[[object], object]
) -> list[float]:
    """ms from ``start(port)`` to the first HTTP answer on that port; ``stop`` (given what
    ``start`` returned) runs after, outside the time. One warm-up run, not counted."""
    samples = []
    for _ in range(runs + 1):
        port = free_port()
        began = time.perf_counter()
        handle = start(port)
        wait_http(port)
        samples.append((time.perf_counter() - began) * 1000)
        stop(handle)
    return samples[1:]


def podman_argv(rootfs: Path) -> tuple[list[str] | None, str]:
    """podman's argv up to its options of `run`, or None and one line saying why not."""
    podman = shutil.which("podman")
    if podman is None:
        return None, "podman is not installed (make bench, as root, installs it)"
    probe = [podman, *PODMAN, "--rm", "--network=none", "--rootfs", str(rootfs), "/bin/true"]
    done = subprocess.run(probe, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [text for text in done.stderr.splitlines() if text.strip()] or ["no message"]
        return None, f"podman cannot run here (exit {done.returncode}): {lines[-1]}"
    return [podman, *PODMAN], ""


def squish_series(rt: LinuxRuntime, site: Path, runs: int) -> dict[str, list[float]]:
    true_spec = ContainerSpec(name="b", rootfs=BUSYBOX, argv=("/bin/true",), network="none")

    def squish_true() -> None:
        rt.create(true_spec)
        rt.start("b")
        rt.wait("b")
        rt.remove("b")

    def squish_start_to_exit() -> None:
        rt.create(true_spec)
        start = time.perf_counter()
        rt.start("b")
        rt.wait("b")
        phases.append((time.perf_counter() - start) * 1000)
        rt.remove("b")

    def squish_http(port: int) -> str:
        spec = ContainerSpec(
            name="w",
            rootfs=BUSYBOX,
            argv=("httpd", "-f", "-p", "80", "-h", "/app/site"),
            binds=(BindMount(source=str(site), target="/app/site"),),
            ports=(PortMapping(container=80, host=port),),
        )
        rt.run(spec)
        return "w"

    series = {TRUE_FULL: timed(runs, squish_true)}
    phases: list[float] = []
    timed(runs, squish_start_to_exit)
    series[TRUE_START] = phases[1:]
    series[HTTP] = until_answer(runs, squish_http, lambda name: rt.remove(str(name), force=True))
    return series


def bwrap_series(rootfs: Path, runs: int) -> dict[str, list[float]]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("anchor left out: bwrap is not installed (make bench, as root, installs it)")
        return {}
    argv = [bwrap, "--unshare-all", "--ro-bind", str(rootfs), "/"]
    argv += ["--proc", "/proc", "--dev", "/dev", "/bin/true"]
    return {BWRAP: timed(runs, lambda: subprocess.run(argv, check=True))}


def podman_series(rootfs: Path, site: Path, runs: int) -> dict[str, list[float]]:
    base, why = podman_argv(rootfs)
    if base is None:
        print(f"anchor left out: {why}")
        return {}
    true = [*base, "--rm", "--network=none", "--rootfs", str(rootfs), "/bin/true"]

    def http(port: int) -> str:
        argv = [*base, "-d", "-p", f"127.0.0.1:{port}:80", "-v", f"{site}:/app/site:ro"]
        argv += ["--rootfs", str(rootfs), "httpd", "-f", "-p", "80", "-h", "/app/site"]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def remove(container: object) -> None:
        argv = [base[0], "rm", "--force", "--time", "0", str(container)]
        subprocess.run(argv, check=True, capture_output=True)

    return {
        PODMAN_TRUE: timed(runs, lambda: subprocess.run(true, check=True, capture_output=True)),
        PODMAN_HTTP: until_answer(runs, http, remove),
    }


def record(series: dict[str, list[float]]) -> Results:
    out = Results("run")
    for what, anchor in ((TRUE_FULL, BWRAP), (TRUE_START, BWRAP), (HTTP, PODMAN_HTTP)):
        out.distribution(what, series[what], anchor=anchor, anchor_values=series.get(anchor))
    if PODMAN_TRUE in series:
        full = statistics.median(series[TRUE_FULL])
        base = statistics.median(series[PODMAN_TRUE])
        out.figure(f"{TRUE_FULL} p50", full, "ms", anchor=PODMAN_TRUE, anchor_value=base)
    for anchor in (BWRAP, PODMAN_TRUE, PODMAN_HTTP):
        if anchor in series:
            out.samples(anchor, series[anchor])
    return out


def main() -> None:
    runs = _runs()
    work = Path(tempfile.mkdtemp(prefix="squish-bench-"))
    state = Path("/dev/shm") / f"sqb-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")
    site = work / "site"
    site.mkdir()
    (site / "index.html").write_text("bench\n")
    rootfs = busybox_rootfs(work / "cache")
    try:
        series = squish_series(rt, site, runs)
        series |= bwrap_series(rootfs, runs)
        series |= podman_series(rootfs, site, runs)
    finally:
        rt.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)

    print(f"{runs} sequential runs each, {os.cpu_count()} cores\n")
    print(f"{'what':<62} {'p50 ms':>8} {'p90 ms':>8}")
    for what, samples in series.items():
        name = what if what.startswith("squish") else f"anchor: {what}"
        print(f"{name:<62} {statistics.median(samples):8.2f} {p90(samples):8.2f}")
    out = record(series)
    print("\nagainst the anchors (ratio = anchor p50 / squish p50: above 1, squish is faster)")
    out.report()
    out.save()


def _runs() -> int:
    parser = ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=100)
    return int(parse(parser, runs=10).runs)


if __name__ == "__main__":
    main()
