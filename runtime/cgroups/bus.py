"""Where the user's D-Bus session bus is: the systemd driver's one fact that detection needs.

Kept apart from :mod:`runtime.cgroups.systemd` so that detecting the driver loads no
jeepney, and so that detection and the systemd driver do not import each other.
"""

from __future__ import annotations

import os

__all__ = ("bus_address",)


def bus_address(environ: dict[str, str] | None = None) -> str | None:
    """The path of the user's session bus socket, if there is one to talk to."""
    env = os.environ if environ is None else environ
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
    for part in address.split(";"):
        if part.startswith("unix:path="):
            return part[len("unix:path=") :].split(",")[0]
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.exists(os.path.join(runtime_dir, "bus")):
        return os.path.join(runtime_dir, "bus")
    return None
