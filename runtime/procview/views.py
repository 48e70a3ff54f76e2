"""The files of the view, computed: the host's file and the container's limits in, text out.

Pure functions of what :mod:`runtime.procview.limits` read, so they are tested as tables.
A limit that is not set leaves the host's figure as it is: a container without limits
sees the host's files unchanged (uptime and load excepted: those are its own).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field

__all__ = (
    "Limits",
    "allowed_cpus",
    "cpu_online",
    "cpuinfo",
    "diskstats",
    "first_cpus",
    "loadavg",
    "meminfo",
    "parse_cpu_list",
    "stat",
    "swaps",
    "sysinfo",
    "uptime",
)


@dataclass(frozen=True)
class Limits:
    """What the container's cgroup says (None: not limited, or not readable)."""

    memory_max: int | None = None
    memory_current: int | None = None
    memory_stat: dict[str, int] = field(default_factory=dict)
    swap_max: int | None = None
    swap_current: int | None = None
    cpu_quota: float | None = None
    """cpu.max as a number of CPUs (quota / period)."""
    cpuset: tuple[int, ...] | None = None
    """cpuset.cpus.effective, when the cpuset controller is on."""
    io: dict[str, dict[str, int]] = field(default_factory=dict)
    """io.stat: ``MAJ:MIN`` -> its counters (rbytes, wbytes, rios, wios)."""


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``0-3,6`` -> (0, 1, 2, 3, 6), as the kernel writes CPU lists."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return tuple(cpus)


def allowed_cpus(online: tuple[int, ...], limits: Limits) -> tuple[int, ...]:
    """The host CPUs the container may run on: its cpuset, then as many of them as its
    quota rounds up to (cpus = 1.5 -> 2)."""
    cpus = tuple(c for c in online if limits.cpuset is None or c in limits.cpuset) or online
    if limits.cpu_quota is not None:
        cpus = cpus[: max(1, math.ceil(limits.cpu_quota))]
    return cpus


def cpu_online(cpus: tuple[int, ...]) -> str:
    """``/sys/devices/system/cpu/online``: the container's CPUs, numbered from 0."""
    return "0\n" if len(cpus) == 1 else f"0-{len(cpus) - 1}\n"


_KB = 1024


