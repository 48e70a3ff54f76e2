"""The squishfile: one TOML file describing one container, and its translation to a spec.

This module is the public face of the squishfile; the work is split between
:mod:`reconciler.squishfile.model` (the pydantic models and :meth:`Squishfile.to_spec`) and
:mod:`reconciler.squishfile.loading` (:func:`load_squishfile`, :func:`load_with_lines`
and the mapping of validation errors to :class:`reconciler.problems.Problem`).
The format is documented for users in ``docs/squishfile.md``.
"""

from __future__ import annotations

from reconciler.squishfile.loading import (
    MAX_BYTES,
    ConflictLines,
    FileIdentity,
    file_text,
    load_network_file,
    load_squishfile,
    load_with_lines,
    read_squishfile,
    status_key,
)
from reconciler.squishfile.model import (
    DownloadLayer,
    LocalLayer,
    NetworkJoin,
    PortForward,
    RunSection,
    Squishfile,
)

__all__ = (
    "MAX_BYTES",
    "ConflictLines",
    "DownloadLayer",
    "FileIdentity",
    "LocalLayer",
    "NetworkJoin",
    "PortForward",
    "RunSection",
    "Squishfile",
    "file_text",
    "load_network_file",
    "load_squishfile",
    "load_with_lines",
    "read_squishfile",
    "status_key",
)
