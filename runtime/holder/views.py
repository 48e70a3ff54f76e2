"""The holder's side of the /proc and /sys view: it keeps every container's FUSE
connection and the one server process (per user) that serves them all.

The server is forked from the holder (``runtime.procview.server``) and handed each new
connection over a socket pair. When it dies (killed, crashed), the holder forks another
at once with every connection it keeps: they stayed mounted, since the holder holds
them open, so each container's view answers again as soon as the new server reads, and
no container is restarted. A server that keeps dying within a second of its start is
given up after ``MOST_QUICK_DEATHS`` tries (the containers' reads then wait: logged).

A connection is released when its container's init is reaped. The server exits by
itself once the holder is gone and its last connection ended; it records its identity
in ``procview.json`` in the state folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

from runtime.holder.workers import become_child
from runtime.procview.server import HANDOVER, Connection, serve
from runtime.util.fdpass import send_with_fds
from runtime.util.files import write_json_atomic
from runtime.util.processes import ProcessId

__all__ = ("MOST_QUICK_DEATHS", "SERVER_RECORD", "Views")

log = logging.getLogger("pause")

SERVER_RECORD = "procview.json"
MOST_QUICK_DEATHS = 5
_QUICK = 1.0


class Views:
    """The FUSE connections of the running containers (by init pid) and their server."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.connections: dict[int, int] = {}
        self.server: int | None = None
        self.control: socket.socket | None = None
        self.started = 0.0
        self.quick_deaths = 0

    def add(self, init_pid: int, fuse_fd: int) -> None:
        """Keep ``init_pid``'s connection and hand it to the server (started if need be)."""
        self.connections[init_pid] = fuse_fd
        if self.server is None or self.control is None:
            self._start()
            return
        try:
            send_with_fds(self.control, HANDOVER.pack(init_pid), [fuse_fd])
        except OSError as exc:  # it is dying: its successor gets every connection
            log.info(f"cannot hand a connection to the view's server: {exc}")

    def released(self, init_pid: int) -> None:
        """The container of ``init_pid`` ended: drop its connection."""
        fd = self.connections.pop(init_pid, None)
        if fd is not None:
            os.close(fd)
        if not self.connections:
            self._stop()

    def reaped(self, pid: int, status: int) -> None:
        """A child ended: if it was the server, start another for the connections."""
        if pid != self.server:
            return
        self.server = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if not self.connections:
            return
        quick = time.monotonic() - self.started < _QUICK
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        log.info(f"the view's server {pid} ended (wait status {status}); starting another")
        if self.quick_deaths >= MOST_QUICK_DEATHS:
            log.info("the view's server keeps dying at start; not starting it again")
            return
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        connections = [Connection(fd, pid) for pid, fd in self.connections.items()]
        try:
            child = os.fork()
        except OSError:  # the holder lives on: its end and the server's are not left open
            ours.close()
            theirs.close()
            raise
        if child == 0:
            code = 0
            try:
                ours.detach()  # closed with the rest of the holder's descriptors:
                become_child((theirs.fileno(), *self.connections.values()))
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                me = ProcessId.of(os.getpid())
                if me is not None:
                    write_json_atomic(self.state / SERVER_RECORD, me.to_json())
                serve(theirs, connections)
            except BaseException as exc:
                log.info(f"the view's server failed: {type(exc).__name__}: {exc}")
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.server, self.control, self.started = child, ours, time.monotonic()

    def _stop(self) -> None:
        """No connection left: let the server go (EOF on its socket, then it exits)."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):  # reaped as any other child
                os.kill(self.server, signal.SIGTERM)
            self.server = None
