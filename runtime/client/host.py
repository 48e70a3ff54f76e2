"""What this host must provide for rootless containers, all checked at once.

The runtime finds each of these problems when it first needs the thing (and raises
:class:`runtime.errors.HostSetupError` with a fix); :func:`host_checks` looks at every one
up front, for ``reconciler doctor``. ``make check`` and an installed ``reconciler``'s first
use check the host's tools and settings (``reconciler/prereqs.py``, no runtime needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.driver import detect
from runtime.client.paths import shared_state_problem
from runtime.errors import HostSetupError
from runtime.holder.idmap import subordinate_range
from runtime.network.driver import driver_for
from runtime.settings import RuntimeSettings

__all__ = ("HostCheck", "host_checks")

_UNSHARE_USER = (
    "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "sys.exit(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())"
)
"""A child that tries to enter a new user namespace (CLONE_NEWUSER); exit code: errno."""


@dataclass(frozen=True)
class HostCheck:
    """One prerequisite: what it is for, and what is wrong with it (None: nothing)."""

    what: str
    problem: str | None = None
    fix: str = ""
    required: bool = True
    """False: containers run without it, with less (no limits, only root mapped)."""


def _unprivileged() -> HostCheck:
    what = "an unprivileged account (squish refuses uid 0)"
    if os.geteuid() != 0:
        return HostCheck(what)
    return HostCheck(what, "running as root", "run reconciler as a normal user")


def _user_namespaces() -> HostCheck:
    what = "unprivileged user namespaces (every container lives in one)"
    done = subprocess.run([sys.executable, "-c", _UNSHARE_USER], check=False, timeout=30)
    if done.returncode == 0:
        return HostCheck(what)
    return HostCheck(
        what,
        f"unshare(CLONE_NEWUSER) failed: {os.strerror(done.returncode)}",
        "sudo sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000",
    )


def _id_ranges() -> HostCheck:
    what = "subordinate uid and gid ranges, mapped by newuidmap and newgidmap"
    uid = os.getuid()
    missing = [f for f in ("/etc/subuid", "/etc/subgid") if subordinate_range(Path(f), uid) is None]
    if missing:
        return HostCheck(
            what,
            f"{' and '.join(missing)} give you no range: only root is mapped in containers",
            "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER "
            "(a range no other account uses)",
            required=False,
        )
    helpers = [h for h in ("newuidmap", "newgidmap") if shutil.which(h) is None]
    if helpers:
        return HostCheck(what, f"{' and '.join(helpers)} missing", "sudo apt-get install uidmap")
    return HostCheck(what)


def _slirp4netns() -> HostCheck:
    what = "slirp4netns and /dev/net/tun, used as you (the network of containers that have one)"
    try:
        driver_for("slirp4netns").check_host()
    except HostSetupError as exc:
        return HostCheck(what, str(exc).splitlines()[0], exc.fix)
    return HostCheck(what)


def _cgroups(settings: RuntimeSettings) -> HostCheck:
    found = detect(settings)
    what = f"cgroups for limits, pause and clean stops ({found.name} driver)"
    if found.problem is None:
        return HostCheck(what)
    fix = "see docs/cgroups.md (containers run meanwhile, without limits)"
    return HostCheck(what, found.problem, fix, required=False)


def _state_folder(settings: RuntimeSettings) -> HostCheck:
    what = "a state folder only you can reach"
    problem = shared_state_problem(settings)
    if problem is None:
        return HostCheck(what)
    fix = (
        "log in with a session that sets XDG_RUNTIME_DIR (ssh, machinectl shell), or set "
        "SQUISH_STATE_DIR to a folder of yours; ask root who made the name"
    )
    return HostCheck(what, problem, fix, required=False)


def _private_home() -> HostCheck:
    what = "a home only you can read (your squishfiles and their [env] values)"
    home = Path.home()
    try:
        mode = home.stat().st_mode & 0o777
    except OSError as exc:
        return HostCheck(what, f"{home}: {exc.strerror}", "check $HOME", required=False)
    if not mode & 0o077:
        return HostCheck(what)
    problem = f"{home} is mode {mode:04o}: other accounts can read what it holds"
    return HostCheck(what, problem, f"chmod 0700 {home}", required=False)


_CHECKS: tuple[Callable[[], HostCheck], ...] = (
    _unprivileged,
    _user_namespaces,
    _id_ranges,
    _slirp4netns,
    _private_home,
)


def host_checks(settings: RuntimeSettings) -> list[HostCheck]:
    """Every prerequisite of rootless containers on this host, checked now (the cgroup
    driver as ``settings`` choose it)."""
    return [*(check() for check in _CHECKS), _cgroups(settings), _state_folder(settings)]
