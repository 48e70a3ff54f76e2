"""The view's server: one process per user serves every container's FUSE connection.

Each container's init mounts its own connection (its ``/dev/fuse`` descriptor) and binds
the view's files over /proc and /sys; the holder keeps a copy of every connection and
hands it to this server, which it forked. The connection says which container asks: no
pid is looked up per request. The server keeps nothing a restart would lose: node ids
are fixed, a file's content is computed at open and, for a handle it does not know (the
open was served by the server before it), computed again. So a server started again on
the same descriptors answers at once; the connections stay mounted in between.

A connection is first *pending*: the holder hands it over before the init has mounted
it (reading it then fails with EPERM), so pending ones are tried again every few
milliseconds. One that ends (its container's mount namespace is gone: ENODEV), or whose
container's init has ended (a pidfd says so; one never mounted ends only that way), is
closed.

What a read computes is bounded: it runs on a worker thread, and after ``READ_BOUND`` the
container gets the kernel's file instead; a slow controller never holds it longer.

A container's seccomp listeners (``runtime.procview.intercept``: its init's, and one per
command run with ``exec``) come the same way, after its connection: their ``sysinfo``
and ``sched_getaffinity`` calls are answered in this loop from the same figures, within
the same bound, or left to the kernel; the answer is written into the caller's memory on
a thread of its own while this loop goes on serving (the write may fault in a page of a
view file mapped by the caller, which the kernel reads from this server), and no other
call is read meanwhile. One whose processes have all ended is closed. The
call being answered is noted in memory the holder shares with every server it forks
(``IN_FLIGHT``): a server that dies in the middle leaves it to the next one, which lets
the kernel answer it (else its caller would wait for a signal).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import logging
import math
import mmap
import os
import select
import socket
import stat as st
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from runtime.procview import fuse, intercept, limits, unotify, views
from runtime.util.fdpass import receive_with_fds
from runtime.wire import VIEW_FILES

__all__ = ("HANDOVER", "READ_BOUND", "Connection", "render", "serve")

log = logging.getLogger("procview")

READ_BOUND = 0.25
"""Seconds a read may spend computing before the kernel's file is served instead."""
PENDING_RETRY = 0.005
"""How often a connection not mounted yet is tried again (seconds)."""
LOAD_SAMPLE = 5.0
"""Seconds between two samples of a container's runnable processes (the kernel's too)."""
ATTR_VALID = 1
"""Seconds the kernel may keep a node's attributes: they never change."""
IN_FLIGHT = struct.Struct("<Q")
"""The id of the call being answered (0: none). Ids start at a random number for each
filter: only the listener the call came on knows it."""
HANDOVER = struct.Struct("<i?")
"""A descriptor handed to the server: the container init's pid, and whether it is the
container's seccomp listener (else its FUSE connection)."""

_ROOT = 1
_NAMES = tuple(VIEW_FILES)
_DECAY = tuple(math.exp(-LOAD_SAMPLE / period) for period in (60.0, 300.0, 900.0))


def _node_of(name: str) -> int | None:
    return _NAMES.index(name) + 2 if name in _NAMES else None


def _attr(node: int) -> fuse.Attr:
    if node == _ROOT:
        return fuse.Attr(ino=_ROOT, mode=st.S_IFDIR | 0o555, nlink=2)
    return fuse.Attr(ino=node, mode=st.S_IFREG | 0o444)


MAX_OPEN = 256
"""Open files' contents kept per container: the oldest beyond it are let go (a read of
one computes it again), so a container holding many open cannot grow the server."""


def keep(handles: dict[int, bytes], fh: int, data: bytes) -> bytes:
    """Remember ``data`` for open file ``fh``, letting the oldest go past :data:`MAX_OPEN`."""
    handles[fh] = data
    while len(handles) > MAX_OPEN:
        del handles[next(iter(handles))]
    return data


