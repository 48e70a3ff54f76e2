"""The squishfile's smaller tables: ``[restart]``, ``[update]``, ``[health]``,
``[resources]``, ``[logs]`` and ``[security]``."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from reconciler.problems import toml_quote as _q
from reconciler.squishfile.fields import (
    STRICT,
    ExecString,
    as_tuple,
    is_path_like,
    not_empty,
    outside_of,
    resolve,
)
from runtime.api import MAX_BYTES, MAX_LOG_FILES, MIN_LOG_SIZE, LogLimits, Resources
from runtime.security.profile import ProfileCheck, read_profile

__all__ = (
    "CONFINE",
    "PROFILE_CHECK",
    "HealthSection",
    "LogsSection",
    "ResourcesSection",
    "RestartSection",
    "SecuritySection",
    "UpdateSection",
)


class RestartSection(BaseModel):
    """The ``[restart]`` table: what the reconciler does when the command exits."""

    model_config = STRICT

    policy: Literal["always", "on-failure", "never"] = Field(
        default="always",
        description="always restart; restart only after a non-zero exit; or never",
    )


class UpdateSection(BaseModel):
    """The ``[update]`` table: how a changed container is replaced."""

    model_config = STRICT

    strategy: Literal["stop-first", "start-first"] = Field(
        default="stop-first",
        description="stop the old container first; or start the new one first, wait until "
        "it is ready, move the forwards to it, then stop the old one",
    )
    drain: float = Field(
        default=0.1,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="start-first: seconds the old container keeps running after its "
        "forwards moved, to finish requests it had accepted",
    )


class HealthSection(BaseModel):
    """The ``[health]`` table: when a (replacement) container counts as ready."""

    model_config = STRICT

    tcp: int | None = Field(
        default=None, ge=1, le=65535, description="a TCP port inside the container that must accept"
    )
    command: tuple[ExecString, ...] | None = Field(
        default=None,
        description="a command run inside the container that must exit 0 "
        '(an array of arguments, or a string run by "/bin/sh -c")',
    )
    timeout: float = Field(
        default=1.0, gt=0, le=600, allow_inf_nan=False, description="seconds one probe may take"
    )
    interval: float = Field(
        default=0.1, gt=0, le=60, allow_inf_nan=False, description="seconds between probes"
    )
    retries: int = Field(default=100, ge=1, le=100_000, description="probes before giving up")

    @field_validator("command", mode="before")
    @classmethod
    def _shell_or_array(cls, value: object) -> object:
        if isinstance(value, str):
            return ("/bin/sh", "-c", value)
        return as_tuple(value)

    _command_not_empty = field_validator("command")(not_empty())

    @model_validator(mode="after")
    def _one_probe(self) -> HealthSection:
        if (self.tcp is None) == (self.command is None):
            raise ValueError('needs exactly one of "tcp" (a port) or "command"')
        return self


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _bytes(value: object) -> object:
    """``"256M"`` → 268435456 (binary units, as Docker and podman read them)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return value  # the type check that follows reports it
    if isinstance(value, int):
        return value
    found = _SIZE.match(value)
    if found is None:
        raise ValueError(f"{_q(value)} is not a size: write bytes or a number with k, M, G or T")
    size = float(found.group(1)) * _UNITS[found.group(2).lower()]
    if not math.isfinite(size) or size > MAX_BYTES:  # an integer the limit names
        return MAX_BYTES + 1
    return int(size)


class ResourcesSection(BaseModel):
    """The ``[resources]`` table: cgroup v2 limits, applied live when they change."""

    model_config = STRICT

    memory: int | None = Field(
        default=None, ge=1024 * 1024, le=MAX_BYTES, description='memory limit ("256M"): memory.max'
    )
    memory_swap: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BYTES,
        description='swap the container may use besides ("0": none)',
    )
    cpus: float | None = Field(
        default=None, gt=0, le=1024, allow_inf_nan=False, description="CPUs: cpu.max"
    )
    cpu_weight: int | None = Field(
        default=None, ge=1, le=10_000, description="relative CPU share: cpu.weight (100)"
    )
    pids: int | None = Field(default=None, ge=1, le=4_194_304, description="most processes")
    proc_view: bool = Field(
        default=True,
        description="the container's /proc/meminfo, cpuinfo, stat, uptime, loadavg, swaps, "
        "diskstats and /sys/devices/system/cpu/online tell its own limits (false: the "
        "kernel's, the host's figures)",
    )

    _sizes = field_validator("memory", "memory_swap", mode="before")(_bytes)

    def to_resources(self) -> Resources | None:
        values = self.model_dump(exclude_none=True, exclude={"proc_view"})
        return Resources(**values) if values else None


