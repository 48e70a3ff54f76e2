"""The networks' DNS responder (runtime.network.dnsserver), as a real process on real sockets.

Each test runs the responder on 127.0.0.53 and 127.0.0.54 (two networks' gateways) on a
free port, with fake upstream servers on other loopback addresses; the busybox test runs
it on port 53 inside a user and network namespace of its own, as the runtime does.
Nothing here talks to anything but the loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from runtime.network.dnsserver import (
    MAX_FORWARDS,
    MAX_FORWARDS_EACH,
    MAX_TCP,
    Server,
    local_answer,
    parse_records,
)
from runtime.network.dnsserver import Responder as InProcessResponder
from tests.support import REPO, free_port, write_atomically

NET1, NET2 = "127.0.0.53", "127.0.0.54"
NAMES1 = {"web": ["10.89.0.5"], "db": ["10.89.0.6"], "database": ["10.89.0.6"]}
NAMES2 = {"cache": ["10.89.1.5"]}
ASK_TIMEOUT = 10.0
"""How long a test waits for one answer before it calls the responder silent."""


def records(*servers: dict[str, object]) -> str:
    return json.dumps({"version": 1, "servers": list(servers)})


def server(
    listen: str, names: dict[str, list[str]], upstream: list[str] | None = None
) -> dict[str, object]:
    return {"listen": listen, "upstream": upstream or [], "names": names}


def query(name: str, rdtype: str = "A", qid: int | None = None) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype)
    if qid is not None:
        message.id = qid
    return message


def ask_udp(address: str, port: int, message: dns.message.Message) -> dns.message.Message:
    """One query over a connected UDP socket: a closed port raises ConnectionRefusedError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(ASK_TIMEOUT)
        sock.connect((address, port))
        sock.send(message.to_wire())
        return dns.message.from_wire(sock.recv(65535))


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the responder closed the TCP connection"
        data += chunk
    return data


def ask_tcp(address: str, port: int, *messages: dns.message.Message) -> list[dns.message.Message]:
    """Queries sent back to back on one TCP connection; the answers in the order they came."""
    with socket.create_connection((address, port), timeout=ASK_TIMEOUT) as sock:
        for message in messages:
            wire = message.to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
        answers = []
        for _ in messages:
            (size,) = struct.unpack("!H", read_exactly(sock, 2))
            answers.append(dns.message.from_wire(read_exactly(sock, size)))
        return answers


def addresses(answer: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in answer.answer for rdata in rrset)


@dataclass
class Responder:
    """A running responder: its records file, its port, its process."""

    path: Path
    port: int
    process: subprocess.Popen[bytes]
    exit_fd: int

    def write(self, text: str) -> None:
        write_atomically(self.path, text)

    def ask(self, name: str, rdtype: str = "A", at: str = NET1) -> dns.message.Message:
        return ask_udp(at, self.port, query(name, rdtype))


def responder_env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), *sys.path])
    return {**os.environ, "PYTHONPATH": path}


def wait_listening(port: int, address: str) -> None:
    """Wait until the responder listens (its UDP socket is bound before its TCP one)."""
    for _ in range(2000):
        with socket.socket() as sock:
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.005)
    raise AssertionError(f"the responder never listened on {address}:{port}")


def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the condition never came true")


