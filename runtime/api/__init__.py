"""What callers of the runtime see: the container spec, the ``Runtime`` protocol and what
it returns. The reconciler imports the runtime from here (its errors from
:mod:`runtime.errors`, its settings from :mod:`runtime.settings`); only the CLI names an
implementation."""

from runtime.api.interface import (
    CommandResult,
    ContainerInfo,
    ContainerState,
    NetworkInfo,
    Runtime,
)
from runtime.api.spec import (
    MAX_BYTES,
    MAX_LOG_FILES,
    MIN_LOG_SIZE,
    NAME_PATTERN,
    NETWORK_NAME,
    BindMount,
    ContainerSpec,
    LogLimits,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
    Resources,
    RootfsRef,
    SdkLayer,
    check_target,
    subnet_refusal,
)

__all__ = (
    "MAX_BYTES",
    "MAX_LOG_FILES",
    "MIN_LOG_SIZE",
    "NAME_PATTERN",
    "NETWORK_NAME",
    "BindMount",
    "CommandResult",
    "ContainerInfo",
    "ContainerSpec",
    "ContainerState",
    "LogLimits",
    "NetworkAttachment",
    "NetworkInfo",
    "NetworkSpec",
    "PortMapping",
    "Resources",
    "RootfsRef",
    "Runtime",
    "SdkLayer",
    "check_target",
    "subnet_refusal",
)
