"""The ``Runtime`` interface and what it reports about containers.

``runtime.client.linux.LinuxRuntime`` implements it with real namespaces; the reconciler's tests
use a fake that records calls. Everything here is synchronous: a call returns when the
effect is done (a started container is running, a removed one is gone).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict

from runtime.api.spec import (
    ContainerSpec,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
    Resources,
)

if TYPE_CHECKING:  # the api tier names the token's type only; util is its own tier
    from runtime.util.cancel import Cancel

__all__ = ("CommandResult", "ContainerInfo", "ContainerState", "NetworkInfo", "Runtime")


class ContainerState(StrEnum):
    CREATED = "created"
    """Prepared (rootfs and layers resolved) but never started."""
    RUNNING = "running"
    EXITED = "exited"
    """Its command ended (or it was stopped); ``exit_code`` says how."""


class ContainerInfo(BaseModel):
    """A container as observed now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    state: ContainerState
    spec: ContainerSpec
    pid: int | None = None
    """Host pid of the container's init while it runs."""
    pid_start_time: int | None = None
    """Start time of that pid in clock ticks since boot: (pid, start) is its identity."""
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    ports: tuple[PortMapping, ...] = ()
    """Forwards in place now (may differ from ``spec.ports`` after live changes)."""
    restarts: int = 0
    """How many times the container was started after its first start."""
    slirp_pid: int | None = None
    paused: bool = False
    """Frozen through its cgroup (``pause``); it keeps its state, but runs nothing."""
    oom_kills: int = 0
    """Processes the kernel killed for going over the memory limit (this run)."""
    pids_refused: int = 0
    """Forks refused by the process-count limit (this run)."""
    log_path: str
    created_at: float
    addresses: dict[str, str] = {}
    """Network name -> its IPv4 address there (``network = "bridge"``)."""
    proc_view: str | None = None
    """Its /proc and /sys view of its own limits (``runtime.procview``) while it runs:
    ``on``, ``off`` (turned off), or ``unavailable: <why>`` (it sees the kernel's files)."""


class NetworkInfo(BaseModel):
    """A network as it exists now."""

    name: str
    subnet: str
    gateway: str
    internal: bool
    dns: bool
    labels: dict[str, str]
    containers: dict[str, str]
    """Container name -> its IPv4 address on this network."""


class CommandResult(BaseModel):
    """What a command run inside a container (``exec_command``) did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exit_code: int
    """Its exit code; 124 when it was killed at the deadline, 127 when not found."""
    output: str
    """Its stdout and stderr, interleaved, up to 64 KiB."""
    timed_out: bool = False


class Runtime(Protocol):
    """What the reconciler needs from a container runtime."""

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        """Prepare a container (fetch rootfs and layers); do not start it."""
        ...

    def prepare(self, spec: ContainerSpec, cancel: Cancel | None = None) -> None:
        """Fetch and unpack what ``create`` of ``spec`` needs (its SDK layers) into the
        cache, so that ``create`` does not wait for it; quick when all of it is cached.
        Raises what ``create`` would (an archive refused, a download failed), and
        :class:`~runtime.util.cancel.Cancelled` once ``cancel`` is cancelled (from any
        thread), leaving nothing half made in the cache."""
        ...

    def start(self, name: str) -> ContainerInfo:
        """Start a created or exited container; a running one is left as it is."""
        ...

    def run(self, spec: ContainerSpec) -> ContainerInfo:
        """``create`` then ``start``."""
        ...

    def stop(self, name: str, timeout: float | None = None) -> ContainerInfo:
        """SIGTERM to the init, SIGKILL after ``timeout`` (default: the spec's)."""
        ...

    def remove(self, name: str, *, force: bool = False) -> None:
        """Delete the container and everything it left; ``force`` stops it first (SIGTERM,
        then SIGKILL after the spec's ``stop_timeout``)."""
        ...

    def sweep(self) -> list[str]:
        """Delete what clients killed in the middle of a create or a remove left behind
        (stopping what it still runs); return what was deleted."""
        ...

    def list(self) -> list[ContainerInfo]: ...

    def inspect(self, name: str) -> ContainerInfo: ...

    def logs(self, name: str) -> bytes:
        """The command's stdout and stderr kept so far, at once (at most the log's cap:
        ``max_size`` times ``max_files``); ``stream_logs`` for anything large."""
        ...

    def stream_logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        """The command's stdout and stderr kept so far, in chunks of at most 64 KiB;
        ``follow``: then what it writes, across rotations, until it has exited and all
        of its output was read. An unknown ``name`` raises at the call, not at the
        first chunk."""
        ...

    def wait(self, name: str, timeout: float | None = None) -> int:
        """Block until the container's command exits; return its exit code."""
        ...

    def add_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        """Add a forward to a running container without restarting it."""
        ...

    def remove_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        """Remove a forward from a running container without restarting it."""
        ...

    def move_port(self, name: str, to: str, mapping: PortMapping) -> None:
        """Move a forward from one running container to another, with the shortest gap."""
        ...

    def probe_tcp(self, name: str, port: int) -> bool:
        """Whether something inside the running container accepts TCP on ``port``."""
        ...

    def exec_command(
        self, name: str, argv: Sequence[str], *, timeout: float = 10.0
    ) -> CommandResult:
        """Run ``argv`` inside the running container (its namespaces, root, environment
        and working directory); kill it after ``timeout`` seconds."""
        ...

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        """Give a container another name, running or not."""
        ...

    def update_resources(self, name: str, resources: Resources | None) -> ContainerInfo:
        """Change a container's cgroup limits; a running one gets them at once (no
        restart), a stopped one at its next start."""
        ...

    def pause(self, name: str) -> ContainerInfo:
        """Freeze every process of a running container (cgroup.freeze)."""
        ...

    def resume(self, name: str) -> ContainerInfo:
        """Thaw a paused container."""
        ...

    def restore_network(self, name: str) -> ContainerInfo:
        """Start the network helper of a running container again (it died), forwards
        included, without restarting the container."""
        ...

    def ensure_network(self, spec: NetworkSpec) -> NetworkInfo:
        """Create the network, or return the existing one when its settings are the
        same; :class:`~runtime.errors.NetworkConflict` when they differ."""
        ...

    def remove_network(self, name: str) -> None:
        """Delete a network; :class:`~runtime.errors.NetworkInUse` while a container
        (running or not) is attached. An unknown name is no error."""
        ...

    def list_networks(self) -> builtins.list[NetworkInfo]: ...

    def connect(self, name: str, attachment: NetworkAttachment) -> ContainerInfo:
        """Attach a container to a network: live for a running one (same pid), at its
        next start for a stopped one. :class:`~runtime.errors.NetworkNotFound` when the
        network does not exist."""
        ...

    def disconnect(self, name: str, network: str) -> ContainerInfo:
        """Detach a container from a network, live likewise; its last network cannot
        be removed (ValueError: recreate it with network "none")."""
        ...
