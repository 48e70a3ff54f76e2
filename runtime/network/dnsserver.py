"""The DNS responder of the container networks: one process serving every network.

Run as ``python -m runtime.network.dnsserver RECORDS.json [--exit-fd N]`` inside the
network namespace it serves. RECORDS.json (written atomically by the runtime)::

    {"version": 1,
     "servers": [{"listen": "10.89.0.1", "upstream": ["10.0.2.3"],
                  "names": {"web": ["10.89.0.5"], "db": ["10.89.0.6"]},
                  "peers": {"10.89.0.5": ["10.89.1.1"]}},
                 {"listen": "10.89.1.1", "upstream": ["10.0.2.3"],
                  "names": {"web": ["10.89.1.7"], "cache": ["10.89.1.8"]}}]}

Each ``listen`` address gets one UDP and one TCP socket on port 53. A query for one of
that server's ``names`` (any case; with or without the final dot; also ``NAME.dns.squish``)
is answered with its A records (TTL 0); so is a query for a name of another server that
``peers`` lists for the asking address (a container on several networks asks the
gateway of its first one, and finds the containers of every network it is on, as
Docker's and podman's resolvers answer); AAAA and other types for a known name get an
empty NOERROR. Any other name is forwarded over UDP to the ``upstream`` addresses in
turn (2 s each; SERVFAIL when none answers), or answered NXDOMAIN when there is no
upstream (internal networks). An upstream may carry a port (``"127.0.0.9:5353"``).

The file is checked (inode, mtime, size) before each query is answered, so an update is
answered by the very next query, and a few times a second besides, so a new ``listen``
address gets its sockets without waiting for a query; SIGHUP has it checked at once (the
keeper sends it when a network is added, and waits for the new sockets; it starts the
responder with SIGHUP ignored, so one sent before the handler is set does no harm). A
file that cannot be read or parsed leaves the last good records in place. Sockets bind
with ``IP_FREEBIND``: an address may be listed before the bridge that carries it has it.

One thread, one selector: a forwarded query waits on its own socket with its own
deadline, so a silent upstream never holds up other queries; forwards in flight and TCP
connections are capped, in all and per asking address (a quarter each: one container
cannot take them all from the others on its networks). The process ends on SIGTERM,
or when ``--exit-fd`` reads end of file (its supervisor died). Only the standard
library and dnspython are imported.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import math
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = (
    "DNS_PORT",
    "FORWARD_TIMEOUT",
    "MAX_FORWARDS",
    "MAX_FORWARDS_EACH",
    "MAX_TCP",
    "MAX_TCP_EACH",
    "SUFFIX",
    "Responder",
    "Server",
    "local_answer",
    "main",
    "parse_records",
)

DNS_PORT = 53
"""Where every ``listen`` address is served (``--port`` moves it, for tests and benchmarks)."""

SUFFIX = "dns.squish"
"""``NAME.dns.squish`` is answered as ``NAME``."""

FORWARD_TIMEOUT = 2.0
"""Seconds one upstream has to answer a forwarded query before the next is tried."""

MAX_FORWARDS = 256
"""Forwarded queries in flight at once; past it a query is answered SERVFAIL at once."""

MAX_FORWARDS_EACH = MAX_FORWARDS // 4
"""Forwarded queries in flight at once from one asking address (one container on a
network): past it its query is answered SERVFAIL at once, so that one container
cannot take every forward from the others."""

MAX_TCP = 64
"""Open TCP connections at once; past it a new one is closed at once."""

MAX_TCP_EACH = MAX_TCP // 4
"""Open TCP connections at once from one asking address; past it its new one is closed."""

TCP_IDLE = 10.0
"""Seconds a TCP connection may stay silent before it is closed."""

TCP_BACKLOG_LIMIT = 1 << 18
"""Bytes of answers a TCP client may leave unread before it is dropped."""

RECHECK = 0.2
"""Seconds between checks of the records file when no query comes."""

Reply = Callable[[bytes], None]
"""Sends one DNS message back to whoever asked."""

Handler = Callable[[int], None]
"""What the selector calls when a registered file object is ready (with the event mask)."""


def _say(message: str) -> None:
    print(f"dnsserver: {message}", file=sys.stderr, flush=True)


# --- the records -------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """What one ``listen`` address answers, and where it forwards the rest."""

    listen: str
    upstream: tuple[tuple[str, int], ...]
    names: Mapping[str, tuple[str, ...]]
    peers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Asking address -> the ``listen`` addresses whose names it also finds here."""


