"""Where the runtime keeps its state and its download cache.

Layout under the state directory (JSON files are written atomically)::

    pause.json               identity of the namespace-holder process (pid, start time, protocol)
    pause.sock               its control socket (0600)
    containers/NAME/
        launch.json          the resolved launch plan (spec + host paths), written at create
        run.json             the current run: init pid + start time, slirp pid, forwards
        exit.json            written by the container's init when the command exits
        slirp.sock           slirp4netns API socket; slirp.log its messages
        skel/  root/         mount-point skeleton and the root mount point
    premount/                empty: a warm init mounts a container root ahead on it, in
                             its own mount namespace (runtime.sandbox.mounts.premount_root)

and under the log folder (on disk; ``log_dir``)::

    ID/output.log            the command's stdout and stderr (``output.log.1``... rotated);
                             ID is random, chosen when the container is created and
                             recorded in ``meta.json`` and ``launch.json``
    ID/state                 the state folder whose container writes it (for the sweep)
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.settings import RuntimeSettings
from runtime.util.files import read_json, write_json_atomic

__all__ = (
    "StateFolder",
    "cache_dir",
    "find_state_dir",
    "log_dir",
    "private_dir",
    "shared_state_problem",
    "state_dir",
)

log = logging.getLogger(__name__)

SHARED_BASES = (Path("/dev/shm"), Path("/tmp"))
"""Where the state folder goes without a runtime folder: the first writable one."""


@dataclass(frozen=True)
class StateFolder:
    """The state folder found, and why it is not at its usual name (None: it is)."""

    path: Path
    squatted: str | None = None


def state_dir(
    settings: RuntimeSettings,
    *,
    shared: Sequence[Path] = SHARED_BASES,
    pointers: Path | None = None,
) -> Path:
    """The per-user state directory (mode 0700), created if missing.

    ``settings.state_dir`` (``$SQUISH_STATE_DIR``), else ``$XDG_RUNTIME_DIR/squish``, else
    (no runtime dir, as under ``su``) ``/dev/shm/squish-<uid>`` when /dev/shm is writable,
    else ``/tmp/squish-<uid>``. State belongs in memory: it describes running processes,
    and a container start touches a dozen files there. Where that shared name is taken
    (:func:`find_state_dir`), a folder of the user's own is used and a warning says so.
    """
    found = find_state_dir(settings, shared=shared, pointers=pointers)
    if found.squatted is not None:
        _warn_once(found.squatted)
    return found.path


def find_state_dir(
    settings: RuntimeSettings,
    *,
    shared: Sequence[Path] = SHARED_BASES,
    pointers: Path | None = None,
) -> StateFolder:
    """:func:`state_dir`'s folder, and what happened to the shared name if it was taken.

    In a shared folder (``shared``: /dev/shm, else /tmp) any account can create
    ``squish-<uid>`` first. A name that is not a 0700 folder of this user (a symlink,
    another owner, another mode) is never used: the state goes to a ``mkdtemp`` folder
    ``squish-<uid>-XXXXXXXX`` beside it, recorded in ``pointers`` (default
    ``~/.local/state/squish``) so that every later command finds the same one.
    """
    chosen = _chosen(settings)
    if chosen is not None:
        return StateFolder(private_dir(chosen, "state directory"))
    usual = _usual(shared)
    return _shared_state_dir(usual, pointers or _pointers())


def shared_state_problem(
    settings: RuntimeSettings, *, shared: Sequence[Path] = SHARED_BASES
) -> str | None:
    """Why the shared name cannot be the state folder, when that is where it would go
    (None: it can, or it is not used, or it does not exist yet). Creates nothing."""
    if _chosen(settings) is not None:
        return None
    usual = _usual(shared)
    why = _not_private(usual) if os.path.lexists(usual) else None
    if why is None:
        return None
    return (
        f"{usual} {why}, so it may be another account's; commands use a folder of your "
        f"own beside it ({usual.name}-XXXXXXXX, recorded in {_pointers()})"
    )


def _pointers() -> Path:
    """Where the folder used instead of a taken shared name is recorded."""
    return Path.home() / ".local" / "state" / "squish"


def _chosen(settings: RuntimeSettings) -> Path | None:
    """``$SQUISH_STATE_DIR``, else ``$XDG_RUNTIME_DIR/squish`` if that can be written."""
    runtime_dir = settings.runtime_dir
    if settings.state_dir is not None:
        return settings.state_dir
    if runtime_dir is not None and os.access(runtime_dir, os.W_OK):
        return runtime_dir / "squish"
    return None


def _usual(shared: Sequence[Path]) -> Path:
    """``squish-<uid>`` in the first writable shared folder (else the last one)."""
    base = next((b for b in shared if os.access(b, os.W_OK)), shared[-1])
    return base / f"squish-{os.getuid()}"


def _shared_state_dir(usual: Path, pointers: Path) -> StateFolder:
    base = usual.parent
    try:
        usual.mkdir(mode=0o700)
        usual.chmod(0o700)  # whatever the umask
    except FileExistsError:
        pass
    why = _not_private(usual)
    if why is None:
        return StateFolder(usual)
    private_dir(pointers, "state pointer folder")
    pointer = pointers / f"state-dir.{socket.gethostname()}.json"
    with open(pointers / "state-dir.lock", "a") as lock:  # one folder for racing commands
        fcntl.flock(lock, fcntl.LOCK_EX)
        own = _recorded(pointer, base)
        if own is None:
            own = Path(tempfile.mkdtemp(prefix=f"{usual.name}-", dir=base))
            write_json_atomic(pointer, {"path": str(own)})
    return StateFolder(
        own,
        f"{usual} {why}, so it may be another account's: using {own} instead "
        f"(recorded in {pointer}). Set XDG_RUNTIME_DIR or SQUISH_STATE_DIR to choose.",
    )


def _not_private(path: Path) -> str | None:
    """Why ``path`` is not a 0700 folder of this user (None: it is one)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "does not exist"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.getuid():
        return f"belongs to uid {st.st_uid}"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"is mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None


def _recorded(pointer: Path, base: Path) -> Path | None:
    """The user's own folder ``pointer`` names, if it is still one in ``base``."""
    data = read_json(pointer)
    path = (
        Path(data["path"]) if isinstance(data, dict) and isinstance(data.get("path"), str) else None
    )
    prefix = f"squish-{os.getuid()}-"
    if path is None or path.parent != base or not path.name.startswith(prefix):
        return None
    return path if _not_private(path) is None else None  # gone after a reboot: a new one


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("state folder: %s", message)


def private_dir(path: Path, what: str) -> Path:
    """``path`` created if missing, refused unless it is a real folder of this user, and
    made 0700 (nobody else may read it, write it, or pass through it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{what} {path} is not a folder (a symlink?); refusing it")
    if st.st_uid != os.getuid():
        raise PermissionError(f"{what} {path} belongs to uid {st.st_uid}, not to you")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def cache_dir(settings: RuntimeSettings) -> Path:
    """The download and rootfs cache: ``settings.cache_dir`` (``$XDG_CACHE_HOME/squish``),
    else ``~/.cache/squish``."""
    path = settings.cache_dir or Path.home() / ".cache" / "squish"
    return private_dir(path, "cache directory")


def log_dir(settings: RuntimeSettings) -> Path:
    """The folder of containers' logs: ``settings.log_dir`` (``$SQUISH_LOG_DIR``, else
    ``$XDG_STATE_HOME/squish/logs``), else ``~/.local/state/squish/logs``."""
    path = settings.log_dir or Path.home() / ".local" / "state" / "squish" / "logs"
    return private_dir(path, "log directory")
