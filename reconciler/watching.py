"""Watching a folder from another terminal: ``reconciler status --watch`` (the status
table, redrawn in place with rich's live display whenever it changes) and ``reconciler
events [--json]`` (what the folder's loop does, as it does it, from the loop's journal:
:mod:`reconciler.control.journal`). :mod:`reconciler.cli` adds the options and hands
over what to show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.control.journal import follow
from reconciler.terminal import escape, visible

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = (
    "add_events_options",
    "add_watch_options",
    "describe_event",
    "print_events",
    "watch_json",
    "watch_status",
)

Snapshot = Callable[[], dict[str, Any]]
"""A fresh status document (``status --json``'s)."""
Parts = Callable[[dict[str, Any], float], Sequence["RenderableType"]]
"""What ``status`` shows of a document at a time."""


def add_watch_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="keep the table on screen, redrawn when it changes (with --json: the "
        "document on one line, again on each change); Ctrl-C ends",
    )
    command.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --watch: how often to look (default 1)",
    )


def add_events_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="one JSON object a line")
    command.add_argument(
        "--all", action="store_true", help="first the events the journal still keeps"
    )


_BOOKKEEPING = ("passes", "last_pass_at", "last_pass_ms", "last_trigger", "last_actions")
"""The loop's counters that move with every pass, even one that changed nothing."""


def _steady(document: dict[str, Any]) -> str:
    """The document less what moves by itself as time passes (ages, the loop's pass
    counters, when it last recorded), as a key."""
    rows = [{**row, "age_s": None} for row in document.get("containers", ())]
    loop = {k: v for k, v in document.get("loop", {}).items() if k not in _BOOKKEEPING}
    recorded = {**(document.get("recorded") or {}), "at": None}
    steady = {**document, "containers": rows, "loop": loop, "recorded": recorded}
    return json.dumps(steady, sort_keys=True, default=str)


def watch_status(
    snapshot: Snapshot,
    parts: Parts,
    *,
    printed: Callable[[dict[str, Any]], None],
    interval: float,
    console: Console | None = None,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Show ``snapshot()``'s status, looking again every ``interval`` seconds and
    showing it again only when it changed, until Ctrl-C (or ``stop()``): on a terminal
    ``parts`` redrawn in place; elsewhere (a pipe, a file) ``printed`` anew, as
    ``status`` prints it, after a blank line."""
    from rich.console import Console, Group
    from rich.live import Live

    console = console or Console(highlight=False)
    with contextlib.ExitStack() as stack:
        if console.is_terminal:
            live = stack.enter_context(
                Live(console=console, auto_refresh=False, redirect_stderr=False)
            )

            def show(document: dict[str, Any], now: float) -> None:
                header = f"[dim]as of {time.strftime('%H:%M:%S', time.localtime(now))}[/]"
                live.update(Group(header, *parts(document, now)), refresh=True)

        else:

            def show(document: dict[str, Any], now: float) -> None:
                console.print()
                printed(document)
                console.file.flush()

        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            _watch(snapshot, show, interval=interval, stop=stop, sleep=sleep)


def watch_json(
    snapshot: Snapshot,
    *,
    interval: float,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``status --watch --json``: the document on one line, again each time it changes,
    until Ctrl-C (or ``stop()``)."""

    def show(document: dict[str, Any], now: float) -> None:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _watch(snapshot, show, interval=interval, stop=stop, sleep=sleep)


def _watch(
    snapshot: Snapshot,
    show: Callable[[dict[str, Any], float], None],
    *,
    interval: float,
    stop: Callable[[], bool],
    sleep: Callable[[float], None],
) -> None:
    shown: str | None = None
    while not stop():
        document = snapshot()
        key = _steady(document)
        if key != shown:
            show(document, time.time())
            shown = key
        sleep(interval)


def _shown(value: object) -> str:
    """Event text for a terminal: rich markup escaped, and control characters (an escape
    sequence in a followed repository's squishfile, say) written as ``\\xNN``."""
    return escape(visible(str(value)))


def describe_event(event: dict[str, Any]) -> str | None:
    """An event as the loop's console would say it (rich markup); None for a pass that
    did nothing."""
    kind = event.get("event")
    if kind == "action":
        failed = "" if event.get("ok") else f" [red]failed:[/] {_shown(event.get('error'))}"
        return f"{_shown(event.get('text'))}{failed}"
    if kind == "condition":
        who = f"{_shown(event.get('condition'))} {_shown(event.get('name'))}"
        return f"[yellow]{who}:[/] {_shown(event.get('message'))}"
    if kind == "condition-cleared":
        return f"[yellow]{_shown(event.get('condition'))} {_shown(event.get('name'))}:[/] cleared"
    if kind == "pass":
        if not event.get("actions"):
            return None
        actions = event.get("actions")
        return (
            f"pass ({_shown(event.get('trigger'))}): {actions} "
            f"action{'' if actions == 1 else 's'}, {event.get('failed')} failed, "
            f"{event.get('duration_ms')} ms"
        )
    if kind == "pass-failed":
        return f"[red]pass failed:[/] {_shown(event.get('error'))}"
    if kind == "started":
        return f"loop started (pid {event.get('pid')})"
    if kind == "stopped":
        return "loop stopped; the containers keep running"
    return None


def _clock(at: object) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(float(at)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--:--"


def print_events(path: Path, *, as_json: bool, history: bool) -> int:
    """Print the journal's events as they come, until Ctrl-C or a closed pipe."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def ready(exists: bool) -> None:
        waiting = "" if exists else " (no loop has run on this folder yet: waiting for one)"
        err.print(f"following {escape(str(path))}{waiting}; Ctrl-C ends")

    try:
        for event in follow(path, history=history, ready=ready):
            if as_json:
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
                continue
            line = describe_event(event)
            if line is not None:
                at = _clock(event.get("at"))
                out.print(f"[dim]{at}[/] {line}")
                out.file.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0
