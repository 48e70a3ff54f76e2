"""Archives refused, remembered by their sha256 so they are never downloaded again.

A refusal is written to ``<cache>/refused/<sha256>.json`` with its reason. An unsafe or
corrupt archive (its checksum pins its bytes) is refused from then on. An archive over
the unpacking limits is remembered with what it is known to need at least (entries,
bytes, depth): it is refused again while that cannot fit in the container's budget, and
tried again once it could (the limits were raised, or other layers were dropped).
Delete the folder to forget every refusal.
"""

from __future__ import annotations

import time
from pathlib import Path

from runtime.errors import ArchiveError, ArchiveRefused
from runtime.images.budget import Budget, Usage
from runtime.util.files import read_json, write_json_atomic

__all__ = ("recall", "remember")


def _record_path(cache: Path, sha256: str) -> Path:
    return cache / "refused" / f"{sha256.lower()}.json"


def remember(cache: Path, sha256: str, error: ArchiveError) -> None:
    """Record that the archive of ``sha256`` was refused for ``error``."""
    at_least = list(error.at_least) if isinstance(error, ArchiveRefused) else None
    record = {
        "error": str(error),
        "member": error.member,
        "reason": error.reason,
        "at_least": at_least,
        "at": time.time(),
    }
    path = _record_path(cache, sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def recall(cache: Path, sha256: str, budget: Budget, label: str) -> None:
    """Raise :class:`ArchiveRefused` (``remembered``) if the archive of ``sha256`` was
    refused before and would be again within ``budget``."""
    record = read_json(_record_path(cache, sha256))
    if not isinstance(record, dict):
        return
    at_least = record.get("at_least")
    needs = Usage()
    if isinstance(at_least, list) and len(at_least) == 3:
        needs = Usage(*(int(n) for n in at_least))
        if budget.over(needs) is None:
            return  # it could fit now: try it again
    reason = f"refused before, not downloaded again: {record.get('reason', 'unknown reason')}"
    raise ArchiveRefused(
        label, str(record.get("member", "")), reason, at_least=needs.as_tuple(), remembered=True
    )