class Start(Protocol):
    def __call__(self, text: str, port: int | None = None) -> Responder:
        """Start a responder on a records text (on a free port unless one is given)."""


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start responders on records texts; stop them (by pid) after the test."""
    started: list[Responder] = []

    def start_one(text: str, port: int | None = None) -> Responder:
        path, port = tmp_path / "records.json", port or free_port()
        write_atomically(path, text)
        exit_read, exit_write = os.pipe()
        argv = ["--port", str(port), "--exit-fd", str(exit_read)]
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.network.dnsserver", str(path), *argv],
            pass_fds=[exit_read],
            env=responder_env(),
        )
        os.close(exit_read)
        started.append(Responder(path, port, process, exit_write))
        wait_listening(port, json.loads(text)["servers"][0]["listen"])
        return started[-1]

    yield start_one
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
        running.process.wait()
        os.close(running.exit_fd)


class FakeUpstream:
    """A DNS server on a loopback address, in a thread: answers every A query with ADDRESS,
    or, when silent, reads queries and never answers."""

    ADDRESS = "192.0.2.7"

    def __init__(self, address: str, *, silent: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.where = f"{address}:{self.sock.getsockname()[1]}"
        self.silent = silent
        self.asked: list[str] = []
        self.stop_read, self.stop_write = socket.socketpair()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self.stop_read, selectors.EVENT_READ)
            while all(key.fileobj is self.sock for key, _ in selector.select()):
                wire, peer = self.sock.recvfrom(65535)
                message = dns.message.from_wire(wire)
                self.asked.append(message.question[0].name.to_text())
                if not self.silent:
                    self.sock.sendto(self._answer(message).to_wire(), peer)

    def _answer(self, message: dns.message.Message) -> dns.message.Message:
        answer = dns.message.make_response(message)
        name = message.question[0].name
        answer.answer.append(dns.rrset.from_text(name, 60, "IN", "A", self.ADDRESS))
        return answer

    def close(self) -> None:
        self.stop_write.send(b"x")
        self.thread.join()
        for sock in (self.sock, self.stop_read, self.stop_write):
            sock.close()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("127.0.0.9")
    yield fake
    fake.close()


@pytest.fixture
def silent_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("127.0.0.10", silent=True)
    yield fake
    fake.close()


TWO_NETWORKS = records(server(NET1, NAMES1), server(NET2, NAMES2))


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["web", "web.", "WEB", "Web.dns.squish", "web.DNS.SQUISH.", "web.dns.squish"]
)
def test_a_known_name_is_answered_in_any_spelling(start: Start, name: str) -> None:
    answer = start(TWO_NETWORKS).ask(name)
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AA
    assert addresses(answer) == ["10.89.0.5"]
    assert [rrset.ttl for rrset in answer.answer] == [0]


def test_an_alias_answers_its_container_address(start: Start) -> None:
    running = start(TWO_NETWORKS)
    assert addresses(running.ask("Database")) == addresses(running.ask("db")) == ["10.89.0.6"]


def test_aaaa_for_a_known_name_is_an_empty_noerror(start: Start) -> None:
    answer = start(TWO_NETWORKS).ask("web", "AAAA")
    assert (answer.rcode(), answer.answer) == (dns.rcode.NOERROR, [])


def test_a_name_of_another_network_is_not_answered(start: Start) -> None:
    running = start(TWO_NETWORKS)
    assert running.ask("cache", at=NET1).rcode() == dns.rcode.NXDOMAIN
    assert running.ask("web", at=NET2).rcode() == dns.rcode.NXDOMAIN
    assert addresses(running.ask("cache", at=NET2)) == ["10.89.1.5"]


def test_an_asker_on_two_networks_finds_the_names_of_both_and_no_one_else_does(
    start: Start,
) -> None:
    """A container on two networks asks its first network's gateway (its resolv.conf)."""
    both, alone = "127.0.0.77", "127.0.0.78"
    first = server(NET1, NAMES1) | {"peers": {both: [NET2]}}
    running = start(records(first, server(NET2, NAMES2)))
    query_ = query("cache")
    for source, found in ((both, ["10.89.1.5"]), (alone, None)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(ASK_TIMEOUT)
            sock.bind((source, 0))
            sock.sendto(query_.to_wire(), (NET1, running.port))
            answer = dns.message.from_wire(sock.recv(65535))
        assert (addresses(answer) or None) == found
        assert answer.rcode() == (dns.rcode.NOERROR if found else dns.rcode.NXDOMAIN)
    with socket.create_connection((NET1, running.port), ASK_TIMEOUT, (both, 0)) as sock:
        wire = query_.to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (size,) = struct.unpack("!H", read_exactly(sock, 2))
        assert addresses(dns.message.from_wire(read_exactly(sock, size))) == ["10.89.1.5"]
    assert addresses(running.ask("web")) == ["10.89.0.5"]  # its own names first, as before


def test_an_unknown_name_without_upstream_is_nxdomain(start: Start) -> None:
    answer = start(TWO_NETWORKS).ask("example.org")
    assert (answer.rcode(), answer.answer) == (dns.rcode.NXDOMAIN, [])


# --- the records file ---------------------------------------------------------------------


def test_an_update_is_answered_by_the_very_next_query(start: Start) -> None:
    running = start(TWO_NETWORKS)
    for last in range(10, 20):  # same size each time: only the inode and mtime change
        running.write(records(server(NET1, {"web": [f"10.89.0.{last}"]})))
        assert addresses(running.ask("web")) == [f"10.89.0.{last}"]


def test_a_broken_records_file_keeps_the_last_good_records(start: Start) -> None:
    running = start(TWO_NETWORKS)
    running.write("{not json")
    assert addresses(running.ask("web")) == ["10.89.0.5"]
    running.write(records(server(NET1, {"web": ["10.89.0.9"]}, ["no-address"])))
    assert addresses(running.ask("web")) == ["10.89.0.5"]


def refused(address: str, port: int) -> bool:
    """True when both the UDP and the TCP port at ADDRESS are closed."""
    try:
        ask_udp(address, port, query("web"))
        return False
    except ConnectionRefusedError:
        pass
    with socket.socket() as sock:
        sock.settimeout(ASK_TIMEOUT)
        return sock.connect_ex((address, port)) != 0


def test_a_listen_address_added_or_removed_opens_or_closes_its_sockets(
    start: Start,
) -> None:
    running = start(records(server(NET1, NAMES1)))
    assert refused(NET2, running.port)
    running.write(TWO_NETWORKS)
    running.ask("web", at=NET1)  # the check before this answer opened NET2's sockets
    assert addresses(running.ask("cache", at=NET2)) == ["10.89.1.5"]
    assert addresses(ask_tcp(NET2, running.port, query("cache"))[0]) == ["10.89.1.5"]
    running.write(records(server(NET1, NAMES1)))
    running.ask("web", at=NET1)
    assert refused(NET2, running.port)


def test_an_address_whose_port_is_taken_is_opened_once_it_is_free(start: Start) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind((NET2, port))
        running = start(TWO_NETWORKS, port)
        assert addresses(running.ask("web", at=NET1)) == ["10.89.0.5"]
    running.ask("web", at=NET1)  # the check before this answer opened NET2's sockets
    assert addresses(running.ask("cache", at=NET2)) == ["10.89.1.5"]


# --- forwarding -------------------------------------------------------------------------


def test_an_unknown_name_is_forwarded_and_the_upstream_answer_relayed(
    start: Start, upstream: FakeUpstream
) -> None:
    running = start(records(server(NET1, NAMES1, [upstream.where])))
    asked = query("example.org", qid=4242)
    answer = ask_udp(NET1, running.port, asked)
    assert answer.id == 4242
    assert addresses(answer) == [FakeUpstream.ADDRESS]
    assert upstream.asked == ["example.org."]
    assert addresses(running.ask("web")) == ["10.89.0.5"]  # known names never go upstream
    assert upstream.asked == ["example.org."]


def test_a_silent_upstream_is_servfail_while_other_queries_are_answered(
    start: Start, upstream: FakeUpstream, silent_upstream: FakeUpstream
) -> None:
    running = start(
        records(server(NET1, NAMES1, [silent_upstream.where]), server(NET2, {}, [upstream.where]))
    )
    wait_listening(running.port, NET2)  # start waits for the first address only
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(ASK_TIMEOUT)
        sock.sendto(query("slow.example", qid=1).to_wire(), (NET1, running.port))
        sock.sendto(query("web", qid=2).to_wire(), (NET1, running.port))
        sock.sendto(query("fast.example", qid=3).to_wire(), (NET2, running.port))
        answers = [dns.message.from_wire(sock.recv(65535)) for _ in range(3)]
    assert [answer.id for answer in answers[:2]] in ([2, 3], [3, 2])
    assert answers[2].id == 1
    assert answers[2].rcode() == dns.rcode.SERVFAIL
    assert silent_upstream.asked == ["slow.example."]


def test_past_the_cap_of_forwards_a_query_is_servfail_at_once(
    start: Start, silent_upstream: FakeUpstream
) -> None:
    running = start(records(server(NET1, NAMES1, [silent_upstream.where])))
    for n in range(MAX_FORWARDS // MAX_FORWARDS_EACH):  # each its own share: the cap, together
        _flood_forwards(running.port, f"127.0.0.{20 + n}", silent_upstream, MAX_FORWARDS_EACH)
    assert len(silent_upstream.asked) == MAX_FORWARDS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        sock.settimeout(ASK_TIMEOUT)
        sock.sendto(query("over.example", qid=1).to_wire(), (NET1, running.port))
        first = dns.message.from_wire(sock.recv(65535))
    assert (first.id, first.rcode()) == (1, dns.rcode.SERVFAIL)
    assert "over.example." not in silent_upstream.asked  # answered at once, never forwarded


def _flood_forwards(port: int, asker: str, upstream: FakeUpstream, count: int) -> None:
    """``count`` queries for names the silent ``upstream`` never answers, sent from
    ``asker``; returns once each was forwarded or answered (SERVFAIL at once)."""
    before = len(upstream.asked)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((asker, 0))
        sock.setblocking(False)
        answered = 0

        def done(expected: int) -> bool:
            nonlocal answered
            with contextlib.suppress(BlockingIOError):
                while sock.recv(65535):
                    answered += 1
            return len(upstream.asked) - before + answered >= expected

        for batch in range(0, count, 16):  # in batches no socket buffer overflows
            for qid in range(batch, batch + 16):
                sock.sendto(query(f"q{qid}.example", qid=qid).to_wire(), (NET1, port))
            wait_for(lambda: done(batch + 16))  # noqa: B023


def test_one_asker_past_its_share_of_forwards_leaves_the_others_theirs(
    start: Start, silent_upstream: FakeUpstream
) -> None:
    # A container that sends queries its upstream never answers fills the forwards in
    # flight; the others' lookups of names not on their networks still go upstream.
    running = start(records(server(NET1, NAMES1, [silent_upstream.where])))
    _flood_forwards(running.port, "127.0.0.2", silent_upstream, MAX_FORWARDS)
    assert len(silent_upstream.asked) < MAX_FORWARDS  # the rest: SERVFAIL at once
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        sock.sendto(query("other.example", qid=1).to_wire(), (NET1, running.port))
        wait_for(lambda: "other.example." in silent_upstream.asked)


def test_one_asker_past_its_share_of_tcp_connections_leaves_the_others_theirs(
    start: Start,
) -> None:
    # Connections that never ask, all from one container: another still gets its answer.
    running = start(records(server(NET1, NAMES1)))
    held = [
        socket.create_connection((NET1, running.port), ASK_TIMEOUT, ("127.0.0.2", 0))
        for _ in range(MAX_TCP)
    ]
    try:
        with socket.create_connection((NET1, running.port), ASK_TIMEOUT, ("127.0.0.3", 0)) as sock:
            wire = query("web", qid=9).to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            (size,) = struct.unpack("!H", read_exactly(sock, 2))
            answer = dns.message.from_wire(read_exactly(sock, size))
        assert (answer.id, addresses(answer)) == (9, ["10.89.0.5"])
        assert held[-1].recv(1) == b""  # the flooding address's: closed past its share
    finally:
        for sock in held:
            sock.close()


def test_tcp_answers_known_and_forwarded_names_on_one_connection(
    start: Start, upstream: FakeUpstream
) -> None:
    running = start(records(server(NET1, NAMES1, [upstream.where])))
    known, forwarded = ask_tcp(NET1, running.port, query("db", qid=7), query("example.org", qid=8))
    by_id = {answer.id: answer for answer in (known, forwarded)}
    assert addresses(by_id[7]) == ["10.89.0.6"]
    assert addresses(by_id[8]) == [FakeUpstream.ADDRESS]


def test_malformed_and_odd_queries_do_not_stop_it(start: Start) -> None:
    running = start(TWO_NETWORKS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01garbage", (NET1, running.port))
    two_questions = query("web")
    two_questions.question.append(query("db").question[0])
    assert ask_udp(NET1, running.port, two_questions).rcode() == dns.rcode.FORMERR
    assert addresses(running.ask("web")) == ["10.89.0.5"]


# --- the process ------------------------------------------------------------------------


def test_sighup_has_the_records_checked_and_ends_nothing(start: Start) -> None:
    running = start(records(server(NET1, NAMES1)))
    running.write(TWO_NETWORKS)
    running.process.send_signal(signal.SIGHUP)
    wait_listening(running.port, NET2)
    assert addresses(running.ask("cache", at=NET2)) == ["10.89.1.5"]
    assert running.process.poll() is None


def test_sigterm_ends_it(start: Start) -> None:
    running = start(TWO_NETWORKS)
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=ASK_TIMEOUT) == 0


def test_end_of_file_on_the_exit_fd_ends_it(start: Start) -> None:
    running = start(TWO_NETWORKS)
    os.close(running.exit_fd)
    running.exit_fd = os.open(os.devnull, os.O_RDONLY)  # for the fixture to close
    assert running.process.wait(timeout=ASK_TIMEOUT) == 0


NAMESPACE_SCRIPT = """
ip link set lo up
"$PYTHON" -m runtime.network.dnsserver "$RECORDS" &
for _ in $(seq 1200); do  # until the responder listens (it may take a while to load)
    busybox nslookup web 127.0.0.53 >"$OUT" 2>&1 && break
    busybox sleep 0.05
done
busybox nslookup nowhere.example 127.0.0.53 >>"$OUT" 2>&1
kill -TERM $!
wait $!
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_busybox_nslookup_gets_the_answer_on_port_53_in_a_namespace(tmp_path: Path) -> None:
    path, out = tmp_path / "records.json", tmp_path / "nslookup.out"
    write_atomically(path, TWO_NETWORKS)
    env = {**responder_env(), "PYTHON": sys.executable, "RECORDS": str(path), "OUT": str(out)}
    done = subprocess.run(
        ["unshare", "-Urn", "sh", "-c", NAMESPACE_SCRIPT], env=env, timeout=120, check=False
    )
    text = out.read_text()
    assert done.returncode == 0, text
    assert "Address: 10.89.0.5" in text
    assert "can't find nowhere.example: NXDOMAIN" in text


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"servers": []},
        {"version": 2, "servers": []},
        {"version": 1, "servers": {}},
        {"version": 1, "servers": [{"listen": "nowhere"}]},
        {"version": 1, "servers": [{"listen": "10.0.0.1", "names": {"a": "10.0.0.2"}}]},
        {"version": 1, "servers": [{"listen": "10.0.0.1", "names": {"a": ["::1"]}}]},
        {"version": 1, "servers": [{"listen": "10.0.0.1", "upstream": ["10.0.0.2:99999"]}]},
        {"version": 1, "servers": [{"listen": "10.0.0.1"}, {"listen": "10.0.0.1"}]},
    ],
)
def test_malformed_records_are_refused(data: object) -> None:
    with pytest.raises(ValueError):
        parse_records(data)


def test_records_parse_names_lower_case_and_upstream_ports() -> None:
    data = {
        "version": 1,
        "servers": [server("10.0.0.1", {"Web.": ["10.0.0.5"]}, ["10.0.2.3", "127.0.0.9:5353"])],
    }
    parsed = parse_records(data)["10.0.0.1"]
    assert parsed == Server(
        "10.0.0.1", (("10.0.2.3", 53), ("127.0.0.9", 5353)), {"web": ("10.0.0.5",)}
    )


def test_a_known_name_answers_a_for_any_and_nothing_for_mx() -> None:
    known = Server("10.0.0.1", (), {"web": ("10.0.0.5", "10.0.0.6")})
    any_answer = local_answer(known, query("web", "ANY"))
    mx_answer = local_answer(known, query("web", "MX"))
    assert any_answer is not None and mx_answer is not None
    assert addresses(any_answer) == ["10.0.0.5", "10.0.0.6"]
    assert (mx_answer.rcode(), mx_answer.answer) == (dns.rcode.NOERROR, [])
    assert local_answer(Server("10.0.0.1", (("10.0.2.3", 53),), {}), query("x")) is None
    assert any_answer.answer[0].rdtype == dns.rdatatype.A


def _heavy_message(records_count: int) -> bytes:
    """One question, then ``records_count`` answer records whose names each point at a
    name of 127 labels: about 65 KB that took dnspython near a second to parse."""
    header = struct.pack("!HHHHHH", 1, 0x0100, 1, records_count, 0, 0)
    long_name = b"".join(b"\x01a" for _ in range(127)) + b"\x00"
    question = long_name + struct.pack("!HH", 1, 1)
    pointer = struct.pack("!H", 0xC000 | 12)  # to the question's name
    record = pointer + struct.pack("!HHIH", 65280, 1, 0, 0)  # unknown type, no data
    return header + question + record * records_count


def test_a_query_carrying_records_is_dropped_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review (and reproduced): every message was parsed whole before its
    question count was looked at. One responder serves every network, and 5 datagrams
    like this one kept a known name unanswered for 2.5 s. A query has one question and
    at most an OPT record and a signature besides: the header says so before parsing."""
    path = tmp_path / "records.json"
    path.write_text(records(server(NET1, NAMES1)))
    responder = InProcessResponder(path, free_port())
    parsed: list[bytes] = []
    parse = dns.message.from_wire

    def counted(wire: bytes, *args: object, **options: object) -> dns.message.Message:
        parsed.append(wire)
        return parse(wire, *args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(dns.message, "from_wire", counted)
    answers: list[bytes] = []
    try:
        responder.refresh()
        heavy = _heavy_message(5400)
        responder.query(NET1, heavy, answers.append, udp=True, asker="10.89.0.9")
        assert (parsed, answers) == ([], [])
        responder.query(NET1, query("web").to_wire(), answers.append, udp=True, asker="10.89.0.9")
    finally:
        responder.close()
    [answer] = answers
    assert addresses(parse(answer)) == ["10.89.0.5"]
