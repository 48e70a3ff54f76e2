"""What the view is computed from: the container's cgroup, its init, the host's files.

The cgroup is the init's (:func:`runtime.cgroups.fs.cgroup_of`, the same lookup the
runtime's drivers use), so the cgroupfs and the systemd drivers' containers are read
alike. A file the cgroup lacks (no v2 controllers, as on hybrid hosts) means no limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.cgroups.fs import cgroup_of
from runtime.procview.views import Limits, parse_cpu_list
from runtime.util.files import read_small
from runtime.util.processes import parent_pids, proc_start_time

__all__ = ("CLOCK_TICKS", "container_tasks", "host_online", "read_limits", "seconds_since_start")

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


def read_limits(init_pid: int) -> tuple[Limits, int | None]:
    """The limits and usage of the cgroup ``init_pid`` is in, and its CPU time used
    (microseconds; None when unknown)."""
    cgroup = cgroup_of(init_pid)
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


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _container_namespace(init_pid: int) -> str | None:
    """The container's pid namespace: the init's (not readable once it made itself not
    dumpable, as it does) or that of one of its children."""
    namespace = _pid_namespace(init_pid)
    if namespace is not None:
        return namespace
    for pid, parent in parent_pids().items():
        if parent == init_pid and (namespace := _pid_namespace(pid)) is not None:
            return namespace
    return None


def _leaf_pids(init_pid: int) -> list[int] | None:
    """The processes of the container's own cgroup, when it has one (None: it shares this
    process's, as without delegated cgroups, or none can be read)."""
    cgroup = cgroup_of(init_pid)
    if cgroup is None or cgroup == cgroup_of(os.getpid()):
        return None
    text = _text(cgroup / "cgroup.procs")
    return None if text is None else [int(pid) for pid in text.split()]


def _namespace_pids(init_pid: int) -> list[int]:
    """The processes in the container's pid namespace: a scan of every process's."""
    namespace = _container_namespace(init_pid)
    if namespace is None:
        return []
    pids = (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    return [pid for pid in pids if _pid_namespace(pid) == namespace]


def container_tasks(init_pid: int) -> list[str]:
    """The state letter (``R``, ``S``, ``D``...) of every process of the container, the
    init itself left out: those of its own cgroup, or without one, of its pid namespace
    (found by a scan of the host's /proc, which costs tens of milliseconds on a host
    with thousands of processes)."""
    pids = _leaf_pids(init_pid)
    states = []
    for pid in _namespace_pids(init_pid) if pids is None else pids:
        raw = _text(Path(f"/proc/{pid}/stat")) if pid != init_pid else None
        if raw is not None:
            states.append(raw[raw.rindex(")") + 2])
    return states
