"""The runtime's settings: every environment variable it honours, read in one place.

:meth:`RuntimeSettings.from_environ` is the only code of the runtime that reads the
environment for a setting; everything below ``LinuxRuntime`` receives the values it
needs from the record. The reconciler reads its own settings and these together
(``reconciler.settings``) and hands this part to ``LinuxRuntime(settings=...)``.

A plain frozen dataclass (no pydantic), outside :mod:`runtime.api` (whose face loads the
spec's pydantic models), so that every tier may import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = (
    "CGROUP_DRIVERS",
    "DEFAULT_ALPINE_MIRROR",
    "DEFAULT_LOG_MAX_FILES",
    "DEFAULT_LOG_MAX_SIZE",
    "MAX_SPARES",
    "PORT_HANDLERS",
    "BadSetting",
    "RuntimeSettings",
    "UnpackLimits",
)

DEFAULT_ALPINE_MIRROR = "https://dl-cdn.alpinelinux.org/alpine"
CGROUP_DRIVERS = ("auto", "cgroupfs", "systemd")
DEFAULT_LOG_MAX_SIZE = 20 << 20
DEFAULT_LOG_MAX_FILES = 5
"""The log cap of a container that sets none (``[logs]``): 5 files of 20 MiB, the
defaults of Docker's ``local`` log driver."""
PORT_HANDLERS = ("splice", "slirp4netns")
"""What may serve a bridge container's TCP host forwards, the default first: ``splice``
(a host-side listener that splices into the shared namespace: no connection refused when
a forward moves, near-loopback throughput) or ``slirp4netns`` (its user-mode TCP)."""


MAX_SPARES = 8
"""The most warm spare launchers a holder keeps (``$SQUISH_SPARES``)."""


