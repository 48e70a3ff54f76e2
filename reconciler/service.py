"""``reconciler service``: ``reconciler run`` on a folder as a systemd user unit.

``install`` writes ``reconciler-<folder, escaped as systemd-escape --path does>.service``
into the user's unit folder, enables and (re)starts it; ``remove`` stops, disables and
deletes it; ``status`` lists the units written here. A stop ends the loop only, as Ctrl-C
does: the namespace holder runs in a scope of its own (the systemd cgroup driver's
``separate``), and ``KillMode=process`` spares it where it could not get one.
:mod:`reconciler.cli` adds these commands to its parser.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.terminal import LazyConsole, visible, visible_char
from reconciler.terminal import escape as markup
from runtime.util.files import write_atomic

__all__ = (
    "ServiceError",
    "Unit",
    "add_service_commands",
    "escape_path",
    "escape_text",
    "passed_environment",
    "replayed_options",
    "unit_for",
)

_out = LazyConsole(highlight=False, soft_wrap=True)

MARK = "# Written by `reconciler service install`; `reconciler service remove` undoes it."
"""The first line of every unit written here: ``status`` and ``remove`` touch no other."""
_VALID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
_PASSED = ("PATH", "PYTHONPATH", "LANG", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
"""Variables of the installing shell the unit keeps (with every ``SQUISH_*``): where the
helpers are, and where squish keeps its cache, settings and logs. The user's systemd
sets ``HOME``, ``XDG_RUNTIME_DIR`` and the session bus itself."""
_PATH_OPTIONS = frozenset({"allowed_signers", "webhook_secret_file"})
"""``run`` options that name a file: made absolute, as the unit runs elsewhere."""


class ServiceError(Exception):
    """A unit could not be installed, removed or read (the message says what to do)."""


def escape_text(text: str) -> str:
    """``text`` escaped as ``systemd-escape`` does: ``/`` becomes ``-``; ``-``, ``\\``,
    a leading ``.`` and every byte outside ``[A-Za-z0-9:_.]`` become ``\\xNN``."""
    out = []
    for index, byte in enumerate(text.encode()):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char in _VALID and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def escape_path(path: str) -> str:
    """``systemd-escape --path PATH``: the path without its leading, trailing and doubled
    slashes (and ``.`` parts), escaped; ``/`` alone is ``-``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return escape_text("/".join(parts)) if parts else "-"


def _quoted(word: str, *, dollars: bool = True) -> str:
    """One word of a unit file's ``ExecStart=`` (or, ``dollars=False``, ``Environment=``,
    which expands no variable), as systemd unquotes it: in double quotes, with C escapes
    (every control character: systemd also ends a line at a carriage return), ``%``
    doubled (no specifier is expanded) and, for ``ExecStart=``, ``$`` doubled."""
    escapes = {"\\": "\\\\", '"': '\\"', "%": "%%"}
    if dollars:
        escapes["$"] = "$$"
    return '"' + "".join(escapes.get(c, visible_char(c)) for c in word) + '"'


@dataclass(frozen=True)
class Unit:
    """One user unit that runs ``reconciler run``: its file name and what it says."""

    name: str
    what: str
    """The folder (or git source) it reconciles, for people."""
    argv: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            MARK,
            f"# source: {self.what}",
            "[Unit]",
            "Description=squish: keep the containers of "
            + self.what.replace("%", "%%")  # the one line systemd expands specifiers in
            + " matching it",
            "",
            "[Service]",
            "Type=exec",
            "ExecStart=" + " ".join(_quoted(word) for word in self.argv),
            *(
                f"Environment={_quoted(f'{k}={v}', dollars=False)}"
                for k, v in sorted(self.environment.items())
            ),
            'Environment="PYTHONUNBUFFERED=1"',
            "Restart=on-failure",
            "RestartSec=5",
            "# A stop ends the loop only, as Ctrl-C does: the containers, their networks and",
            "# the namespace holder keep running (the holder is in a scope of its own when the",
            "# user's systemd gives it one; KillMode=process spares it where it could not).",
            "KillMode=process",
            "StandardOutput=journal",
            "StandardError=journal",
            "SyslogIdentifier=reconciler",
            "",
            "[Install]",
            "WantedBy=default.target",
        ]
        return "\n".join(lines) + "\n"


def passed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What of ``environ`` the unit's environment keeps (:data:`_PASSED`, ``SQUISH_*``)."""
    return {
        name: value
        for name, value in environ.items()
        if value and (name in _PASSED or name.startswith("SQUISH_"))
    }


def reconciler_command() -> list[str]:
    """How this ``reconciler`` is started again: the script next to this Python (a
    virtualenv's, pipx's), else this Python running the CLI module."""
    script = Path(sys.executable).parent / "reconciler"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "reconciler.cli"]


def replayed_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The options of ``parser`` given in ``args``, written out again (file names made
    absolute); what was not given is left out, so the settings' defaults still hold."""
    words: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value is None or value == action.default:
            continue
        option = max(action.option_strings, key=len)
        if action.nargs == 0:
            words.append(option)
            continue
        values = value if isinstance(value, list) else [value]
        if action.dest in _PATH_OPTIONS:
            values = [os.path.abspath(v) for v in values]
        for item in values:
            words += [option, str(item)]
    return words


