"""The launch request: what the namespace holder needs to start one container.

The client (``runtime.client.linux``) builds it from a ``ContainerSpec`` and the host paths it
resolved; the namespace holder (``runtime.holder.server``) and the container's init act on it.
It crosses a process boundary as JSON. Plain dataclasses on purpose: the holder forks a
process per container and stays small when it does not load pydantic.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field, fields
from typing import Any

from runtime.settings import DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_SIZE
from runtime.targets import check_target

__all__ = (
    "DEFAULT_PATH",
    "LOG_FILE",
    "SECCOMP_FILE",
    "VIEW_FILES",
    "Forward",
    "LaunchRequest",
    "MountPoint",
    "fields_of",
    "find_program",
    "read_filter",
)

SECCOMP_FILE = "seccomp.bpf"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VIEW_FILES = {
    "meminfo": "/proc/meminfo",
    "cpuinfo": "/proc/cpuinfo",
    "stat": "/proc/stat",
    "uptime": "/proc/uptime",
    "loadavg": "/proc/loadavg",
    "swaps": "/proc/swaps",
    "diskstats": "/proc/diskstats",
    "online": "/sys/devices/system/cpu/online",
}
"""The files of the container's /proc and /sys view (``runtime.procview``): its name in
the FUSE mount -> the path it covers in the container."""
LOG_FILE = "output.log"
"""The command's stdout and stderr; rotated copies are ``output.log.1`` (newest) onwards."""


@dataclass(frozen=True)
class MountPoint:
    """A host path bind-mounted at ``target`` in the container (a target that is not
    safe is refused here too, so a record made by hand or by an older version that let
    one through is refused when it is read)."""

    source: str
    target: str
    rw: bool = False
    is_dir: bool = True

    def __post_init__(self) -> None:
        check_target(self.target)


@dataclass(frozen=True)
class Forward:
    """A host port forwarded into the container by slirp4netns."""

    proto: str
    host_addr: str
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to start one container."""

    name: str
    container_dir: str
    rootfs: str
    argv: tuple[str, ...]
    mounts: tuple[MountPoint, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    hostname: str = ""
    network: str = "slirp4netns"
    forwards: tuple[Forward, ...] = ()
    sandbox_slirp: bool = True
    port_handler: str = "splice"
    """Who serves its TCP host forwards on a bridge network (``RuntimeSettings.port_handler``)."""
    seccomp: bool = True
    """Install the filter in ``container_dir``/``SECCOMP_FILE`` (compiled at create)."""
    cgroup: str = ""
    """The cgroup v2 leaf the init runs in ("" for none): filled in by the launcher, the
    leaf its spare made ahead in ``cgroup_parent`` or one made at launch there (or a
    systemd scope's folder)."""
    cgroup_parent: str = ""
    """The folder of the container's cgroup v2 leaf (per start; "" for none)."""
    cgroup_limits: dict[str, str] = field(default_factory=dict)
    """The limit files the launcher writes into that leaf, and their contents
    (:func:`runtime.cgroups.fs.limit_files`)."""
    systemd_scope: dict[str, Any] = field(default_factory=dict)
    """Or the transient scope the user's systemd puts it in (``runtime.cgroups.systemd``)."""
    log_path: str = ""
    """Where the log pump writes the command's output; "" (a record made before logs
    moved out of the state folder): ``container_dir``/``LOG_FILE``."""
    log_max_size: int = DEFAULT_LOG_MAX_SIZE
    """Bytes ``log_path`` may hold before it is rotated."""
    log_max_files: int = DEFAULT_LOG_MAX_FILES
    """Log files kept, the one written included (1: the log starts over at the cap)."""
    proc_view: bool = False
    """Cover ``VIEW_FILES`` with the view of the container's own limits, where FUSE is
    usable (False in a record made before the view existed)."""

    def command_env(self) -> dict[str, str]:
        """The environment of the container's command (and of commands run in it)."""
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": "/root",
            "container": "squish",
            "HOSTNAME": self.hostname or self.name,
        }
        env.update(self.env)
        return env

    def log_file(self) -> str:
        """The path of the command's log (``log_path``, or where older records kept it)."""
        return self.log_path or os.path.join(self.container_dir, LOG_FILE)

    def to_json(self) -> dict[str, Any]:
        """The request as plain values, none shared with it: what ``asdict`` makes, field
        by field (``asdict`` took 35 µs of a start, which encodes a request twice; this 7)."""
        data = fields_of(self)
        data["mounts"] = tuple(fields_of(mount) for mount in self.mounts)
        data["forwards"] = tuple(fields_of(forward) for forward in self.forwards)
        data["env"] = dict(self.env)
        data["cgroup_limits"] = dict(self.cgroup_limits)
        data["systemd_scope"] = copy.deepcopy(self.systemd_scope)
        return data

    @classmethod
    def from_json(cls, data: Any) -> LaunchRequest:
        """Rebuild a request from JSON; raises ValueError when it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("launch request is not an object")
        try:
            fields = dict(data)
            fields["argv"] = tuple(str(a) for a in fields["argv"])
            fields["mounts"] = tuple(MountPoint(**m) for m in fields.get("mounts", ()))
            fields["forwards"] = tuple(Forward(**f) for f in fields.get("forwards", ()))
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed launch request: {exc}") from exc


def fields_of(instance: Any) -> dict[str, Any]:
    """A dataclass instance's fields by name, their values as they are (not copied)."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def read_filter(container_dir: str | int, wanted: bool) -> bytes | None:
    """The container's compiled seccomp filter (``container_dir`` a path or a directory
    fd), or None when it runs unconfined; an empty or missing file is an error."""
    if not wanted:
        return None
    if isinstance(container_dir, int):
        fd = os.open(SECCOMP_FILE, os.O_RDONLY | os.O_CLOEXEC, dir_fd=container_dir)
    else:
        fd = os.open(os.path.join(container_dir, SECCOMP_FILE), os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        program = file.read()
    if not program or len(program) % 8:
        raise ValueError(f"the container's seccomp filter ({SECCOMP_FILE}) is damaged")
    return program


def find_program(program: str, env: dict[str, str]) -> str | None:
    """``program`` as the container's ``PATH`` finds it (run inside its root), or None."""
    if "/" in program:
        return program
    return shutil.which(program, path=env.get("PATH", DEFAULT_PATH))