class LogsSection(BaseModel):
    """The ``[logs]`` table: how much of the command's output is kept (on disk)."""

    model_config = STRICT

    max_size: int = Field(
        default=LogLimits().max_size,
        ge=MIN_LOG_SIZE,
        le=MAX_BYTES,
        description='size of one log file ("10M") before it is rotated',
    )
    max_files: int = Field(
        default=LogLimits().max_files,
        ge=1,
        le=MAX_LOG_FILES,
        description="log files kept, the one written included (1: it starts over)",
    )

    _sizes = field_validator("max_size", mode="before")(_bytes)

    def to_limits(self) -> LogLimits | None:
        """The spec's ``logs``: None for the defaults (the spec then hashes as one made
        before ``[logs]`` existed)."""
        limits = LogLimits(max_size=self.max_size, max_files=self.max_files)
        return None if limits == LogLimits() else limits


class SecuritySection(BaseModel):
    """The ``[security]`` table: how the container is confined beyond its namespaces."""

    model_config = STRICT

    seccomp: str = Field(
        default="default",
        description='the seccomp profile: "default" (Docker\'s), "unconfined", or the path '
        "of a Docker-format JSON profile (relative to the squishfile's folder)",
    )
    _profile: dict[str, Any] | None = PrivateAttr(default=None)
    _input: tuple[Path, bytes] | None = PrivateAttr(default=None)

    @field_validator("seccomp")
    @classmethod
    def _known_or_a_profile(cls, value: str, info: ValidationInfo) -> str:
        if value in ("default", "unconfined"):
            return value
        if not is_path_like(value) or "\0" in value:
            raise ValueError(
                f'must be "default", "unconfined" or a path (./, ../, / or ~), not {_q(value)}'
            )
        source = (info.context or {}).get("source")
        path = resolve(value, source if isinstance(source, Path) else None)
        confine = (info.context or {}).get(CONFINE)
        if isinstance(confine, Path) and (why := outside_of(confine, path)):
            raise ValueError(why)  # not read: the host's files are not the repository's
        document, raw = read_profile(path)  # missing or malformed: an error here
        check: ProfileCheck | None = (info.context or {}).get(PROFILE_CHECK)
        if check is not None:  # the caller's further check (compiling it): its line too
            check(document)
        if isinstance(info.context, dict):  # read once: handed to _keep_profile below
            info.context[_PROFILE_READ] = (path, document, raw)
        return value

    @model_validator(mode="after")
    def _keep_profile(self, info: ValidationInfo) -> SecuritySection:
        read = (info.context or {}).pop(_PROFILE_READ, None)
        if self.seccomp not in ("default", "unconfined"):
            if read is None:  # validated without a context dict: read it here
                source = (info.context or {}).get("source")
                path = resolve(self.seccomp, source if isinstance(source, Path) else None)
                read = (path, *read_profile(path))
            path, document, raw = read
            self._profile = document
            self._input = (path, hashlib.blake2b(raw, digest_size=16).digest())
        return self

    def spec_value(self) -> str | dict[str, Any]:
        """What ``ContainerSpec.seccomp`` takes: a keyword or the profile's document."""
        return self._profile if self._profile is not None else self.seccomp

    @property
    def inputs(self) -> tuple[tuple[Path, bytes], ...]:
        """Files besides the squishfile that its container was built from, each with the
        digest of the bytes that were read."""
        return () if self._input is None else (self._input,)


_PROFILE_READ = "_seccomp_profile_read"
PROFILE_CHECK = "check_profile"
CONFINE = "confine"
"""The validation context's key for a git source's checkout, which every path a file
uses must be in (None or absent: any path)."""
"""The validation context key of a :data:`runtime.security.profile.ProfileCheck` that a
profile must pass besides its structure (the model itself loads no FFI to compile it)."""
