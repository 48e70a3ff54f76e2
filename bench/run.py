"""Container start-up benchmark: the Runtime API against bwrap (and podman when present).

Runs N sequential containers of each kind in one process and prints p50/p90 and the
ratios against the anchors measured in the same run. Not a test: numbers go to
docs/benchmarks.md by hand.

    python bench/run.py [-n 100]
"""

from __future__ import annotations

import argparse
import os
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

from runtime.api.spec import BindMount, ContainerSpec, PortMapping, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.images.rootfs import busybox_rootfs
from tests.support import free_port, page

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=100)
    runs = parser.parse_args().runs
    work = Path(tempfile.mkdtemp(prefix="squish-bench-"))
    state = Path("/dev/shm") / f"sqb-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")
    site = work / "site"
    site.mkdir()
    (site / "index.html").write_text("bench\n")
    rootfs = busybox_rootfs(work / "cache")
    results: dict[str, list[float]] = {}
    try:
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

        results["squish /bin/true, no network (create+start+exit+remove)"] = timed(
            runs, squish_true
        )
        phases: list[float] = []
        timed(runs, squish_start_to_exit)
        results["squish /bin/true, no network (start+exit only)"] = phases[1:]

        def squish_http() -> None:
            port = free_port()
            spec = ContainerSpec(
                name="w",
                rootfs=BUSYBOX,
                argv=("httpd", "-f", "-p", "80", "-h", "/app/site"),
                binds=(BindMount(source=str(site), target="/app/site"),),
                ports=(PortMapping(container=80, host=port),),
            )
            rt.run(spec)
            wait_http(port)
            rt.remove("w", force=True)

        results["squish httpd + slirp4netns + 1 forward, until it answers"] = timed(
            runs, squish_http
        )

        bwrap = shutil.which("bwrap")
        if bwrap:
            argv = [
                bwrap,
                "--unshare-all",
                "--ro-bind",
                str(rootfs),
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "/bin/true",
            ]
            results["bwrap --unshare-all /bin/true (anchor)"] = timed(
                runs, lambda: subprocess.run(argv, check=True)
            )
        podman = shutil.which("podman")
        if podman:
            argv = [
                podman,
                "--runtime=runc",
                "--cgroup-manager=cgroupfs",
                "run",
                "--rm",
                "--network=none",
                f"--rootfs={rootfs}",
                "/bin/true",
            ]
            if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
                results["podman run --rm /bin/true (anchor)"] = timed(
                    runs, lambda: subprocess.run(argv, check=True, capture_output=True)
                )
    finally:
        rt.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)

    print(f"{runs} sequential runs each, {os.cpu_count()} cores\n")
    print(f"{'what':<62} {'p50 ms':>8} {'p90 ms':>8}")
    for what, samples in results.items():
        print(f"{what:<62} {statistics.median(samples):8.2f} {percentile(samples, 0.9):8.2f}")
    anchor = "bwrap --unshare-all /bin/true (anchor)"
    if anchor in results:
        base = statistics.median(results[anchor])
        print()
        for what, samples in results.items():
            if what != anchor and "no network" in what:
                print(f"bwrap p50 / {what}: {base / statistics.median(samples):.2f}x")


if __name__ == "__main__":
    main()
