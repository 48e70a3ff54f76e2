"""Field checks and types shared by the squishfile's models (``reconciler.squishfile.model`` and
``reconciler.squishfile.sections``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ConfigDict

from reconciler.problems import toml_quote as _q

__all__ = (
    "REPLACEMENT_SUFFIXES",
    "STRICT",
    "ExecString",
    "as_tuple",
    "is_path_like",
    "not_empty",
    "outside_of",
    "resolve",
)

REPLACEMENT_SUFFIXES = (".next", ".old")
"""What a start-first replacement appends to a container's name while it runs: the new
container's name until it takes over, and the old one's after (never a squishfile's)."""

STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
"""Every table: immutable, unknown keys refused, no type coercion."""
_PATH_PREFIXES = ("./", "../", "/", "~")


def _check_exec_string(value: str) -> str:
    if "\0" in value:
        raise ValueError("may not contain a NUL character")
    return value


ExecString = Annotated[str, AfterValidator(_check_exec_string)]
"""A string that ends up in an argv or an environment: no NUL."""


def as_tuple(value: object) -> object:
    """TOML arrays arrive as lists; the models store immutable tuples."""
    return tuple(value) if isinstance(value, list) else value


def not_empty(
    message: str = "may not be empty",
) -> Callable[[tuple[str, ...] | None], tuple[str, ...] | None]:
    """A check that refuses an empty array with ``message`` (a missing one passes)."""

    def check(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value == ():
            raise ValueError(message)
        return value

    return check


def is_path_like(value: str) -> bool:
    return value in (".", "..") or value.startswith(_PATH_PREFIXES)


def resolve(path: str, source: Path | None) -> Path:
    """``path`` made absolute: ``~`` expanded, relative ones from the squishfile's folder.

    The folder a path starts from (the home folder, the squishfile's folder) is taken by
    its real path, so a symlink above it (``/home -> /usr/home``) is resolved here, once;
    nothing below it is (the runtime refuses a bind source that goes through a symlink).
    """
    head, _, rest = path.partition("/")
    if head.startswith("~"):
        anchor = os.path.expanduser(head)
        if anchor.startswith("~"):
            raise ValueError(f"{_q(path)} names a home folder that does not exist here")
    elif os.path.isabs(path):
        return Path(os.path.abspath(path))
    elif source is None:
        raise ValueError(f"cannot make {_q(path)} absolute: unknown squishfile folder")
    else:
        anchor, rest = str(source.parent), path
    return Path(os.path.abspath(os.path.join(os.path.realpath(anchor), rest)))


def outside_of(confine: Path, path: Path | str) -> str | None:
    """Why a git source's file may not use ``path``: it is outside ``confine`` (the
    revision's checkout); None when it is inside."""
    inside = os.path.realpath(confine)
    if os.path.commonpath((inside, os.path.normpath(path))) == inside:
        return None
    return (
        f"{_q(str(path))} is not inside the repository: a git source's files reach only "
        "their own (--allow-host-paths lets them reach the host's)"
    )
