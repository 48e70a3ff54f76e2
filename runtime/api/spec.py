"""What the runtime is asked to run: a fully resolved, validated container spec.

The reconciler turns a squishfile into a :class:`ContainerSpec`; the runtime never reads
TOML. Paths here are absolute host paths; targets are absolute container paths.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.settings import DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_SIZE
from runtime.targets import check_target

__all__ = (
    "MAX_BYTES",
    "MAX_LOG_FILES",
    "MIN_LOG_SIZE",
    "NAME_PATTERN",
    "NETWORK_NAME",
    "BindMount",
    "ContainerSpec",
    "LogLimits",
    "NetworkAttachment",
    "NetworkSpec",
    "PortMapping",
    "Resources",
    "RootfsRef",
    "SdkLayer",
    "check_target",
    "subnet_refusal",
)

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
"""Container names: like podman's, so they are safe as file names and hostnames."""


NETWORK_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""Network and alias names: DNS labels in lower case, safe as file names."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NetworkAttachment(_Frozen):
    """One network a container joins (``network = "bridge"``)."""

    network: str = Field(pattern=NETWORK_NAME)
    aliases: tuple[str, ...] = Field(
        default=(), description="extra names on that network (NETWORK_NAME each)"
    )

    @field_validator("aliases")
    @classmethod
    def _aliases_ok(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for alias in v:
            if not re.fullmatch(NETWORK_NAME, alias):
                raise ValueError(f"bad alias {alias!r}: lower-case DNS label expected")
        return v


MIN_PREFIX, MAX_PREFIX = 16, 29
"""The sizes a network's subnet may have: a /16 down to a /29 (6 addresses)."""


SLIRP_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
"""slirp4netns' own network: its tap in the shared namespace (and in each isolated
container) has 10.0.2.100, its gateway 10.0.2.2 and its DNS 10.0.2.3."""

_UNUSABLE = (
    ("is_loopback", "a loopback range"),
    ("is_multicast", "a multicast range"),
    ("is_link_local", "a link-local range"),
    ("is_reserved", "a reserved range"),
)
"""Ranges a bridge's subnet may not be in; each is wider than a /16, so a subnet is in
one when its network address is."""


def subnet_refusal(subnet: ipaddress.IPv4Network) -> str | None:
    """Why a bridge network cannot have ``subnet`` (None: it can): its addresses must
    route in the shared namespace, next to slirp4netns' network."""
    if subnet.overlaps(SLIRP_NETWORK):
        return f"overlaps slirp4netns' network {SLIRP_NETWORK}, which carries the way out"
    if subnet.subnet_of(ipaddress.IPv4Network("0.0.0.0/8")):
        return "is in the unspecified range 0.0.0.0/8"
    for test, what in _UNUSABLE:
        if getattr(subnet.network_address, test):
            return f"is in {what}"
    return None


class NetworkSpec(_Frozen):
    """A network's settings: a bridge in the holder's shared network namespace."""

    name: str = Field(pattern=NETWORK_NAME)
    subnet: str | None = Field(
        default=None,
        description="IPv4 CIDR, /16 to /29; None: the allocator picks a free /24 in 10.89.0.0/16",
    )
    internal: bool = Field(
        default=False, description="no way out: no route to slirp4netns, no upstream DNS"
    )
    dns: bool = Field(default=True, description="a DNS responder on the gateway address")
    labels: dict[str, str] = Field(
        default_factory=dict, description="the reconciler's ownership labels"
    )

    @field_validator("subnet")
    @classmethod
    def _subnet_ok(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.IPv4Network(v)
        except ValueError as exc:
            raise ValueError(f"bad subnet {v!r}: {exc}") from None
        if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
            raise ValueError(f"subnet {v!r} must be a /{MIN_PREFIX} to a /{MAX_PREFIX}")
        refusal = subnet_refusal(net)
        if refusal is not None:
            raise ValueError(f"subnet {v!r} {refusal}")
        return str(net)


class RootfsRef(_Frozen):
    """Which root filesystem to use: the builtin busybox one or an Alpine release."""

    kind: Literal["busybox", "alpine"]
    version: str = Field(description="'builtin' for busybox; a release like '3.20' for alpine")

    @field_validator("version")
    @classmethod
    def _version_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", v):
            raise ValueError(f"bad version {v!r}")
        return v


class SdkLayer(_Frozen):
    """A read-only tarball layer mounted at ``/sdk/<name>``.

    Either ``url`` and ``sha256`` are given, or ``version`` is resolved through the
    layer index named by ``SQUISH_LAYER_INDEX``.
    """

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    version: str | None = None


class BindMount(_Frozen):
    """A host path bind-mounted into the container, read-only unless ``rw``."""

    source: str = Field(
        description="absolute host path; never followed through a symlink (a path that "
        "goes through one is refused at create and at every start)"
    )
    target: str = Field(description="absolute container path")
    rw: bool = False

    @field_validator("target")
    @classmethod
    def _target_ok(cls, v: str) -> str:
        return check_target(v)

    @field_validator("source")
    @classmethod
    def _source_abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"source {v!r} must be absolute")
        return v


class PortMapping(_Frozen):
    """One forward from ``host_addr:host`` on the host to ``container`` inside."""

    container: int = Field(ge=1, le=65535)
    host: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    host_addr: str = "127.0.0.1"

    def __str__(self) -> str:
        addr = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        return f"{addr}:{self.host}->{self.container}/{self.protocol}"

    def shares_socket_with(self, other: PortMapping) -> bool:
        """Whether the two need one host socket: the same protocol and port, and the same
        address or a wildcard (``0.0.0.0`` and ``::`` take every address)."""
        if self.protocol != other.protocol or self.host != other.host:
            return False
        wildcards = ("0.0.0.0", "::")
        addresses = (self.host_addr, other.host_addr)
        return addresses[0] == addresses[1] or any(a in wildcards for a in addresses)


MAX_BYTES = 2**50
"""Largest memory limit accepted (1 PiB): beyond anything real, within what the kernel
and systemd take."""


class Resources(_Frozen):
    """Limits of a container's cgroup (cgroup v2); None: no limit."""

    memory: int | None = Field(
        default=None, ge=4096, le=MAX_BYTES, description="memory.max in bytes"
    )
    memory_swap: int | None = Field(
        default=None, ge=0, le=MAX_BYTES, description="memory.swap.max in bytes"
    )
    cpus: float | None = Field(default=None, gt=0, le=1024, description="CPUs (cpu.max)")
    cpu_weight: int | None = Field(default=None, ge=1, le=10_000, description="cpu.weight")
    pids: int | None = Field(default=None, ge=1, le=4_194_304, description="pids.max")


MIN_LOG_SIZE = 4096
MAX_LOG_FILES = 100


class LogLimits(_Frozen):
    """How much of the command's output is kept: ``max_files`` files of at most
    ``max_size`` bytes each (Docker's ``max-size`` and ``max-file``)."""

    max_size: int = Field(default=DEFAULT_LOG_MAX_SIZE, ge=MIN_LOG_SIZE, le=MAX_BYTES)
    max_files: int = Field(default=DEFAULT_LOG_MAX_FILES, ge=1, le=MAX_LOG_FILES)


class ContainerSpec(_Frozen):
    """Everything needed to start one container."""

    name: str = Field(pattern=NAME_PATTERN)
    rootfs: RootfsRef
    sdks: tuple[SdkLayer, ...] = ()
    binds: tuple[BindMount, ...] = ()
    argv: tuple[str, ...] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/"
    ports: tuple[PortMapping, ...] = ()
    network: Literal["slirp4netns", "none", "bridge"] = "slirp4netns"
    networks: tuple[NetworkAttachment, ...] = Field(
        default=(), description='the networks it joins; non-empty iff network == "bridge"'
    )
    hostname: str | None = None
    stop_timeout: float = Field(default=10.0, ge=0, le=3600)
    seccomp: Literal["default", "unconfined"] | dict[str, Any] = Field(
        default="default",
        description="the seccomp profile: squish's default (Docker's), none, or a "
        "Docker-format profile document",
    )
    resources: Resources | None = Field(
        default=None, description="cgroup limits; applied live when they change"
    )
    logs: LogLimits | None = Field(
        default=None,
        description="the log's cap and rotation; None: the default (5 files of 20 MiB)",
    )
    proc_view: bool = Field(
        default=True,
        description="cover /proc/meminfo, cpuinfo, stat, uptime, loadavg, swaps, diskstats "
        "and /sys/devices/system/cpu/online with a view of the container's own limits "
        "(FUSE), where /dev/fuse is usable",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="free-form metadata kept with the container (the reconciler marks "
        "what it manages and the hash of the spec it applied)",
    )

    @model_validator(mode="after")
    def _ports_make_sense(self) -> ContainerSpec:
        if self.ports and self.network == "none":
            raise ValueError("ports need a network: network 'none' cannot forward ports")
        seen: set[tuple[str, int, str]] = set()
        for port in self.ports:
            key = (port.host_addr, port.host, port.protocol)
            if key in seen:
                raise ValueError(
                    f"host port {port.host_addr}:{port.host}/{port.protocol} is forwarded twice"
                )
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _networks_make_sense(self) -> ContainerSpec:
        if (self.network == "bridge") != bool(self.networks):
            raise ValueError('networks are given if and only if network is "bridge"')
        names = [attachment.network for attachment in self.networks]
        if len(set(names)) != len(names):
            raise ValueError(f"a network is joined twice: {names}")
        return self
