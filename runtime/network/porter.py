"""The host-side port handler (``port_handler = "splice"``): TCP host forwards of bridge
containers without slirp4netns' user-mode TCP.

One process per shared network namespace, forked by its keeper
(:mod:`runtime.network.shared`), which restarts it when it dies: it lives in the host's
network namespace and the holder's user namespace, so it binds the host ports, and its
threads may enter the containers' network namespaces. Each listener has a backend: a
container's network namespace (a descriptor the keeper sends) and an address and port
in it. Each accepted connection goes to a thread of a pool, which enters that namespace
(it cannot come back into the host's, which belongs to a user namespace above the
holder's: between connections it waits in the shared namespace), makes a socket there,
connects it to the container's own address (delivered inside the namespace, as to any
local address: no bridge, no neighbour tables on the way) and moves the bytes both ways
with non-blocking ``splice(2)`` through a pipe per direction (the kernel moves them; this
process never reads them). A user whose pipes already hold more than
``/proc/sys/fs/pipe-user-pages-soft`` pages (64 MiB: about 250 running containers' log
pipes) gets pipes of 8 KiB that cannot grow, and splicing 8 KiB a call costs ten times
the CPU: such a connection is copied through a buffer of this process instead.

A listener's backend changes in one step (``swap``): the host socket stays open, so a
container replaced by another answering the same port refuses nothing; connections
already accepted finish with the backend they had. UDP is not handled here: it stays
with slirp4netns.

Control: ``ports.sock`` in the bridge folder, one JSON request per connection (the
keeper is its only client), the namespace's descriptor attached to ``bind`` and ``swap``:
``bind`` (host_addr, host_port, addr, port: a new listener, an error with the errno when
the port cannot be bound), ``swap`` (id, addr, port), ``unbind`` (id), ``list``. It ends
when ``exit_fd`` reaches EOF (its keeper ended).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from runtime.sandbox import syscalls as sc
from runtime.settings import PORT_HANDLERS
from runtime.util import jsonsock
from runtime.util.fdpass import receive_with_fds, send_with_fds

__all__ = ("CONTROL_SOCKET", "FIRST_ID", "HANDLERS", "Listener", "Porter", "request", "run")

HANDLERS = PORT_HANDLERS
"""The ways a bridge container's TCP forward can be served; the first is the default
(UDP forwards always go through slirp4netns)."""
CONTROL_SOCKET = "ports.sock"
FIRST_ID = 1 << 20
"""Listener ids count up from here: slirp4netns' own forward ids count up from 1, so the
two never meet in one container's list."""
_PIPE_SIZE = 1 << 20
"""Bytes a relay's pipe holds once it carries more than one pipeful: fewer splice calls
per MiB moved."""
_DEFAULT_PIPE = 1 << 16
"""Bytes a new pipe holds (16 pages), unless its user is over the pipe quota."""
_COPY_SIZE = 1 << 18
"""Bytes a relay's buffer holds when it copies (only small pipes to be had)."""
_NOWAIT = 0x2 | 0x1
"""``SPLICE_F_NONBLOCK | SPLICE_F_MOVE``."""
_RELAYS = 4096
"""Connections relayed at once; more wait in their listener's backlog for one to end."""
_BACKLOG = 512
_MAX_REQUEST = 1 << 16
_RESET = b"\1\0\0\0\0\0\0\0"
"""``struct linger`` on, zero seconds: closing the socket resets the connection."""


@dataclass
class Listener:
    """A host socket and where its connections go: ``addr:port`` in the network
    namespace ``ns_fd`` (owned by the listener)."""

    id: int
    sock: socket.socket
    host_addr: str
    host_port: int
    addr: str
    port: int
    ns_fd: int

    def entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host_addr": self.host_addr,
            "host_port": self.host_port,
            "addr": self.addr,
            "port": self.port,
        }


