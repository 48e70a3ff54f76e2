"""A cancel token for long blocking work (a download, an unpack) run in a worker thread.

The work calls :meth:`Cancel.check` between small steps (a tar member, a chunk) and
registers, around a blocking read, a callback that unblocks it (shutting a socket
down). Whoever owns the work calls :meth:`Cancel.cancel` from any thread: the work
raises :class:`Cancelled` at its next step and cleans up as for any other error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ("Cancel", "Cancelled", "never")


class Cancelled(Exception):
    """The work was cancelled by its owner; what it made so far has been removed."""


class Cancel:
    """Set once, from any thread; checked by the work."""

    def __init__(self) -> None:
        self._set = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def cancelled(self) -> bool:
        return self._set.is_set()

    def cancel(self) -> None:
        """Ask the work to stop; run every registered unblocking callback once."""
        with self._lock:
            self._set.set()
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for callback in callbacks:
            callback()

    def check(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._set.is_set():
            raise Cancelled("cancelled")

    @contextmanager
    def unblocking(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` if the work is cancelled while inside this block (at once if
        it already is), so that a blocking call returns."""
        with self._lock:
            key = self._next
            self._next += 1
            already = self._set.is_set()
            if not already:
                self._callbacks[key] = callback
        if already:
            callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)


def never() -> Cancel:
    """A token nobody cancels (for callers that do not cancel)."""
    return Cancel()
