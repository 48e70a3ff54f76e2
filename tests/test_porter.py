"""The port handler's own work, in a process of its own on this machine's namespace:
listeners bound and refused, a backend swapped under a steady client in one step, bytes
carried whole both ways, a listener let go. Entering a network namespace (even one's own)
takes CAP_SYS_ADMIN over it: each such test runs, with its port handler, backends and
clients, in a user and network namespace of its own (:func:`tests.support.in_own_namespaces`),
so it runs as any account, as CI's does. The rootless tests cover the handler inside the
holder's user namespace (tests/test_port_handler.py)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.network import porter
from runtime.util.processes import wait_readable
from tests.support import free_port, in_own_namespaces


@contextlib.contextmanager
def running_handler(folder: Path) -> Iterator[Path]:
    """A running port handler's control socket (the handler ends with the block)."""
    path = folder / porter.CONTROL_SOCKET
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            os.close(exit_w)
            rest = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            porter.run(exit_r, path, ready_w, rest)
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(exit_r)
    try:
        assert wait_readable([ready_r], 10.0) and os.read(ready_r, 1) == b"1"
        yield path
    finally:
        os.close(ready_r)
        os.close(exit_w)  # its exit pipe's EOF ends it
        if not wait_readable([os.pidfd_open(child)], 5.0):
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def in_own_namespace(body: Callable[[Path, int], None]) -> Callable[[Path], None]:
    """The test ``body(control, own_netns)``, run in a user and network namespace of its
    own with a port handler there (``control``: its socket; ``own_netns``: a descriptor
    of that namespace, where the backends listen)."""

    def work(folder: Path) -> dict[str, object]:
        with running_handler(folder) as control:
            own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                body(control, own_netns)
            finally:
                os.close(own_netns)
        return {}

    def test(tmp_path: Path) -> None:
        in_own_namespaces(lambda: work(tmp_path))

    test.__name__, test.__qualname__, test.__doc__ = body.__name__, body.__qualname__, body.__doc__
    return test


