"""The squishfile model: pydantic models for one container's TOML file, and its spec.

The models validate a parsed squishfile; :meth:`Squishfile.to_spec` turns a valid one
into the :class:`runtime.api.spec.ContainerSpec` the runtime runs. Reading files and
turning validation errors into :class:`reconciler.problems.Problem` is the job of
:mod:`reconciler.squishfile.loading`. The format is documented for users in ``docs/squishfile.md``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from reconciler.problems import toml_quote as _q
from reconciler.squishfile.fields import (
    REPLACEMENT_SUFFIXES,
    STRICT,
    ExecString,
    as_tuple,
    is_path_like,
    resolve,
)
from reconciler.squishfile.networks import (
    DEFAULT_NETWORK,
    FOLDER_NETWORK,
    check_alias,
    check_network_name,
    runtime_network_name,
)
from reconciler.squishfile.placement import PlacementSection
from reconciler.squishfile.sections import (
    HealthSection,
    LogsSection,
    ResourcesSection,
    RestartSection,
    SecuritySection,
    UpdateSection,
)
from runtime.api import (
    NAME_PATTERN,
    BindMount,
    ContainerSpec,
    NetworkAttachment,
    PortMapping,
    RootfsRef,
    SdkLayer,
    check_target,
)

__all__ = (
    "LAYER_SHAPE_TAGS",
    "NETWORKS_SHAPE_TAGS",
    "DownloadLayer",
    "LocalLayer",
    "NetworkJoin",
    "PortForward",
    "RunSection",
    "Squishfile",
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_ALPINE_VERSION = re.compile(r"[0-9]{1,8}\.[0-9]{1,8}|edge")
_SDK_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def _check_name(value: str) -> str:
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{_q(value)} is not a valid name: use 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{_q(value)} is not a valid variable name: use letters, digits and '_', "
            "not starting with a digit"
        )
    return value


def _default_target(path: str) -> str:
    """``/app/<basename>`` for a local layer path, or ValueError if it has no basename."""
    base = os.path.basename(os.path.normpath(path))
    if base in ("", ".", "..", "/") or (base.startswith("~") and base == path.split("/")[0]):
        raise ValueError(
            f"cannot name a mount point after {_q(path)}; "
            f'write it as a table with a target: {{ path = {_q(path)}, target = "/app/..." }}'
        )
    return check_target(f"/app/{base}")


_Name = Annotated[str, AfterValidator(_check_name)]


def _check_container_name(value: str) -> str:
    for suffix in REPLACEMENT_SUFFIXES:
        if value.endswith(suffix):
            raise ValueError(
                f"{_q(value)} ends in {suffix}, reserved for the containers of a start-first "
                "replacement"
            )
    return value


_ContainerName = Annotated[str, AfterValidator(_check_name), AfterValidator(_check_container_name)]
_NetworkName = Annotated[str, AfterValidator(check_network_name)]
_Alias = Annotated[str, AfterValidator(check_alias)]
_EnvName = Annotated[str, AfterValidator(_check_env_name)]


class LocalLayer(BaseModel):
    """A host file or folder bind-mounted into the container (the table form)."""

    model_config = STRICT

    path: str = Field(
        description="host path starting with ./, ../, / or ~; relative paths are "
        "resolved against the squishfile's folder"
    )
    target: str | None = Field(
        default=None, description="absolute container path; default /app/<basename of path>"
    )
    rw: bool = Field(default=False, description="mount read-write instead of read-only")

    @field_validator("path")
    @classmethod
    def _path_is_local(cls, value: str) -> str:
        if not is_path_like(value) or "\0" in value:
            raise ValueError(f"{_q(value)} is not a local path: start it with ./, ../, / or ~")
        if value.startswith("~") and os.path.expanduser(value).startswith("~"):
            # Checked here, where the error gets its line, not when the spec is built.
            raise ValueError(f"{_q(value)} names a home folder that does not exist here")
        return value

    @field_validator("target")
    @classmethod
    def _target_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else check_target(value)

    @model_validator(mode="after")
    def _target_is_known(self) -> LocalLayer:
        _ = self.container_target
        return self

    @property
    def container_target(self) -> str:
        """Where the path is mounted: ``target``, else ``/app/<basename of path>``."""
        return self.target if self.target is not None else _default_target(self.path)


class DownloadLayer(BaseModel):
    """An SDK layer downloaded from ``url`` and checked against ``sha256``."""

    model_config = STRICT

    url: str = Field(description="http:// or https:// address of a tarball")
    sha256: str = Field(description="expected sha256 of the download, 64 hex digits")

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        odd = any(c.isspace() or not c.isprintable() for c in value)  # NUL, newline, tab...
        if parts.scheme not in ("http", "https") or not parts.netloc or odd:
            raise ValueError(f"{_q(value)} is not an http:// or https:// URL")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str) -> str:
        if not _SHA256.fullmatch(value):
            raise ValueError("must be 64 hexadecimal digits")
        return value.lower()


def _layer_shape(value: Any) -> str | None:
    """Which form a layer value takes; None when it has none of them."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        is_local = "path" in value
        if is_local != ("url" in value or "sha256" in value):
            return "local" if is_local else "download"
    return None