def request(
    path: Path, op: str, fds: tuple[int, ...] = (), timeout: float = 5.0, **args: Any
) -> dict[str, Any]:
    """Send ``op`` (with descriptors ``fds``) to the port handler at ``path``; OSError
    when it does not answer or fails (its errno, when the failure had one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        jsonsock.connect(sock, path, timeout)
        send_with_fds(sock, json.dumps({"op": op, **args}).encode(), fds)
        sock.shutdown(socket.SHUT_WR)
        try:
            reply = jsonsock.decode_object(jsonsock.read_to_eof(sock, 1 << 20))
        except ValueError as exc:  # it died mid-request, or answered nonsense
            raise OSError(errno.EIO, f"the port handler gave no answer to {op}: {exc}") from exc
    error = reply.get("error")
    if isinstance(error, dict):
        raise OSError(int(error.get("errno") or 0) or errno.EIO, str(error.get("desc")))
    return reply


class Porter:
    """The listeners and the loop that accepts on them."""

    def __init__(self, control: socket.socket, exit_fd: int, rest_fd: int) -> None:
        self.rest_fd = rest_fd
        self.relays = ThreadPoolExecutor(_RELAYS, thread_name_prefix="relay")
        self.control = control
        self.exit_fd = exit_fd
        self.listeners: dict[int, Listener] = {}
        self.next_id = FIRST_ID
        self.selector = selectors.DefaultSelector()
        self.shares = _Shares()

    def bind(self, host_addr: str, host_port: int, addr: str, port: int, ns_fd: int) -> Listener:
        family = socket.AF_INET6 if ":" in host_addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host_addr, host_port))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = Listener(self.next_id, sock, host_addr, host_port, addr, port, ns_fd)
        self.next_id += 1
        self.listeners[listener.id] = listener
        self.selector.register(sock, selectors.EVENT_READ, listener)
        return listener

    def swap(self, listener_id: int, addr: str, port: int, ns_fd: int) -> None:
        listener = self._listener(listener_id)
        old = listener.ns_fd
        listener.addr, listener.port, listener.ns_fd = addr, port, ns_fd
        os.close(old)  # each connection under way has a copy of its own

    def unbind(self, listener_id: int) -> None:
        listener = self._listener(listener_id)
        if not self.shares.forget(listener_id):
            self.selector.unregister(listener.sock)
        listener.sock.close()
        os.close(listener.ns_fd)
        del self.listeners[listener_id]

    def _listener(self, listener_id: int) -> Listener:
        listener = self.listeners.get(listener_id)
        if listener is None:
            raise OSError(errno.ENOENT, f"no listener {listener_id}")
        return listener

    def serve(self) -> NoReturn:
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.selector.register(self.exit_fd, selectors.EVENT_READ, "exit")
        self.selector.register(self.shares.wake_r, selectors.EVENT_READ, "ended")
        while True:
            for key, _ in self.selector.select():
                if key.data == "exit":
                    os._exit(0)
                elif key.data == "control":
                    self._answer()
                elif key.data == "ended":
                    self._resume()
                else:
                    self._accept(key.data)

    def _resume(self) -> None:
        """Accept again on the listeners paused for their share that may take a relay
        now (relays ended)."""
        for listener_id in self.shares.resumable():
            listener = self.listeners.get(listener_id)
            if listener is not None:
                self.selector.register(listener.sock, selectors.EVENT_READ, listener)

    def _accept(self, listener: Listener) -> None:
        """Hand the next connection to a relay; a failure (out of descriptors or
        threads) costs that connection only, never the handler and every forward. A
        listener past its share is not accepted on until relays end: its connections
        wait in its backlog, and one flooded forward cannot take every relay."""
        if self.listeners.get(listener.id) is not listener:
            return  # unbound by a request answered earlier in this round of events
        if not self.shares.may_take(listener.id):  # paused: a relay that ends resumes it
            self.selector.unregister(listener.sock)
            return
        try:
            conn, _ = listener.sock.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError:  # EMFILE, ENFILE, ENOBUFS: the client waits, or retries
            time.sleep(0.01)  # not a busy loop while the listener stays readable
            return
        try:
            ns_fd = os.dup(listener.ns_fd)  # the relay's: a swap may close the listener's
        except OSError:
            conn.close()
            return
        backend = (listener.addr, listener.port)
        self.shares.took(listener.id)
        with contextlib.suppress(RuntimeError):  # no new thread: queued, a busy one takes it
            self.relays.submit(self._relayed, listener.id, conn, ns_fd, backend)

    def _relayed(
        self, listener_id: int, conn: socket.socket, ns_fd: int, backend: tuple[str, int]
    ) -> None:
        try:
            _relay(conn, ns_fd, backend, self.rest_fd)
        finally:
            self.shares.ended(listener_id)

    def _answer(self) -> None:
        try:
            conn, _ = self.control.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(5.0)
            fds: list[int] = []
            try:
                data, fds = receive_with_fds(conn, _MAX_REQUEST, 1)
                rest = jsonsock.read_to_eof(conn, _MAX_REQUEST, within=5.0) if data else b""
                reply = self._handle(jsonsock.decode_object(data + rest), fds)
            except OSError as exc:
                reply = {"error": {"errno": exc.errno, "desc": str(exc)}}
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                reply = {"error": {"errno": errno.EINVAL, "desc": f"bad request: {exc}"}}
            for fd in fds:  # the ones a listener did not take
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode())

    def _handle(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Carry out ``message``; a listener it makes or changes takes ``fds[0]`` out."""
        op = message["op"]
        backend = (str(message.get("addr")), int(message.get("port", 0)))
        if op == "bind":
            host = (str(message["host_addr"]), int(message["host_port"]))
            listener = self.bind(*host, *backend, fds[0])
            fds.pop(0)
            return listener.entry()
        if op == "swap":
            self.swap(int(message["id"]), *backend, fds[0])
            fds.pop(0)
        elif op == "unbind":
            self.unbind(int(message["id"]))
        elif op != "list":
            raise ValueError(f"unknown op {op!r}")
        return {"listeners": [listener.entry() for listener in self.listeners.values()]}


