"""Desired state: every squishfile of a folder, loaded, validated and labelled.

One ``*.toml`` file is one container. Hidden files and editors' swap, backup and temp
files are ignored. A file that does not validate becomes a :class:`FileError`; the
planner then keeps whatever container that file produced before. Two files declaring the
same name are both flagged, and neither replaces the other's container. The types and
labels live in :mod:`reconciler.state`, so the planner can use them without I/O.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import tomli

from reconciler.errors import Problem, SquishfileError
from reconciler.squishfile import load_squishfile
from reconciler.state import (
    LABEL_FILE,
    LABEL_FOLDER,
    LABEL_HASH,
    LABEL_MANAGED,
    MANAGER,
    DesiredContainer,
    DesiredState,
    FileError,
    is_squishfile,
    spec_hash,
)
from runtime.spec import ContainerSpec

__all__ = (
    "LABEL_FILE",
    "LABEL_FOLDER",
    "LABEL_HASH",
    "LABEL_MANAGED",
    "MANAGER",
    "DesiredContainer",
    "DesiredState",
    "FileCache",
    "FileError",
    "is_squishfile",
    "load_desired",
    "spec_hash",
)


def _claimed_name(path: Path) -> str:
    """The container name a file asks for, read as leniently as possible."""
    try:
        data = tomli.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, tomli.TOMLDecodeError):
        return path.stem
    name = data.get("name")
    return name if isinstance(name, str) and name else path.stem


def _labelled(spec: ContainerSpec, folder: Path, file: Path) -> ContainerSpec:
    labels = {
        **spec.labels,
        LABEL_MANAGED: MANAGER,
        LABEL_FOLDER: str(folder),
        LABEL_FILE: file.name,
        LABEL_HASH: spec_hash(spec),
    }
    return spec.model_copy(update={"labels": labels})


FileCache = dict[Path, tuple[bytes, "DesiredContainer | FileError"]]
"""Parsed files by path, with the digest of the bytes they were parsed from."""


def _load_one(path: Path, folder: Path) -> DesiredContainer | FileError:
    try:
        squishfile = load_squishfile(path)
        spec = squishfile.to_spec()
    except SquishfileError as exc:
        return FileError(path, _claimed_name(path), exc.problems)
    except ValueError as exc:
        return FileError(path, _claimed_name(path), (Problem(str(path), None, "layers", str(exc)),))
    return DesiredContainer(path, _labelled(spec, folder, path), squishfile.restart.policy)


def load_desired(folder: Path, cache: FileCache | None = None) -> DesiredState:
    """Read every squishfile of ``folder``; never raises for a bad file.

    With a ``cache``, a file whose bytes are unchanged is not parsed again: an idle
    resync reads each file but validates none. (Timestamps are not trusted: a same-size
    edit within one timestamp tick would look unchanged.)
    """
    folder = Path(os.path.abspath(folder))
    try:
        paths = sorted(p for p in folder.iterdir() if is_squishfile(p) and p.is_file())
    except OSError:
        return DesiredState(folder=folder, readable=False)
    valid: dict[str, list[DesiredContainer]] = {}
    errors: list[FileError] = []
    for path in paths:
        try:
            key = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
        except OSError:
            continue  # deleted between the listing and now
        known = cache.get(path) if cache is not None else None
        loaded = known[1] if known is not None and known[0] == key else _load_one(path, folder)
        if cache is not None:
            cache[path] = (key, loaded)
        if isinstance(loaded, FileError):
            errors.append(loaded)
        else:
            valid.setdefault(loaded.name, []).append(loaded)
    if cache is not None:
        for gone in set(cache) - set(paths):
            del cache[gone]
    containers: dict[str, DesiredContainer] = {}
    for name, entries in valid.items():
        if len(entries) == 1:
            containers[name] = entries[0]
            continue
        files = ", ".join(e.file.name for e in entries)
        for entry in entries:
            problem = Problem(
                str(entry.file), None, "name", f"container name {name!r} is declared by {files}"
            )
            errors.append(FileError(entry.file, name, (problem,), kind="DuplicateName"))
    return DesiredState(folder=folder, containers=containers, errors=tuple(errors))
