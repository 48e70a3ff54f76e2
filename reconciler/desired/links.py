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

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.desired.types import is_squishfile

__all__ = ("Linked", "linked_from")

_MAX_LINKS = 40
"""Links followed to resolve one path at most, in all, as the kernel's ELOOP limit."""


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
    try:  # the entries' types come with the listing: no lstat per file (it runs each second)
        with os.scandir(real) as listing:
            entries = [
                real / e.name for e in listing if e.is_symlink() and is_squishfile(Path(e.name))
            ]
    except OSError:
        return Linked()
    for entry in entries:
        try:
            paths.add(_Walk(paths).resolve(entry))
        except OSError:
            continue  # changed while it was read, or it loops: the next look sees it
    return Linked(frozenset(paths - {real}))


@dataclass
class _Walk:
    """One path's resolution: each link on the way goes to ``links``; more than
    :data:`_MAX_LINKS` in all is a loop (ELOOP), however they nest."""

    links: set[Path]
    followed: int = 0

    def resolve(self, path: Path) -> Path:
        """The real path ``path`` (absolute) leads to."""
        resolved = Path(path.anchor)
        for part in path.parts[1:]:
            if part == "..":
                resolved = resolved.parent
                continue
            step = resolved / part
            if step.is_symlink():
                self.followed += 1
                if self.followed > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
                self.links.add(step)
                step = self.resolve(resolved / os.readlink(step))
            resolved = step
        return resolved
