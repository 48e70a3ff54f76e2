"""The reconciler's settings file: what a user would otherwise repeat on every command.

``reconciler --config FILE COMMAND``, else ``$SQUISH_CONFIG``, else
``$XDG_CONFIG_HOME/squish/reconciler.toml`` (``~/.config/...``) when it exists::

    [git]                       # follow a repository (as --git URL and its options)
    url = "https://git.example.com/ops.git"
    branch = "main"             # or tag = "v1" / rev = "3f2a..."
    path = "prod"
    interval = "30s"
    verify_signatures = true
    allowed_signers = "~/.config/squish/allowed_signers"
    host_paths = false          # true: its files may bind host paths (--allow-host-paths)

    [host]                      # this host, for [placement] (as --host and --label)
    name = "web-1"
    labels = { zone = "a" }

    [network]                   # who serves bridge containers' TCP host forwards
    port_handler = "splice"     # or "slirp4netns" (as $SQUISH_PORT_HANDLER)

Options on the command line win over the file: ``--git URL`` replaces its ``[git]``
table, a DIR given on the command line means that folder, not the repository; a
``$SQUISH_PORT_HANDLER`` that is set wins over ``port_handler``. A file
that cannot be read or does not validate is an error at its ``file:line`` (the command
does nothing), read through the squishfiles' own TOML reader.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from reconciler.problems import Problem
from reconciler.settings import GitSettings, Settings, default_config, parse_interval
from reconciler.squishfile.tomlpos import (
    TomlError,
    line_of,
    parse_toml,
    problems_from_validation,
    syntax_problem,
)

__all__ = ("ConfigError", "apply_file", "config_path")

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConfigError(ValueError):
    """The settings file is missing (when named), unreadable or invalid."""


class _Git(BaseModel):
    model_config = _STRICT

    url: str
    branch: str | None = None
    tag: str | None = None
    rev: str | None = None
    path: str = ""
    interval: str | None = None
    verify_signatures: bool = False
    allowed_signers: str | None = None
    host_paths: bool = False

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is not None:
            parse_interval(value)  # raises ValueError with what it expects
        return value


class _Host(BaseModel):
    model_config = _STRICT

    name: str | None = None
    labels: dict[str, str] = {}


class _Network(BaseModel):
    model_config = _STRICT

    port_handler: Literal["splice", "slirp4netns"] | None = None


class _File(BaseModel):
    model_config = _STRICT

    git: _Git | None = None
    host: _Host | None = None
    network: _Network | None = None


def config_path(given: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """The settings file to read: ``given`` (``--config``), ``$SQUISH_CONFIG`` (both must
    exist), else the default one if it exists; None when there is none."""
    env = os.environ if environ is None else environ
    path = Path(given).expanduser() if given else default_config(env)
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: no such settings file")
    return path


def _read(path: Path) -> tuple[_File, str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    try:
        return _File.model_validate(parse_toml(text)), text
    except TomlError as exc:
        raise ConfigError(str(syntax_problem(str(path), text, exc))) from exc
    except ValidationError as exc:
        problems: list[Problem] = problems_from_validation(str(path), text, exc)
        raise ConfigError("\n".join(map(str, problems))) from exc


def apply_file(settings: Settings, path: Path, environ: dict[str, str] | None = None) -> Settings:
    """``settings`` with what the file at ``path`` sets (what ``environ``, by default this
    process's environment, sets of the same wins)."""
    env = os.environ if environ is None else environ
    read, text = _read(path)
    changes: dict[str, Any] = {}
    if read.git is not None:
        fields = read.git.model_dump(exclude={"interval", "allowed_signers"})
        if read.git.interval is not None:
            fields["interval"] = parse_interval(read.git.interval)
        if read.git.allowed_signers is not None:
            fields["allowed_signers"] = str(Path(read.git.allowed_signers).expanduser())
        try:
            changes["git"] = GitSettings(**fields)
        except ValueError as exc:  # settings that do not go together, such as branch and tag
            where = Problem(str(path), line_of(text, ("git",)), "git", str(exc))
            raise ConfigError(str(where)) from exc
    if read.host is not None:
        if read.host.name is not None:
            changes["host"] = read.host.name
        if read.host.labels:
            changes["labels"] = dict(read.host.labels)
    handler = read.network.port_handler if read.network is not None else None
    if handler is not None and not env.get("SQUISH_PORT_HANDLER"):
        changes["runtime"] = dataclasses.replace(settings.runtime, port_handler=handler)
    return dataclasses.replace(settings, **changes)