LAYER_SHAPE_TAGS = ("text", "local", "download")  # pydantic puts them in error locations

_LayerValue = Annotated[
    Annotated[str, Tag("text")]
    | Annotated[LocalLayer, Tag("local")]
    | Annotated[DownloadLayer, Tag("download")],
    Discriminator(
        _layer_shape,
        custom_error_type="layer_shape",
        custom_error_message='must be a version like "3.12", a local path like "./site", '
        "or a table with either path or url and sha256",
    ),
]


def _classify_layer(name: str, value: str | LocalLayer | DownloadLayer) -> _Layer:
    """What one ``[layers]`` entry means: a rootfs, a local mount, or an SDK layer."""
    if name == "busybox":
        if value != "builtin":
            raise ValueError('the busybox rootfs layer must be written busybox = "builtin"')
        return RootfsRef(kind="busybox", version="builtin")
    if name == "alpine":
        if not isinstance(value, str) or not _ALPINE_VERSION.fullmatch(value):
            raise ValueError('the alpine rootfs layer takes a release like "3.20" or "edge"')
        return RootfsRef(kind="alpine", version=value)
    if isinstance(value, DownloadLayer):
        return SdkLayer(name=name, url=value.url, sha256=value.sha256)
    if isinstance(value, LocalLayer):
        return value
    if is_path_like(value):
        _default_target(value)
        return LocalLayer(path=value)
    if not _SDK_VERSION.fullmatch(value):
        raise ValueError(
            f'{_q(value)} is neither a version like "3.12" nor a local path '
            "(start local paths with ./, ../, / or ~)"
        )
    return SdkLayer(name=name, version=value)


_Layer = RootfsRef | LocalLayer | SdkLayer


