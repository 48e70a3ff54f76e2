"""What unpacking may cost: entries, path depth and bytes, counted from the tar headers.

One :class:`Budget` is shared by all the archives one container needs (its SDK layers),
so a squishfile listing many layers cannot multiply the limits. Every member is charged
from its header before anything of it is written: a sparse member at its full size, a
deep path at its number of components. A refusal says what the archive is known to need
at least, which :mod:`runtime.images.refusals` remembers by the archive's checksum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import ArchiveRefused
from runtime.settings import UnpackLimits

__all__ = ("Budget", "Usage")


@dataclass
class Usage:
    """Entries, bytes (file sizes as unpacked) and the deepest path of some archives."""

    entries: int = 0
    bytes: int = 0
    depth: int = 0

    def add(self, other: Usage) -> None:
        self.entries += other.entries
        self.bytes += other.bytes
        self.depth = max(self.depth, other.depth)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.entries, self.bytes, self.depth)


@dataclass
class Budget:
    """The limits and what the archives unpacked so far used of them."""

    limits: UnpackLimits = field(default_factory=UnpackLimits)
    used: Usage = field(default_factory=Usage)

    def over(self, needs: Usage) -> str | None:
        """Why an archive needing at least ``needs`` cannot fit any more, if it cannot."""
        limits, used = self.limits, self.used
        if used.entries + needs.entries > limits.entries:
            return f"more than {limits.entries} entries{self._shared(used.entries)}"
        if needs.depth > limits.depth:
            return f"a path deeper than {limits.depth} components"
        if used.bytes + needs.bytes > limits.bytes:
            return f"unpacks to more than {limits.bytes} bytes{self._shared(used.bytes)}"
        return None

    def charge(self, label: str, member: str, own: Usage, *, depth: int, size: int) -> None:
        """Count one member (``depth`` path components, ``size`` bytes as unpacked) to
        ``own``, the archive's usage so far; raise :class:`ArchiveRefused` if the budget
        cannot hold it."""
        own.entries += 1
        own.bytes += size
        own.depth = max(own.depth, depth)
        reason = self.over(own)
        if reason is not None:
            raise ArchiveRefused(label, member, reason, at_least=own.as_tuple())

    @staticmethod
    def _shared(before: int) -> str:
        return f" with the container's other layers ({before} before this one)" if before else ""
