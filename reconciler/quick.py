"""The ``reconciler`` command's entry: ``status`` asks the folder's running loop first.

A fresh ``reconciler status`` pays for the interpreter, the imports of every command
(pydantic models, the runtime client) and then reads every squishfile and every
container. The running loop has all of that at hand: it answers on its status socket
(:mod:`reconciler.endpoint.local`) with the same document, taken at the request. So
``status [DIR] [--json] [-o wide|json] [--host NAME] [--label K=V]...`` imports only
what asking needs (the standard library, the state folder's name and this module),
asks, prints, and is done. Whatever else, or no answer (no loop runs on that folder, a
loop from before the socket, a socket left by a loop that died, a settings file to
read, running as root), goes to :func:`reconciler.cli.main`, which works it out as
before (and asks the loop too, for ``--watch`` and for what the settings file says).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.control.places import status_socket
from reconciler.settings import BadSetting, default_config, parse_labels
from runtime.client.paths import state_dir
from runtime.settings import RuntimeSettings
from runtime.util.jsonsock import connect, decode_object, peer_of, read_to_eof

__all__ = ("ASK_TIMEOUT", "ask_loop", "main", "quick_status")

ASK_TIMEOUT = 10.0
"""Seconds to wait for the loop's answer (it reads every file and container to give
it); past that the command works the document out itself."""
MAX_ANSWER = 256 * 1024 * 1024
"""Largest answer read (about 1 KiB a container)."""


def ask_loop(
    state: Path, folder: Path, host: str, labels: Mapping[str, str], *, timeout: float = ASK_TIMEOUT
) -> dict[str, Any] | None:
    """``folder``'s status document for ``host`` from its running loop, or None when no
    loop of this account answers for it."""
    request = {"version": 1, "folder": str(folder), "host": host, "labels": dict(labels)}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            connect(sock, status_socket(state, folder), timeout)
            if peer_of(sock)[1] != os.getuid():
                return None
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            answer = decode_object(read_to_eof(sock, MAX_ANSWER))
    except (OSError, ValueError):
        return None
    document = answer.get("document")
    return document if isinstance(document, dict) else None


def _parser() -> argparse.ArgumentParser:
    """The ``status`` options the quick path knows; anything else goes the long way
    (no abbreviations: the full command line decides what those mean)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("dir", nargs="?")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-o", "--output", choices=("wide", "json"))
    parser.add_argument("--host")
    parser.add_argument("--label", action="append", default=[])
    return parser


def _quick_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """``status``'s arguments when the quick path can answer them, else None."""
    if not argv or argv[0] != "status":
        return None
    try:
        args, unknown = _parser().parse_known_args(argv[1:])
    except (argparse.ArgumentError, SystemExit):
        return None
    return None if unknown else args


def quick_status(argv: Sequence[str]) -> int | None:
    """Run ``reconciler status`` from the loop's answer; None when it must go the long
    way (see the module)."""
    args = _quick_args(argv)
    if args is None or default_config(os.environ) is not None or os.geteuid() == 0:
        return None
    try:
        host = args.host or socket.gethostname()
        labels = parse_labels(args.label)
        state = state_dir(RuntimeSettings.from_environ())
    except (BadSetting, OSError):
        return None
    folder = Path(os.path.abspath(args.dir or "desired"))
    document = ask_loop(state, folder, host, labels)
    if document is None:
        return None
    if args.json or args.output == "json":
        print(json.dumps(document, indent=2))
        return 0
    from reconciler.cli import print_status  # a table for a person: rich and the rest

    print_status(document, wide=args.output == "wide")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    answered = quick_status(arguments)
    if answered is not None:
        return answered
    from reconciler.cli import main as full

    return full(arguments)