class BadSetting(ValueError):
    """An environment variable (or option) has a value that cannot be used."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        super().__init__(f"{variable}={value!r}: {expected}")
        self.variable = variable
        self.value = value


@dataclass(frozen=True)
class UnpackLimits:
    """How much the archives of one container may unpack to, all its SDK layers together
    (a root filesystem archive alone). See ``docs/security.md``, "Hostile archives"."""

    entries: int = 100_000
    """``$SQUISH_UNPACK_MAX_ENTRIES``: entries (files, directories, links). The largest
    common SDKs hold tens of thousands; a million empty entries is an attack."""
    depth: int = 128
    """``$SQUISH_UNPACK_MAX_DEPTH``: path components of one entry. Real trees stay under
    about 30; thousands only serve to overflow whatever walks the tree."""
    bytes: int = 2 * 1024**3
    """``$SQUISH_UNPACK_MAX_BYTES``: the sum of file sizes as unpacked (a sparse or highly
    compressed file counts at its full size). A JDK, a Go, a Python and a Node together
    take about 1 GiB."""

    def __post_init__(self) -> None:
        for name in ("entries", "depth", "bytes"):
            if getattr(self, name) < 1:
                raise BadSetting(
                    f"SQUISH_UNPACK_MAX_{name.upper()}", str(getattr(self, name)), "at least 1"
                )


@dataclass(frozen=True)
class RuntimeSettings:
    """What the runtime takes from its environment. The defaults are what an empty
    environment means."""

    state_dir: Path | None = None
    """``$SQUISH_STATE_DIR``: the state folder. Unset: ``$XDG_RUNTIME_DIR/squish``, else
    ``/dev/shm/squish-<uid>``, else ``/tmp/squish-<uid>`` (see ``runtime.client.paths``)."""
    runtime_dir: Path | None = None
    """``$XDG_RUNTIME_DIR``: the user's runtime folder, the state folder's default home
    (and where the user's session bus usually listens)."""
    session_bus: str | None = None
    """``$DBUS_SESSION_BUS_ADDRESS``: the user's session bus, through which the systemd
    cgroup driver talks to the user's systemd; unset: ``$XDG_RUNTIME_DIR/bus``."""
    cache_dir: Path | None = None
    """The download and rootfs cache: ``$XDG_CACHE_HOME/squish``; unset: ``~/.cache/squish``."""
    log_dir: Path | None = None
    """``$SQUISH_LOG_DIR``: where containers' logs go (a folder per container), else
    ``$XDG_STATE_HOME/squish/logs``; unset: ``~/.local/state/squish/logs``. On disk, not
    in the state folder: that one is usually in memory (``/run/user``, ``/dev/shm``)."""
    cgroup_driver: str = "auto"
    """``$SQUISH_CGROUP_DRIVER``: ``auto`` (the user's systemd when its bus is reachable,
    else a delegated cgroup v2 subtree), ``cgroupfs`` or ``systemd``."""
    cgroup_root: Path | None = None
    """``$SQUISH_CGROUP_ROOT``: the delegated cgroup v2 folder the cgroupfs driver uses;
    unset: found from this process's own cgroup."""
    alpine_mirror: str = DEFAULT_ALPINE_MIRROR
    """``$SQUISH_ALPINE_MIRROR``: the Alpine mirror (HTTP base URL) minirootfs come from."""
    layer_index: str | None = None
    """``$SQUISH_LAYER_INDEX``: the base URL of the SDK layer index (``docs/layers.md``);
    unset: layers must be given by url and sha256."""
    unpack_limits: UnpackLimits = UnpackLimits()
    """``$SQUISH_UNPACK_MAX_ENTRIES``, ``..._DEPTH``, ``..._BYTES``: what a container's
    archives may unpack to."""
    native: bool = True
    """``$SQUISH_NATIVE``: ``0`` keeps each container's init and log pump in Python;
    ``1`` (the default) uses the native ones when the host set-up installed them
    (``runtime.native``). Read when the holder starts: a running holder keeps its choice."""
    port_handler: str = PORT_HANDLERS[0]
    """``$SQUISH_PORT_HANDLER``: who serves the TCP host forwards of bridge containers
    added from now on, one of :data:`PORT_HANDLERS` (UDP forwards, and those of
    ``network = "slirp4netns"`` containers, always go through slirp4netns)."""
    spares: int = 2
    """``$SQUISH_SPARES``: how many warm spare launchers the holder keeps ready (1 to
    8): each is a container's namespaces, init and root made ahead of its start, about
    4 MiB of private memory while it waits. With 2 a start that comes right after
    another still finds one warm; 1 saves that memory. Read when the holder starts."""

    def __post_init__(self) -> None:
        if self.cgroup_driver not in CGROUP_DRIVERS:
            raise BadSetting(
                "SQUISH_CGROUP_DRIVER", self.cgroup_driver, "use auto, cgroupfs or systemd"
            )
        if self.port_handler not in PORT_HANDLERS:
            raise BadSetting(
                "SQUISH_PORT_HANDLER", self.port_handler, f"use {' or '.join(PORT_HANDLERS)}"
            )
        if not 1 <= self.spares <= MAX_SPARES:
            raise BadSetting("SQUISH_SPARES", str(self.spares), f"use 1 to {MAX_SPARES}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RuntimeSettings:
        """The settings ``environ`` (default: this process's environment) gives; an empty
        variable counts as unset. :class:`BadSetting` names a variable that is wrong."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        driver = get("SQUISH_CGROUP_DRIVER") or "auto"
        cache_home = get("XDG_CACHE_HOME")
        state_home = get("XDG_STATE_HOME")
        return cls(
            state_dir=_path(get("SQUISH_STATE_DIR")),
            runtime_dir=_path(get("XDG_RUNTIME_DIR")),
            session_bus=get("DBUS_SESSION_BUS_ADDRESS"),
            cache_dir=Path(cache_home) / "squish" if cache_home else None,
            log_dir=_path(get("SQUISH_LOG_DIR"))
            or (Path(state_home) / "squish" / "logs" if state_home else None),
            cgroup_driver=driver,
            cgroup_root=_path(get("SQUISH_CGROUP_ROOT")),
            alpine_mirror=_url("SQUISH_ALPINE_MIRROR", get("SQUISH_ALPINE_MIRROR"))
            or DEFAULT_ALPINE_MIRROR,
            layer_index=_url("SQUISH_LAYER_INDEX", get("SQUISH_LAYER_INDEX")),
            unpack_limits=_unpack_limits(get),
            native=_flag("SQUISH_NATIVE", get("SQUISH_NATIVE"), default=True),
            port_handler=get("SQUISH_PORT_HANDLER") or PORT_HANDLERS[0],
            spares=_whole("SQUISH_SPARES", get("SQUISH_SPARES"), default=2),
        )


def _flag(variable: str, raw: str | None, *, default: bool) -> bool:
    if raw is None:
        return default
    if raw not in ("0", "1"):
        raise BadSetting(variable, raw, "use 0 or 1")
    return raw == "1"


def _whole(variable: str, raw: str | None, *, default: int) -> int:
    try:
        return default if raw is None else int(raw)
    except ValueError:
        raise BadSetting(variable, raw or "", "expected a whole number") from None


def _unpack_limits(get: Callable[[str], str | None]) -> UnpackLimits:
    defaults = UnpackLimits()
    values = {}
    for name in ("entries", "depth", "bytes"):
        variable = f"SQUISH_UNPACK_MAX_{name.upper()}"
        values[name] = _whole(variable, get(variable), default=getattr(defaults, name))
    return UnpackLimits(**values)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _url(variable: str, value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise BadSetting(variable, value, "expected an http:// or https:// URL")
    return value