def _upstream(text: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6ADDR]:PORT`` as (address, port)."""
    try:
        return str(ipaddress.ip_address(text)), DNS_PORT
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"upstream {text!r} is not an address or ADDR:PORT")
    return str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))), int(port)


def _names(raw: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ValueError("names must be an object of name -> [address, ...]")
    names: dict[str, tuple[str, ...]] = {}
    for name, addresses in raw.items():
        if not isinstance(addresses, list):
            raise ValueError(f"names.{name} must be a list of addresses")
        parsed = tuple(str(ipaddress.IPv4Address(address)) for address in addresses)
        key = str(name).lower().rstrip(".")
        names[key] = tuple(dict.fromkeys(names.get(key, ()) + parsed))
    return names


def _server(raw: object) -> Server:
    if not isinstance(raw, dict):
        raise ValueError("each server must be an object")
    upstream = raw.get("upstream", [])
    if not isinstance(upstream, list):
        raise ValueError("upstream must be a list")
    return Server(
        listen=str(ipaddress.ip_address(str(raw.get("listen")))),
        upstream=tuple(_upstream(str(entry)) for entry in upstream),
        names=_names(raw.get("names", {})),
        peers=_peers(raw.get("peers", {})),
    )


def _peers(raw: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError("peers must be an object of address -> [listen address, ...]")
    return {
        str(ipaddress.IPv4Address(asker)): tuple(str(ipaddress.ip_address(a)) for a in others)
        for asker, others in raw.items()
    }


def parse_records(data: object) -> dict[str, Server]:
    """RECORDS.json's content as its servers by listen address; ValueError when malformed."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError('the records must be an object with "version": 1')
    servers = data.get("servers", [])
    if not isinstance(servers, list):
        raise ValueError("servers must be a list")
    by_listen: dict[str, Server] = {}
    for raw in servers:
        server = _server(raw)
        if server.listen in by_listen:
            raise ValueError(f"listen address {server.listen} appears twice")
        by_listen[server.listen] = server
    return by_listen


_MISSING = (-1, -1, -1)
"""The stamp of a records file that cannot be looked at."""


class RecordsFile:
    """The records file, read again whenever its inode, mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def changed(self) -> dict[str, Server] | None:
        """The new servers when the file changed since the last call, else None."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            self._failed(_MISSING, f"cannot read {self.path}: {exc.strerror}")
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._seen:
            return None
        try:
            servers = parse_records(json.loads(self.path.read_bytes()))
        except (OSError, ValueError) as exc:
            self._failed(stamp, f"{self.path}: {exc}; keeping the last good records")
            return None
        self._seen = stamp
        return servers

    def _failed(self, stamp: tuple[int, int, int], message: str) -> None:
        """Say what is wrong once per version of the file; nothing changes."""
        if stamp != self._seen:
            _say(message)
        self._seen = stamp


# --- answers ----------------------------------------------------------------------------


def _lookup_key(qname: dns.name.Name) -> str:
    """The records key a query name asks for: lower case, no final dot, no suffix."""
    text = qname.to_text(omit_final_dot=True).lower()
    return text.removesuffix("." + SUFFIX)


def _response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response


def local_answer(
    server: Server, query: dns.message.Message, also: tuple[Server, ...] = ()
) -> dns.message.Message | None:
    """The answer ``server`` gives from its own names, then those of ``also`` (the other
    networks of the asker); None when it must be forwarded."""
    question = query.question[0]
    key = _lookup_key(question.name)
    addresses = next((s.names[key] for s in (server, *also) if key in s.names), None)
    if addresses is None:
        return _response(query, dns.rcode.NXDOMAIN) if not server.upstream else None
    response = _response(query, dns.rcode.NOERROR)
    response.flags |= dns.flags.AA
    if question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        response.answer.append(
            dns.rrset.from_text_list(
                question.name, 0, dns.rdataclass.IN, dns.rdatatype.A, list(addresses)
            )
        )
    return response