class Backend:
    """A server on 127.0.0.1 that answers each connection with its name, then echoes
    the SHA-256 of what it received until EOF."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self.name + b"\n")
            digest = hashlib.sha256()
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
            conn.sendall(digest.hexdigest().encode())


def talk(port: int, payload: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def bind(control: Path, ns: int, port: int, backend: Backend | int) -> dict[str, object]:
    to = backend if isinstance(backend, int) else backend.port
    return porter.request(
        control,
        "bind",
        (ns,),
        host_addr="127.0.0.1",
        host_port=port,
        addr="127.0.0.1",
        port=to,
    )


@in_own_namespace
def test_bytes_go_both_ways_whole(control: Path, own_netns: int) -> None:
    backend, port = Backend(b"a"), free_port()
    entry = bind(control, own_netns, port, backend)
    assert entry["id"] == porter.FIRST_ID
    payload = os.urandom(8 << 20)
    answer = talk(port, payload)
    assert answer == b"a\n" + hashlib.sha256(payload).hexdigest().encode()


@in_own_namespace
def test_a_swap_under_a_steady_client_refuses_nothing(control: Path, own_netns: int) -> None:
    first, second, port = Backend(b"first"), Backend(b"second"), free_port()
    entry = bind(control, own_netns, port, first)
    answers: list[bytes] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answers.append(talk(port).split(b"\n")[0])
            except OSError:
                answers.append(b"refused")

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for backend in (second, first, second) * 5:
            seen = len(answers)
            porter.request(
                control, "swap", (own_netns,), id=entry["id"], addr="127.0.0.1", port=backend.port
            )
            while len(answers) < seen + 3:
                pass
    finally:
        stop.set()
        thread.join()
    assert b"refused" not in answers
    assert set(answers) == {b"first", b"second"}


@in_own_namespace
def test_a_taken_port_is_an_error_with_its_errno(control: Path, own_netns: int) -> None:
    backend = Backend(b"a")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = int(taken.getsockname()[1])
        with pytest.raises(OSError) as caught:
            bind(control, own_netns, port, backend)
    assert caught.value.errno == errno.EADDRINUSE
    assert porter.request(control, "list")["listeners"] == []


@in_own_namespace
def test_an_unbound_port_refuses_and_the_list_says_so(control: Path, own_netns: int) -> None:
    backend, port = Backend(b"a"), free_port()
    entry = bind(control, own_netns, port, backend)
    assert [e["host_port"] for e in porter.request(control, "list")["listeners"]] == [port]
    porter.request(control, "unbind", id=entry["id"])
    with pytest.raises(ConnectionRefusedError):
        talk(port)
    assert porter.request(control, "list")["listeners"] == []
    with pytest.raises(OSError) as caught:
        porter.request(control, "unbind", id=entry["id"])
    assert caught.value.errno == errno.ENOENT


@in_own_namespace
def test_a_backend_that_refuses_resets_the_client(control: Path, own_netns: int) -> None:
    port, nothing = free_port(), free_port()
    bind(control, own_netns, port, nothing)
    with pytest.raises(ConnectionResetError):
        talk(port, b"x")


def _flood(control: Path, own_netns: int) -> None:
    flooded, other = Backend(b"flooded"), Backend(b"other")
    flooded_port, other_port = free_port(), free_port()
    bind(control, own_netns, flooded_port, flooded)
    bind(control, own_netns, other_port, other)
    idle = [socket.create_connection(("127.0.0.1", flooded_port), timeout=5) for _ in range(24)]
    try:  # each is relayed, or waits to be, and never ends: a thread held per relay
        for sock in idle[:6]:
            assert sock.recv(16) == b"flooded\n"  # relayed
        time.sleep(0.2)  # the handler accepts what it will of the others meanwhile
        assert talk(other_port).split(b"\n")[0] == b"other"
        for sock in idle[:-1]:
            sock.close()  # their relays end: the ones waiting are relayed in their place
        assert idle[-1].recv(16) == b"flooded\n"  # the last waited, and was not refused
    finally:
        for sock in idle:
            sock.close()


def test_a_flooded_forward_leaves_relays_for_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 24 connections that never end on one forward, against a handler of 8 relays (the
    # handler is forked after this): the other forward still answers, and the flood's
    # connections wait in their listener's backlog until relays end, none refused.
    monkeypatch.setattr(porter, "_RELAYS", 8)
    in_own_namespace(_flood)(tmp_path)


@contextlib.contextmanager
def in_process_handler() -> Iterator[tuple[porter.Porter, int]]:
    """A port handler object in this process (nothing served), and a namespace
    descriptor for its listeners."""
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    exit_r, exit_w = os.pipe()
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    handler = porter.Porter(control, exit_r, own)
    try:
        yield handler, own
    finally:
        handler.relays.shutdown(wait=True)
        handler.selector.close()
        for fd in (exit_r, exit_w, own, handler.shares.wake_r, handler.shares.wake_w):
            os.close(fd)
        control.close()


def test_a_connection_event_of_a_listener_unbound_meanwhile_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One round of events can hold a control request that unbinds a listener and, after
    # it, that listener's connection: with the listener past its share, taking it out of
    # the selector again failed on its closed socket and ended the handler.
    monkeypatch.setattr(porter, "_RELAYS", 4)
    with in_process_handler() as (handler, own):
        listener = handler.bind("127.0.0.1", free_port(), "127.0.0.1", 1, os.dup(own))
        for _ in range(4):
            handler.shares.took(listener.id)
        handler.unbind(listener.id)
        handler._accept(listener)
        assert handler.listeners == {}


def test_a_relay_queued_without_a_new_thread_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ThreadPoolExecutor queues the work before it starts a thread: when no thread can be
    # started, a busy one runs it later, so it must not be counted as ended already.
    with in_process_handler() as (handler, own):
        listener = handler.bind("127.0.0.1", free_port(), "127.0.0.1", 1, os.dup(own))
        client = socket.create_connection(("127.0.0.1", listener.host_port))

        def no_thread() -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(handler.relays, "_adjust_thread_count", no_thread)
        handler._accept(listener)
        assert handler.shares.total == 1  # queued: still a relay to come
        monkeypatch.undo()
        handler.relays.submit(lambda: None).result(timeout=10)  # a thread, which ran it
        handler.relays.shutdown(wait=True)
        assert (handler.shares.total, handler.shares.relaying) == (0, {})
        client.close()
        handler.unbind(listener.id)


def test_a_relay_out_of_descriptors_leaves_no_pipe_open(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[int, int]] = []
    real_pipe2 = os.pipe2

    def second_fails(flags: int) -> tuple[int, int]:
        if made:
            raise OSError(errno.EMFILE, "too many open files")
        made.append(real_pipe2(flags))
        return made[0]

    monkeypatch.setattr(os, "pipe2", second_fails)
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    with a, b, pytest.raises(OSError):
        porter._shuttle(a, b)
    monkeypatch.undo()
    for fd in made[0]:
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF


class OverQuota:
    """What the kernel gives a user whose pipes hold more than pipe-user-pages-soft:
    pipes of two pages, which F_SETPIPE_SZ refuses to grow (EPERM)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pipe2, self.fcntl = os.pipe2, fcntl.fcntl
        monkeypatch.setattr(os, "pipe2", self.small_pipe2)
        monkeypatch.setattr(fcntl, "fcntl", self.refusing_fcntl)

    def small_pipe2(self, flags: int) -> tuple[int, int]:
        pipe = self.pipe2(flags)
        self.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, 8192)
        return pipe

    def refusing_fcntl(self, fd: int, op: int, arg: int = 0) -> int:
        if op == fcntl.F_SETPIPE_SZ and arg > 8192:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return int(self.fcntl(fd, op, arg))


