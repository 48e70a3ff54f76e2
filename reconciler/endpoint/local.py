"""``reconciler run``'s status socket: the running loop answers ``reconciler status``.

A unix socket beside the folder's status record (:func:`reconciler.control.places.status_socket`:
mode 0600 in the 0700 state folder) in a thread of its own, one connection at a time,
with the framing of :mod:`runtime.util.jsonsock`. The asking side sends::

    {"version": 1, "folder": "/abs/desired", "host": "web-1", "labels": {"zone": "a"}}

and gets ``{"version": 1, "document": {...}}``, the ``status --json`` document of that
folder for that host, or ``{"error": "..."}`` (then it works the document out itself).
The document is taken at the request: every squishfile read (parsed again only when its
bytes changed since the last request) and every container observed then, so it is never
older than what the asker just did. Only this account may ask (the peer's uid, and its
pid namespace: a container's root maps to this uid too), and only for the loop's folder.
Waiting for a connection costs nothing: the thread sleeps in ``accept`` until one comes
or the socket is shut down.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from runtime.util.jsonsock import decode_object, peer_of, read_to_eof

__all__ = ("MAX_REQUEST", "TIMEOUT", "StatusDocument", "StatusSocket", "same_user")

log = logging.getLogger(__name__)

StatusDocument = Callable[[str, Mapping[str, str]], dict[str, Any]]
"""The folder's status document for a host's name and labels, taken now."""

MAX_REQUEST = 64 * 1024
"""Largest request read (a host's name and labels)."""
TIMEOUT = 5.0
"""Seconds a connection may stay silent before it is dropped."""


def same_user(pid: int, uid: int) -> bool:
    """Whether a peer is this account outside any container: its uid, and this
    process's pid namespace (whose link a container's processes cannot show us)."""
    if uid != os.getuid():
        return False
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


class StatusSocket(AbstractContextManager["StatusSocket"]):
    """Answers ``status`` for ``folder`` on the socket at ``path`` from when it is made
    until its ``with`` ends. A socket left there by a loop that died is replaced: the
    caller holds the folder's claim, so no other loop of it runs."""

    def __init__(self, path: Path, folder: Path, document: StatusDocument) -> None:
        self.path = path
        self._folder = str(folder)
        self._document = document
        self._listener = _bind(path)
        self._identity = os.stat(path).st_ino
        self._thread = threading.Thread(target=self._serve, name="status socket", daemon=True)
        self._thread.start()

    def __exit__(self, *exc_info: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._thread.join()
        self._listener.close()
        try:
            if os.stat(self.path).st_ino == self._identity:
                os.unlink(self.path)
        except OSError:
            pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # shut down: the loop ends
                return
            with conn:
                self._serve_one(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            if not same_user(*peer_of(conn)):
                log.warning("status socket: refused a peer that is not this account")
                return
            request = decode_object(read_to_eof(conn, MAX_REQUEST))
            conn.sendall(json.dumps(self.answer(request)).encode())
        except (OSError, ValueError) as exc:
            log.info("status socket: a request failed: %s", exc)

    def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one request (see the module)."""
        host, labels = request.get("host"), _labels(request.get("labels"))
        if request.get("version") != 1:
            return {"error": f"unknown request version {request.get('version')!r}"}
        if request.get("folder") != self._folder:
            return {"error": f"this loop answers for {self._folder} only"}
        if not isinstance(host, str) or labels is None:
            return {"error": "a request names the host (a string) and its labels (strings)"}
        try:
            return {"version": 1, "document": self._document(host, labels)}
        except Exception as exc:  # the asker works it out itself, and says what fails
            log.info("status socket: no document: %s: %s", type(exc).__name__, exc)
            return {"error": f"{type(exc).__name__}: {exc}"}


def _labels(labels: object) -> dict[str, str] | None:
    """A request's labels, or None when they are not strings by strings."""
    if not isinstance(labels, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return None
    return labels


def _bind(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600; what was there, if a socket, goes."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(16)
    except OSError:
        listener.close()
        raise
    return listener
