"""What callers of the runtime see: the container spec, the ``Runtime`` protocol and what
it returns, and the runtime's settings. The reconciler imports the runtime from here
(and its errors from :mod:`runtime.errors`); only the CLI names an implementation."""

from runtime.api.interface import CommandResult, ContainerInfo, ContainerState, Runtime
from runtime.api.spec import (
    MAX_BYTES,
    NAME_PATTERN,
    BindMount,
    ContainerSpec,
    PortMapping,
    Resources,
    RootfsRef,
    SdkLayer,
    check_target,
)
from runtime.settings import CGROUP_DRIVERS, DEFAULT_ALPINE_MIRROR, BadSetting, RuntimeSettings

__all__ = (
    "CGROUP_DRIVERS",
    "DEFAULT_ALPINE_MIRROR",
    "MAX_BYTES",
    "NAME_PATTERN",
    "BadSetting",
    "BindMount",
    "CommandResult",
    "ContainerInfo",
    "ContainerSpec",
    "ContainerState",
    "PortMapping",
    "Resources",
    "RootfsRef",
    "Runtime",
    "RuntimeSettings",
    "SdkLayer",
    "check_target",
)
