"""Find the source line of a key path in TOML text, for error messages.

pydantic reports where a problem is as a location such as ``("ports", 1, "host")``;
users want a line number. :func:`line_of` (:func:`lines_of` for many paths) scans the TOML
text (without evaluating values) and maps every key path it sees to the line where it is
written:

* ``key = ...`` at the top level or inside a ``[table]``, including dotted keys
  (``run.command = "x"`` defines both ``("run",)`` and ``("run", "command")``);
* ``[table]`` and ``[a.b]`` headers;
* ``[[array]]`` headers: the Nth header is index N (counting from 0), and the bare
  array path points at the first one;
* values spanning lines (arrays, multi-line strings, TOML 1.1 inline tables) are
  skipped; anything inside an inline table or array points at its key's line.

A location that is not written in the text (a missing key, an array element) falls back
to the nearest enclosing path that is, e.g. the table header. The scanner never raises:
malformed text yields a best effort answer or ``None``.

:func:`problems_from_validation` and :func:`syntax_problem` use it to turn pydantic and
TOML errors into located :class:`reconciler.problems.Problem` objects.

:func:`parse_toml` and :data:`TomlError` are the project's one TOML reader: every squishfile
is read through them, so the same text parses the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tomli
from pydantic import ValidationError

from reconciler.problems import Problem, describe_error, field_path

__all__ = (
    "Loc",
    "TomlError",
    "line_of",
    "lines_of",
    "parse_toml",
    "problems_from_validation",
    "syntax_problem",
)

Loc = tuple[str | int, ...]
"""A key path in a TOML document, as pydantic reports locations: ``("ports", 1, "host")``."""

# tomli rather than the standard library's tomllib: tomli reads TOML 1.1 (multi-line
# inline tables, which line_of indexes too) and its errors carry the line and column
# (tomllib's only from Python 3.14). A fallback to tomllib would make the same squishfile
# valid or invalid, located or not, depending on the Python version, so there is none;
# pyproject.toml's floor (tomli 2.4.0) is the first release with both.
TomlError = tomli.TOMLDecodeError
"""What :func:`parse_toml` raises for text that is not TOML."""


def parse_toml(text: str) -> dict[str, Any]:
    """The TOML document ``text`` as a dict; raises :data:`TomlError` when it is not TOML
    (and ``RecursionError`` when it nests too deeply)."""
    return tomli.loads(text)


_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def line_of(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line where ``loc`` (or its nearest written parent) is written, else None."""
    return lines_of(text, [loc])[0]


def lines_of(text: str, locs: Sequence[Loc]) -> list[int | None]:
    """:func:`line_of` for each of ``locs``, scanning ``text`` once."""
    lines = _LineIndex(text).build()
    return [_nearest_line(lines, loc) for loc in locs]


def problems_from_validation(
    file: str,
    text: str,
    error: ValidationError,
    *,
    clean_loc: Callable[[Loc], Loc] = lambda loc: loc,
    allowed_keys: Callable[[Loc], Sequence[str]] = lambda loc: (),
) -> list[Problem]:
    """One Problem per pydantic error, located in ``text`` (the TOML source of ``file``).

    ``clean_loc`` maps pydantic's location to the key path in the file (dropping union
    tags and the like); ``allowed_keys`` says which keys the table at a raw location takes.
    """
    lines = _LineIndex(text).build()
    problems = []
    for details in error.errors(include_url=False):
        raw_loc = details["loc"]
        loc = clean_loc(raw_loc)
        message = describe_error(details, allowed_keys(raw_loc[:-1]))
        line = _nearest_line(lines, loc)
        problems.append(Problem(file, line, field_path(loc) or "<file>", message))
    return problems


def syntax_problem(file: str, text: str, error: TomlError) -> Problem:
    """One ``<syntax>`` problem for a TOML parse error, at its line and column."""
    where = f" (column {error.colno})" if error.colno else ""
    return Problem(file, error.lineno, "<syntax>", f"invalid TOML: {error.msg}{where}")


def _nearest_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


