"""What the view is computed from: the container's cgroup, its init, the host's files.

The cgroup is the init's (:func:`runtime.cgroups.fs.cgroup_of`, the same lookup the
runtime's drivers use), so the cgroupfs and the systemd drivers' containers are read
alike. A file the cgroup lacks (no v2 controllers, as on hybrid hosts) means no limit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.fs import cgroup_of, v2_mount
from runtime.procview.views import Limits, parse_cpu_list
from runtime.util.files import read_small
from runtime.util.processes import proc_start_time

__all__ = (
    "CLOCK_TICKS",
    "Tasks",
    "container_tasks",
    "host_online",
    "read_limits",
    "seconds_since_start",
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


_MOST = 64 * 1024
"""Bytes read of one file: a cgroup's or a process's files are far shorter."""


def _text(path: Path) -> str | None:
    """The file's text (bytes that are not UTF-8, as a process's own name may hold,
    replaced), or None when it cannot be read."""
    try:
        return read_small(path, _MOST).decode(errors="replace")
    except OSError:
        return None


def _number(path: Path) -> int | None:
    """A single-value cgroup file; None for ``max``, or when it is not there."""
    text = _text(path)
    if text is None or text.strip() in ("", "max"):
        return None
    return int(text.split()[0])


def _keyed(path: Path) -> dict[str, int]:
    """A flat keyed file (``memory.stat``, ``cpu.stat``): key -> value."""
    values = {}
    for line in (_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def _io(path: Path) -> dict[str, dict[str, int]]:
    """``io.stat``: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`` per line."""
    devices = {}
    for line in (_text(path) or "").splitlines():
        device, *pairs = line.split()
        counts = (pair.partition("=") for pair in pairs)
        devices[device] = {key: int(value) for key, _, value in counts if value.isdigit()}
    return devices


def _quota(path: Path) -> float | None:
    """``cpu.max`` (``QUOTA PERIOD``) as a number of CPUs."""
    text = _text(path)
    if text is None or text.startswith("max"):
        return None
    quota, period = text.split()[:2]
    return int(quota) / int(period)


_mount = functools.cache(v2_mount)
"""The cgroup v2 mount, looked up once: every read of the view and every load sample asks
for a container's cgroup, and the hierarchy does not move under a running server."""


@functools.cache
def _servers_cgroup() -> Path | None:
    """This process's own cgroup: the view's server is never moved."""
    return cgroup_of(os.getpid(), _mount())


def read_limits(init_pid: int) -> tuple[Limits, int | None]:
    """The limits and usage of the cgroup ``init_pid`` is in, and its CPU time used
    (microseconds; None when unknown)."""
    cgroup = cgroup_of(init_pid, _mount())
    if cgroup is None or cgroup == Path("/sys/fs/cgroup"):
        return Limits(), None
    cpuset = _text(cgroup / "cpuset.cpus.effective")
    limits = Limits(
        memory_max=_number(cgroup / "memory.max"),
        memory_current=_number(cgroup / "memory.current"),
        memory_stat=_keyed(cgroup / "memory.stat"),
        swap_max=_number(cgroup / "memory.swap.max"),
        swap_current=_number(cgroup / "memory.swap.current"),
        cpu_quota=_quota(cgroup / "cpu.max"),
        cpuset=parse_cpu_list(cpuset) if cpuset and cpuset.strip() else None,
        io=_io(cgroup / "io.stat"),
    )
    return limits, _keyed(cgroup / "cpu.stat").get("usage_usec")


def host_online() -> tuple[int, ...]:
    text = _text(Path("/sys/devices/system/cpu/online"))
    return parse_cpu_list(text) if text else tuple(range(os.cpu_count() or 1))


def seconds_since_start(init_pid: int) -> float | None:
    """How long ago the container's init started, by the boot clock (None: it is gone)."""
    started = proc_start_time(init_pid)
    text = _text(Path("/proc/uptime"))
    if started is None or text is None:
        return None
    return float(text.split()[0]) - started / CLOCK_TICKS


def _pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Tasks:
    """Every process ``/proc`` shows, read in one pass: by pid namespace, the pids and
    state letters (``R``, ``S``, ``D``...) of those whose namespace can be seen, and who
    is whose parent. Sampling the load of N containers reads ``/proc`` once, not once
    (or twice) per container: with a thousand containers, and thousands of processes,
    that was millions of reads every sample."""

    by_namespace: dict[str, list[tuple[int, str]]]
    children: dict[int, list[int]]
    namespaces: dict[int, str]

    @classmethod
    def read(cls) -> Tasks:
        by_namespace: dict[str, list[tuple[int, str]]] = {}
        children: dict[int, list[int]] = {}
        namespaces: dict[int, str] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            raw = _text(Path(entry.path, "stat"))
            if raw is None:
                continue  # gone meanwhile
            pid, (state, parent) = int(entry.name), raw[raw.rindex(")") + 2 :].split()[:2]
            children.setdefault(int(parent), []).append(pid)
            namespace = _pid_namespace(entry.name)
            if namespace is not None:
                namespaces[pid] = namespace
                by_namespace.setdefault(namespace, []).append((pid, state))
        return cls(by_namespace, children, namespaces)

    def of(self, init_pid: int) -> list[str]:
        """The state letter of every process of the container of ``init_pid``: those
        in its init's pid namespace (the init's own, not readable once it made itself
        not dumpable, as it does, or that of one of its children), the init left out."""
        namespace = self.namespaces.get(init_pid) or next(
            (self.namespaces[c] for c in self.children.get(init_pid, ()) if c in self.namespaces),
            None,
        )
        if namespace is None:
            return []
        return [state for pid, state in self.by_namespace[namespace] if pid != init_pid]


def _leaf_pids(init_pid: int) -> list[int] | None:
    """The processes of the container's own cgroup, when it has one (None: it shares this
    process's, as without delegated cgroups, or none can be read)."""
    cgroup = cgroup_of(init_pid, _mount())
    if cgroup is None or cgroup == _servers_cgroup():
        return None
    text = _text(cgroup / "cgroup.procs")
    return None if text is None else [int(pid) for pid in text.split()]


def container_tasks(init_pid: int, read_all: Callable[[], Tasks] = Tasks.read) -> list[str]:
    """The state letter (``R``, ``S``, ``D``...) of every process of the container, the
    init itself left out: those of its own cgroup, or without one, of its pid namespace
    (:meth:`Tasks.of`, from ``read_all()``: a read of the host's whole /proc, which a
    caller sampling many containers makes once for them all)."""
    pids = _leaf_pids(init_pid)
    if pids is None:
        return read_all().of(init_pid)
    states = []
    for pid in pids:
        raw = _text(Path(f"/proc/{pid}/stat")) if pid != init_pid else None
        if raw is not None:
            states.append(raw[raw.rindex(")") + 2])
    return states