def _reason(exc: ValueError) -> str:
    """A refusal in the file's terms: a model built for a layer (``LocalLayer``) says
    its own messages, not pydantic's report of them."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())


def _target_of(layer: LocalLayer | SdkLayer) -> str:
    return layer.container_target if isinstance(layer, LocalLayer) else f"/sdk/{layer.name}"


def _error(loc: tuple[str | int, ...], message: str, value: object) -> InitErrorDetails:
    kind = PydanticCustomError("squishfile", "{message}", {"message": message})
    return InitErrorDetails(type=kind, loc=loc, input=value)


class RunSection(BaseModel):
    """The ``[run]`` table: what the container runs."""

    model_config = STRICT

    command: ExecString = Field(min_length=1, description="the program to run (argv[0])")
    args: tuple[ExecString, ...] = Field(default=(), description="its arguments")
    workdir: str = Field(default="/", description="absolute working directory")
    stop_timeout: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds between SIGTERM and SIGKILL when stopping",
    )

    _args_from_array = field_validator("args", mode="before")(as_tuple)

    @field_validator("workdir")
    @classmethod
    def _workdir_is_absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
            raise ValueError(f"{_q(value)} must be an absolute path without '..'")
        return os.path.normpath(value).replace("//", "/")


class PortForward(BaseModel):
    """One ``[[ports]]`` table: forward ``host_addr:host`` on the host to ``container``."""

    model_config = STRICT

    container: int = Field(ge=1, le=65535, description="port inside the container")
    host: int = Field(ge=1, le=65535, description="port on the host")
    protocol: Literal["tcp", "udp"] = Field(default="tcp", description="tcp or udp")
    host_addr: str = Field(default="127.0.0.1", description="host IPv4 or IPv6 address")

    @field_validator("host_addr")
    @classmethod
    def _host_addr_is_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{_q(value)} is not an IPv4 or IPv6 address") from None

    def describe(self) -> str:
        """The host side, as ``127.0.0.1:8080/tcp`` or ``[::1]:8080/tcp``."""
        addr = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        return f"{addr}:{self.host}/{self.protocol}"


class NetworkJoin(BaseModel):
    """One ``[networks.NAME]`` table: how the container joins network NAME."""

    model_config = STRICT

    aliases: tuple[_Alias, ...] = Field(
        default=(), description="more names the container answers to on that network"
    )

    _aliases_from_array = field_validator("aliases", mode="before")(as_tuple)


def _one_socket(a: PortForward, b: PortForward) -> bool:
    """Whether two forwards of one file need one host socket (rare: only those of one
    protocol and host port are compared, each converted then)."""
    mapping = PortMapping.model_validate
    return bool(mapping(a.model_dump()).shares_socket_with(mapping(b.model_dump())))


def _networks_shape(value: Any) -> str | None:
    if isinstance(value, tuple):
        return "array"
    return "table" if isinstance(value, dict) else None


NETWORKS_SHAPE_TAGS = ("array", "table")  # pydantic puts them in error locations

_NetworksValue = Annotated[
    Annotated[tuple[_NetworkName, ...], Tag("array")]
    | Annotated[dict[_NetworkName, NetworkJoin], Tag("table")],
    Discriminator(
        _networks_shape,
        custom_error_type="networks_shape",
        custom_error_message='must be an array of network names like ["backend"], '
        "or tables like [networks.backend]",
    ),
]
_ISOLATED = ("isolated", "slirp4netns")


class Squishfile(BaseModel):
    """A validated squishfile. Build one with :func:`load_squishfile`.

    Validating directly needs ``context={"source": path}`` for the default name and for
    relative layer paths.
    """

    model_config = STRICT

    name: _ContainerName = Field(description="container name; default: the file's stem")
    network: Literal["isolated", "none", "slirp4netns"] | None = Field(
        default=None,
        description="isolated (a slirp4netns of its own; slirp4netns is its old name) or "
        "none; default: the folder's network",
    )
    networks: _NetworksValue | None = Field(
        default=None, description="the named networks joined, instead of the folder's"
    )
    hostname: _Name | None = Field(default=None, description="hostname; default: the name")
    layers: dict[Annotated[str, AfterValidator(_check_name)], _LayerValue] = Field(
        description="the rootfs, local mounts and SDK layers, by layer name"
    )
    run: RunSection = Field(description="what to run")
    env: dict[_EnvName, ExecString] = Field(
        default_factory=dict, description="environment variables"
    )
    ports: tuple[PortForward, ...] = Field(default=(), description="port forwards")
    restart: RestartSection = Field(
        default_factory=RestartSection, description="restart policy (default: always)"
    )
    update: UpdateSection = Field(
        default_factory=UpdateSection,
        description="replacement strategy (default: start-first with a [health] check, "
        "else stop-first)",
    )
    health: HealthSection | None = Field(default=None, description="readiness check")
    security: SecuritySection = Field(
        default_factory=SecuritySection, description="confinement (default: Docker's)"
    )
    resources: ResourcesSection = Field(
        default_factory=ResourcesSection, description="cgroup limits (default: none)"
    )
    logs: LogsSection = Field(
        default_factory=LogsSection, description="log cap and rotation (default: 5 files of 20M)"
    )
    placement: PlacementSection | None = Field(
        default=None, description="the hosts it runs on (default: every host)"
    )

    _source: Path | None = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)
    _sources: dict[str, str] | None = PrivateAttr(default=None)
    _ports_from_array = field_validator("ports", mode="before")(as_tuple)
    _networks_from_array = field_validator("networks", mode="before")(as_tuple)

    @model_validator(mode="before")
    @classmethod
    def _name_from_file(cls, data: object, info: ValidationInfo) -> object:
        source = (info.context or {}).get("source")
        if isinstance(data, dict) and "name" not in data and isinstance(source, Path):
            return {"name": source.stem, **data}
        return data

    @model_validator(mode="before")
    @classmethod
    def _start_first_with_health(cls, data: object) -> object:
        """With a ``[health]`` check and no strategy written, the old container keeps its
        host ports until the new one is ready: a stop-first gap would free them for any
        other account to bind."""
        if not isinstance(data, dict) or "health" not in data:
            return data
        update = data.get("update", {})
        if not isinstance(update, dict) or "strategy" in update:
            return data
        return {**data, "update": {**update, "strategy": "start-first"}}

    @model_validator(mode="after")
    def _remember_source(self, info: ValidationInfo) -> Squishfile:
        source = (info.context or {}).get("source")
        self._source = Path(os.path.abspath(source)) if isinstance(source, Path) else None
        folder = (info.context or {}).get("folder")  # the file is a copy of one in there
        self._folder = Path(os.path.abspath(folder)) if isinstance(folder, Path) else None
        return self

    @field_validator("layers")
    @classmethod
    def _layers_agree(cls, layers: dict[str, str | LocalLayer | DownloadLayer]) -> Any:
        errors: list[InitErrorDetails] = []
        rootfs: list[str] = []
        used: dict[str, str] = {}
        for name, value in layers.items():
            try:
                layer = _classify_layer(name, value)
            except ValueError as exc:
                errors.append(_error((name,), _reason(exc), value))
                rootfs += [name] if name in ("busybox", "alpine") else []  # (one, broken)
                continue
            if isinstance(layer, RootfsRef):
                rootfs.append(name)
                continue
            target = _target_of(layer)
            if target in used:
                written = isinstance(value, LocalLayer) and value.target is not None
                message = f"target {target} is also used by layers.{used[target]}"
                errors.append(_error((name, "target") if written else (name,), message, value))
            used.setdefault(target, name)
        if not rootfs:
            message = 'needs a rootfs layer: busybox = "builtin" or alpine = "3.20"'
            errors.append(_error((), message, layers))
        elif len(rootfs) > 1:
            message = f"has {len(rootfs)} rootfs layers ({' and '.join(rootfs)}); keep one"
            errors.append(_error((), message, layers))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return layers

    @field_validator("networks")
    @classmethod
    def _networks_agree(
        cls, networks: tuple[str, ...] | dict[str, NetworkJoin], info: ValidationInfo
    ) -> Any:
        errors: list[InitErrorDetails] = []
        network = info.data.get("network")
        if network is not None:
            message = f"network = {_q(network)} joins no networks; remove one of the two"
            errors.append(_error((), message, networks))
        if isinstance(networks, tuple):
            for index, name in enumerate(networks):
                if networks.index(name) != index:
                    message = f"{_q(name)} is already joined by networks[{networks.index(name)}]"
                    errors.append(_error((index,), message, name))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return networks

    @field_validator("ports")
    @classmethod
    def _ports_agree(cls, ports: tuple[PortForward, ...], info: ValidationInfo) -> Any:
        errors: list[InitErrorDetails] = []
        if ports and info.data.get("network") == "none":
            message = 'network = "none" cannot forward ports; remove [[ports]] or the network'
            errors.append(_error((), message, ports))
        seen: dict[tuple[str, int], list[int]] = {}  # linear: a file may have thousands
        for index, port in enumerate(ports):
            same = seen.setdefault((port.protocol, port.host), [])
            earlier = next((i for i in same if _one_socket(ports[i], port)), None)
            same.append(index)
            if earlier is not None:
                message = f"host port {port.describe()} is already forwarded by ports[{earlier}]"
                if ports[earlier].host_addr != port.host_addr:
                    message += f" ({ports[earlier].describe()})"
                errors.append(_error((index, "host"), message, port.host))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return ports

    @property
    def source(self) -> Path | None:
        """The absolute path this squishfile was loaded from, if known."""
        return self._source

    def to_spec(self) -> ContainerSpec:
        """The runtime spec: absolute host paths, and a canonical order for hashing.

        Bind mounts are sorted by target, SDK layers by name, env by key and port
        forwards by host side, so reordering the file does not change the spec. Raises
        ValueError only if a relative path cannot be resolved (no known source or home).
        """
        rootfs: list[RootfsRef] = []
        sdks: list[SdkLayer] = []
        binds: list[BindMount] = []
        sources = self.local_sources()
        for name, value in self.layers.items():
            layer = _classify_layer(name, value)
            if isinstance(layer, RootfsRef):
                rootfs.append(layer)
            elif isinstance(layer, SdkLayer):
                sdks.append(layer)
            else:
                target = layer.container_target
                binds.append(BindMount(source=sources[name], target=target, rw=layer.rw))
        ports = sorted(
            self.forwards(), key=lambda p: (p.protocol, p.host_addr, p.host, p.container)
        )
        return ContainerSpec(
            name=self.name,
            rootfs=rootfs[0],
            sdks=tuple(sorted(sdks, key=lambda sdk: sdk.name)),
            binds=tuple(sorted(binds, key=lambda bind: bind.target)),
            argv=(self.run.command, *self.run.args),
            env=dict(sorted(self.env.items())),
            workdir=self.run.workdir,
            ports=tuple(ports),
            **self._network_fields(),
            hostname=self.hostname or self.name,
            stop_timeout=self.run.stop_timeout,
            seccomp=self.security.spec_value(),
            resources=self.resources.to_resources(),
            logs=self.logs.to_limits(),
            proc_view=self.resources.proc_view,
        )

    def _network_fields(self) -> dict[str, Any]:
        """The spec's ``network`` and ``networks``: the runtime's names of the networks
        joined, in the file's order (the folder's network unless told otherwise)."""
        if self.network == "none":
            return {"network": "none"}
        isolated = DEFAULT_NETWORK == "isolated" and self.networks is None
        if self.network in _ISOLATED or isolated:
            return {"network": "slirp4netns"}
        if self._source is None:
            raise ValueError("cannot name the folder's network: unknown squishfile folder")
        folder = self._folder or self._source.parent
        joins = self.networks or (FOLDER_NETWORK,)
        if isinstance(joins, dict):
            pairs = [(name, join.aliases) for name, join in joins.items()]
        else:
            pairs = [(name, ()) for name in joins]
        attachments = tuple(
            NetworkAttachment(network=runtime_network_name(folder, name), aliases=aliases)
            for name, aliases in pairs
        )
        return {"network": "bridge", "networks": attachments}

    def forwards(self) -> tuple[PortMapping, ...]:
        """The ``[[ports]]`` as the runtime takes them, in the file's own order."""
        return tuple(PortMapping.model_validate(port.model_dump()) for port in self.ports)

    def local_sources(self) -> dict[str, str]:
        """The host path of each local layer (a bind), by its name in ``[layers]``;
        resolved once (the spec and the loader's checks both ask)."""
        if self._sources is None:
            self._sources = {}
            for name, value in self.layers.items():
                layer = _classify_layer(name, value)
                if isinstance(layer, LocalLayer):
                    self._sources[name] = self._host_path(layer.path)
        return dict(self._sources)

    def _host_path(self, path: str) -> str:
        """``path`` made absolute: ``~`` expanded, relative paths taken from the file's folder."""
        return str(resolve(path, self._source))