class _Shares:
    """The relays under way, per listener, and the listeners paused for their share: a
    listener may take a relay while fewer than :data:`_RELAYS` run and it holds less
    than three quarters of those the other listeners leave. One flooded forward leaves
    a quarter of the relays to the others; several leave less (two flooded together, a
    seventh; one after the other, a sixteenth), and about seven leave none: connections
    that never end can still fill a handler shared by every forward. Relays end in their
    own threads, which wake the accepting one when a listener waits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.relaying: dict[int, int] = {}
        self.total = 0
        self.paused: set[int] = set()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def may_take(self, listener_id: int) -> bool:
        """Whether the listener may take a relay now; if not, it is paused from now on
        (in the same step: a relay that ends after it wakes the accepting thread)."""
        with self.lock:
            if self._may_take(listener_id):
                return True
            self.paused.add(listener_id)
            return False

    def forget(self, listener_id: int) -> bool:
        """The listener goes; whether it was paused (not accepted on)."""
        with self.lock:
            paused = listener_id in self.paused
            self.paused.discard(listener_id)
            return paused

    def _may_take(self, listener_id: int) -> bool:
        mine = self.relaying.get(listener_id, 0)
        left = _RELAYS - (self.total - mine)
        return self.total < _RELAYS and 4 * mine < 3 * left

    def took(self, listener_id: int) -> None:
        with self.lock:
            self.relaying[listener_id] = self.relaying.get(listener_id, 0) + 1
            self.total += 1

    def ended(self, listener_id: int) -> None:
        with self.lock:
            self.total -= 1
            self.relaying[listener_id] -= 1
            if not self.relaying[listener_id]:
                del self.relaying[listener_id]
            waiting = bool(self.paused)
        if waiting:
            with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
                os.write(self.wake_w, b"\0")

    def resumable(self) -> list[int]:
        """The paused listeners that may take a relay now (no longer paused)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_r, 4096)
        with self.lock:
            ready = [i for i in self.paused if self._may_take(i)]
            self.paused.difference_update(ready)
        return ready


def run(exit_fd: int, control_path: Path, ready_fd: int, rest_fd: int) -> NoReturn:
    """The port handler's life (in a process forked for it): listen on ``control_path``,
    write ``1`` to ``ready_fd``, serve until ``exit_fd`` reaches EOF; relay threads wait
    in the network namespace ``rest_fd`` between connections."""
    control_path.unlink(missing_ok=True)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    control.bind(str(control_path))
    control.listen(16)
    control.setblocking(False)
    porter = Porter(control, exit_fd, rest_fd)
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    porter.serve()


def _relay(conn: socket.socket, ns_fd: int, backend: tuple[str, int], rest_fd: int) -> None:
    """In a pool's thread: from inside the network namespace ``ns_fd`` (closed here),
    connect to ``backend`` and move bytes both ways until each side has said all it had;
    a backend that refuses resets ``conn``. Then the thread waits in the namespace
    ``rest_fd`` (the shared one: it pins no container's namespace while idle)."""
    try:
        with conn:
            try:
                sc.setns(ns_fd, sc.CLONE_NEWNET)
                upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            except OSError:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                return
            with upstream:
                try:
                    upstream.connect(backend)
                except OSError:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    return
                _shuttle(conn, upstream)
    finally:
        os.close(ns_fd)
        sc.setns(rest_fd, sc.CLONE_NEWNET)


