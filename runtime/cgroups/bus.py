"""Where the user's D-Bus session bus is: the systemd driver's one fact that detection needs.

Kept apart from :mod:`runtime.cgroups.systemd` so that detecting the driver loads no
jeepney, and so that detection and the systemd driver do not import each other.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ("bus_address",)


def bus_address(session_bus: str | None, runtime_dir: Path | None) -> str | None:
    """The path of the user's session bus socket, if there is one to talk to: the unix
    path of ``session_bus`` (``$DBUS_SESSION_BUS_ADDRESS``), else ``bus`` in the user's
    runtime folder when it exists."""
    for part in (session_bus or "").split(";"):
        if part.startswith("unix:path="):
            return part[len("unix:path=") :].split(",")[0]
    if runtime_dir is not None and (runtime_dir / "bus").exists():
        return str(runtime_dir / "bus")
    return None