class _LineIndex:
    """A single forward pass over TOML text recording the line of every key path."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Loc, int] = {}
        self.array_counts: dict[Loc, int] = {}
        self.table: Loc = ()

    def build(self) -> dict[Loc, int]:
        while True:
            self._skip_blank()
            if self.pos >= len(self.text):
                return self.lines
            start = self.pos
            if self._peek() == "[":
                self._read_header()
            else:
                self._read_key_value()
            if self.pos == start:  # garbage we cannot interpret: skip one character
                self._advance(1)

    # -- statements ---------------------------------------------------------------------

    def _read_header(self) -> None:
        line = self.line
        is_array = self._peek(1) == "["
        self._advance(2 if is_array else 1)
        keys = self._read_key()
        self._skip_to_line_end()
        if not keys:
            return
        parent = self._concrete(keys[:-1])
        path = (*parent, keys[-1])
        if is_array:
            index = self.array_counts.get(path, 0)
            self.array_counts[path] = index + 1
            self.lines.setdefault(path, line)
            path = (*path, index)
        self._record_prefixes(path, line)
        self.table = path

    def _read_key_value(self) -> None:
        line = self.line
        keys = self._read_key()
        if not keys:
            self._skip_to_line_end()
            return
        self._skip_inline_space()
        if self._peek() == "=":
            self._advance(1)
        self._skip_value()
        self._record_prefixes((*self.table, *keys), line)

    def _concrete(self, keys: tuple[str, ...]) -> Loc:
        """Turn header keys into a path, inserting the current index of array tables."""
        path: Loc = ()
        for key in keys:
            path = (*path, key)
            count = self.array_counts.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def _record_prefixes(self, path: Loc, line: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    # -- keys ---------------------------------------------------------------------------

    def _read_key(self) -> tuple[str, ...]:
        keys: list[str] = []
        while True:
            self._skip_inline_space()
            key = self._read_simple_key()
            if key is None:
                return tuple(keys)
            keys.append(key)
            self._skip_inline_space()
            if self._peek() != ".":
                return tuple(keys)
            self._advance(1)

    def _read_simple_key(self) -> str | None:
        quote = self._peek()
        if quote in ('"', "'"):
            start = self.pos
            self._skip_string()
            return _decode_quoted_key(self.text[start : self.pos])
        start = self.pos
        while self._peek() in _BARE_KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos] or None

    # -- skipping -----------------------------------------------------------------------

    def _skip_value(self) -> None:
        depth = 0
        while self.pos < len(self.text):
            char = self._peek()
            if char in ('"', "'"):
                self._skip_string()
            elif char == "#":
                self._skip_comment()
            elif char == "\n" and depth == 0:
                return
            else:
                if char in "[{":
                    depth += 1
                elif char in "]}":
                    depth = max(0, depth - 1)
                self._advance(1)

    def _skip_string(self) -> None:
        quote = self._peek()
        if self.text.startswith(quote * 3, self.pos):
            self._advance(3)
            self._skip_string_body(quote, multiline=True)
        else:
            self._advance(1)
            self._skip_string_body(quote, multiline=False)

    def _skip_string_body(self, quote: str, *, multiline: bool) -> None:
        while self.pos < len(self.text):
            char = self._peek()
            if char == "\\" and quote == '"':
                self._advance(2)
            elif char == "\n" and not multiline:
                return
            elif char == quote and not multiline:
                self._advance(1)
                return
            elif char == quote and self.text.startswith(quote * 3, self.pos):
                end = self.pos + 3
                while end < len(self.text) and self.text[end] == quote and end < self.pos + 5:
                    end += 1  # up to two quotes may close the content: """a""""
                self._advance(end - self.pos)
                return
            else:
                self._advance(1)

    def _skip_blank(self) -> None:
        while self.pos < len(self.text):
            char = self._peek()
            if char == "#":
                self._skip_comment()
            elif char in " \t\r\n":
                self._advance(1)
            else:
                return

    def _skip_inline_space(self) -> None:
        while self._peek() in (" ", "\t"):
            self.pos += 1

    def _skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _skip_to_line_end(self) -> None:
        while self.pos < len(self.text) and self._peek() != "\n":
            if self._peek() in ('"', "'"):
                self._skip_string()
            else:
                self._advance(1)

    # -- primitives ---------------------------------------------------------------------

    def _peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def _advance(self, count: int) -> None:
        end = min(len(self.text), self.pos + count)
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end


def _decode_quoted_key(raw: str) -> str:
    """The value of a quoted key as TOML defines it (escapes applied)."""
    try:
        value = parse_toml(f"k = {raw}")["k"]
    except TomlError:
        return raw.strip("\"'")
    return value if isinstance(value, str) else raw