class _Direction:
    """Bytes from one socket to the other, through a buffer of the direction's own:
    filled from ``source`` when empty, else passed on to ``sink``."""

    def __init__(self, source: socket.socket, sink: socket.socket) -> None:
        self.source, self.sink = source, sink
        self.held = 0
        """Bytes in the buffer, not yet in ``sink``."""
        self.ended = False
        """``source`` said all it had (or failed, or ``sink`` is gone)."""
        self.done = False
        """Ended, everything passed on, and ``sink``'s write side shut."""

    def wants(self) -> tuple[int, int] | None:
        """The descriptor and the poll event this direction waits for (None: done)."""
        if self.done:
            return None
        if self.held:
            return self.sink.fileno(), select.POLLOUT
        return self.source.fileno(), select.POLLIN

    def step(self) -> None:
        """Fill the buffer from ``source`` when it is empty, else pass it on to ``sink``."""
        try:
            if self.held:
                self.held -= self.drain()
            else:
                moved = self.fill()
                self.held, self.ended = moved, moved == 0
        except BlockingIOError:
            return
        except OSError:  # a reset, or a peer gone: like an end of what there is to say
            self.held, self.ended = 0, True
        if self.ended and not self.held:
            self.done = True
            with contextlib.suppress(OSError):
                self.sink.shutdown(socket.SHUT_WR)

    def fill(self) -> int:
        """Bytes read from ``source`` (0: its end); BlockingIOError: none yet."""
        raise NotImplementedError

    def drain(self) -> int:
        """Bytes of the ``held`` ones written to ``sink``."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the buffer."""


_ENDED = select.POLLHUP | select.POLLERR | select.POLLNVAL
"""Poll events that end a wait whatever it waits for."""

_MARK_READ = 4096
"""Bytes read past a TCP urgent mark (less than an empty pipe holds): splicing resumes."""


class _Spliced(_Direction):
    """Through a pipe (the kernel moves the bytes: this process never reads them), of
    the default size until a second fill brings bytes: only a direction that carries
    more than one pipeful takes ``_PIPE_SIZE`` of the user's pipe quota."""

    def __init__(self, source: socket.socket, sink: socket.socket, pipe: tuple[int, int]) -> None:
        super().__init__(source, sink)
        self.read_end, self.write_end = pipe
        self.fills = 0

    def fill(self) -> int:
        try:
            moved = os.splice(self.source.fileno(), self.write_end, _PIPE_SIZE, flags=_NOWAIT)
        except BlockingIOError:
            moved = 0
        if not moved:  # readable, yet nothing spliced: a TCP urgent mark, or the end
            moved = self._past_the_mark()
        if moved:
            self.fills += 1
            if self.fills == 2:
                with contextlib.suppress(OSError):  # over the quota: it stays at the default
                    fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        return moved

    def _past_the_mark(self) -> int:
        """Splice stops at an urgent byte (``MSG_OOB``) for as long as it is unread:
        EAGAIN while poll says readable, and 0 once the peer has shut its side too (as
        at the end). Read once instead (the byte comes inline, as data,
        ``SO_OOBINLINE``), into the empty pipe: 0 only at the end; BlockingIOError if
        nothing came."""
        data = self.source.recv(_MARK_READ)
        return os.write(self.write_end, data) if data else 0

    def drain(self) -> int:
        return os.splice(self.read_end, self.sink.fileno(), self.held, flags=_NOWAIT)

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class _Copied(_Direction):
    """Through memory of this process: for when only small pipes can be had."""

    def __init__(self, source: socket.socket, sink: socket.socket) -> None:
        super().__init__(source, sink)
        self.buffer = memoryview(bytearray(_COPY_SIZE))
        self.filled = 0

    def fill(self) -> int:
        self.filled = self.source.recv_into(self.buffer)
        return self.filled

    def drain(self) -> int:
        return self.sink.send(self.buffer[self.filled - self.held : self.filled])


def _direction(source: socket.socket, sink: socket.socket) -> _Direction:
    """A spliced direction when its pipe has the default size, else a copying one: a user
    whose pipes hold more than ``/proc/sys/fs/pipe-user-pages-soft`` pages gets pipes of
    two pages that cannot grow, and splicing 8 KiB a call costs ten times the CPU of
    copying through a large buffer."""
    pipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    if fcntl.fcntl(pipe[1], fcntl.F_GETPIPE_SZ) >= _DEFAULT_PIPE:
        return _Spliced(source, sink, pipe)
    for fd in pipe:
        os.close(fd)
    return _Copied(source, sink)


def _shuttle(conn: socket.socket, upstream: socket.socket) -> None:
    """Both directions between ``conn`` and ``upstream`` in this one thread, each socket
    non-blocking, until both are done."""
    for sock in (conn, upstream):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)  # urgent bytes as data
    directions: list[_Direction] = []
    try:
        directions.append(_direction(conn, upstream))
        directions.append(_direction(upstream, conn))  # out of descriptors: the first's close
        while waiting := [(d, w) for d in directions if (w := d.wants()) is not None]:
            events: dict[int, int] = {}
            for _, (fd, event) in waiting:
                events[fd] = events.get(fd, 0) | event
            poller = select.poll()
            for fd, event in events.items():
                poller.register(fd, event)
            ready = dict(poller.poll())
            for direction, (fd, event) in waiting:
                if ready.get(fd, 0) & (event | _ENDED):  # what it waits for, not the other's
                    direction.step()
    finally:
        for direction in directions:
            direction.close()
