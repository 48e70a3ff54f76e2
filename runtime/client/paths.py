"""Where the runtime keeps its state and its download cache.

Layout under the state directory (JSON files are written atomically)::

    pause.json               identity of the namespace-holder process (pid, start time)
    pause.sock               its control socket (0600)
    containers/NAME/
        launch.json          the resolved launch plan (spec + host paths), written at create
        run.json             the current run: init pid + start time, slirp pid, forwards
        exit.json            written by the container's init when the command exits
        slirp.sock           slirp4netns API socket; slirp.log its messages
        skel/  root/         mount-point skeleton and the root mount point

and under the log folder (on disk; ``log_dir``)::

    ID/output.log            the command's stdout and stderr (``output.log.1``... rotated);
                             ID is random, chosen when the container is created and
                             recorded in ``meta.json`` and ``launch.json``
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runtime.settings import RuntimeSettings

__all__ = ("cache_dir", "log_dir", "private_dir", "state_dir")


def state_dir(settings: RuntimeSettings) -> Path:
    """The per-user state directory (mode 0700), created if missing.

    ``settings.state_dir`` (``$SQUISH_STATE_DIR``), else ``$XDG_RUNTIME_DIR/squish``, else
    (no runtime dir, as under ``su``) ``/dev/shm/squish-<uid>`` when /dev/shm is writable,
    else ``/tmp/squish-<uid>``. State belongs in memory: it describes running processes,
    and a container start touches a dozen files there.
    """
    runtime_dir = settings.runtime_dir
    if settings.state_dir is not None:
        path = settings.state_dir
    elif runtime_dir is not None and os.access(runtime_dir, os.W_OK):
        path = runtime_dir / "squish"
    elif os.access("/dev/shm", os.W_OK):
        path = Path(f"/dev/shm/squish-{os.getuid()}")
    else:
        path = Path(f"/tmp/squish-{os.getuid()}")
    return private_dir(path, "state directory")


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
