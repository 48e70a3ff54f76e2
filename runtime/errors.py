"""The runtime's errors: a short flat hierarchy, each subclassing the closest built-in.

Every error carries the context a caller needs to act on it (the port, the URL, the
path, the argv and exit code) as attributes, never only inside the message.
"""

from __future__ import annotations

__all__ = (
    "ArchiveError",
    "ArchiveRefused",
    "ChecksumMismatch",
    "ContainerExists",
    "ContainerNotFound",
    "ContainerNotRunning",
    "ContainerPaused",
    "ContainerRunning",
    "ContainerStartError",
    "ContainerStarting",
    "ContainerUnreachable",
    "ExecFailed",
    "FetchError",
    "FreezeTimeout",
    "HolderProtocolError",
    "HostSetupError",
    "LayerNotFound",
    "NetworkConflict",
    "NetworkInUse",
    "NetworkLost",
    "NetworkNotFound",
    "NetworkRestoreFailed",
    "PortInUse",
    "PortPrivileged",
    "ProbeFailed",
    "RootRefused",
    "SlirpError",
    "SquishError",
    "StopFailed",
)


class SquishError(Exception):
    """Base class of every error the runtime raises on purpose."""


class RootRefused(SquishError, PermissionError):
    """The runtime was started as uid 0; it runs rootless only."""


class HostSetupError(SquishError, OSError):
    """Something the host must provide is missing or unusable (a tool, a device, a map).

    ``fix`` says what the user should do about it.
    """

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(message if not fix else f"{message}\n  fix: {fix}")
        self.fix = fix


class ContainerNotFound(SquishError, LookupError):
    """No container of that name is known to this state directory."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no container named {name!r}")
        self.name = name


class ContainerExists(SquishError, FileExistsError):
    """A container of that name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a container named {name!r} already exists")
        self.name = name


class ContainerStartError(SquishError, OSError):
    """The container could not be set up or its command could not be executed."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"container {name!r} failed to start: {reason}")
        self.name = name
        self.reason = reason


class ContainerNotRunning(SquishError, ProcessLookupError):
    """The operation needs a running container and this one is not (any more)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"container {name!r} is not running" + (f": {detail}" if detail else ""))
        self.name = name


class ContainerRunning(SquishError, OSError):
    """The operation needs a stopped container and this one runs."""

    def __init__(self, name: str, advice: str) -> None:
        super().__init__(f"container {name!r} is running; {advice}")
        self.name = name


class ContainerPaused(SquishError, BlockingIOError):
    """The container is frozen (``pause``): what runs in it would freeze too."""

    def __init__(self, name: str) -> None:
        super().__init__(f"container {name!r} is paused; unpause it first")
        self.name = name


class ContainerStarting(SquishError, BlockingIOError):
    """The container's init has not handed over to its command yet: try again soon."""

    def __init__(self, name: str) -> None:
        super().__init__(f"container {name!r} is still starting; try again")
        self.name = name


class ContainerUnreachable(SquishError, LookupError):
    """The holder that could reach the container's namespaces is gone and the one started
    since could not take it over: nothing can be run in it any more; recreate it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"container {name!r} cannot be reached: {reason}")
        self.name = name


class ExecFailed(SquishError, OSError):
    """A command could not be run inside the container (not: it ran and failed)."""

    def __init__(self, name: str, program: str, reason: str) -> None:
        super().__init__(f"cannot run {program!r} in container {name!r}: {reason}")
        self.name = name
        self.program = program
        self.reason = reason


class ProbeFailed(SquishError, OSError):
    """A TCP probe could not be made inside the container (not: nothing listens)."""

    def __init__(self, name: str, port: int, reason: str) -> None:
        super().__init__(f"cannot probe port {port} in container {name!r}: {reason}")
        self.name = name
        self.port = port
        self.reason = reason


class StopFailed(SquishError, OSError):
    """The container's init outlived SIGKILL."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"container {name!r} cannot be stopped: {reason}")
        self.name = name


class FreezeTimeout(SquishError, TimeoutError):
    """The container's cgroup did not freeze (``pause``) or thaw (``resume``) in time."""

    def __init__(self, name: str, *, freezing: bool, seconds: float) -> None:
        verb = "freeze" if freezing else "thaw"
        super().__init__(f"container {name!r}: its cgroup did not {verb} within {seconds:g} s")
        self.name = name
        self.freezing = freezing


class HolderProtocolError(SquishError, ValueError):
    """The namespace holder and its client do not understand each other (a malformed
    request or reply, or a holder of another version): stop the holder to restart it."""


