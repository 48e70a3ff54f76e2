"""User and group id maps for the user namespace that holds every container.

Container root maps to the invoking user. When ``/etc/subuid`` and ``/etc/subgid`` give
the user a range, ids 1..N map onto it through the setuid helpers ``newuidmap`` and
``newgidmap`` (package ``uidmap``); otherwise only id 0 is mapped, written directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import HostSetupError

__all__ = ("IdRange", "subordinate_range", "write_id_maps")


@dataclass(frozen=True)
class IdRange:
    """A subordinate id range: ``count`` ids starting at ``start``."""

    start: int
    count: int


def subordinate_range(path: Path, uid: int) -> IdRange | None:
    """The first range for ``uid`` (by name or number) in a subuid/subgid file."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in {name, str(uid)}:
            continue
        try:
            return IdRange(int(fields[1]), int(fields[2]))
        except ValueError:
            continue
    return None


def _run_helper(helper: str, pid: int, outer: int, sub: IdRange) -> None:
    path = shutil.which(helper)
    if path is None:
        raise HostSetupError(
            f"{helper} not found but you have a subordinate id range",
            fix="install the 'uidmap' package (apt-get install uidmap)",
        )
    argv = [path, str(pid), "0", str(outer), "1", "1", str(sub.start), str(sub.count)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HostSetupError(
            f"{' '.join(argv)} failed with exit code {done.returncode}: {done.stderr.strip()}",
            fix="check /etc/subuid and /etc/subgid: one line per user, no overlapping copies",
        )


def write_id_maps(pid: int) -> None:
    """Map root of ``pid``'s fresh user namespace to the caller, plus the subordinate ranges."""
    uid, gid = os.getuid(), os.getgid()
    sub_uids = subordinate_range(Path("/etc/subuid"), uid)
    sub_gids = subordinate_range(Path("/etc/subgid"), uid)
    if sub_uids is not None and sub_gids is not None:
        _run_helper("newuidmap", pid, uid, sub_uids)
        _run_helper("newgidmap", pid, gid, sub_gids)
        return
    proc = Path(f"/proc/{pid}")
    (proc / "setgroups").write_text("deny")
    (proc / "uid_map").write_text(f"0 {uid} 1\n")
    (proc / "gid_map").write_text(f"0 {gid} 1\n")
