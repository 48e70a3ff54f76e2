"""``reconciler run --listen``'s endpoint: the HTTP server object on 127.0.0.1 around a
fake source and a fake runtime (the real ``reconciler run --listen`` is in
tests/test_endpoint_e2e.py)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.control.converge import Converger, Outcome
from reconciler.control.loop import PassResult, Reconciler, run_loop
from reconciler.desired.source import Changed, FolderSource, Snapshot
from reconciler.endpoint import server
from reconciler.endpoint.address import Listen, parse_listen
from reconciler.endpoint.server import CONNECTIONS, MAX_BODY, Endpoint, read_secret
from reconciler.planning.actions import Action, ActionKind
from reconciler.planning.plan import Plan
from reconciler.settings import BadSetting
from tests.fakes import FakeRuntime

SECRET = b"It's a Secret to Everybody"
PUSH = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
DOCUMENT = {"version": 1, "folder": "/f", "containers": [], "skipped": []}


@dataclass
class PokedSource:
    """A source that records its pokes and describes itself as a git source would."""

    folder: Path = Path("/nowhere")
    pokes: list[str] = field(default_factory=list)

    def load(self) -> Snapshot:
        raise NotImplementedError

    async def watch(self, changed: Changed, stop: anyio.Event) -> None:
        await stop.wait()

    def poke(self, reason: str) -> None:
        self.pokes.append(reason)

    def describe(self) -> dict[str, object]:
        return {"kind": "git", "url": "https://bot:token@git.example/a.git", "ref": "main"}


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:PORT; the status and the body of the answer."""
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        connection.request(method, path, body=body or None, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, reply.read()


def hook(port: int, forge: str, body: bytes, signature: str | None, event: str = "push") -> int:
    """Deliver ``body`` as ``forge`` does, with ``signature`` (None: unsigned); the status."""
    names = {"github": ("X-Hub-Signature-256", "X-GitHub-Event")}
    sign, kind = names.get(forge, ("X-Gitea-Signature", "X-Gitea-Event"))
    headers = {kind: event, "Content-Type": "application/json"}
    if signature is not None:
        headers[sign] = signature
    return request(port, "POST", f"/hooks/{forge}", body, headers)[0]


def metrics(port: int) -> dict[str, float]:
    """Each sample of ``/metrics`` as ``name{label=value,...}`` → value."""
    status, text = request(port, "GET", "/metrics")
    assert status == 200
    return {
        f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


@dataclass
class Served:
    endpoint: Endpoint
    source: PokedSource
    rows: list[dict[str, Any]]

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        return request(self.endpoint.port, method, path, body, headers)

    def hook(self, forge: str, body: bytes, signature: str | None, event: str = "push") -> int:
        return hook(self.endpoint.port, forge, body, signature, event)

    def metrics(self) -> dict[str, float]:
        return metrics(self.endpoint.port)


def signed(body: bytes, prefix: str = "sha256=", secret: bytes = SECRET) -> str:
    return prefix + hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.fixture
def served() -> Iterator[Served]:
    rows: list[dict[str, Any]] = []
    source = PokedSource()
    endpoint = Endpoint(
        Listen("127.0.0.1", 0),
        document=lambda: {**DOCUMENT, "containers": rows},
        source=source,
        secret=SECRET,
    )
    with endpoint:
        yield Served(endpoint, source, rows)


# -- where it listens -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "host", "port"),
    [
        ("127.0.0.1:9090", "127.0.0.1", 9090),
        ("[::1]:80", "::1", 80),
        ("127.0.0.2:1", "127.0.0.2", 1),
    ],
)
def test_loopback_addresses_are_accepted(given: str, host: str, port: int) -> None:
    assert parse_listen(given) == Listen(host, port)


@pytest.mark.parametrize("given", ["0.0.0.0:9090", "[::]:9090", "192.0.2.1:80"])
def test_other_addresses_need_listen_any(given: str) -> None:
    with pytest.raises(BadSetting, match=r"not a loopback address.*--listen-any"):
        parse_listen(given)
    assert parse_listen(given, any_address=True).port == int(given.rpartition(":")[2])


@pytest.mark.parametrize("given", ["localhost:80", "127.0.0.1", "127.0.0.1:0", ":80", "[::1]:x"])
def test_malformed_addresses_are_refused(given: str) -> None:
    with pytest.raises(BadSetting):
        parse_listen(given)


def test_ipv6_loopback_is_served() -> None:
    endpoint = Endpoint(Listen("::1", 0), document=lambda: DOCUMENT, source=PokedSource())
    with endpoint, closing(http.client.HTTPConnection("::1", endpoint.port, timeout=10)) as c:
        c.request("GET", "/status")
        assert json.loads(c.getresponse().read()) == DOCUMENT


def test_a_port_in_use_is_named(served: Served) -> None:
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{served.endpoint.port}: "):
        Endpoint(Listen("127.0.0.1", served.endpoint.port), document=dict, source=PokedSource())


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n")
    with pytest.raises(BadSetting, match="empty"):
        read_secret(tmp_path / "secret")
    (tmp_path / "secret").write_text("s3cret\n")
    assert read_secret(tmp_path / "secret") == b"s3cret"


# -- what it serves -------------------------------------------------------------------------


def test_status_is_the_document(served: Served) -> None:
    served.rows.append({"name": "web", "phase": "Running", "restarts": 0})
    status, body = served.request("GET", "/status")
    assert status == 200
    assert json.loads(body) == {**DOCUMENT, "containers": served.rows}


def test_a_failing_status_is_a_500_and_the_server_goes_on(served: Served) -> None:
    served.rows.append({"no": "name"})  # /metrics cannot read it
    assert served.request("GET", "/metrics")[0] == 500
    served.rows.clear()
    assert served.request("GET", "/metrics")[0] == 200


def pass_result(*outcomes: Outcome, crashing: tuple[str, ...] = ()) -> PassResult:
    return PassResult(Plan(), outcomes, 0.0, 0.02, "test", "abc123", crashing)


def test_metrics_count_passes_actions_and_crash_loops(served: Served) -> None:
    before = served.metrics()
    assert before["squish_passes_total{}"] == 0
    created = Outcome(Action(ActionKind.CREATE, "web", "new"))
    failed = Outcome(Action(ActionKind.START, "job", "exited"), error="no")
    served.endpoint.metrics.on_pass(pass_result(created, failed, crashing=("job",)))
    served.endpoint.metrics.on_pass(pass_result(created))
    after = served.metrics()
    assert after["squish_passes_total{}"] == 2
    assert after["squish_pass_duration_seconds_count{}"] == 2
    assert after["squish_pass_duration_seconds_sum{}"] == pytest.approx(0.04)
    assert after["squish_actions_total{kind=create,result=ok}"] == 2
    assert after["squish_actions_total{kind=start,result=failed}"] == 1
    assert after["squish_containers_crash_looping{}"] == 0  # the last pass had none


def test_metrics_show_containers_by_phase_and_restarts(served: Served) -> None:
    served.rows += [
        {"name": "a", "phase": "Running", "restarts": 0},
        {"name": "b", "phase": "Running", "restarts": 3},
        {"name": "c", "phase": "CrashLoopBackOff", "restarts": 7},
    ]
    samples = served.metrics()
    assert samples["squish_containers{phase=Running}"] == 2
    assert samples["squish_containers{phase=CrashLoopBackOff}"] == 1
    assert samples["squish_containers{phase=Pending}"] == 0
    assert samples["squish_container_restarts_total{container=b}"] == 3
    assert samples["squish_container_restarts_total{container=c}"] == 7


def test_the_source_info_names_the_revision_without_credentials(served: Served) -> None:
    served.endpoint.metrics.on_pass(pass_result())
    [info] = [k for k in served.metrics() if k.startswith("squish_source_info")]
    assert info == (
        "squish_source_info{kind=git,ref=main,revision=abc123,url=https://git.example/a.git}"
    )


class Undescribable(PokedSource):
    def describe(self) -> dict[str, object]:
        raise RuntimeError("a bug in the source")


def test_a_source_that_cannot_describe_itself_costs_only_its_labels() -> None:
    endpoint = Endpoint(Listen("127.0.0.1", 0), document=lambda: DOCUMENT, source=Undescribable())
    with endpoint:
        endpoint.metrics.on_pass(pass_result())
        samples = metrics(endpoint.port)
    assert samples["squish_passes_total{}"] == 1
    assert samples["squish_source_info{revision=abc123}"] == 1


# -- webhooks -------------------------------------------------------------------------------


@pytest.mark.parametrize(("forge", "prefix"), [("github", "sha256="), ("gitea", "")])
def test_a_signed_push_pokes_the_source(served: Served, forge: str, prefix: str) -> None:
    assert served.hook(forge, PUSH, signed(PUSH, prefix)) == 202
    assert served.source.pokes == ["webhook"]


def test_a_ping_is_answered_and_changes_nothing(served: Served) -> None:
    assert served.hook("github", b"{}", signed(b"{}"), event="ping") == 200
    assert served.source.pokes == []


@pytest.mark.parametrize(
    ("signature", "status"),
    [
        (None, 401),
        ("", 401),
        (signed(PUSH, secret=b"another secret"), 403),
        (signed(PUSH, prefix=""), 403),  # GitHub's header needs its prefix
        (signed(PUSH + b" "), 403),
        ("sha256=zz", 403),
    ],
)
def test_an_unsigned_or_forged_push_is_refused(
    served: Served, signature: str | None, status: int
) -> None:
    assert served.hook("github", PUSH, signature) == status
    assert served.source.pokes == []


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_a_signed_malformed_body_is_a_400(served: Served, body: bytes) -> None:
    assert served.hook("github", body, signed(body)) == 400
    assert served.source.pokes == []


def test_a_push_without_an_event_is_a_400(served: Served) -> None:
    headers = {"X-Hub-Signature-256": signed(PUSH)}
    assert served.request("POST", "/hooks/github", PUSH, headers)[0] == 400
    assert served.source.pokes == []


def raw(served: Served, request: bytes) -> bytes:
    """Send ``request`` as is; the whole answer."""
    with socket.create_connection(("127.0.0.1", served.endpoint.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_an_oversize_body_is_a_413_and_is_not_read(served: Served) -> None:
    head = (
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
        f"X-Hub-Signature-256: {signed(PUSH)}\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    )
    assert raw(served, head.encode()).startswith(b"HTTP/1.0 413 ")
    assert served.source.pokes == []


def test_a_body_without_a_length_is_refused(served: Served) -> None:
    head = b"POST /hooks/gitea HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw(served, head).startswith(b"HTTP/1.0 411 ")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nothing", 404),
        ("GET", "/hooks/bitbucket", 404),
        ("POST", "/hooks/bitbucket", 404),
        ("GET", "/hooks/github", 405),
        ("GET", "/hooks/gitea", 405),
        ("POST", "/status", 405),
        ("PUT", "/status", 405),
        ("DELETE", "/hooks/github", 405),
        ("BREW", "/metrics", 405),
    ],
)
def test_other_paths_and_methods_are_4xx(
    served: Served, method: str, path: str, status: int
) -> None:
    assert served.request(method, path)[0] == status
    assert served.source.pokes == []


def test_without_a_secret_no_hook_is_served() -> None:
    source = PokedSource()
    endpoint = Endpoint(Listen("127.0.0.1", 0), document=lambda: DOCUMENT, source=source)
    with endpoint:
        served = Served(endpoint, source, [])
        assert served.hook("github", PUSH, signed(PUSH)) == 404
    assert source.pokes == []


# -- connections ----------------------------------------------------------------------------


def test_idle_connections_do_not_stop_others(served: Served) -> None:
    idle = [socket.create_connection(("127.0.0.1", served.endpoint.port)) for _ in range(3)]
    try:
        assert served.request("GET", "/status")[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_connections_beyond_the_cap_get_503(served: Served) -> None:
    idle = [
        socket.create_connection(("127.0.0.1", served.endpoint.port)) for _ in range(CONNECTIONS)
    ]
    try:
        assert raw(served, b"GET /status HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503 ")
    finally:
        for sock in idle:
            sock.close()
    while not raw(served, b"GET /status HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 "):
        pass  # until the closed connections' threads have seen them closed


def test_a_silent_client_is_disconnected(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server._Handler, "timeout", 0.2)
    with socket.create_connection(("127.0.0.1", served.endpoint.port), timeout=10) as sock:
        sock.sendall(b"GET /sta")  # and nothing more
        assert sock.recv(100) == b""  # closed by the server, not by our 10 s


# -- with the loop --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_push_to_a_source_without_poke_triggers_a_pass(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text('[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "x"\n')
    runtime = FakeRuntime()
    reconciler = Reconciler(
        source=FolderSource(tmp_path), runtime=runtime, converger=Converger(runtime)
    )
    endpoint = Endpoint(
        Listen("127.0.0.1", 0), document=lambda: DOCUMENT, source=reconciler.source, secret=SECRET
    )
    served = Served(endpoint, PokedSource(), [])
    triggers: list[str] = []
    first, stop = anyio.Event(), anyio.Event()

    def on_pass(result: PassResult) -> None:
        triggers.append(result.trigger)
        first.set()
        if result.trigger == "webhook":
            stop.set()

    async def push() -> None:
        await first.wait()
        status = await anyio.to_thread.run_sync(served.hook, "gitea", PUSH, signed(PUSH, ""))
        assert status == 202

    with endpoint:
        async with anyio.create_task_group() as group:
            group.start_soon(push)
            with anyio.fail_after(30):
                await run_loop(
                    reconciler,
                    on_pass=endpoint.also(on_pass),
                    stop=stop,
                    on_ready=endpoint.on_ready,
                )
        samples = served.metrics()
    assert triggers[0] == "start" and "webhook" in triggers
    assert samples["squish_actions_total{kind=create,result=ok}"] == 1
    assert samples["squish_passes_total{}"] == len(triggers)


def test_a_client_that_trickles_its_request_is_cut_at_the_deadline(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found probing the endpoint: the timeout was per read, so 32 clients sending a
    byte every 8 s held every slot for as long as they liked (webhooks got 503)."""
    monkeypatch.setattr(server, "REQUEST_DEADLINE", 0.5)
    with socket.create_connection(("127.0.0.1", served.endpoint.port), timeout=10) as sock:
        sock.sendall(b"POST /hooks/github HTTP/1.1\r\n")
        answer = b""
        for _ in range(40):  # 8 s of a header byte every 0.2 s, unless cut first
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                answer = b"closed"
                break
            time.sleep(0.2)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answer = sock.recv(100) or b"closed"
            sock.setblocking(True)
            if answer:
                break
    assert answer, "still reading the trickled request after 8 s"


def test_headers_past_their_cap_are_a_431_and_not_kept(served: Served) -> None:
    """Found probing the endpoint: 100 header lines of 64 KiB each were read and held
    (32 such clients took 530 MB of the reconciler's memory)."""
    head = b"POST /hooks/github HTTP/1.1\r\n" + b"X-A: " + b"a" * 60_000 + b"\r\n" * 1
    answer = raw(served, head + b"X-B: " + b"b" * 60_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 431 ")


@pytest.mark.parametrize("length", ["\u00b2", "1" * 5000, "-1", "+5"])
def test_an_odd_content_length_is_a_411(served: Served, length: str) -> None:
    """Found probing the endpoint: '²' passes str.isdigit and 5,000 digits pass it too;
    int() then raised, and the connection closed with no answer."""
    head = f"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    assert raw(served, head.encode()).startswith(b"HTTP/1.0 411 ")


def test_a_request_line_is_logged_without_its_control_characters(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Found probing the endpoint: a request line with an escape sequence was logged raw
    (at -vv), and a terminal showing the log obeyed it."""
    with caplog.at_level("DEBUG", logger=server.log.name):
        raw(served, b"GET /status?\x1b[2J\x1b]0;pwned\x07 HTTP/1.0\r\n\r\n")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/status?" in logged
    assert "\x1b" not in logged and "\x07" not in logged
