"""The reconciler's errors: what is wrong with a squishfile, and where.

A :class:`Problem` is one thing wrong in one file, located by line (when known) and by
field path (``ports[1].host``, ``layers.data.target``). A :class:`SquishfileError` carries
every problem found in one file, so a user can fix them all in one go.

The helpers at the end word pydantic's errors as human messages; finding their lines is
:mod:`reconciler.squishfile.tomlpos`'s job.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import ErrorDetails

from reconciler.terminal import is_control

__all__ = (
    "Problem",
    "SquishfileError",
    "describe_error",
    "describe_value",
    "field_path",
    "toml_quote",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a squishfile.

    ``field`` is the key path in the file (``ports[0].host``), or ``<syntax>`` for a TOML
    syntax error, or ``<file>`` when the file itself cannot be read. ``line`` is 1-based,
    or None when the problem is not tied to a line (e.g. a required key is missing from a
    file that has no enclosing table to point at).
    """

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}"


class SquishfileError(ValueError):
    """A squishfile could not be read or is invalid; ``problems`` lists why.

    ``str()`` gives one problem per line, in file order (problems without a line last).
    """

    def __init__(self, path: Path, problems: Iterable[Problem]) -> None:
        ordered = tuple(sorted(problems, key=_file_order))
        if not ordered:
            raise ValueError("a SquishfileError needs at least one problem")
        super().__init__("\n".join(str(problem) for problem in ordered))
        self.path = path
        self.problems: tuple[Problem, ...] = ordered

    def __reduce__(self) -> tuple[type[SquishfileError], tuple[Path, tuple[Problem, ...]]]:
        return (type(self), (self.path, self.problems))


def _file_order(problem: Problem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


# -- turning parser and validator errors into human messages ---------------------------


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_COMPARISONS = {
    "greater_than_equal": "≥",
    "greater_than": ">",
    "less_than_equal": "≤",
    "less_than": "<",
}


def toml_quote(value: str) -> str:
    """``value`` as a TOML basic string, for messages: ``"8080"``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    # a terminal's control sequences (a title, a cleared screen) shown, not obeyed
    shown = (f"\\u{ord(c):04x}" if is_control(c) and c != "\t" else c for c in escaped)
    return '"' + "".join(shown) + '"'


def field_path(loc: Sequence[str | int]) -> str:
    """A key path as users write it: ``ports[1].host``, ``layers.data.target``, ``env."A B"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else toml_quote(part)
            out += f".{key}" if out else key
    return out


def describe_value(value: object) -> str:
    """A TOML-flavoured description of a parsed value: ``the string "8080"``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {toml_quote(shown)}"
    if isinstance(value, int | float):
        return f"the {'integer' if isinstance(value, int) else 'float'} {value}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"the date/time {value.isoformat()}"
    return repr(value)


def describe_error(error: ErrorDetails, allowed_keys: Sequence[str] = ()) -> str:
    """A human message for one pydantic error; ``allowed_keys`` feeds 'did you mean'."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error["input"]
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        key = str(error["loc"][-1]) if error["loc"] else "?"
        return f"unknown key {toml_quote(key)}{_suggestion(key, allowed_keys)}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, not {describe_value(value)}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in _COMPARISONS:
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {_COMPARISONS[kind]} {limit}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {expected}, not {describe_value(value)}"
    if kind == "finite_number":
        return "must be a finite number, not inf or nan"
    if kind == "string_too_short":
        return "may not be empty"
    return str(error["msg"])


def _suggestion(key: str, allowed_keys: Sequence[str]) -> str:
    if not allowed_keys:
        return ""
    close = difflib.get_close_matches(key, allowed_keys, n=1)
    if close:
        return f"; did you mean {toml_quote(close[0])}?"
    return f"; expected one of: {', '.join(allowed_keys)}"
