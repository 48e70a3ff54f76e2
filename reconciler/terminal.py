"""What the command line prints for a person goes through rich, imported on first use:
``--json`` and the other outputs for programs never import it (about 11 ms of a
command's start)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ("LazyConsole", "escape", "is_control", "visible", "visible_char")


def escape(markup: str) -> str:
    """rich's escape of markup characters (``[``) in ``markup``."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


def is_control(c: str) -> bool:
    """Whether ``c`` is a control character a terminal may act on: C0, DEL and C1."""
    return ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F


def visible_char(c: str) -> str:
    """``c``, or ``\\xNN`` when it is a control character (:func:`is_control`)."""
    return f"\\x{ord(c):02x}" if is_control(c) else c


def visible(text: str) -> str:
    """``text`` with its control characters written as ``\\xNN``: an escape sequence
    in it cannot drive a terminal."""
    return "".join(visible_char(c) for c in text)


class LazyConsole:
    """A rich Console with these options, made when it is first used."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)