MAX_QUERY = 4096
"""The largest query parsed (a question, an OPT record, padding and a signature fit
many times over)."""

_HEADER = struct.Struct("!HHHHHH")
"""A message's header: id, flags, then its question, answer, authority and additional
record counts."""


def _may_be_a_query(wire: bytes) -> bool:
    """Whether ``wire`` is worth parsing, from its size and header alone. One thread
    answers every network: parsing 65 KB of records whose names are pointer chains took
    it most of a second per datagram. A query carries its question (more than one is
    answered FORMERR), no answer or authority record, and at most an OPT record and a
    signature."""
    if not _HEADER.size <= len(wire) <= MAX_QUERY:
        return False
    counts: tuple[int, ...] = _HEADER.unpack_from(wire)[2:]
    questions, answers, authority, additional = counts
    return questions <= 8 and answers == 0 and authority == 0 and additional <= 2


def _malformed(query: dns.message.Message) -> dns.message.Message | None:
    """The refusal a query gets before any lookup, or None when it can be looked up."""
    if query.opcode() != dns.opcode.QUERY:
        return _response(query, dns.rcode.NOTIMP)
    if len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.IN:
        return _response(query, dns.rcode.FORMERR)
    return None


def _wire(message: dns.message.Message, limit: int) -> bytes:
    """``message`` on the wire, truncated (TC set, no records) past ``limit`` bytes."""
    try:
        return message.to_wire(max_size=limit)
    except dns.exception.TooBig:
        message.answer.clear()
        message.flags |= dns.flags.TC
        return message.to_wire(max_size=limit)


# --- the process ------------------------------------------------------------------------


@dataclass
class Forward:
    """A query sent upstream, waiting on its own socket."""

    query: dns.message.Message
    wire: bytes
    upstream: tuple[tuple[str, int], ...]
    reply: Reply
    limit: int
    asker: str
    deadline: float = 0.0


@dataclass
class Connection:
    """One TCP client: length-prefixed queries in, length-prefixed answers out."""

    sock: socket.socket
    listen: str
    asker: str
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    active: float = 0.0


def _bound(kind: socket.SocketKind, address: str, port: int) -> socket.socket:
    """A UDP socket, or a listening TCP one, on ``address`` (which may not exist yet)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def _sent_upstream(address: tuple[str, int], wire: bytes) -> socket.socket | None:
    """A socket of its own, connected to ``address``, that has sent ``wire``; None on error."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
        sock.send(wire)
    except OSError:
        sock.close()
        return None
    return sock


