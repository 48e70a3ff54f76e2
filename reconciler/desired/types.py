"""Desired-state types, shared by loading (``reconciler.desired.folder``) and the pure planner.

No I/O here. Each spec gets labels that mark it as ours and record a hash of what was
applied:

- ``squish.managed-by``: ``reconciler``
- ``squish.folder``: the absolute folder the file lives in
- ``squish.file``: the file's name in that folder
- ``squish.spec-hash``: a hash of the normalised spec *without* its ports, resources,
  labels and networks joined (a difference in those alone is applied live; anything
  else means a recreate)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reconciler.problems import Problem
from reconciler.squishfile.fields import REPLACEMENT_SUFFIXES
from reconciler.squishfile.networks import is_network_file
from reconciler.squishfile.placement import HostIdentity, PlacementSection
from runtime.api import ContainerSpec, NetworkSpec, PortMapping

__all__ = (
    "LABEL_FILE",
    "LABEL_FOLDER",
    "LABEL_HASH",
    "LABEL_MANAGED",
    "LABEL_NETWORK",
    "LIVE_FIELDS",
    "MANAGER",
    "DesiredContainer",
    "DesiredNetwork",
    "DesiredState",
    "FileError",
    "HealthCheck",
    "PlacedElsewhere",
    "RestartPolicy",
    "Skipped",
    "is_squishfile",
    "network_files_in",
    "network_labels",
    "replaced_name",
    "replacement_name",
    "retired_name",
    "skipped_in",
    "spec_hash",
    "squishfiles_in",
)

MANAGER = "reconciler"
LABEL_MANAGED = "squish.managed-by"
LABEL_FOLDER = "squish.folder"
LABEL_FILE = "squish.file"
LABEL_HASH = "squish.spec-hash"
LABEL_NETWORK = "squish.network"
"""On a network the reconciler made: its name in the folder (``backend``)."""

RestartPolicy = Literal["always", "on-failure", "never"]

_IGNORED = re.compile(
    r"""^(\..*                # hidden files, vim's .x.swp, emacs' .#lock
        |.*~                 # backups
        |\#.*\#              # emacs autosave
        |.*\.(swp|swo|swx|tmp|bak|orig|rej|part)
        |4913                # vim's probe file
        )$""",
    re.VERBOSE,
)


def is_squishfile(path: Path) -> bool:
    """Whether ``path`` names a squishfile rather than an editor's or git's by-product."""
    return path.suffix == ".toml" and not _IGNORED.match(path.name)


def squishfiles_in(folder: Path) -> list[Path]:
    """The squishfiles of ``folder`` (network files aside), in name order (OSError if it
    cannot be listed)."""
    return sorted(
        p for p in folder.iterdir() if is_squishfile(p) and not is_network_file(p) and p.is_file()
    )


def network_files_in(folder: Path) -> list[Path]:
    """The network files (``NAME.network.toml``) of ``folder``, in name order."""
    return sorted(
        p for p in folder.iterdir() if is_squishfile(p) and is_network_file(p) and p.is_file()
    )


@dataclass(frozen=True)
class Skipped:
    """An entry of the folder named like a squishfile that is not read, and why."""

    file: Path
    reason: str


def skipped_in(folder: Path) -> list[Skipped]:
    """The entries of ``folder`` that look meant as squishfiles but are not read (a
    directory ``x.toml``, a file ``UPPER.TOML``), in name order; editors' and hidden
    files are not listed (OSError if the folder cannot be listed)."""
    found = (_skipped(p) for p in folder.iterdir() if not _IGNORED.match(p.name))
    return sorted((s for s in found if s is not None), key=lambda s: s.file)


def _skipped(path: Path) -> Skipped | None:
    if path.suffix.lower() != ".toml":
        return None
    if path.suffix != ".toml":
        return Skipped(path, f"only names ending in .toml are read, not {path.suffix}")
    if path.is_dir():
        return Skipped(path, "a directory, not a file")
    if path.is_symlink() and not path.exists():
        return Skipped(path, "a symbolic link to nothing")
    if not path.is_file():
        return Skipped(path, "not a regular file")
    return None


def replacement_name(name: str) -> str:
    """The name a start-first replacement runs under until it takes over."""
    return name + REPLACEMENT_SUFFIXES[0]


def retired_name(name: str) -> str:
    """The name the replaced container steps aside to while its successor takes over."""
    return name + REPLACEMENT_SUFFIXES[1]


def replaced_name(name: str) -> str | None:
    """The container whose start-first replacement ``name`` is a part of, if any."""
    for make in (replacement_name, retired_name):
        suffix = make("")
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


LIVE_FIELDS = ("ports", "resources", "labels", "networks")
"""Spec fields changed on a running container without recreating it."""


def spec_hash(spec: ContainerSpec) -> str:
    """Hash of everything in ``spec`` that cannot change live (all but ports, resources,
    labels and the networks joined)."""
    data = spec.model_dump(mode="json", exclude=set(LIVE_FIELDS))
    if data.get("logs") is None:  # no [logs]: the hash it had before the field existed
        data.pop("logs", None)
    if data.get("proc_view") is True:  # the default: the hash it had before the switch
        data.pop("proc_view", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DesiredContainer:
    """A valid squishfile: the container it asks for."""

    file: Path
    spec: ContainerSpec
    restart: RestartPolicy = "always"
    update: Literal["stop-first", "start-first"] = "stop-first"
    health: HealthCheck | None = None
    drain: float = 0.1
    """start-first: seconds the old container keeps running after its forwards moved."""
    inputs: tuple[tuple[Path, bytes], ...] = ()
    """Files besides the squishfile that the spec was built from (a seccomp profile),
    each with the digest of the bytes read."""
    lines: tuple[tuple[str, int], ...] = ()
    """Where the fields that can conflict with another file are written: ``("name", 1)``,
    ``("ports[0].host", 9)``."""
    file_ports: tuple[PortMapping, ...] | None = None
    """The forwards in the file's own order, which ``ports[N]`` in ``lines`` counts
    (``spec.ports`` is sorted); None: in the spec's order."""
    placement: PlacementSection | None = None
    """The file's ``[placement]``: the hosts it runs on (None: every host)."""

    @property
    def name(self) -> str:
        return self.spec.name

    def restarts_after(self, exit_code: int | None) -> bool:
        """Whether its restart policy brings it back after an exit with ``exit_code``."""
        return self.restart == "always" or (self.restart == "on-failure" and exit_code != 0)


