"""The systemd driver's old address, kept for holders an earlier squish started.

Such a holder keeps every container it started, so an upgrade does not replace it; its
launcher imports ``runtime.systemd`` (this module's home before the runtime moved into
sub-packages) each time it starts a container in a systemd scope. The call it makes is
unchanged. Remove this module once no holder older than the move can still be running.
"""

from __future__ import annotations

from runtime.cgroups.systemd import start_scope

__all__ = ("start_scope",)
