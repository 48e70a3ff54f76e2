"""The native init and log pump (``squish-native.c``), installed by the host set-up.

A running container keeps two processes of its own: its init (pid 1) and its log pump.
Both were Python processes forked from the holder, each about 2.5 MiB of PSS for as long
as the container runs. The Python init still assembles and confines the container, then
``execve``s the native init, which only starts the command, forwards signals, reaps and
records ``exit.json``; the log pump's process ``execve``s the native pump. The Python
code stays the reference and the fallback: without the binary (or with
``SQUISH_NATIVE=0``) everything runs in Python, as before.

Why root builds it (``scripts/host-setup.sh``, into :data:`INSTALL_DIR`, owned by root,
mode 0711): an ``execve`` makes a process's memory belong to the user namespace it runs
in, so the container's root would own ``/proc/1`` of an init it had exec'd (and could
list ``/proc/1/fd``, which leads outside the container), unless the program is one it
cannot read and whose owner its namespace does not map. Then the kernel keeps the
memory with the initial namespace and the process non-dumpable from its first
instruction, as the forked Python init is. A binary the user built could be read.

The file name carries a hash of the source: a changed source needs the set-up run again
(until then, Python). It is linked statically: it runs inside containers, which have no
C library of their own.
"""

from __future__ import annotations

import hashlib
import logging
import stat
from pathlib import Path

__all__ = ("INSTALL_DIR", "SOURCE", "binary_name", "installed")

SOURCE = Path(__file__).resolve().parent / "squish-native.c"
INSTALL_DIR = Path("/usr/local/libexec/squish")
"""Where ``scripts/host-setup.sh`` installs the binary."""

log = logging.getLogger(__name__)


def binary_name(source: bytes) -> str:
    """The installed file's name for this source (the set-up computes the same)."""
    return f"squish-native-{hashlib.sha256(source).hexdigest()[:16]}"


def installed(directory: Path = INSTALL_DIR, owner: int = 0) -> Path | None:
    """The binary built from the current source, owned by ``owner`` (root) and neither
    readable nor writable by others; or None (logged, with the fix)."""
    binary = directory / binary_name(SOURCE.read_bytes())
    try:
        found = binary.stat()
    except OSError:
        found = None
    if found is not None and stat.S_ISREG(found.st_mode):
        if found.st_uid == owner and not found.st_mode & 0o066:
            return binary
        log.warning(  # one the account could read would leave every init dumpable
            "%s is not root's, or others may read or write it: not used (the host set-up "
            "installs it root-owned, mode 0711)",
            binary,
        )
        return None
    log.warning(
        "%s is not installed: container inits and log pumps run in Python, at about 2.5 MiB "
        "each (run scripts/host-setup.sh as root, or make as root, to build it)",
        binary,
    )
    return None