@dataclass
class Connection:
    """One container's FUSE connection."""

    fd: int
    init_pid: int
    ended: int = -1
    """A pidfd of the init: readable once the container has ended (-1: none yet)."""
    live: bool = False
    listeners: list[int] = field(default_factory=list)
    """The seccomp listeners of its ``sysinfo`` and ``sched_getaffinity`` calls."""
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tasks: int | None = None
    """Its processes (the init left out) at the last load sample (None: none yet)."""
    handles: dict[int, bytes] = field(default_factory=dict)


def _read_host(path: str) -> str:
    with open(path) as file:
        return file.read()


def render(name: str, conn: Connection) -> bytes:
    """The content of the view's file ``name`` for the container of ``conn``.

    Only what the file is computed from is read: an open of ``loadavg`` reads no cgroup
    file, one of ``meminfo`` not the CPUs online.
    """
    host = _read_host(VIEW_FILES[name])
    if name == "loadavg":
        tasks = limits.container_tasks(conn.init_pid)
        return views.loadavg(host, conn.load, tasks.count("R"), len(tasks)).encode()
    found, usage = limits.read_limits(conn.init_pid)
    if name == "meminfo":
        return views.meminfo(host, found).encode()
    if name == "swaps":
        return views.swaps(host, found).encode()
    if name == "diskstats":
        return views.diskstats(host, found).encode()
    cpus = views.allowed_cpus(limits.host_online(), found)
    text: str
    if name == "cpuinfo":
        text = views.cpuinfo(host, cpus)
    elif name == "stat":
        text = views.stat(host, cpus)
    elif name == "uptime":
        text = _uptime(host, conn, usage, len(cpus))
    else:
        text = views.cpu_online(cpus)
    return text.encode()


def _uptime(host: str, conn: Connection, usage_usec: int | None, ncpus: int) -> str:
    seconds = limits.seconds_since_start(conn.init_pid)
    if seconds is None:
        return host
    if usage_usec is not None:
        idle = seconds * ncpus - usage_usec / 1e6
    else:  # the host's idle share, for the container's CPUs
        up, host_idle = (float(v) for v in host.split()[:2])
        idle = seconds * ncpus * host_idle / (up * (os.cpu_count() or 1)) if up else 0.0
    return views.uptime(seconds, idle)


def _sysinfo(conn: Connection) -> bytes | None:
    """The container's ``struct sysinfo``, from its view's meminfo, uptime and loadavg.

    Its process count is the last load sample's: counting them scans the host's /proc
    (tens of milliseconds on a host with thousands of processes), which a program that
    calls ``sysinfo`` often must not pay for each call."""
    seconds = limits.seconds_since_start(conn.init_pid)
    if seconds is None:
        return None
    meminfo = render("meminfo", conn).decode()
    if conn.tasks is None:
        conn.tasks = len(limits.container_tasks(conn.init_pid))
    return views.sysinfo(meminfo, seconds, conn.load, conn.tasks)


def _cpus(conn: Connection) -> int:
    """How many CPUs the view's ``/sys/devices/system/cpu/online`` counts."""
    return len(views.allowed_cpus(limits.host_online(), limits.read_limits(conn.init_pid)[0]))


_T = TypeVar("_T")


@dataclass
class _Writing:
    """An answer being written into its caller's memory, on a thread of its own: the
    write may fault in a page of a file this server serves (a private mapping of the
    view's own ``/proc/meminfo``), which the kernel reads from the server first."""

    done: concurrent.futures.Future[None]
    listener: int
    close: bool = False
    """Its listener is closed once the write is done (its container ended meanwhile)."""


