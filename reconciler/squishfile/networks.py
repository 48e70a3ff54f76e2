"""Networks in squishfiles: the default, the names, and the ``NAME.network.toml`` file.

A container joins its folder's network unless it says otherwise (:data:`DEFAULT_NETWORK`);
``networks = [...]`` joins named networks instead. The names users write are short and
local to their folder; the runtime sees each one prefixed with the folder's own prefix
(:func:`network_prefix`), so two folders' ``backend`` never meet. The folder's network is
the one named :data:`FOLDER_NETWORK`.

No model of a container here: the planner imports the names from this module (it may not
import :mod:`reconciler.squishfile.model`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from reconciler.problems import toml_quote as _q
from reconciler.squishfile.fields import STRICT
from runtime.api import subnet_refusal

__all__ = (
    "DEFAULT_NETWORK",
    "FOLDER_NETWORK",
    "MAX_SUBNET_PREFIX",
    "MIN_SUBNET_PREFIX",
    "NETWORK_FILE_SUFFIX",
    "NetworkFile",
    "check_alias",
    "check_network_name",
    "is_network_file",
    "local_network_name",
    "network_file_name",
    "network_prefix",
    "runtime_network_name",
)

DEFAULT_NETWORK: Literal["folder", "isolated"] = "folder"
"""What a container without ``network`` joins: its folder's network (``"folder"``: the
containers of one folder find each other by name), or a slirp4netns of its own
(``"isolated"``, as ``network = "isolated"`` says)."""

FOLDER_NETWORK = "default"
"""The name of the folder's network in ``networks = [...]`` and in network files."""

NETWORK_FILE_SUFFIX = ".network.toml"
MIN_SUBNET_PREFIX = 16
MAX_SUBNET_PREFIX = 29

_LOCAL_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
"""A network's name in a folder: the runtime's network names (lower case), at most 32
characters, so that the prefixed name fits in 63."""
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _matching(pattern: re.Pattern[str], value: str, rule: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{_q(value)} is not {rule}")
    return value


def check_network_name(value: str) -> str:
    return _matching(
        _LOCAL_NAME,
        value,
        "a valid network name: use 1 to 32 lower-case letters, digits, '_', '.' or '-', "
        "starting with a letter or digit",
    )


def check_alias(value: str) -> str:
    return _matching(
        _DNS_LABEL,
        value,
        "a DNS label: use 1 to 63 lower-case letters, digits or '-', starting and ending "
        "with a letter or digit",
    )


def network_prefix(folder: Path) -> str:
    """``sq-<folder name>-<6 hex digits of its absolute path>``: the folder's networks'
    names start with it (``sq-desired-3f2a9c``); the digest keeps two folders of the
    same name apart."""
    base = re.sub(r"[^a-z0-9_.-]+", "-", folder.name.lower())[:16] or "folder"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:6]
    return f"sq-{base}-{digest}"


def runtime_network_name(folder: Path, name: str) -> str:
    """The runtime's name of the folder's network ``name``: ``sq-desired-3f2a9c_backend``."""
    return f"{network_prefix(folder)}_{name}"


def local_network_name(folder: Path, runtime_name: str) -> str | None:
    """The folder's name of a runtime network, or None when it is not the folder's."""
    prefix = f"{network_prefix(folder)}_"
    return runtime_name[len(prefix) :] if runtime_name.startswith(prefix) else None


def is_network_file(path: Path) -> bool:
    """Whether ``path`` is named like a network file (``backend.network.toml``)."""
    return path.name.endswith(NETWORK_FILE_SUFFIX) and len(path.name) > len(NETWORK_FILE_SUFFIX)


def network_file_name(path: Path) -> str:
    """The network a network file sets up: its name without ``.network.toml``."""
    return path.name[: -len(NETWORK_FILE_SUFFIX)]


class NetworkFile(BaseModel):
    """A ``NAME.network.toml`` file: the settings of the folder's network NAME."""

    model_config = STRICT

    subnet: str | None = Field(
        default=None,
        description="IPv4 CIDR, /16 to /29; default: a free /24 in 10.89.0.0/16",
    )
    internal: bool = Field(default=False, description="true: no way out of the network")
    dns: bool = Field(default=True, description="false: no names answered on the network")

    @field_validator("subnet")
    @classmethod
    def _subnet_is_cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            subnet = ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(
                f"{_q(value)} is not an IPv4 subnet like 10.89.5.0/24 ({exc})"
            ) from None
        if not MIN_SUBNET_PREFIX <= subnet.prefixlen <= MAX_SUBNET_PREFIX:
            raise ValueError(
                f"{_q(value)} is a /{subnet.prefixlen}: use a /{MIN_SUBNET_PREFIX} to "
                f"/{MAX_SUBNET_PREFIX}"
            )
        refusal = subnet_refusal(subnet)
        if refusal is not None:
            raise ValueError(f"{_q(value)} {refusal}: use a private range such as 10.89.5.0/24")
        return str(subnet)
