"""Where a folder's controller keeps its files in the state folder: the status record,
the lock, the journal, and the socket on which a running loop answers ``status``.

Plain names, no I/O: the ``status`` command's quick path (:mod:`reconciler.quick`)
imports this before anything else of the reconciler.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ("folder_record", "status_socket")


def folder_record(state: Path, folder: Path) -> Path:
    """``<state>/reconciler/<digest of folder>.json``: the folder's status record; its
    lock, journal and socket are named after it."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return state / "reconciler" / f"{digest}.json"


def status_socket(state: Path, folder: Path) -> Path:
    """The unix socket on which the loop of ``folder`` answers ``status``."""
    return folder_record(state, folder).with_suffix(".sock")
