"""Loading squishfiles: read, parse and validate files, and report every problem.

:func:`load_squishfile` reads and validates one file; :func:`load_with_lines` also finds
where it writes the fields that may conflict with another file (the conflicts themselves are
decided in :mod:`reconciler.planning.conflicts`). Every problem is reported as a
:class:`reconciler.problems.Problem` with file, line and field path; pydantic's errors are
mapped onto the file's keys here, with :mod:`reconciler.squishfile.tomlpos` finding their lines.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.problems import Problem, SquishfileError
from reconciler.squishfile.model import (
    LAYER_SHAPE_TAGS,
    DownloadLayer,
    LocalLayer,
    PortForward,
    RunSection,
    Squishfile,
)
from reconciler.squishfile.sections import (
    PROFILE_CHECK,
    HealthSection,
    ResourcesSection,
    RestartSection,
    SecuritySection,
    UpdateSection,
)
from reconciler.squishfile.tomlpos import (
    Loc,
    TomlError,
    lines_of,
    parse_toml,
    problems_from_validation,
    syntax_problem,
)
from runtime.security.profile import ProfileCheck

__all__ = (
    "ConflictLines",
    "load_squishfile",
    "load_with_lines",
)


def load_squishfile(
    path: Path, content: bytes | None = None, *, check_profile: ProfileCheck | None = None
) -> Squishfile:
    """Read, parse and validate one squishfile; raise SquishfileError listing all problems.

    ``content``, when given, is the file's bytes already read (so a caller that hashed
    those bytes validates exactly them). ``check_profile`` checks a seccomp profile
    beyond its structure (callers that may load libseccomp pass
    :func:`runtime.security.seccomp.compile_profile`); its error is the
    ``security.seccomp`` line's.
    """
    return _load(path, content, check_profile)[0]


ConflictLines = tuple[tuple[str, int], ...]
"""Where a file writes the fields another file may conflict with: ``("name", 1)``,
``("ports[0].host", 9)``."""


def load_with_lines(
    path: Path, content: bytes | None = None, *, check_profile: ProfileCheck | None = None
) -> tuple[Squishfile, ConflictLines]:
    """:func:`load_squishfile`, and where the file writes its name and each
    ``[[ports]]`` host (a name taken from the file's name has no line)."""
    squishfile, text = _load(path, content, check_profile)
    return squishfile, _conflict_lines(squishfile, text)


def _load(
    path: Path, content: bytes | None = None, check_profile: ProfileCheck | None = None
) -> tuple[Squishfile, str]:
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
        context = {"source": path, PROFILE_CHECK: check_profile}
        squishfile = Squishfile.model_validate(data, context=context)
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


_SECTIONS: dict[str, type[BaseModel]] = {
    "run": RunSection,
    "restart": RestartSection,
    "update": UpdateSection,
    "health": HealthSection,
    "security": SecuritySection,
    "resources": ResourcesSection,
}
"""The top-level tables, by key."""


def _keys_allowed_at(loc: Loc) -> tuple[str, ...]:
    """The keys a table accepts, given the raw pydantic location of that table."""
    match loc:
        case ():
            return tuple(Squishfile.model_fields)
        case (str() as key,) if key in _SECTIONS:
            return tuple(_SECTIONS[key].model_fields)
        case ("ports", int()):
            return tuple(PortForward.model_fields)
        case ("layers", str(), "local"):
            return tuple(LocalLayer.model_fields)
        case ("layers", str(), "download"):
            return tuple(DownloadLayer.model_fields)
    return ()


def _conflict_lines(squishfile: Squishfile, text: str) -> ConflictLines:
    wanted: list[tuple[str, Loc]] = [("name", ("name",))]
    wanted += [(f"ports[{i}].host", ("ports", i, "host")) for i in range(len(squishfile.ports))]
    lines = lines_of(text, [loc for _, loc in wanted])
    return tuple((field, line) for (field, _), line in zip(wanted, lines, strict=True) if line)
