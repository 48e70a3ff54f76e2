"""How long hostile SDK layers take to be refused, with the default unpacking limits.

Each archive is built here, served over HTTP on 127.0.0.1, and resolved as a container's
layers are (:func:`runtime.images.layers.resolve_sdks`) into a fresh cache: the time to
the refusal, what was counted, and the time of a second attempt (refused from the record,
without a request). The figures go to bench/out/hostile.json (bench/results.py).

    python bench/hostile.py [--entries 1000000] [--depth 1500] [--sparse 3000000000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from results import Results, parse

from runtime.api.spec import SdkLayer
from runtime.errors import ArchiveRefused
from runtime.images.layers import resolve_sdks
from runtime.util.cancel import Cancel, Cancelled
from tests.fixtures.mirror import serve_handler
from tests.test_hostile_archives import Site, _Handler, deep_tree, entry, sparse_member, tar_bytes

MiB = 1024 * 1024


def zeros_layer(size: int) -> bytes:
    """One file of ``size`` zero bytes (real data, not a hole), compressed."""
    info, _ = entry("zeros")
    info.size = size
    with tempfile.TemporaryFile() as body, tempfile.TemporaryFile() as out:
        body.truncate(size)
        body.seek(0)
        with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
            tar.addfile(info, body)
        out.seek(0)
        return out.read()


def many_empty(count: int) -> bytes:
    return tar_bytes([entry(f"f{i}") for i in range(count)])


def attempt(layers: list[SdkLayer], cache: Path) -> tuple[float, str]:
    began = time.perf_counter()
    try:
        resolve_sdks(layers, cache)
    except ArchiveRefused as exc:
        return time.perf_counter() - began, f"{exc.reason} (counted {exc.at_least})"
    return time.perf_counter() - began, "NOT REFUSED"


def cancel_latency(site: Site, url: str) -> float:
    """Seconds from cancelling a download stalled half-way to its end."""
    body = zeros_layer(64 * MiB) + bytes(64 * MiB)  # the tail is never sent anyway
    site.stall_path, site.stall_after = "/stalled.tar.gz", len(body) // 2
    layer = SdkLayer(
        name="stalled", url=url + site.stall_path, sha256=site.add(site.stall_path, body)
    )
    cancel = Cancel()
    ended: list[float] = []

    def run() -> None:
        with contextlib.suppress(Cancelled):
            resolve_sdks([layer], cache, cancel=cancel)
        ended.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        cache = Path(folder)
        worker = threading.Thread(target=run)
        worker.start()
        site.stalled.wait()
        began = time.perf_counter()
        cancel.cancel()
        worker.join()
    site.resume.set()
    return ended[0] - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--depth", type=int, default=1500)
    parser.add_argument("--sparse", type=int, default=3_000_000_000)
    parser.add_argument("--layer-mib", type=int, default=800, help="each of 3 layers")
    args = parse(parser, entries=150_000, layer_mib=700)  # still past the default limits
    out = Results("hostile")
    cases = {
        f"{args.entries:,} empty entries": [many_empty(args.entries)],
        f"a {args.depth}-deep tree": [deep_tree(args.depth)],
        f"a sparse member of {args.sparse:,} bytes": [sparse_member(args.sparse)],
        f"3 layers of {args.layer_mib} MiB": [zeros_layer(args.layer_mib * MiB)] * 3,
    }
    site = Site()
    with serve_handler(functools.partial(_Handler, site=site)) as url:
        print("| archive | size | refused after | second attempt | requests | reason |")
        print("|---|---:|---:|---:|---:|---|")
        for number, (label, bodies) in enumerate(cases.items()):
            layers = [
                SdkLayer(
                    name=f"l{number}x{index}",
                    url=f"{url}/{number}-{index}.tar.gz",
                    sha256=site.add(f"/{number}-{index}.tar.gz", body),
                )
                for index, body in enumerate(bodies)
            ]
            cache = Path(tempfile.mkdtemp(prefix="hostile-"))
            try:
                first, reason = attempt(layers, cache)
                second, _ = attempt(layers, cache)
            finally:
                shutil.rmtree(cache)
            size = sum(len(b) for b in bodies)
            print(
                f"| {label} | {size:,} B | {first:.2f} s | {second * 1000:.1f} ms "
                f"| {sum(site.requests.values())} | {reason} |"
            )
            site.requests.clear()
            out.figure(f"{label}: refused after", first, "s")
            out.figure(f"{label}: second attempt refused after", second * 1000, "ms")
        cancelled = cancel_latency(site, url) * 1000
        print(f"\ncancelling a download stalled half-way: {cancelled:.1f} ms")
        out.figure("cancelling a download stalled half-way", cancelled, "ms")
    out.save()


if __name__ == "__main__":
    main()
