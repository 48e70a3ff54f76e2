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
instead of failing. A command run with ``exec`` sends one of its own the same way (the
holder gives its runner the channel); it is let go when the runner is reaped.

A warm spare hands its init's connection (and channel) over as soon as the init is warm
(:meth:`Views.warm`): the warm init binds the view's files into the root it mounts ahead,
and a server that runs serves it at once (none is started for it: a launch starts one,
with every connection). A connection is released when its init is reaped, used or not.
Only containers' connections keep the server: the holder lets it go ``LINGER`` seconds
after the last container's connection was released, unless another came
meanwhile (a start soon after, the common case of starts one after another, finds it
serving instead of forking one). The server exits by itself once the holder is gone and
its last connection ended; it records its identity in ``procview.json`` in the state
folder.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.holder.workers import become_child
from runtime.procview import intercept
from runtime.procview.server import HANDOVER, IN_FLIGHT, Connection, serve
from runtime.util.fdpass import receive_with_fds, send_with_fds
from runtime.util.files import write_json_atomic
from runtime.util.processes import ProcessId

__all__ = ("LINGER", "MOST_QUICK_DEATHS", "SERVER_RECORD", "Views")

log = logging.getLogger("pause")

SERVER_RECORD = "procview.json"
MOST_QUICK_DEATHS = 5
_QUICK = 1.0
LINGER = 2.0
"""Seconds the server is kept once its last connection was released. Forking one for a
start took about 1 to 3 ms of it (its binds wait for the server's answers); an idle server
costs its private memory (about 4 MB) meanwhile."""


@dataclass
class _Listener:
    """A seccomp listener of a container: its init's, or an exec'd command's."""

    init_pid: int
    runner: int | None = None
    """The exec runner whose command sends it (None: the container's init)."""
    fd: int = -1
    """The listener, once received on its channel."""
    peer: int = -1
    """The sender's end of the channel, until the runner is forked with it."""