def relay_ends() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """Two TCP connections on 127.0.0.1, as a relay has them: (client, the relay's end
    of it, the relay's connection upstream, the backend's end of that)."""
    ends: list[socket.socket] = []
    for _ in range(2):
        with socket.create_server(("127.0.0.1", 0)) as server:
            ends.append(socket.create_connection(server.getsockname()))
            ends.append(server.accept()[0])
    client, relay_side, upstream, backend = ends
    return client, relay_side, upstream, backend


def relayed(payload: bytes, folder: Path) -> tuple[bytes, int]:
    """``payload`` sent from a file (pages of 4 KiB, as a web server's sendfile sends
    them) through ``porter._shuttle``: what came out, and the relay's source socket."""
    (folder / "payload").write_bytes(payload)
    client, relay_side, upstream, backend = relay_ends()
    source = relay_side.fileno()
    relay = threading.Thread(target=porter._shuttle, args=(relay_side, upstream))
    relay.start()

    def send() -> None:
        with open(folder / "payload", "rb") as file:
            client.sendfile(file)
        client.shutdown(socket.SHUT_WR)

    with client, backend, relay_side, upstream:
        threading.Thread(target=send).start()
        got = bytearray()
        while chunk := backend.recv(1 << 20):
            got += chunk
        backend.close()
        relay.join()
    return bytes(got), source


def test_a_relay_whose_pipes_cannot_grow_moves_bytes_in_large_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Over the pipe quota, 8 MiB must not take a read of the source per 8 KiB."""
    real_splice, real_recv_into = os.splice, socket.socket.recv_into
    reads = []

    def counted_splice(src: int, dst: int, count: int, **flags: int) -> int:
        reads.append(src)
        return real_splice(src, dst, count, **flags)

    def counted_recv_into(sock: socket.socket, *args: Any) -> int:
        reads.append(sock.fileno())
        return real_recv_into(sock, *args)

    OverQuota(monkeypatch)
    monkeypatch.setattr(os, "splice", counted_splice)
    monkeypatch.setattr(socket.socket, "recv_into", counted_recv_into)
    payload = os.urandom(8 << 20)
    got, source = relayed(payload, tmp_path)
    assert got == payload
    assert reads.count(source) < len(payload) // 8192


def test_only_a_bulk_transfer_takes_a_large_pipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Pipes count against the user's quota: a small request through the relay must not
    take 1 MiB of it per direction (32 of them at once would put every new pipe of the
    user, a starting container's log pipe too, at 8 KiB)."""
    real_fcntl = fcntl.fcntl
    grown = []

    def recorded(fd: int, op: int, arg: int = 0) -> int:
        if op == fcntl.F_SETPIPE_SZ:
            grown.append(arg)
        return int(real_fcntl(fd, op, arg))

    monkeypatch.setattr(fcntl, "fcntl", recorded)
    assert relayed(b"GET / HTTP/1.0\r\n\r\n", tmp_path)[0] == b"GET / HTTP/1.0\r\n\r\n"
    assert grown == []
    payload = os.urandom(8 << 20)
    assert relayed(payload, tmp_path)[0] == payload
    assert grown == [1 << 20]


@pytest.mark.parametrize("side", ["the backend", "the client"])
def test_an_urgent_byte_is_passed_on_inline_and_the_relay_goes_on(side: str) -> None:
    """Found in review: splice stops at a TCP urgent mark, so after one ``MSG_OOB`` byte
    the relay's splice failed with EAGAIN while poll said readable: a thread spinning
    at a full CPU, and nothing more passed on, until the sender closed."""
    client, relay_side, upstream, backend = relay_ends()
    relay = threading.Thread(target=porter._shuttle, args=(relay_side, upstream), daemon=True)
    relay.start()
    sender, receiver = (backend, client) if side == "the backend" else (client, backend)
    ends = (client, backend, relay_side, upstream)
    try:
        sender.send(b"!", socket.MSG_OOB)
        sender.sendall(b"after the mark")
        sender.shutdown(socket.SHUT_WR)
        receiver.settimeout(10)
        got = bytearray()
        while chunk := receiver.recv(4096):
            got += chunk
        assert bytes(got) == b"!after the mark"  # the urgent byte as data, in its place
        receiver.shutdown(socket.SHUT_WR)
        relay.join(10)
        assert not relay.is_alive()
    finally:  # a relay still running (the failure) ends before its sockets are closed
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        relay.join(10)
        for end in ends:
            end.close()