class Server:
    """The connections, and the loop that serves them."""

    def __init__(
        self,
        control: socket.socket | None,
        connections: list[Connection],
        in_flight: mmap.mmap | None = None,
    ) -> None:
        self.control = control
        self.connections: dict[int, Connection] = {}
        self.workers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="view")
        self.next_fh = 1
        self.next_sample = time.monotonic() + LOAD_SAMPLE
        self.in_flight = in_flight
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="call")
        self.storer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        """Writes each OPEN's store notice, then its answer (:meth:`open`)."""
        self.storing: set[tuple[int, int]] = set()
        """The OPENs (connection, unique) the storer has not answered yet."""
        self.writing: _Writing | None = None
        """The answer being written, if any: no other call is read meanwhile."""
        self.written_r, self.written_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        """Readable once the answer being written is done."""
        self.last_listener = -1
        """The listener whose call was read last."""
        # After all of the above: a connection is served as it is added (a request that
        # waited while no server ran is read at once).
        for conn in connections:
            self.add(conn)
        self._finish_orphan()

    def _finish_orphan(self) -> None:
        """Let the kernel answer the call a server before this one read and did not answer
        (it died meanwhile); its listener is one of ours if the call can still be waiting."""
        if self.in_flight is None:
            return
        (call_id,) = IN_FLIGHT.unpack_from(self.in_flight)
        orphan = unotify.Call(call_id, 0, -1, ())
        for listener in (fd for conn in self.connections.values() for fd in conn.listeners):
            if call_id:  # every other listener refuses an id it does not know (ENOENT)
                with contextlib.suppress(OSError):
                    unotify.let_kernel_answer(listener, orphan)
        self._note(0)

    def _note(self, call_id: int) -> None:
        if self.in_flight is not None:
            IN_FLIGHT.pack_into(self.in_flight, 0, call_id)

    def bounded(self, what: str, conn: Connection, work: Callable[[], _T]) -> _T | None:
        """What ``work`` returns within ``READ_BOUND`` (None: it took longer, or failed)."""
        future = self.workers.submit(work)
        try:
            return future.result(timeout=READ_BOUND)
        except concurrent.futures.TimeoutError:
            log.info(f"{what} for init {conn.init_pid} took too long; the kernel answers")
        except Exception as exc:  # a container's view must not end the server
            log.info(f"{what} for init {conn.init_pid} failed: {type(exc).__name__}: {exc}")
        return None

    def content(self, node: int, conn: Connection) -> bytes:
        """The file's content, computed within ``READ_BOUND`` (else the kernel's)."""
        name = _NAMES[node - 2]
        data = self.bounded(name, conn, lambda: render(name, conn))
        return data if data is not None else _read_host(VIEW_FILES[name]).encode()

    def answer_call(self, conn: Connection, listener: int, events: int) -> None:
        """Answer the container's waiting ``sysinfo`` or ``sched_getaffinity`` call from the
        view's figures, or let the kernel answer it (anything odd, or too slow)."""
        try:
            if not events & select.POLLIN:  # every process it filtered has ended
                raise EOFError
            call = unotify.receive(listener)
        except (OSError, EOFError) as exc:  # not a listener the kernel still serves
            if isinstance(exc, OSError):
                log.info(f"a seccomp listener of init {conn.init_pid} ends: {exc}")
            conn.listeners.remove(listener)
            os.close(listener)
            return
        if call is None:
            return
        self._note(call.id)
        reply = self.bounded(
            f"syscall {call.nr}",
            conn,
            lambda: intercept.reply(call, lambda: _sysinfo(conn), lambda: _cpus(conn)),
        )
        if reply is None:
            self._let_kernel_answer(listener, call)
            return
        done = self.writer.submit(self._write_answer, listener, call, reply)
        self.writing = _Writing(done, listener)
        done.add_done_callback(lambda _: os.write(self.written_w, b"."))

    def _write_answer(self, listener: int, call: unotify.Call, reply: intercept.Reply) -> None:
        """Write ``reply`` into the caller's memory and end ``call`` with its value (on the
        writer's thread: this loop serves the page the write may fault in meanwhile)."""
        try:
            unotify.write_to_caller(listener, call, reply.address, reply.data)
            unotify.answer(listener, call, reply.value)
        except OSError as exc:  # gone, or its memory not ours to write: the kernel's answer
            log.debug(f"answering syscall {call.nr} of {call.pid}: {exc}")
            self._let_kernel_answer(listener, call)
        else:
            self._note(0)

    def _let_kernel_answer(self, listener: int, call: unotify.Call) -> None:
        try:
            unotify.let_kernel_answer(listener, call)
        finally:
            self._note(0)

    def written(self) -> None:
        """The answer being written is done: calls are read again."""
        assert self.writing is not None
        os.read(self.written_r, 1)
        failed = self.writing.done.exception()
        if failed is not None:  # a listener the kernel no longer serves, say
            log.info(f"answering a call failed: {type(failed).__name__}: {failed}")
        if self.writing.close:
            os.close(self.writing.listener)
        self.writing = None

    def answer(self, conn: Connection, req: fuse.Request) -> bytes | None:
        if req.opcode in fuse.NO_REPLY:
            return None
        handler = _HANDLERS.get(req.opcode)
        if handler is None:
            return fuse.error_reply(req.unique, errno.ENOSYS)
        return handler(self, conn, req)

    def open(self, conn: Connection, req: fuse.Request) -> bytes | None:
        if req.nodeid == _ROOT:
            return fuse.error_reply(req.unique, errno.EISDIR)
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        data = keep(conn.handles, fh, self.content(req.nodeid, conn))
        notice = fuse.store_notice(req.nodeid, data)
        reply = fuse.open_reply(req.unique, fh, fuse.FOPEN_DIRECT_IO)
        # Not from this loop: storing a page waits for its lock, and a reader whose fault
        # holds that lock waits for a READ only this loop answers. The copy of the
        # descriptor keeps the connection the answer is for, whatever ends meanwhile.
        try:
            fd = os.dup(conn.fd)
        except OSError as exc:  # out of descriptors: this open fails, the server goes on
            conn.handles.pop(fh, None)
            return fuse.error_reply(req.unique, exc.errno or errno.EMFILE)
        key = (conn.fd, req.unique)
        self.storing.add(key)
        self.storer.submit(_store_then_answer, fd, notice, reply, self.storing, key)
        return None

    def read(self, conn: Connection, req: fuse.Request) -> bytes:
        fh, offset, size = req.read_args()
        data = conn.handles.get(fh)
        if data is None:  # opened before this server started, or let go: computed again
            data = keep(conn.handles, fh, self.content(req.nodeid, conn))
        return fuse.reply(req.unique, data[offset : offset + size])

    def serve_one(self, conn: Connection) -> None:
        try:
            raw = os.read(conn.fd, fuse.READ_BUFFER)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EPERM:
                return  # not mounted yet
            self.drop(conn, exc)
            return
        conn.live = True
        req = fuse.parse_request(raw)
        answer = self.answer(conn, req)
        if answer is not None:
            with contextlib.suppress(FileNotFoundError):  # answered or interrupted already
                os.write(conn.fd, answer)

    def add(self, conn: Connection) -> None:
        """Serve ``conn`` until it ends or its container does (one never mounted, too)."""
        os.set_blocking(conn.fd, False)
        self.connections[conn.fd] = conn
        try:
            conn.ended = os.pidfd_open(conn.init_pid)
        except OSError as exc:  # gone already (or the pid is not ours to watch)
            self.drop(conn, exc)
            return
        # Tried at once, not after the loop's first wait: an init mounts its connection
        # before the holder hands it over (``runtime.sandbox.mounts.premount_view``).
        self.serve_one(conn)

    def drop(self, conn: Connection, why: OSError | None) -> None:
        if why is not None and why.errno not in (errno.ENODEV, errno.ESRCH):
            log.info(f"the view of init {conn.init_pid} ends: {why}")
        del self.connections[conn.fd]
        for fd in (conn.fd, conn.ended, *conn.listeners):
            if self.writing is not None and fd == self.writing.listener:
                self.writing.close = True  # not while the writer uses it
            elif fd >= 0:
                os.close(fd)

    def take(self) -> bool:
        """Take a connection from the holder; False once the holder is gone."""
        assert self.control is not None
        data, fds = receive_with_fds(self.control, HANDOVER.size, 1, socket.MSG_CMSG_CLOEXEC)
        if not data:
            self.control.close()
            self.control = None
            return False
        init_pid, is_listener = HANDOVER.unpack(data)
        for fd in fds:
            if is_listener:
                self.add_listener(init_pid, fd)
            else:
                self.add(Connection(fd, init_pid))
        return True

    def add_listener(self, init_pid: int, listener: int) -> None:
        """Answer the calls of the container of ``init_pid`` (closed if it is gone)."""
        for conn in self.connections.values():
            if conn.init_pid == init_pid:
                conn.listeners.append(listener)
                return
        os.close(listener)

    def sample_load(self) -> None:
        """One sample of each container's runnable processes into its load averages
        (``/proc`` read at most once for them all: only for containers without a cgroup
        of their own)."""
        self.next_sample = time.monotonic() + LOAD_SAMPLE
        read_all = functools.cache(limits.Tasks.read)
        for conn in self.connections.values():
            try:
                tasks = limits.container_tasks(conn.init_pid, read_all)
                running, conn.tasks = tasks.count("R"), len(tasks)
            except Exception:  # one container's odd /proc must not end the view for all
                log.exception("sampling the load of the container of init %d", conn.init_pid)
                continue
            conn.load = tuple(  # type: ignore[assignment]
                load * decay + running * (1 - decay)
                for load, decay in zip(conn.load, _DECAY, strict=True)
            )

    def _calls(self) -> tuple[dict[int, Connection], list[int]]:
        """The listeners to wait on for calls (by their connection) and the pipe that says
        an answer was written: while one is being written, no other call is read."""
        if self.writing is not None:
            return {}, [self.written_r]
        return {fd: c for c in self.connections.values() for fd in c.listeners}, []

    def _wait(self) -> tuple[dict[int, int], dict[int, Connection], dict[int, Connection]]:
        """Wait for what is to be served next: the events by descriptor, and the
        connections by their init's pidfd and by their seccomp listeners."""
        poller = select.poll()
        live = [c.fd for c in self.connections.values() if c.live]
        ended = {c.ended: c for c in self.connections.values()}
        calls, written = self._calls()
        control = [self.control.fileno()] if self.control else []
        for fd in [*live, *ended, *calls, *written, *control]:
            poller.register(fd, select.POLLIN)
        pending = len(live) < len(self.connections)
        wait = min(self.next_sample - time.monotonic(), PENDING_RETRY if pending else 1e9)
        return dict(poller.poll(max(0, int(wait * 1000)))), ended, calls

    def _answer_calls(self, events: dict[int, int], calls: dict[int, Connection]) -> None:
        """A call of each listener with one waiting, until an answer is being written;
        the listeners taken in turns (from the one after the last served), so that one
        that always has a call waiting never keeps the others' waiting."""
        if self.writing is not None and self.written_r in events:
            self.written()
        ready = sorted(set(events) & set(calls))
        turn = [fd > self.last_listener for fd in ready].count(False)
        for fd in ready[turn:] + ready[:turn]:  # each once: a second read would block
            if self.writing is None and self.connections.get(calls[fd].fd) is calls[fd]:
                self.last_listener = fd
                self.answer_call(calls[fd], fd, events[fd])

    def loop(self) -> None:
        """Serve until the holder is gone and no connection is left."""
        while self.control is not None or self.connections:
            events, ended, calls = self._wait()
            ready = set(events)
            if self.control is not None and self.control.fileno() in ready:
                self.take()
            for fd in ready & set(ended):
                self.drop(ended[fd], None)
            self._answer_calls(events, calls)
            for conn in list(self.connections.values()):
                if conn.fd in ready or not conn.live:
                    self.serve_one(conn)
            if time.monotonic() >= self.next_sample:
                self.sample_load()


