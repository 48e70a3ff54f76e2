"""The holder's side of the /proc and /sys view: it keeps every container's FUSE
connection and the one server process (per user) that serves them all.

The server is forked from the holder (``runtime.procview.server``) and handed each new
connection over a socket pair. When it dies (killed, crashed), the holder forks another
at once with every connection it keeps: they stayed mounted, since the holder holds
them open, so each container's view answers again as soon as the new server reads, and
no container is restarted. A server that keeps dying within a second of its start is
given up after ``MOST_QUICK_DEATHS`` tries (the containers' reads then wait: logged).

A container's seccomp listener (``runtime.procview.intercept``) comes later than its
connection, from its init over a socket (the *channel*) the spare handed over with the
connection: this holder keeps it too, so a call waits while the server is started again
instead of failing.

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
from runtime.util.fdpass import receive_with_fds, send_with_fds
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
        self.listeners: dict[int, int] = {}
        """Init pid -> its container's seccomp listener."""
        self.channels: dict[int, int] = {}
        """Channel (a socket the init sends its listener on, or closes) -> init pid."""
        self.server: int | None = None
        self.control: socket.socket | None = None
        self.started = 0.0
        self.quick_deaths = 0

    def add(self, init_pid: int, fuse_fd: int, channel: int | None = None) -> None:
        """Keep ``init_pid``'s connection and hand it to the server (started if need be);
        wait for its seccomp listener on ``channel``."""
        self.connections[init_pid] = fuse_fd
        if channel is not None:
            self.channels[channel] = init_pid
        if self.server is None or self.control is None:
            self._start()
            return
        self._hand(init_pid, fuse_fd, is_listener=False)

    def take_listener(self, channel: int) -> None:
        """The init wrote on ``channel``: keep the listener it sent (if any) and hand it
        to the server."""
        init_pid = self.channels.pop(channel)
        with socket.socket(fileno=channel) as sock:
            try:
                _, fds = receive_with_fds(sock, 1, 1, socket.MSG_CMSG_CLOEXEC)
            except OSError as exc:
                log.info(f"no seccomp listener from init {init_pid}: {exc}")
                return
        for listener in fds[:1]:
            self.listeners[init_pid] = listener
            if self.server is not None and self.control is not None:
                self._hand(init_pid, listener, is_listener=True)
        for extra in fds[1:]:
            os.close(extra)

    def _hand(self, init_pid: int, fd: int, *, is_listener: bool) -> None:
        assert self.control is not None
        try:
            send_with_fds(self.control, HANDOVER.pack(init_pid, is_listener), [fd])
        except OSError as exc:  # it is dying: its successor gets every connection
            log.info(f"cannot hand a connection to the view's server: {exc}")

    def released(self, init_pid: int) -> None:
        """The container of ``init_pid`` ended: drop its connection."""
        for fd in (self.connections.pop(init_pid, None), self.listeners.pop(init_pid, None)):
            if fd is not None:
                os.close(fd)
        for channel in [c for c, pid in self.channels.items() if pid == init_pid]:
            os.close(self.channels.pop(channel))
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
        connections = [
            Connection(fd, pid, listener=self.listeners.get(pid, -1))
            for pid, fd in self.connections.items()
        ]
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
                kept = (*self.connections.values(), *self.listeners.values())
                become_child((theirs.fileno(), *kept))
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
