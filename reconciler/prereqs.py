"""The host's prerequisites for running containers, each missing one with its fix.

One list for ``make check`` (``python -m reconciler.prereqs --make``) and for the first
use of an installed ``reconciler`` (:func:`check_once`: before the first command that
needs containers, then remembered in ``$XDG_STATE_HOME/squish/prereqs-ok``). Standard
library only, so that it runs before anything else is set up. ``reconciler doctor``
looks deeper (cgroups, the state folder), with the runtime's own checks.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ("HostNotReady", "Problem", "check_once", "main", "problems", "report")

_MAKE_HINT = "   (or run make as root: it sets the host up)"


class HostNotReady(Exception):
    """A required prerequisite is missing (what and how to fix it was printed)."""


@dataclass(frozen=True)
class Problem:
    """One thing the host lacks, and the command that fixes it."""

    message: str
    fix: str
    warning: bool = False
    """True: squish works, with a risk (printed, never blocking)."""


def _id_helpers(make: bool) -> Iterator[Problem]:
    for helper in ("newuidmap", "newgidmap"):
        if shutil.which(helper) is None:
            fix = "sudo apt-get install uidmap" + (_MAKE_HINT if make else "")
            yield Problem(f"{helper} is missing (maps the container's uids/gids)", fix)


def _slirp4netns() -> Iterator[Problem]:
    if shutil.which("slirp4netns") is None:
        yield Problem(
            "slirp4netns is missing (rootless networking)", "sudo apt-get install slirp4netns"
        )


def _busybox() -> Iterator[Problem]:
    if shutil.which("busybox") is None and not os.access("/bin/busybox", os.X_OK):
        yield Problem(
            "busybox is missing (test images are built from it)",
            "sudo apt-get install busybox-static",
        )


def _tun(path: str = "/dev/net/tun") -> Iterator[Problem]:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISCHR(mode):
        yield Problem(
            f"{path} does not exist (slirp4netns creates a tap device through it)",
            "sudo modprobe tun",
        )
        return
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError:
        yield Problem(
            f"{path} is mode {stat.S_IMODE(mode):o} and you cannot open it; slirp4netns opens "
            "it as you to create the container's tap device (distributions ship it 0666)",
            f"sudo chmod 0666 {path}",
        )


def _id_ranges(
    user: str, uid: int, files: tuple[str, ...] = ("/etc/subuid", "/etc/subgid")
) -> Iterator[Problem]:
    mine = re.compile(rf"^({re.escape(user)}|{uid}):", re.MULTILINE)
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError:
            text = ""
        if not mine.search(text):
            yield Problem(
                f"{name} has no range for {user} (newuidmap/newgidmap need one)",
                "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
                f"{user}   (pick a range no other account uses)",
            )


def _user_namespaces() -> Iterator[Problem]:
    try:
        done = subprocess.run(["unshare", "--user", "true"], capture_output=True, timeout=30)
        ok = done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        yield Problem(
            "you cannot create user namespaces",
            "sudo sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000",
        )


def _private_home(home: str) -> Iterator[Problem]:
    try:
        mode = stat.S_IMODE(os.stat(home).st_mode)
    except OSError:
        mode = 0o700
    if mode & 0o077:
        yield Problem(
            f"your home {home} is mode {mode:o}: other accounts can read your squishfiles "
            "and their [env] values",
            f"chmod 0700 {home}",
            warning=True,
        )


def problems(*, make: bool = False, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every prerequisite that is missing now (``make``: the fixes mention ``make``)."""
    env = os.environ if environ is None else environ
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    checks: list[Callable[[], Iterator[Problem]]] = [
        lambda: _id_helpers(make),
        _slirp4netns,
        _busybox,
        _tun,
        lambda: _id_ranges(user, uid),
        _user_namespaces,
        lambda: _private_home(env.get("HOME") or str(Path.home())),
    ]
    return [problem for check in checks for problem in check()]


def report(found: list[Problem], prefix: str, *, make: bool = False) -> list[str]:
    """The lines that say what ``found`` lacks, each with its fix, and the verdict."""
    lines = []
    for problem in found:
        lines.append(f"{prefix}: {'warning: ' if problem.warning else ''}{problem.message}")
        lines.append(f"  fix: {problem.fix}")
    if any(not p.warning for p in found):
        how = " (running make as root sets it up)" if make else ""
        lines.append(f"{prefix}: the host is not ready for squish{how}")
    return lines


def _stamp(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME") or str(Path.home())
    state = environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return Path(state) / "squish" / "prereqs-ok"


def check_once(environ: Mapping[str, str] | None = None) -> None:
    """At the first use of this account (no stamp yet): check, print what is missing to
    stderr, and raise :class:`HostNotReady` if a required one is; when none is, remember
    it, so later commands start at once (the runtime still names what it lacks when it
    meets it). As root, nothing: the runtime refuses root itself."""
    env = os.environ if environ is None else environ
    stamp = _stamp(env)
    if os.geteuid() == 0 or stamp.exists():
        return
    found = problems(environ=env)
    for line in report(found, "reconciler"):
        print(line, file=sys.stderr)
    if any(not p.warning for p in found):
        raise HostNotReady("the host is not ready for squish: see the fixes above")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text("the prerequisites of `make check` were found here\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m reconciler.prereqs [--make]``: exit 1 when a required one is missing."""
    parser = argparse.ArgumentParser(prog="python -m reconciler.prereqs")
    parser.add_argument("--make", action="store_true", help="as `make check` says it")
    args = parser.parse_args(argv)
    found = problems(make=args.make)
    prefix = "make check" if args.make else "reconciler"
    for line in report(found, prefix, make=args.make):
        print(line, file=sys.stderr)
    return 1 if any(not p.warning for p in found) else 0


if __name__ == "__main__":
    sys.exit(main())