class PortInUse(SquishError, OSError):
    """A host port asked for by a forward is already taken on the host."""

    def __init__(
        self, host_addr: str, host_port: int, protocol: str, holder: str | None = None
    ) -> None:
        held = f" by {holder}" if holder else ""
        super().__init__(
            f"host port {host_addr}:{host_port}/{protocol} is already in use{held}; "
            "free it or choose another host port"
        )
        self.host_addr = host_addr
        self.host_port = host_port
        self.protocol = protocol
        self.holder = holder


class PortPrivileged(SquishError, PermissionError):
    """A host port below the host's first unprivileged port
    (``net.ipv4.ip_unprivileged_port_start``): no rootless process may bind it.

    ``unprivileged_start`` is the sysctl's value now; ``fix`` says how to change it.
    """

    def __init__(
        self, host_addr: str, host_port: int, protocol: str, unprivileged_start: int
    ) -> None:
        self.fix = (
            f"as root: sysctl net.ipv4.ip_unprivileged_port_start={host_port} "
            f"(now {unprivileged_start}), or choose a host port from {unprivileged_start} up"
        )
        super().__init__(
            f"host port {host_addr}:{host_port}/{protocol} is privileged on this host "
            f"(net.ipv4.ip_unprivileged_port_start is {unprivileged_start}); fix: {self.fix}"
        )
        self.host_addr = host_addr
        self.host_port = host_port
        self.protocol = protocol
        self.unprivileged_start = unprivileged_start


class SlirpError(SquishError, OSError):
    """slirp4netns failed to start or refused an API request."""

    def __init__(self, message: str, *, request: object = None) -> None:
        super().__init__(message)
        self.request = request


class FetchError(SquishError, ConnectionError):
    """A download failed (offline, refused, HTTP error status, truncated)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot download {url}: {reason}")
        self.url = url
        self.reason = reason


class ChecksumMismatch(SquishError, ValueError):
    """Downloaded bytes do not match the expected sha256; nothing was cached."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for {url}: expected {expected}, got {actual}")
        self.url = url
        self.expected = expected
        self.actual = actual


class ArchiveError(SquishError, ValueError):
    """A tarball is malformed or holds an unsafe entry (path escape, device node)."""

    def __init__(self, archive: str, member: str, reason: str) -> None:
        super().__init__(f"{archive}: entry {member!r}: {reason}")
        self.archive = archive
        self.member = member
        self.reason = reason


class ArchiveRefused(ArchiveError):
    """An archive goes over an unpacking limit (entries, depth or bytes, counted over all
    the layers of one container). ``at_least`` is what the archive is known to need so
    far (entries, bytes, deepest path), from its headers; nothing beyond it was written.
    ``remembered``: refused from the record of an earlier refusal, without downloading."""

    def __init__(
        self,
        archive: str,
        member: str,
        reason: str,
        *,
        at_least: tuple[int, int, int] = (0, 0, 0),
        remembered: bool = False,
    ) -> None:
        super().__init__(archive, member, reason)
        self.at_least = at_least
        self.remembered = remembered


class LayerNotFound(SquishError, LookupError):
    """A layer name or version is not offered by the layer index or the mirror."""

    def __init__(self, name: str, version: str, where: str) -> None:
        super().__init__(f"no layer {name} {version} in {where}")
        self.name = name
        self.version = version
        self.where = where


class NetworkRestoreFailed(SquishError, OSError):
    """slirp4netns could not be started again for a running container (it may work on a
    later attempt; compare :class:`NetworkLost`)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot restore the network of {name!r}: {reason}")
        self.name = name
        self.reason = reason


class NetworkLost(SquishError, OSError):
    """A container's slirp4netns cannot be started again (the holder that could reach
    its network namespace is gone, and the one started since could not take it over):
    the container must be recreated."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"the network of {name!r} cannot be restored: {reason}")
        self.name = name


class NetworkConflict(SquishError, ValueError):
    """A network of that name exists with other settings (``differences`` says which)."""

    def __init__(self, name: str, differences: str) -> None:
        super().__init__(f"network {name!r} exists with other settings: {differences}")
        self.name = name
        self.differences = differences


class NetworkInUse(SquishError, RuntimeError):
    """A network cannot be removed while containers (running or not) are attached."""

    def __init__(self, name: str, containers: tuple[str, ...]) -> None:
        super().__init__(f"network {name!r} is in use by {', '.join(containers)}")
        self.name = name
        self.containers = containers


class NetworkNotFound(SquishError, LookupError):
    """No network of that name exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no network named {name!r}")
        self.name = name
