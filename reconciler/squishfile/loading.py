"""Loading squishfiles: read, parse and validate files, and report every problem.

:func:`load_squishfile` reads and validates one file; :func:`validate_files` checks a
set of files, including conflicts between them. Every problem is reported as a
:class:`reconciler.problems.Problem` with file, line and field path; pydantic's errors are
mapped onto the file's keys here, with :mod:`reconciler.squishfile.tomlpos` finding their lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.problems import Problem, SquishfileError
from reconciler.problems import toml_quote as _q
from reconciler.squishfile.model import (
    LAYER_SHAPE_TAGS,
    DownloadLayer,
    LocalLayer,
    PortForward,
    RunSection,
    Squishfile,
)
from reconciler.squishfile.sections import (
    HealthSection,
    ResourcesSection,
    RestartSection,
    SecuritySection,
    UpdateSection,
)
from reconciler.squishfile.tomlpos import (
    Loc,
    TomlError,
    line_of,
    parse_toml,
    problems_from_validation,
    syntax_problem,
)

__all__ = (
    "load_squishfile",
    "validate_files",
)


def load_squishfile(path: Path, content: bytes | None = None) -> Squishfile:
    """Read, parse and validate one squishfile; raise SquishfileError listing all problems.

    ``content``, when given, is the file's bytes already read (so a caller that hashed
    those bytes validates exactly them).
    """
    return _load(path, content)[0]


def _load(path: Path, content: bytes | None = None) -> tuple[Squishfile, str]:
    label = str(path)
    try:
        raw = path.read_bytes() if content is None else content
    except OSError as exc:
        problem = Problem(label, None, "<file>", f"cannot read: {exc.strerror or exc}")
        raise SquishfileError(path, [problem]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = Problem(label, line, "<syntax>", "the file is not valid UTF-8")
        raise SquishfileError(path, [problem]) from None
    try:
        data = parse_toml(text)
    except TomlError as exc:
        raise SquishfileError(path, [syntax_problem(label, text, exc)]) from None
    except RecursionError:
        problem = Problem(label, None, "<syntax>", "nested too deeply to read")
        raise SquishfileError(path, [problem]) from None
    try:
        squishfile = Squishfile.model_validate(data, context={"source": path})
    except ValidationError as exc:
        raise SquishfileError(path, _problems(label, text, data, exc)) from None
    return squishfile, text


def _problems(file: str, text: str, data: dict[str, Any], error: ValidationError) -> list[Problem]:
    problems = problems_from_validation(
        file, text, error, clean_loc=_clean_loc, allowed_keys=_keys_allowed_at
    )
    if "name" in data:
        return problems
    hint = " (taken from the file name; rename the file or set name = ...)"
    return [replace(p, message=p.message + hint) if p.field == "name" else p for p in problems]


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's ``[key]`` markers and the layer shape tags from a location."""
    loc = tuple(part for part in loc if part != "[key]")
    if len(loc) > 2 and loc[0] == "layers" and loc[2] in LAYER_SHAPE_TAGS:
        loc = loc[:2] + loc[3:]
    return loc


def _keys_allowed_at(loc: Loc) -> tuple[str, ...]:
    """The keys a table accepts, given the raw pydantic location of that table."""
    match loc:
        case ():
            return tuple(Squishfile.model_fields)
        case ("run",):
            return tuple(RunSection.model_fields)
        case ("restart",):
            return tuple(RestartSection.model_fields)
        case ("update",):
            return tuple(UpdateSection.model_fields)
        case ("health",):
            return tuple(HealthSection.model_fields)
        case ("security",):
            return tuple(SecuritySection.model_fields)
        case ("resources",):
            return tuple(ResourcesSection.model_fields)
        case ("ports", int()):
            return tuple(PortForward.model_fields)
        case ("layers", str(), "local"):
            return tuple(LocalLayer.model_fields)
        case ("layers", str(), "download"):
            return tuple(DownloadLayer.model_fields)
    return ()


def validate_files(paths: Sequence[Path]) -> list[tuple[Path, SquishfileError | None]]:
    """Validate each file, then check that names and host ports are unique across them.

    Results come in the order of ``paths``. On a conflict the earlier file wins and the
    later one gets the error, so pass paths in a stable (e.g. sorted) order.
    """
    results: list[tuple[Path, SquishfileError | None]] = []
    name_owner: dict[str, Path] = {}
    port_owner: dict[tuple[str, int, str], Path] = {}
    for path in paths:
        try:
            squishfile, text = _load(path)
        except SquishfileError as exc:
            results.append((path, exc))
            continue
        problems: list[Problem] = []
        owner = name_owner.get(squishfile.name)
        if owner is not None:
            message = f"container name {_q(squishfile.name)} is also used by {owner}"
            problems.append(Problem(str(path), line_of(text, ("name",)), "name", message))
        for index, port in enumerate(squishfile.ports):
            owner = port_owner.get((port.host_addr, port.host, port.protocol))
            if owner is not None:
                line = line_of(text, ("ports", index, "host"))
                message = f"host port {port.describe()} is also forwarded by {owner}"
                problems.append(Problem(str(path), line, f"ports[{index}].host", message))
        if problems:
            results.append((path, SquishfileError(path, problems)))
            continue
        name_owner[squishfile.name] = path
        port_owner.update({(p.host_addr, p.host, p.protocol): path for p in squishfile.ports})
        results.append((path, None))
    return results
