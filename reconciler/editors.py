"""What helps a user write squishfiles and type commands: ``reconciler schema`` (the JSON
Schema an editor validates squishfiles with) and ``reconciler completion SHELL`` (the
script that makes bash, zsh or fish complete ``reconciler``'s commands, options,
container names and folders, through argcomplete). :mod:`reconciler.cli` adds these
to its parser and asks for completions before it parses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any

import argcomplete
from argcomplete.completers import DirectoriesCompleter, FilesCompleter
from argcomplete.shell_integration import shellcode

from reconciler.squishfile.schema import SCHEMA_FILES, schema_text

__all__ = (
    "SHELLS",
    "add_editor_commands",
    "complete",
    "folder_argument",
    "name_argument",
    "paths_argument",
)

SHELLS = ("bash", "zsh", "fish")
_PROG = "reconciler"

NameLister = Callable[[], Iterable[str]]
"""This user's container names (for completion: may raise, then nothing is offered)."""


def add_editor_commands(sub: Any) -> None:
    """``reconciler schema [KIND]`` and ``reconciler completion SHELL``."""
    command = sub.add_parser("schema", help="print the JSON Schema of squishfiles, for editors")
    command.add_argument(
        "kind",
        nargs="?",
        default="squishfile",
        choices=sorted(SCHEMA_FILES),
        help="squishfile (default), or network: a NAME.network.toml file",
    )
    command.set_defaults(func=_print_schema)
    command = sub.add_parser("completion", help="print the shell completion script")
    command.add_argument("shell", choices=SHELLS)
    command.set_defaults(func=_print_completion)


def _print_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text(args.kind))
    return 0


def _print_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(shellcode([_PROG], shell=args.shell))
    return 0


def name_argument(command: argparse.ArgumentParser, names: NameLister) -> None:
    """The ``name`` of a container command, completed with this user's containers."""

    def complete_names(prefix: str, **_: Any) -> list[str]:
        try:
            return [name for name in names() if name.startswith(prefix)]
        except Exception:  # no runtime here (as root, no state): offer nothing
            return []

    action: Any = command.add_argument("name", help="a container's name")
    action.completer = complete_names


def folder_argument(command: argparse.ArgumentParser, help: str) -> None:
    """The ``dir`` of a folder command, completed with folders."""
    action: Any = command.add_argument("dir", nargs="?", help=help)
    action.completer = DirectoriesCompleter()


def paths_argument(command: argparse.ArgumentParser) -> None:
    """``validate``'s files and folders, completed with TOML files and folders."""
    action: Any = command.add_argument("files", nargs="+", metavar="FILE_OR_FOLDER")
    action.completer = FilesCompleter(allowednames=("toml",), directories=True)


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell and exit, when the shell asks for completions (argcomplete's
    ``_ARGCOMPLETE`` protocol); return at once otherwise."""
    argcomplete.autocomplete(parser)