def _meminfo_values(host: dict[str, int], limits: Limits) -> dict[str, int]:
    """The meminfo lines (in kB) the limits change."""
    changed: dict[str, int] = {}
    if limits.memory_max is not None and limits.memory_max // _KB < host.get("MemTotal", 0):
        total = limits.memory_max // _KB
        used = (limits.memory_current or 0) // _KB
        stat = {key: value // _KB for key, value in limits.memory_stat.items()}
        cached = stat.get("file", 0)
        free = max(0, total - used)
        changed |= {
            "MemTotal": total,
            "MemFree": free,
            "MemAvailable": min(total, free + cached),
            "Buffers": 0,
            "Cached": cached,
            "Active": stat.get("active_anon", 0) + stat.get("active_file", 0),
            "Inactive": stat.get("inactive_anon", 0) + stat.get("inactive_file", 0),
            "Active(anon)": stat.get("active_anon", 0),
            "Inactive(anon)": stat.get("inactive_anon", 0),
            "Active(file)": stat.get("active_file", 0),
            "Inactive(file)": stat.get("inactive_file", 0),
            "Shmem": stat.get("shmem", 0),
            # free counts SReclaimable as cache: the host's would make "used" negative
            "Slab": stat.get("slab", 0),
            "SReclaimable": stat.get("slab_reclaimable", 0),
            "SUnreclaim": stat.get("slab_unreclaimable", 0),
        }
    if limits.swap_max is not None and limits.swap_max // _KB < host.get("SwapTotal", 0):
        swap_total = limits.swap_max // _KB
        swap_used = (limits.swap_current or 0) // _KB
        changed |= {"SwapTotal": swap_total, "SwapFree": max(0, swap_total - swap_used)}
    return changed


def meminfo(host_text: str, limits: Limits) -> str:
    """``/proc/meminfo`` with total, free and available memory (and swap) from the
    container's limit and usage, when it has a limit below the host's memory."""
    host = {}
    for line in host_text.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            host[key] = int(rest.split()[0])
    changed = _meminfo_values(host, limits)
    lines = []
    for line in host_text.splitlines():
        key, _, _ = line.partition(":")
        if key in changed:
            line = f"{key + ':':<16}{changed[key]:>8} kB"
        lines.append(line)
    return "\n".join(lines) + "\n"


def cpuinfo(host_text: str, cpus: tuple[int, ...]) -> str:
    """``/proc/cpuinfo`` with the blocks of the container's CPUs, numbered from 0."""
    blocks = [block for block in host_text.strip("\n").split("\n\n") if block]
    kept = []
    for block in blocks:
        match = re.match(r"processor\s*:\s*(\d+)", block)
        if match is None or int(match.group(1)) not in cpus:
            continue
        number = cpus.index(int(match.group(1)))
        kept.append(re.sub(r"^(processor\s*:\s*)\d+", rf"\g<1>{number}", block, count=1))
    return "\n\n".join(kept) + "\n\n" if kept else host_text


def stat(host_text: str, cpus: tuple[int, ...]) -> str:
    """``/proc/stat`` with the lines of the container's CPUs (numbered from 0) and a
    ``cpu`` line that sums them."""
    per_cpu: dict[int, list[int]] = {}
    rest: list[str] = []
    for line in host_text.splitlines():
        match = re.match(r"cpu(\d+)\s", line)
        if match is not None:
            per_cpu[int(match.group(1))] = [int(v) for v in line.split()[1:]]
        elif not line.startswith("cpu "):
            rest.append(line)
    mine = [per_cpu[c] for c in cpus if c in per_cpu]
    if not mine:
        return host_text
    total = [sum(column) for column in zip(*mine, strict=True)]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{i} " + " ".join(map(str, values)) for i, values in enumerate(mine)]
    return "\n".join(lines + rest) + "\n"


def uptime(seconds: float, idle: float) -> str:
    """``/proc/uptime``: seconds since the container started, and its CPUs' idle time."""
    return f"{max(0.0, seconds):.2f} {max(0.0, idle):.2f}\n"


def loadavg(host_text: str, averages: tuple[float, float, float], running: int, total: int) -> str:
    """``/proc/loadavg`` from the container's own processes (the last pid: the host's)."""
    last_pid = host_text.split()[-1] if host_text.split() else "0"
    one, five, fifteen = averages
    return f"{one:.2f} {five:.2f} {fifteen:.2f} {running}/{total} {last_pid}\n"


def swaps(host_text: str, limits: Limits) -> str:
    """``/proc/swaps``: the host's, or one line of the container's swap limit and use."""
    header = host_text.splitlines()[0] if host_text else "Filename\tType\tSize\tUsed\tPriority"
    if limits.swap_max is None or limits.memory_max is None:
        return host_text
    size, used = limits.swap_max // _KB, (limits.swap_current or 0) // _KB
    if size == 0:
        return header + "\n"
    return f"{header}\nnone\tvirtual\t{size}\t{used}\t0\n"


def diskstats(host_text: str, limits: Limits) -> str:
    """``/proc/diskstats``: the devices the container did I/O on and its own counts
    (reads, sectors read, writes, sectors written), when io.stat has any."""
    if not limits.io:
        return host_text
    lines = []
    for line in host_text.splitlines():
        fields = line.split()
        if len(fields) < 14:
            continue
        counts = limits.io.get(f"{fields[0]}:{fields[1]}")
        if counts is None:
            continue
        values = [0] * (len(fields) - 3)
        values[0], values[2] = counts.get("rios", 0), counts.get("rbytes", 0) // 512
        values[4], values[6] = counts.get("wios", 0), counts.get("wbytes", 0) // 512
        lines.append(f"{fields[0]:>4} {fields[1]:>7} {fields[2]} " + " ".join(map(str, values)))
    return "\n".join(lines) + "\n" if lines else ""


_SYSINFO = struct.Struct("<q3Q6QH6x2QI4x")
"""x86_64 struct sysinfo: uptime, loads[3], totalram, freeram, sharedram, bufferram,
totalswap, freeswap, procs, totalhigh, freehigh, mem_unit."""
_LOAD_SCALE = 1 << 16
"""SI_LOAD_SHIFT: sysinfo's loads are fixed-point numbers."""


def sysinfo(
    meminfo_text: str, seconds: float, averages: tuple[float, float, float], procs: int
) -> bytes:
    """The ``struct sysinfo`` of a container: memory and swap as its ``/proc/meminfo`` (the
    view's) says, in bytes (``mem_unit`` 1), uptime and loads as its ``/proc/uptime`` and
    ``/proc/loadavg``, ``procs`` as the latter's total."""
    kb = {}
    for line in meminfo_text.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            kb[key] = int(rest.split()[0]) * _KB
    memory = (kb.get(key, 0) for key in ("MemTotal", "MemFree", "Shmem", "Buffers"))
    swap = (kb.get("SwapTotal", 0), kb.get("SwapFree", 0))
    loads = (round(load * _LOAD_SCALE) for load in averages)
    return _SYSINFO.pack(
        int(max(0.0, seconds)), *loads, *memory, *swap, min(procs, 0xFFFF), 0, 0, 1
    )


def first_cpus(mask: bytes, count: int) -> bytes:
    """An affinity mask (the kernel's bytes, CPU 0 first) keeping its first ``count`` CPUs."""
    kept = bytearray(len(mask))
    for index in range(len(mask) * 8):
        if count == 0:
            break
        if mask[index // 8] >> index % 8 & 1:
            kept[index // 8] |= 1 << index % 8
            count -= 1
    return bytes(kept)