@dataclass(frozen=True)
class HealthCheck:
    """Ready when something inside the container accepts TCP on ``tcp``, or when
    ``command`` run inside it exits 0 within ``timeout`` seconds; probed every
    ``interval`` seconds, at most ``retries`` times."""

    tcp: int | None = None
    command: tuple[str, ...] | None = None
    timeout: float = 1.0
    interval: float = 0.1
    retries: int = 100

    def __str__(self) -> str:
        if self.command is not None:
            return f"the health command {' '.join(self.command)!r} never exited 0"
        return f"the replacement never accepted TCP on port {self.tcp}"


@dataclass(frozen=True)
class FileError:
    """A squishfile that cannot be applied now; ``name`` is the container it claims."""

    file: Path
    name: str
    problems: tuple[Problem, ...]
    kind: Literal["InvalidSpec", "DuplicateName"] = "InvalidSpec"
    name_known: bool = True
    """False when the file could not be read far enough to know which container it is
    (and no earlier parse of it is remembered): then no container may be removed."""
    refused: DesiredContainer | None = None
    """A ``DuplicateName``: the valid container the file asks for, refused its name
    because another file keeps it (the planner decides again when the refused file's
    container is the one running)."""
    waits_on: tuple[str, ...] = ()
    """Host paths a start would refuse now (a local layer's, missing): the problem is
    the host's, not the file's, and the file is loaded again once one of them is
    usable, its bytes unchanged or not."""

    @property
    def message(self) -> str:
        return "; ".join(str(p) for p in self.problems)


def network_labels(folder: Path, name: str) -> dict[str, str]:
    """The labels of the folder's network ``name``: ours, and its name in the folder."""
    return {LABEL_MANAGED: MANAGER, LABEL_FOLDER: str(folder), LABEL_NETWORK: name}


@dataclass(frozen=True)
class DesiredNetwork:
    """A valid network file: the settings of the folder's network ``name``."""

    file: Path
    name: str
    spec: NetworkSpec
    """The runtime's network: its prefixed name, settings and labels."""


@dataclass(frozen=True)
class PlacedElsewhere:
    """A valid squishfile whose ``[placement]`` leaves this host out: not desired here."""

    file: Path
    name: str
    reason: str
    """Why this host is not one of its hosts (its name, or a label)."""


@dataclass(frozen=True)
class DesiredState:
    """Everything one pass of the reconciler wants, read from one folder."""

    folder: Path
    containers: Mapping[str, DesiredContainer] = field(default_factory=dict)
    errors: tuple[FileError, ...] = ()
    readable: bool = True
    """False when the folder is missing or unreadable: then nothing may be deleted."""
    skipped: tuple[Skipped, ...] = ()
    """Entries named like squishfiles that are not read (a directory ``x.toml``)."""
    networks: Mapping[str, DesiredNetwork] = field(default_factory=dict)
    """The valid network files, by the runtime's name of their network."""
    network_errors: tuple[FileError, ...] = ()
    """The network files that do not validate (``name``: the network's name in the
    folder); their networks are left as they are."""
    network_files: tuple[tuple[Path, bytes], ...] = ()
    """Each network file read, with a digest of its bytes (the source's revision)."""
    host: HostIdentity | None = None
    """The host the state was loaded for (None: placement was not looked at)."""
    placed_elsewhere: tuple[PlacedElsewhere, ...] = ()
    """Valid files whose ``[placement]`` leaves this host out, in name order: they are
    not in ``containers``, so a container of theirs that runs here is removed."""

    @property
    def error_files(self) -> frozenset[str]:
        return frozenset(e.file.name for e in self.errors)