def _store_then_answer(
    fd: int, notice: bytes, reply: bytes, storing: set[tuple[int, int]], key: tuple[int, int]
) -> None:
    """In the storer's thread: the file's bytes into the page cache of its connection
    (``fd``, a copy: closed here), then the OPEN's answer, so that the opener's reads
    find the size they raise; ``key`` leaves ``storing`` once it is answered."""
    try:
        with contextlib.suppress(OSError):  # the node is not cached (yet): no size to raise
            os.write(fd, notice)
        with contextlib.suppress(OSError):  # interrupted, or the connection ended
            os.write(fd, reply)
    finally:
        storing.discard(key)
        os.close(fd)


def _lookup(server: Server, conn: Connection, req: fuse.Request) -> bytes:
    node = _node_of(req.name()) if req.nodeid == _ROOT else None
    if node is None:
        return fuse.error_reply(req.unique, errno.ENOENT)
    return fuse.entry_reply(req.unique, _attr(node), ATTR_VALID)


def _readdir(server: Server, conn: Connection, req: fuse.Request) -> bytes:
    _, offset, size = req.read_args()
    entries = [(_ROOT, ".", st.S_IFDIR), (_ROOT, "..", st.S_IFDIR)]
    entries += [(_node_of(n) or 0, n, st.S_IFREG) for n in _NAMES]
    out = b""
    for index, (ino, name, mode) in enumerate(entries[offset:], start=offset + 1):
        entry = fuse.dirent_bytes(ino, index, name, mode >> 12)
        if len(out) + len(entry) > size:
            break
        out += entry
    return fuse.reply(req.unique, out)


