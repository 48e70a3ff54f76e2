"""Memory per container: PSS of everything squish runs for N running containers.

Starts N busybox httpd containers (slirp4netns, one forward each, as an isolated
container has), then reads ``/proc/PID/smaps_rollup`` of every process involved and
groups the PSS by kind: the container's init, its log pump, its slirp4netns, the
command (httpd); the holder and its idle warm spares (with their inits) counted apart
(one set per user, not per container). Each
container's records name its processes (``run.json``); the command is what the init
has as children.

    python bench/memory.py [-n 200] [--quick]

The container inits and log pumps are not dumpable (their ``/proc/PID/fd`` must stay
closed to what runs inside) and run a binary the user may execute but not read, so their
``smaps_rollup`` is readable by root only. Run as the user, the script records for them
their private memory from ``/proc/PID/status`` instead (``RssAnon + RssShmem``: their
PSS but their share of the static binary's pages, which hundreds of processes share),
and says so in each figure's name. Run as root, or let root read a fleet the user holds:

    python bench/memory.py --hold /tmp/fleet.json &      # as the user
    python bench/memory.py --read /tmp/fleet.json        # as root, once the file exists

``--read`` reports and removes the file; the holding run then removes its containers.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from results import Results, parse

from runtime.api.spec import ContainerSpec, PortMapping, RootfsRef
from runtime.client.linux import LinuxRuntime
from tests.support import free_port

BUSYBOX = RootfsRef(kind="busybox", version="builtin")
KINDS = ("init", "log pump", "slirp4netns", "command")
"""What squish runs per container (the command is the user's, counted as the anchor)."""
PER_USER = ("holder", "idle spares")
"""What squish runs once per user: the holder, and its warm spares with their inits
(``SQUISH_SPARES``), each a fork of the holder waiting for a start."""


def pss_kib(pid: int) -> int:
    """The process's proportional set size in KiB (PermissionError if not readable)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ValueError(f"no Pss line in /proc/{pid}/smaps_rollup")


def unique_kib(pid: int) -> int:
    """The process's private pages in KiB (``Private_Clean + Private_Dirty``): what it
    costs beyond what it shares with others (a fork of the holder, most of it)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
    return sum(int(fields[name].split()[0]) for name in ("Private_Clean", "Private_Dirty"))


def private_kib(pid: int) -> int:
    """The process's anonymous and shared-memory pages in KiB, from ``/proc/PID/status``
    (readable when ``smaps_rollup`` is not): its PSS but its share of file pages."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return sum(int(fields[name].split()[0]) for name in ("RssAnon", "RssShmem"))


def memory_kib(pids: list[int]) -> tuple[int, bool]:
    """KiB of PSS of ``pids``, True; False when one's ``smaps_rollup`` is closed to this
    user (not dumpable, a binary it may not read): then their private memory instead."""
    try:
        return sum(pss_kib(pid) for pid in pids), True
    except PermissionError:
        return sum(private_kib(pid) for pid in pids), False


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def processes_by_kind(containers: Path) -> dict[str, list[int]]:
    """Each kind's pids, and the holder's (the parent of the inits)."""
    kinds: dict[str, list[int]] = defaultdict(list)
    holders: set[int] = set()
    for run_file in containers.glob("*/run.json"):
        run = json.loads(run_file.read_text())
        init = run["init"]["pid"]
        kinds["init"].append(init)
        kinds["command"].extend(children(init))
        for kind, key in (("log pump", "log_pump"), ("slirp4netns", "slirp")):
            if run.get(key):
                kinds[kind].append(run[key]["pid"])
        holders.add(int(Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()[1]))
    kinds["holder"] = sorted(holders)
    kinds["idle spares"] = idle_spares(containers.parent, holders, kinds)
    return dict(kinds)


def idle_spares(state: Path, holders: set[int], kinds: dict[str, list[int]]) -> list[int]:
    """The warm spare launchers and their inits: the holder's children that still run the
    holder's program (forks of it) and are neither a container's process nor the /proc
    view's server."""
    server = json.loads((state / "procview.json").read_text() or "{}").get("pid")
    known = {pid for pids in kinds.values() for pid in pids} | {server}
    found = []
    for holder in holders:
        program = Path(f"/proc/{holder}/cmdline").read_bytes()
        for child in children(holder):
            try:
                forked = Path(f"/proc/{child}/cmdline").read_bytes() == program
            except OSError:
                continue
            if forked and child not in known:
                found.append(child)
    return found


def start_fleet(rt: LinuxRuntime, count: int) -> None:
    for index in range(count):
        spec = ContainerSpec(
            name=f"m{index}",
            rootfs=BUSYBOX,
            argv=("httpd", "-f", "-p", "80"),
            ports=(PortMapping(container=80, host=free_port()),),
        )
        rt.run(spec)


def report(count: int, kinds: dict[str, list[int]]) -> None:
    """Print and record each kind's PSS (or, where it cannot be read, private memory)."""
    out = Results("memory")
    print(f"{count} running containers, PSS from /proc/PID/smaps_rollup\n")
    print(f"{'kind':<14} {'processes':>9} {'total MiB':>10} {'per container MiB':>18}")
    squish, whole = 0.0, True
    for kind in (*KINDS, *PER_USER):
        kib, pss = memory_kib(kinds.get(kind, []))
        total = kib / 1024
        share = total if kind in PER_USER else total / count
        what = "PSS" if pss else "private memory (PSS not readable)"
        print(f"{kind:<14} {len(kinds.get(kind, [])):>9} {total:>10.2f} {share:>18.3f}", what)
        if kind in PER_USER:
            out.figure(f"{what}: {kind} (one set per user)", share, "MiB")
            if kind == "idle spares" and pss:
                own = sum(unique_kib(pid) for pid in kinds[kind]) / 1024
                print(f"{'':<14} {'':>9} {own:>10.2f} {'':>18} of it private")
                out.figure("private memory: idle spares (one set per user)", own, "MiB")
            continue
        out.figure(f"{what} per container: {kind}", share, "MiB")
        if kind != "command":
            squish, whole = squish + share, whole and pss
    what = "PSS" if whole else "at least (private memory where PSS is not readable)"
    print(f"\nsquish per container (init + log pump + slirp4netns), {what}: {squish:.3f} MiB")
    out.figure(f"{what} per container: squish (init + log pump + slirp4netns)", squish, "MiB")
    out.save()


def hold(kinds: dict[str, list[int]], count: int, path: Path) -> None:
    """Write the fleet's pids to ``path``; wait until a reader has removed it."""
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"containers": count, "kinds": kinds}))
    temp.rename(path)
    print(f"holding {count} containers until {path} is removed", flush=True)
    while path.exists():
        time.sleep(0.2)


def read(path: Path) -> None:
    fleet = json.loads(path.read_text())
    try:
        report(fleet["containers"], fleet["kinds"])
    finally:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--containers", type=int, default=200)
    parser.add_argument("--hold", type=Path, help="hold the fleet until root has read it")
    parser.add_argument("--read", type=Path, help="read and report a held fleet (as root)")
    args = parse(parser, containers=20)
    if args.read:
        read(args.read)
        return
    count = args.containers
    work = Path(tempfile.mkdtemp(prefix="squish-bench-"))
    state = Path("/dev/shm") / f"sqm-{secrets.token_hex(4)}"
    rt = LinuxRuntime(state=state, cache=work / "cache")
    try:
        started = time.perf_counter()
        start_fleet(rt, count)
        print(f"started in {time.perf_counter() - started:.1f} s")
        time.sleep(1.0)  # let every init and pump settle into its idle state
        kinds = processes_by_kind(rt.containers)
        if args.hold:
            hold(kinds, count, args.hold)
        else:
            report(count, kinds)
    finally:
        for info in rt.list():
            rt.remove(info.name, force=True)
        rt.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
