"""Which container paths a bind may cover: one rule for the spec (``runtime.api``) and for
the launch request the holder and the container's init read (``runtime.wire``).

Standard library only: the code that runs after pivot_root imports it.
"""

from __future__ import annotations

import posixpath

__all__ = ("FORBIDDEN_TARGET_ROOTS", "check_target")

FORBIDDEN_TARGET_ROOTS = ("/proc", "/sys", "/dev")
"""The kernel's filesystems: a bind on or under them would replace what the runtime mounts."""


def check_target(target: str) -> str:
    """``target`` normalised if it is a safe absolute container path, else ValueError.

    The forbidden roots are checked on the normalised path: POSIX keeps a leading ``//``
    apart from ``/``, but the mount code strips it, so ``//proc`` would mount on /proc.
    """
    if not target.startswith("/"):
        raise ValueError(f"target {target!r} must be an absolute path")
    if "\0" in target:
        raise ValueError(f"target {target!r} may not contain a NUL character")
    if any(part in (".", "..") for part in target.split("/")):
        raise ValueError(f"target {target!r} may not contain '..' or '.'")
    normal = "/" + posixpath.normpath(target).lstrip("/")
    if normal == "/":
        raise ValueError(f"target {target!r} may not be '/' (the rootfs is the root)")
    for root in FORBIDDEN_TARGET_ROOTS:
        if normal == root or normal.startswith(root + "/"):
            raise ValueError(f"target {target!r} may not cover {root}")
    return normal
