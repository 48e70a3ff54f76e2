"""The command line of the git source: ``--git URL`` and its options on the folder
commands, ``reconciler suspend`` and ``reconciler resume``, and what status and plan
say about the revision. :mod:`reconciler.cli` adds these to its parser and calls them.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reconciler.desired.git import GitSource, git_home, resume, suspend
from reconciler.desired.source import Source
from reconciler.settings import BadSetting, GitSettings, Settings, parse_interval
from reconciler.terminal import LazyConsole, escape, visible

__all__ = (
    "add_git_options",
    "add_suspend_commands",
    "first_fetch",
    "git_settings",
    "previewing",
    "source_line",
)

_out = LazyConsole(highlight=False, soft_wrap=True)


def add_git_options(command: argparse.ArgumentParser, *, loop: bool = False) -> None:
    """``--git URL`` and what to follow of it; ``loop``: the options of a running loop."""
    group = command.add_argument_group("git source (instead of DIR)")
    group.add_argument(
        "--git", metavar="URL", help="follow this git repository (any URL git takes)"
    )
    refs = group.add_mutually_exclusive_group()
    refs.add_argument("--branch", help="the branch to follow (default: the remote's HEAD)")
    refs.add_argument("--tag", help="the tag to apply")
    refs.add_argument("--rev", metavar="SHA", help="the commit to apply")
    group.add_argument("--path", metavar="SUBDIR", help="the squishfiles' folder in the repository")
    group.add_argument(
        "--verify-signatures",
        action="store_true",
        default=None,
        help="apply only commits with an ssh signature of a key in --allowed-signers",
    )
    group.add_argument("--allowed-signers", metavar="FILE", help="ssh allowed-signers file")
    group.add_argument(
        "--allow-host-paths",
        dest="host_paths",
        action="store_true",
        default=None,
        help="let the repository's files bind host paths outside the repository",
    )
    if loop:
        group.add_argument(
            "--interval",
            type=parse_interval,
            metavar="DURATION",
            help=f"between fetches: 30s, 2m... (default {GitSettings.interval:g}s)",
        )


def git_settings(args: argparse.Namespace, base: Settings) -> GitSettings | None:
    """The git source the options ask for (None: a folder); DIR and ``--git`` exclude
    each other."""
    url = getattr(args, "git", None)
    if url is None:  # a folder given on the command line wins over the settings file's git
        return None if getattr(args, "dir", None) is not None else base.git
    if getattr(args, "dir", None) is not None:
        raise BadSetting("DIR", args.dir, "give a folder or --git URL, not both")
    given = {
        name: value
        for name in (
            "branch",
            "tag",
            "rev",
            "path",
            "verify_signatures",
            "allowed_signers",
            "interval",
            "host_paths",
        )
        if (value := getattr(args, name, None)) is not None
    }
    return GitSettings(url=url, **given)


def first_fetch(source: Source) -> None:
    """Fetch and check out once before the first pass (a git source), and say what
    runs; a folder has nothing to do."""
    if isinstance(source, GitSource):
        source.sync()
        _out.print(escape(source_line(source.describe())))


@contextlib.contextmanager
def previewing(source: Source) -> Iterator[None]:
    """While inside, a git source loads the revision ``plan`` is asked about (its
    ``--rev``, else the newest commit of what it follows); a folder is itself."""
    if not isinstance(source, GitSource):
        yield
        return
    with source.previewing(source.git.rev) as commit:
        applied = source.describe()["applied"]
        now = applied.get("commit", "none") if isinstance(applied, dict) else "none"
        _out.print(
            escape(f"plan for {commit.sha[:12]} {commit.subject!r} (applied: {str(now)[:12]})")
        )
        yield


def source_line(source: dict[str, Any]) -> str:
    """One line about a git source, for ``status`` and ``run``."""
    applied = source.get("applied")
    line = f"source: git {source['url']} ({source['ref']}"
    line += f", path {source['path']})" if source.get("path") else ")"
    if isinstance(applied, dict):
        line += f", applied {applied['commit'][:12]} {applied['subject']!r}"
        line += time.strftime(" of %Y-%m-%d %H:%M:%S", time.localtime(applied["time"]))
    else:
        line += ", nothing applied yet"
    attempted = source.get("attempted")
    if isinstance(attempted, dict) and attempted != applied:
        why = attempted.get("refused") or attempted.get("error")
        if why:
            line += f"; refused {attempted['commit'][:12]}: {why}"
    if source.get("fetch_error"):
        line += f"; last fetch failed: {source['fetch_error']}"
    if source.get("suspended"):
        line += "; SUSPENDED (`reconciler resume --git URL` resumes)"
    # a commit's file names and git's messages reach a terminal here: their control
    # characters are shown, not obeyed
    problems = "".join(f"\n  {visible(str(problem))}" for problem in source.get("problems", ()))
    return visible(line) + problems


def add_suspend_commands(sub: Any, state: Callable[[], Path]) -> None:
    """``reconciler suspend --git URL`` and ``resume``: stop and restart following the
    repository (a running loop keeps its containers and sees it before its next fetch)."""
    for verb, what in (("suspend", "stop following"), ("resume", "follow again")):
        command = sub.add_parser(verb, help=f"{what} a git source; the loop keeps running")
        command.add_argument("--git", metavar="URL", required=True)
        command.add_argument("--path", metavar="SUBDIR", default="")

        def run(args: argparse.Namespace) -> int:
            home = git_home(state(), GitSettings(url=args.git, path=args.path))
            done = suspend(home) if args.command == "suspend" else resume(home)
            state_now = "suspended" if args.command == "suspend" else "resumed"
            _out.print(f"{escape(args.git)}: {state_now if done else 'already ' + state_now}")
            return 0

        command.set_defaults(func=run)
