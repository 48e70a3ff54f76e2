"""What the command line prints for a person goes through rich, imported on first use:
``--json`` and the other outputs for programs never import it (about 11 ms of a
command's start)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ("LazyConsole", "escape")


def escape(markup: str) -> str:
    """rich's escape of markup characters (``[``) in ``markup``."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


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