def _interrupt(server: Server, conn: Connection, req: fuse.Request) -> bytes | None:
    """Every request is answered before the next is read, but an OPEN the storer is
    answering (it answers it soon: nothing here), so one still interrupted is one a
    server that died held: it ends with EINTR (else its reader would wait forever; an
    answer to a request already answered is refused by the kernel, harmlessly)."""
    if (conn.fd, req.interrupted()) in server.storing:
        return None
    return fuse.error_reply(req.interrupted(), errno.EINTR)


def _release(server: Server, conn: Connection, req: fuse.Request) -> bytes:
    conn.handles.pop(req.read_args()[0], None)
    return fuse.reply(req.unique)


_Handler = Callable[[Server, Connection, fuse.Request], bytes | None]

_HANDLERS: dict[int, _Handler] = {
    fuse.Op.INIT: lambda s, c, r: fuse.init_reply(r.unique, r),
    fuse.Op.LOOKUP: _lookup,
    fuse.Op.GETATTR: lambda s, c, r: fuse.attr_reply(r.unique, _attr(r.nodeid), ATTR_VALID),
    fuse.Op.OPEN: Server.open,
    fuse.Op.READ: Server.read,
    fuse.Op.RELEASE: _release,
    fuse.Op.INTERRUPT: _interrupt,
    fuse.Op.FLUSH: lambda s, c, r: fuse.reply(r.unique),
    fuse.Op.OPENDIR: lambda s, c, r: fuse.open_reply(r.unique, 0, 0),
    fuse.Op.READDIR: _readdir,
    fuse.Op.RELEASEDIR: lambda s, c, r: fuse.reply(r.unique),
    fuse.Op.STATFS: lambda s, c, r: fuse.statfs_reply(r.unique),
    fuse.Op.DESTROY: lambda s, c, r: fuse.reply(r.unique),
}


def serve(
    control: socket.socket | None,
    connections: list[Connection],
    in_flight: mmap.mmap | None = None,
) -> None:
    """Body of the server process: serve ``connections`` and those the holder hands over
    on ``control``; ``in_flight`` is the memory where the call being answered is noted."""
    Server(control, connections, in_flight).loop()
