"""The loop's event journal: what a running loop does, for another process to follow.

A loop appends one JSON object a line to ``<state>/reconciler/<folder key>.events.jsonl``,
beside its status file (:class:`reconciler.control.status.StatusStore`): when it starts
and stops, each pass, each action with its outcome, each pass that failed, and each
condition as it appears, changes or clears (as the loop's console says them). The file
is bounded: once a write takes it past :data:`MAX_BYTES` it becomes ``….events.jsonl.1``
(replacing the one before) and a new one is begun, so about twice that is kept (a pass's
events are appended at once).

``reconciler events`` follows it with :func:`follow`, like ``tail -F``: it waits for a
file that is not there yet (the loop has not started), reads a rotated file to its end
before it goes on to the new one, and only ever hands on whole lines. Only the folder's
claimant writes (the status store's lock), so lines never interleave. A write cut short
(a signal, a filling disk) is carried on until all is written; one that fails part way
leaves a torn line, ended before anything else is appended, which readers skip (it is
no JSON object): an event is in the journal whole or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.control.loop import PassResult
from reconciler.control.status import ConditionReport, StatusStore

__all__ = ("MAX_BYTES", "Journal", "follow", "journal_path")

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
"""The size at which the journal file is rotated."""


def journal_path(store: StatusStore) -> Path:
    """The journal of the folder whose status ``store`` keeps."""
    return store.path.with_name(f"{store.path.stem}.events.jsonl")


def _rotated(path: Path) -> Path:
    return path.with_name(f"{path.name}.1")


def _unfinished(fd: int) -> bool:
    """Whether the file open at ``fd`` ends inside a line (a write failed part way)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


class Journal:
    """Appends a running loop's events to its journal file."""

    def __init__(
        self,
        path: Path,
        *,
        folder: str,
        clock: Callable[[], float] = time.time,
        max_bytes: int = MAX_BYTES,
        write: Callable[[int, bytes], int] = os.write,
    ) -> None:
        self.path = path
        self._clock = clock
        self._max_bytes = max_bytes
        self._os_write = write
        """``os.write``; a test gives one that writes less, or fails part way."""
        self._conditions = ConditionReport(folder)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event."""
        self._write([self._line(event, **fields)])

    def _line(self, event: str, **fields: Any) -> bytes:
        return (json.dumps({"at": self._clock(), "event": event, **fields}) + "\n").encode()

    def _write(self, lines: list[bytes]) -> None:
        """Append ``lines`` at once; a full or broken disk loses them (with a warning),
        never the loop's work."""
        try:
            self._append(b"".join(lines))
        except OSError as exc:
            log.warning("cannot write the event journal %s: %s", self.path, exc)

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if _unfinished(fd):
                data = b"\n" + data  # the torn line ends as a line of its own, skipped
            self._write_all(fd, data)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size >= self._max_bytes:
            os.replace(self.path, _rotated(self.path))

    def _write_all(self, fd: int, data: bytes) -> None:
        """Write all of ``data``, however short each write is (a signal, a disk filling
        up). One that fails part way leaves a torn line: it is ended at once when the
        disk takes a byte more, else before the next append (:func:`_unfinished`), so
        that no line is ever appended to it; readers skip it (it is no JSON object)."""
        rest = data
        try:
            while rest:
                written = self._os_write(fd, rest)
                if written <= 0:
                    raise OSError(errno.EIO, "the journal file took no byte")
                rest = rest[written:]
        except OSError:
            if rest != data:
                with contextlib.suppress(OSError):
                    self._os_write(fd, b"\n")
            raise

    def started(self, pid: int) -> None:
        self.write("started", pid=pid)

    def stopped(self) -> None:
        self.write("stopped")

    def pass_failed(self, error: str) -> None:
        self.write("pass-failed", error=error)

    def passed(self, result: PassResult) -> None:
        """A pass: its actions and their outcomes, the conditions that changed, and a
        summary line, appended at once (one open and write per pass, not per event)."""
        lines = [
            self._line(
                "action",
                action=outcome.action.kind.value,
                name=outcome.action.name,
                reason=outcome.action.reason,
                ok=outcome.ok,
                error=outcome.error,
                text=str(outcome.action),
            )
            for outcome in result.outcomes
        ]
        appeared, cleared = self._conditions.diff(result.plan.conditions)
        lines += [
            self._line("condition", condition=kind, name=name, message=message)
            for name, kind, message in appeared
        ]
        lines += [
            self._line("condition-cleared", condition=kind, name=name) for name, kind in cleared
        ]
        lines.append(
            self._line(
                "pass",
                trigger=result.trigger,
                duration_ms=round(result.duration * 1000, 1),
                actions=len(result.outcomes),
                failed=len(result.failed),
                revision=result.revision,
            )
        )
        self._write(lines)


class _Reader:
    """One journal file being read: whole lines only, the rest kept for later."""

    def __init__(self, path: Path, *, at_end: bool) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._partial = b""
        self._open(at_end=at_end)

    def _open(self, *, at_end: bool) -> None:
        """Read the file now at the path (none there: keep the one open, if any)."""
        try:
            file = open(self.path, "rb")  # noqa: SIM115  # kept open across reads
        except FileNotFoundError:
            return
        if self._file is not None:
            self._file.close()
        self._file = file
        self._inode = os.fstat(file.fileno()).st_ino
        self._partial = b""
        if at_end:
            file.seek(0, os.SEEK_END)

    def lines(self) -> list[bytes]:
        """The whole lines written since the last call; when the file was rotated (or
        appeared), the rest of the old one, then the new one's from its start."""
        found = self._read()
        if not found and self._replaced():
            found = self._read()
            self._open(at_end=False)
            found += self._read()
        return found

    def _read(self) -> list[bytes]:
        if self._file is None:
            return []
        data = self._partial + self._file.read()
        *whole, self._partial = data.split(b"\n")
        return [line for line in whole if line.strip()]

    def _replaced(self) -> bool:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False
        return inode != self._inode

    @property
    def opened(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def follow(
    path: Path,
    *,
    history: bool = False,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.1,
    ready: Callable[[bool], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The events of the journal at ``path`` as they are written, until ``stop()`` (asked
    after each read); with ``history``, first those it still keeps. Lines that are not
    JSON objects are skipped. ``ready`` is told, once the journal is being watched,
    whether it exists yet (a loop that starts later is followed from its first event)."""
    if history:
        yield from _events(_whole_lines(_rotated(path)))
    reader = _Reader(path, at_end=not history)
    if ready is not None:
        ready(reader.opened)
    try:
        while True:
            lines = reader.lines()
            yield from _events(lines)
            if stop():
                return
            if not lines:
                sleep(poll)
    finally:
        reader.close()


def _whole_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except FileNotFoundError:
        return []


def _events(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event
