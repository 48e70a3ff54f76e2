"""What callers of the runtime see: the container spec, the ``Runtime`` protocol and what
it returns. The reconciler imports the runtime from here (its errors from
:mod:`runtime.errors`, its settings from :mod:`runtime.settings`); only the CLI names an
implementation."""

from runtime.api.interface import CommandResult, ContainerInfo, ContainerState, Runtime
from runtime.api.spec import (
    MAX_BYTES,
    MAX_LOG_FILES,
    MIN_LOG_SIZE,
    NAME_PATTERN,
    BindMount,
    ContainerSpec,
    LogLimits,
    PortMapping,
    Resources,
    RootfsRef,
    SdkLayer,
    check_target,
)

__all__ = (
    "MAX_BYTES",
    "MAX_LOG_FILES",
    "MIN_LOG_SIZE",
    "NAME_PATTERN",
    "BindMount",
    "CommandResult",
    "ContainerInfo",
    "ContainerSpec",
    "ContainerState",
    "LogLimits",
    "PortMapping",
    "Resources",
    "RootfsRef",
    "Runtime",
    "SdkLayer",
    "check_target",
)
