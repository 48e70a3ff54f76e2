"""``reconciler fleet status``: hosts' status documents, read over HTTP from 127.0.0.1.

Each "host" is a tiny HTTP server on 127.0.0.1 serving a status document at ``/status``
(as ``reconciler run --listen`` does); an unreachable one is a port nothing listens on.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from reconciler import cli
from reconciler.fleet import FleetReport, HostReport, gather, status_url

OLD = "1" * 40
NEW = "2" * 40


def document(host: str, commit: str | None, at: int, *containers: tuple[str, str]) -> bytes:
    source = {"kind": "git", "applied": {"commit": commit, "subject": "s", "time": at}}
    return json.dumps(
        {
            "version": 1,
            "host": {"name": host, "labels": {}},
            "loop": {"running": True, "last_revision": f"git:{commit}"},
            "source": source if commit else None,
            "containers": [{"name": n, "phase": p} for n, p in containers],
        }
    ).encode()


class _Server(ThreadingHTTPServer):
    body: bytes = b""
    paths: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        found = self.path == "/status"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if found:
            self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(body)`` starts a server on 127.0.0.1 answering ``/status`` with ``body``
    and gives its URL; every server is shut down at the end."""
    servers: list[_Server] = []

    def start(body: bytes) -> str:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.body, server.paths = body, []
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_fleet_status_names_the_host_behind_and_the_one_unreachable(
    serve: Any, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    a = serve(document("web-1", NEW, 200, ("web", "Running"), ("api", "Running")))
    b = serve(document("web-2", OLD, 100, ("web", "Pending")))
    gone = f"http://127.0.0.1:{closed_port}"
    assert cli.main(["fleet", "status", a, b, gone]) == 1
    out, err = capsys.readouterr()
    table = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in table] == [
        ["web-1", "web", "Running", NEW[:12], "current"],
        ["web-1", "api", "Running", NEW[:12], "current"],
        ["web-2", "web", "Pending", OLD[:12], "behind"],
        [f"127.0.0.1:{closed_port}", "-", "-", "-", "unreachable"],
    ]
    assert f"web-2: behind: at {OLD[:12]}, newest {NEW[:12]}" in err
    assert f"127.0.0.1:{closed_port}: unreachable: " in err


def test_fleet_status_json(
    serve: Any, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    a = serve(document("web-1", NEW, 200, ("web", "Running")))
    b = serve(document("web-2", OLD, 100))
    gone = f"http://127.0.0.1:{closed_port}/status"
    assert cli.main(["fleet", "status", "--json", b, a, gone]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["newest"] == NEW
    hosts = report["hosts"]
    assert [(h["host"], h["state"], h["revision"]) for h in hosts] == [
        ("web-2", "behind", OLD),
        ("web-1", "current", NEW),
        (f"127.0.0.1:{closed_port}", "unreachable", None),
    ]
    assert hosts[1]["containers"] == [{"name": "web", "phase": "Running"}]
    assert hosts[2]["error"]


def test_hosts_that_all_caught_up_exit_0(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    urls = [serve(document(f"web-{i}", NEW, 200, ("web", "Running"))) for i in range(3)]
    assert cli.main(["fleet", "status", *urls]) == 0
    assert capsys.readouterr().err == ""


def test_hosts_are_asked_for_their_status_path(serve: Any) -> None:
    url = serve(document("web-1", NEW, 200))
    assert status_url(url) == f"{url}/status"
    assert status_url(f"{url}/") == f"{url}/status"
    assert status_url(f"{url}/fleet/status") == f"{url}/fleet/status"
    report = anyio.run(lambda: gather([f"{url}/elsewhere"], per_host=5.0))
    (host,) = report.hosts
    assert host.document is None and "404" in (host.error or "")


def test_a_host_that_does_not_answer_in_time_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as silent:  # accepts (the backlog does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert cli.main(["fleet", "status", "--timeout", "0.2", url]) == 1
    assert "unreachable: no answer within 0.2 s" in capsys.readouterr().err


def test_a_saved_document_and_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "web-1.json"
    saved.write_bytes(document("web-1", NEW, 200, ("web", "Running")))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("<html>")
    assert cli.main(["fleet", "status", "--json", saved.as_uri(), garbage.as_uri()]) == 1
    hosts = json.loads(capsys.readouterr().out)["hosts"]
    assert [h["state"] for h in hosts] == ["current", "unreachable"]
    assert hosts[1]["error"].startswith("not a status document")


def test_without_commit_times_the_revision_most_hosts_have_is_the_newest() -> None:
    """Folder sources give no commit time: the loop's revision, compared by majority."""

    def host(name: str, revision: str) -> HostReport:
        return HostReport(name, {"host": {"name": name}, "loop": {"last_revision": revision}})

    report = FleetReport((host("a", "files:1"), host("b", "files:2"), host("c", "files:2")))
    assert report.newest == "files:2"
    assert [report.state(h) for h in report.hosts] == ["behind", "current", "current"]
    assert report.problems() == ["a: behind: at files:1, newest files:2"]


def test_a_host_without_a_loop_is_at_its_last_applys_revision() -> None:
    def host(name: str, loop: str | None, apply: str | None) -> HostReport:
        records = {
            "loop": {"last_revision": loop, "last_pass_at": 10.0},
            "apply": {"last_revision": apply, "last_pass_at": 20.0},
        }
        return HostReport(name, {"host": {"name": name}, **records})

    assert host("a", "files:1", "files:2").revision == "files:2"
    assert host("b", "files:1", None).revision == "files:1"
    assert host("c", None, None).revision is None