class Responder:
    """The selector loop: listeners per address, TCP connections, forwards in flight."""

    def __init__(self, records: Path, port: int = DNS_PORT) -> None:
        self.records = RecordsFile(records)
        self.port = port
        self.servers: dict[str, Server] = {}
        self.listeners: dict[str, tuple[socket.socket, socket.socket]] = {}
        self.connections: dict[socket.socket, Connection] = {}
        self.forwards: dict[socket.socket, Forward] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self._next_check = 0.0
        self._unbound: set[str] = set()
        self._told: dict[str, float] = {}
        """Asking address -> when it was last said to be past its share of forwards."""

    # -- the loop

    def run(self) -> None:
        """Serve until :meth:`stop` is called (by a signal or the exit fd)."""
        self.refresh()
        while not self.stopping:
            for key, mask in self.selector.select(self._timeout()):
                handler: Handler = key.data
                handler(mask)
            self._expire(time.monotonic())
            if time.monotonic() >= self._next_check:
                self.refresh()

    def stop(self) -> None:
        self.stopping = True

    def recheck(self) -> None:
        """Check the records file when the loop next turns (a signal woke it)."""
        self._next_check = 0.0

    def close(self) -> None:
        """Close every socket this responder opened."""
        for sock in [*self.connections, *self.forwards]:
            self._drop(sock)
        for address in list(self.listeners):
            self._close_listener(address)
        self.selector.close()

    def watch(self, fileobj: int | socket.socket, handler: Handler) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, handler)

    def _timeout(self) -> float:
        deadlines = [self._next_check]
        deadlines += [forward.deadline for forward in self.forwards.values()]
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self, now: float) -> None:
        for sock, forward in list(self.forwards.items()):
            if forward.deadline <= now:
                self._drop(sock)
                self._send_upstream(forward)
        for sock, conn in list(self.connections.items()):
            if now - conn.active > TCP_IDLE:
                self._drop(sock)

    # -- the records and the listeners

    def refresh(self) -> None:
        """Take up a changed records file; open what is missing, close what is gone."""
        self._next_check = time.monotonic() + RECHECK
        servers = self.records.changed()
        if servers is not None:
            self.servers = servers
            for address in set(self.listeners) - set(servers):
                self._close_listener(address)
        for address in set(self.servers) - set(self.listeners):
            self._open_listener(address)

    def _open_listener(self, address: str) -> None:
        """Open ``address``' sockets; a failure is said once and tried again at each check."""
        try:
            udp = _bound(socket.SOCK_DGRAM, address, self.port)
        except OSError as exc:
            self._cannot_listen(address, f"UDP: {exc.strerror}")
            return
        try:
            tcp = _bound(socket.SOCK_STREAM, address, self.port)
        except OSError as exc:
            udp.close()
            self._cannot_listen(address, f"TCP: {exc.strerror}")
            return
        self._unbound.discard(address)
        self.listeners[address] = (udp, tcp)
        self.watch(udp, lambda _mask: self._datagram(udp, address))
        self.watch(tcp, lambda _mask: self._accept(tcp, address))

    def _cannot_listen(self, address: str, why: str) -> None:
        if address not in self._unbound:
            _say(f"cannot listen on {address} port {self.port} ({why}); trying again")
        self._unbound.add(address)

    def _close_listener(self, address: str) -> None:
        for sock in self.listeners.pop(address):
            self.selector.unregister(sock)
            sock.close()
        for sock, conn in list(self.connections.items()):
            if conn.listen == address:
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        """Forget a TCP connection or a forward's socket, and close it."""
        self.connections.pop(sock, None)
        self.forwards.pop(sock, None)
        self.selector.unregister(sock)
        sock.close()

    # -- queries

    def _datagram(self, sock: socket.socket, listen: str) -> None:
        try:
            wire, peer = sock.recvfrom(65535)
        except OSError:
            return

        def reply(answer: bytes) -> None:
            with contextlib.suppress(OSError):  # the client or our address is gone
                sock.sendto(answer, peer)

        self.query(listen, wire, reply, udp=True, asker=str(peer[0]))

    def query(self, listen: str, wire: bytes, reply: Reply, *, udp: bool, asker: str) -> None:
        """Answer one query that came to ``listen`` from ``asker``: from the names, or by
        forwarding."""
        if not _may_be_a_query(wire):
            return  # dropped unparsed, as a resolver drops what it cannot answer
        self.refresh()
        server = self.servers.get(listen)
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return  # not a DNS message we can answer: drop it, as resolvers do
        if server is None or query.flags & dns.flags.QR:
            return
        limit = max(512, query.payload) if udp else 65535
        also = tuple(self.servers[a] for a in server.peers.get(asker, ()) if a in self.servers)
        answer = _malformed(query) or local_answer(server, query, also)
        if answer is not None:
            reply(_wire(answer, limit))
        else:
            self._forward(Forward(query, wire, server.upstream, reply, limit, asker))

    # -- forwarding

    def _forward(self, forward: Forward) -> None:
        if len(self.forwards) >= MAX_FORWARDS:
            _say(f"{MAX_FORWARDS} forwarded queries in flight: answering SERVFAIL")
            forward.upstream = ()
        elif sum(f.asker == forward.asker for f in self.forwards.values()) >= MAX_FORWARDS_EACH:
            self._past_share(forward.asker)
            forward.upstream = ()
        self._send_upstream(forward)

    def _past_share(self, asker: str) -> None:
        """Say that ``asker`` is answered SERVFAIL past its share (once a minute at most:
        it may be flooding)."""
        now = time.monotonic()
        if now - self._told.get(asker, -math.inf) >= 60.0:
            if len(self._told) >= 1024:  # forged source addresses cannot grow it
                self._told.clear()
            self._told[asker] = now
            _say(f"{asker}: {MAX_FORWARDS_EACH} forwarded queries in flight: answering SERVFAIL")

    def _send_upstream(self, forward: Forward) -> None:
        """Send to the next upstream in turn; SERVFAIL when none is left."""
        sock = None
        while forward.upstream and sock is None:
            address, forward.upstream = forward.upstream[0], forward.upstream[1:]
            sock = _sent_upstream(address, forward.wire)
        if sock is None:
            forward.reply(_wire(_response(forward.query, dns.rcode.SERVFAIL), forward.limit))
            return
        forward.deadline = time.monotonic() + FORWARD_TIMEOUT
        self.forwards[sock] = forward
        self.watch(sock, lambda _mask: self._upstream_answer(sock))

    def _upstream_answer(self, sock: socket.socket) -> None:
        forward = self.forwards.get(sock)
        if forward is None:
            return  # timed out earlier in this round of events
        try:
            answer = sock.recv(65535)
        except OSError as exc:  # ICMP refused from a closed port: try the next one
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            self._drop(sock)
            self._send_upstream(forward)
            return
        if len(answer) < 12 or answer[:2] != forward.wire[:2] or not answer[2] & 0x80:
            return  # not the answer to this query: keep waiting
        self._drop(sock)
        forward.reply(answer)

    # -- TCP

    def _accept(self, listener: socket.socket, listen: str) -> None:
        try:
            sock, peer = listener.accept()
        except OSError:
            return
        asker = str(peer[0])
        mine = sum(conn.asker == asker for conn in self.connections.values())
        if len(self.connections) >= MAX_TCP or mine >= MAX_TCP_EACH:
            sock.close()
            return
        sock.setblocking(False)
        conn = Connection(sock, listen, asker, active=time.monotonic())
        self.connections[sock] = conn
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._tcp(conn, mask))

    def _tcp(self, conn: Connection, mask: int) -> None:
        if conn.sock not in self.connections:
            return  # dropped earlier in this round of events
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and conn.sock in self.connections:
            self._tcp_read(conn)

    def _tcp_read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn.sock)
            return
        conn.active = time.monotonic()
        conn.inbox += data
        while len(conn.inbox) >= 2:
            (size,) = struct.unpack_from("!H", conn.inbox)
            if len(conn.inbox) < 2 + size:
                break
            wire = bytes(conn.inbox[2 : 2 + size])
            del conn.inbox[: 2 + size]
            send = lambda answer: self._tcp_send(conn, answer)  # noqa: E731
            self.query(conn.listen, wire, send, udp=False, asker=conn.asker)

    def _tcp_send(self, conn: Connection, answer: bytes) -> None:
        if conn.sock not in self.connections:
            return  # closed while the answer was upstream
        conn.outbox += struct.pack("!H", len(answer)) + answer
        conn.active = time.monotonic()
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(conn.sock)
            return
        del conn.outbox[:sent]
        if len(conn.outbox) > TCP_BACKLOG_LIMIT:
            self._drop(conn.sock)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
        self.selector.modify(conn.sock, events, self.selector.get_key(conn.sock).data)


# --- the command ------------------------------------------------------------------------


def _on_exit_fd(responder: Responder, fd: int) -> Handler:
    def handler(_mask: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            responder.stop()

    return handler


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.read(fd, 4096)


def _stop_on_signals(responder: Responder) -> None:
    """SIGTERM and SIGINT stop the loop, SIGHUP has the records checked; a wakeup pipe
    makes the selector return."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: responder.stop())
    signal.signal(signal.SIGHUP, lambda _signum, _frame: responder.recheck())
    responder.watch(wake_read, lambda _mask: _drain(wake_read))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.network.dnsserver")
    parser.add_argument("records", type=Path, help="the records file (JSON, version 1)")
    parser.add_argument("--exit-fd", type=int, help="exit when this file descriptor reads EOF")
    parser.add_argument("--port", type=int, default=DNS_PORT, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    responder = Responder(args.records, port=args.port)
    _stop_on_signals(responder)
    if args.exit_fd is not None:
        os.set_blocking(args.exit_fd, False)
        responder.watch(args.exit_fd, _on_exit_fd(responder, args.exit_fd))
    try:
        responder.run()
    finally:
        responder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