class Views:
    """The FUSE connections of the running containers (by init pid) and their server."""

    def __init__(self, state: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self.connections: dict[int, int] = {}
        """The containers' connections, by init pid."""
        self.warm_ones: dict[int, int] = {}
        """The connections of warm inits no launch has taken yet, by init pid."""
        self.listeners: list[_Listener] = []
        """The seccomp listeners received (init's and exec'd commands')."""
        self.channels: dict[int, _Listener] = {}
        """Channel (a socket a listener comes on, or that closes) -> whose it is."""
        self.in_flight = mmap.mmap(-1, IN_FLIGHT.size)
        """Shared with every server forked: the call it is answering (``IN_FLIGHT``)."""
        self.server: int | None = None
        self.control: socket.socket | None = None
        self.started = 0.0
        self.quick_deaths = 0
        self.idle_since: float | None = None
        """When the last connection was released (None: the server has some, or none runs)."""

    def warm(self, init_pid: int, fuse_fd: int, channel: int) -> None:
        """Keep the connection of a warm init (``init_pid``) and its channel, and hand it
        to the server if one runs: the init's binds of the view's files wait for its
        answers. An idle server is kept ``LINGER`` seconds from now: it is not let go
        while it may be answering them."""
        self.warm_ones[init_pid] = fuse_fd
        self.channels[channel] = _Listener(init_pid)
        if self.server is None or self.control is None:
            return
        if self.idle_since is not None:
            self.idle_since = self.clock()
        self._hand(init_pid, fuse_fd, is_listener=False)

    def launched(self, init_pid: int, wanted: bool) -> bool:
        """The warm init ``init_pid`` got a launch request: its connection is the
        container's if the view is ``wanted`` (the server started if none runs), else it
        is let go. Whether it had one."""
        fuse_fd = self.warm_ones.pop(init_pid, None)
        if fuse_fd is None:
            return False
        if not wanted:
            os.close(fuse_fd)
            self._let_go(lambda listener: listener.init_pid == init_pid)
            return True
        self.connections[init_pid] = fuse_fd
        self.idle_since = None
        if self.server is None or self.control is None:
            self._start()
        return True

    def exec_calls(self, init_pid: int) -> tuple[int, tuple[bytes, int]] | None:
        """For a command to run with ``exec`` in the container of ``init_pid``, if it has
        a view: a channel, and what its runner needs (the filter, the channel's other
        end); then :meth:`exec_started`."""
        program = intercept.program()
        if init_pid not in self.connections or not isinstance(program, bytes):
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.channels[ours.fileno()] = _Listener(init_pid, peer=theirs.fileno())
        return ours.detach(), (program, theirs.detach())

    def exec_started(self, channel: int, runner: int | None) -> None:
        """The runner that got ``channel``'s other end was forked (None: it was not)."""
        pending = self.channels[channel]
        os.close(pending.peer)
        pending.peer, pending.runner = -1, runner
        if runner is None:
            del self.channels[channel]
            os.close(channel)

    def take_listener(self, channel: int) -> None:
        """``channel`` is readable: keep the listener sent on it (if any) and hand it to
        the server."""
        pending = self.channels.pop(channel)
        try:
            with socket.socket(fileno=channel) as sock:
                _, fds = receive_with_fds(sock, 1, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError as exc:  # nothing here may end the holder
            log.info(f"no seccomp listener from init {pending.init_pid}: {exc}")
            return
        for listener in fds[:1]:
            pending.fd = listener
            self.listeners.append(pending)
            if self.server is not None and self.control is not None:
                self._hand(pending.init_pid, listener, is_listener=True)
        for extra in fds[1:]:
            os.close(extra)

    def _let_go(self, gone: Callable[[_Listener], bool]) -> None:
        """Close the listeners and channels ``gone`` says are no longer needed."""
        for listener in [item for item in self.listeners if gone(item)]:
            self.listeners.remove(listener)
            os.close(listener.fd)
        for channel, pending in list(self.channels.items()):
            if gone(pending):
                del self.channels[channel]
                for fd in (channel, pending.peer):
                    if fd >= 0:
                        os.close(fd)

    def _hand(self, init_pid: int, fd: int, *, is_listener: bool) -> None:
        assert self.control is not None
        try:
            send_with_fds(self.control, HANDOVER.pack(init_pid, is_listener), [fd])
        except OSError as exc:  # it is dying: its successor gets every connection
            log.info(f"cannot hand a connection to the view's server: {exc}")

    def released(self, init_pid: int) -> None:
        """The init ``init_pid`` ended (a container's, or a warm one unused): drop its
        connection and listeners."""
        warm = self.warm_ones.pop(init_pid, None)
        if warm is not None:  # it ended unused
            os.close(warm)
        fd = self.connections.pop(init_pid, None)
        self._let_go(lambda listener: listener.init_pid == init_pid)
        if fd is None:
            return
        os.close(fd)
        if not self.connections and self.idle_since is None:
            self.idle_since = self.clock()

    def linger(self) -> float | None:
        """Seconds until the idle server is let go (:meth:`let_idle_go`), or None: no
        server is idle."""
        if self.idle_since is None or self.connections or self.server is None:
            return None
        return max(0.0, self.idle_since + LINGER - self.clock())

    def let_idle_go(self) -> None:
        """Let the server go if it has been idle for ``LINGER`` seconds."""
        if self.linger() == 0.0:
            self._stop()

    def reaped(self, pid: int, status: int) -> None:
        """A child ended: if it was an exec runner, let its command's listener go; if it
        was the server, start another for the connections."""
        self._let_go(lambda listener: listener.runner == pid)
        if pid != self.server:
            return
        self.server = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if not self.connections:
            return
        quick = self.clock() - self.started < _QUICK
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        log.info(f"the view's server {pid} ended (wait status {status}); starting another")
        if self.quick_deaths >= MOST_QUICK_DEATHS:
            log.info("the view's server keeps dying at start; not starting it again")
            return
        try:
            self._start()
        except OSError as exc:  # the views wait for a server: the next launch starts one
            log.info(f"cannot start the view's server again: {exc}")

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        connections = [
            Connection(
                fd, pid, listeners=[item.fd for item in self.listeners if item.init_pid == pid]
            )
            for pid, fd in {**self.connections, **self.warm_ones}.items()
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
                kept = (
                    *self.connections.values(),
                    *self.warm_ones.values(),
                    *(item.fd for item in self.listeners),
                )
                become_child((theirs.fileno(), *kept))
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                me = ProcessId.of(os.getpid())
                if me is not None:
                    write_json_atomic(self.state / SERVER_RECORD, me.to_json())
                serve(theirs, connections, self.in_flight)
            except BaseException as exc:
                log.info(f"the view's server failed: {type(exc).__name__}: {exc}")
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.server, self.control, self.started = child, ours, self.clock()

    def _stop(self) -> None:
        """No connection left: let the server go (EOF on its socket, then it exits)."""
        self.idle_since = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):  # reaped as any other child
                os.kill(self.server, signal.SIGTERM)
            self.server = None