def unit_for(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    existing: bool = True,
) -> Unit:
    """The unit that runs ``reconciler run`` with the options of ``args``: on its folder
    (DIR made absolute; ``desired`` by default; it must exist unless not ``existing``) or
    on its ``--git`` source."""
    config = ["--config", os.path.abspath(args.config)] if args.config else []
    options = replayed_options(parser, args)
    if args.git is not None:
        what = f"git {args.git}" + (f" ({args.path})" if args.path else "")
        name = escape_text(args.git) + (f"-{escape_path(args.path)}" if args.path else "")
        folder = []
    else:
        absolute = os.path.abspath(args.dir or "desired")
        if existing and not os.path.isdir(absolute):
            raise ServiceError(f"{absolute}: no such folder")
        what, name, folder = absolute, escape_path(absolute), [absolute]
    unit = f"reconciler-{name}.service"
    if visible(what) != what:
        raise ServiceError(f"{what!r}: a unit cannot name a source with a control character")
    if len(unit) > 255:
        raise ServiceError(f"the unit name for {what} is longer than systemd allows (255)")
    argv = (*reconciler_command(), *config, "run", *folder, *options)
    return Unit(unit, what, argv, passed_environment(environ))


def unit_folder(environ: Mapping[str, str]) -> Path:
    """Where the user's own units live: ``$XDG_CONFIG_HOME/systemd/user``."""
    config = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "~"), ".config")
    return Path(os.path.expanduser(config)) / "systemd" / "user"


def systemctl(*words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``systemctl --user WORDS``; a failure (with ``check``) is a :class:`ServiceError`
    with what systemctl said."""
    argv = ["systemctl", "--user", *words]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=90)
    except FileNotFoundError:
        raise ServiceError("systemctl is missing: `service` needs systemd") from None
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise ServiceError(
            f"`{' '.join(argv)}` failed (exit {done.returncode}): {said}; your systemd user "
            "instance must be reachable: log in (ssh, a desktop) or, for an account without "
            "a login, `sudo loginctl enable-linger USER` and XDG_RUNTIME_DIR=/run/user/UID"
        )
    return done


def _linger_hint(user: str) -> str | None:
    """How to keep the unit running without a login session (None: already so)."""
    if Path("/var/lib/systemd/linger", user).exists():
        return None
    return (
        f"to start it at boot and keep it running when {user} is not logged in: "
        f"loginctl enable-linger {user}"
    )


def cmd_install(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> int:
    unit = unit_for(parser, args, environ)
    folder = unit_folder(environ)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / unit.name
    existed = path.exists()
    if existed and not _ours(path):
        raise ServiceError(f"{path} exists and was not written by service install: left alone")
    write_atomic(path, unit.text().encode(), mode=0o600)  # its Environment= may be private
    systemctl("daemon-reload")
    systemctl("enable", unit.name)
    systemctl("restart", unit.name)
    done = "updated" if existed else "installed"
    _out.print(markup(f"{done} {path}, enabled and started"))
    _out.print(markup(f"  its log: journalctl --user -u {unit.name}"))
    _out.print(
        markup(f"  stop it: systemctl --user stop {unit.name} (the containers keep running)")
    )
    hint = _linger_hint(environ.get("USER") or environ.get("LOGNAME") or "$USER")
    if hint is not None:
        _out.print(markup(hint))
    return 0


def cmd_remove(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> int:
    unit = unit_for(parser, args, environ, existing=False)  # its folder may be gone
    path = unit_folder(environ) / unit.name
    if not _ours(path):
        raise ServiceError(f"no unit for {unit.what}: {path} was not written by service install")
    systemctl("disable", "--now", unit.name)
    path.unlink()
    systemctl("daemon-reload")
    systemctl("reset-failed", unit.name, check=False)  # forget a failed state too
    _out.print(
        markup(f"removed {unit.name}; the containers keep running (`reconciler down` removes them)")
    )
    return 0


def _ours(path: Path) -> bool:
    try:
        return path.read_text().startswith(MARK)
    except OSError:
        return False


def _source(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# source: "):
            return line[len("# source: ") :]
    return "?"


def cmd_status(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> int:
    """Every unit written here, with what systemd says of it."""
    units = installed(environ)
    if not units:
        _out.print("no units: `reconciler service install DIR` writes one")
        return 0
    for path in units:  # one line each, never cut to a terminal's width
        active = systemctl("is-active", path.name, check=False).stdout.strip()
        enabled = systemctl("is-enabled", path.name, check=False).stdout.strip()
        _out.print(markup(f"{path.name}: {active}, {enabled}; {_source(path)}"))
    return 0


Command = Callable[[argparse.ArgumentParser, argparse.Namespace, Mapping[str, str]], int]


def add_service_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_run_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``service install|remove [DIR] [run's options]`` and ``service status``."""
    commands = sub.add_parser(
        "service", help="run `reconciler run DIR` as a systemd user unit"
    ).add_subparsers(dest="service_command", required=True)
    helps = (
        ("install", "write, enable and start the unit for DIR, with run's options", cmd_install),
        ("remove", "stop, disable and delete DIR's unit (the containers keep running)", cmd_remove),
    )
    for name, help, command in helps:
        p = commands.add_parser(name, help=help)
        p.add_argument("dir", nargs="?", help="default: desired")
        add_run_options(p)
        p.set_defaults(func=_bound(p, command))
    p = commands.add_parser("status", help="the units written by install, and their state")
    p.set_defaults(func=_bound(p, cmd_status))


def _bound(
    parser: argparse.ArgumentParser, command: Command
) -> Callable[[argparse.Namespace], int]:
    return lambda args: command(parser, args, os.environ)


def installed(environ: Mapping[str, str]) -> list[Path]:
    """The unit files ``service install`` wrote."""
    return sorted(p for p in unit_folder(environ).glob("reconciler-*.service") if _ours(p))
