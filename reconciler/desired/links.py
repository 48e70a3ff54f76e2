"""What a folder's squishfiles lead to through symbolic links, for the folder's watch.

A squishfile may be a symbolic link: into a ``..data`` directory that is swapped
atomically (a Kubernetes ConfigMap volume: ``web.toml -> ..data/web.toml``, ``..data ->
..2026_12_01_00_00_00.123``; git-sync swaps a link the same way), or to a file outside
the folder. An edit then shows up as an event on a link on the way (``..data`` renamed
over) or in the directory of the file reached, not as an event on ``web.toml``:
:func:`linked_from` finds every link on the way and every file reached, so the watch can
take their events and watch their directories too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.desired.types import is_squishfile

__all__ = ("Linked", "linked_from")

_MAX_LINKS = 40
"""Links followed within one path at most, as the kernel's ELOOP limit."""


@dataclass(frozen=True)
class Linked:
    """What the squishfiles of one folder lead to."""

    paths: frozenset[Path] = frozenset()
    """Every symbolic link on the way and every file reached: an event on one of them
    may change a squishfile."""

    @property
    def folders(self) -> frozenset[Path]:
        """The directories to watch for those events (each that exists)."""
        return frozenset(p.parent for p in self.paths if p.parent.is_dir())


def linked_from(folder: Path) -> Linked:
    """What the squishfiles of ``folder`` (by its real path) that are symbolic links
    lead to; empty when the folder cannot be listed."""
    real = Path(os.path.realpath(folder))
    paths: set[Path] = set()
    try:
        entries = [p for p in real.iterdir() if is_squishfile(p) and p.is_symlink()]
    except OSError:
        return Linked()
    for entry in entries:
        try:
            paths.add(_resolve(entry, paths, 0))
        except OSError:
            continue  # changed while it was read: the next look sees it
    return Linked(frozenset(paths - {real}))


def _resolve(path: Path, links: set[Path], depth: int) -> Path:
    """The real path ``path`` (absolute) leads to; each link on the way goes to ``links``."""
    resolved = Path(path.anchor)
    for part in path.parts[1:]:
        if part == "..":
            resolved = resolved.parent
            continue
        step = resolved / part
        if depth < _MAX_LINKS and step.is_symlink():
            links.add(step)
            step = _resolve(resolved / os.readlink(step), links, depth + 1)
        resolved = step
    return resolved
