"""The runtime's errors: a short flat hierarchy, each subclassing the closest built-in.

Every error carries the context a caller needs to act on it (the port, the URL, the
path, the argv and exit code) as attributes, never only inside the message.
"""

from __future__ import annotations

__all__ = (
    "ArchiveError",
    "ChecksumMismatch",
    "ContainerExists",
    "ContainerNotFound",
    "ContainerStartError",
    "FetchError",
    "HostSetupError",
    "LayerNotFound",
    "NetworkLost",
    "PortInUse",
    "RootRefused",
    "SlirpError",
    "SquishError",
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


class LayerNotFound(SquishError, LookupError):
    """A layer name or version is not offered by the layer index or the mirror."""

    def __init__(self, name: str, version: str, where: str) -> None:
        super().__init__(f"no layer {name} {version} in {where}")
        self.name = name
        self.version = version
        self.where = where


class NetworkLost(SquishError, OSError):
    """A container's slirp4netns cannot be started again (the holder that could reach
    its network namespace is gone): the container must be recreated."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"the network of {name!r} cannot be restored: {reason}")
        self.name = name
