"""``reconciler run --listen 127.0.0.1:PORT``, a real loop on real rootless containers,
asked over HTTP: ``/status`` is ``status --json``, ``/metrics`` follows the passes, a
signed push triggers a pass, and idle clients never stop the loop."""

from __future__ import annotations

import json
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from reconciler.endpoint.server import CONNECTIONS
from tests import test_reconciler_e2e as e2e
from tests.conftest import rootless
from tests.support import free_port
from tests.test_endpoint import PUSH, hook, metrics, request, signed
from tests.test_reconciler_e2e import Loop, cli, eventually, put, serves, web_toml

pytestmark = rootless

env = e2e.env  # the loop fixture and what it needs, as the e2e tests have them
folder = e2e.folder
loop = e2e.loop

SECRET = "a shared secret\n"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def loop_options(port: int, tmp_path: Path) -> list[str]:
    secret = tmp_path / "hook-secret"
    secret.write_text(SECRET)
    return ["--listen", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret)]


def status(port: int) -> dict[str, Any]:
    code, body = request(port, "GET", "/status")
    assert code == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def steady(document: dict[str, Any]) -> dict[str, Any]:
    """The document without what moves by itself between two reads (ages, the loop's
    pass counters and the time of the last record)."""
    rows = [{k: v for k, v in row.items() if k != "age_s"} for row in document["containers"]]
    loop = {k: v for k, v in document["loop"].items() if not k.startswith(("last_", "passes"))}
    recorded = document["recorded"] and {**document["recorded"], "at": None}
    return {**document, "containers": rows, "loop": loop, "recorded": recorded}


def running(port: int, name: str) -> bool:
    return any(r["name"] == name and r["phase"] == "Running" for r in status(port)["containers"])


def test_status_is_status_json(loop: Loop, port: int) -> None:
    web = free_port()
    put(loop.folder, "web.toml", web_toml(web))
    eventually(lambda: running(port, "web"), "/status shows web Running")
    served, printed = status(port), loop.status()
    assert served.keys() == printed.keys()
    assert served["loop"].keys() == printed["loop"].keys()
    assert served["loop"]["running"] is True and served["loop"]["pid"] == loop.process.pid
    assert steady(served) == steady(printed)


def created(port: int) -> dict[str, float] | None:
    """The metrics once a container was created and runs (the pass that created it may
    still be recording itself when the container already runs)."""
    samples = metrics(port)
    done = samples.get("squish_actions_total{kind=create,result=ok}")
    return samples if done and samples["squish_containers{phase=Running}"] == 1 else None


def test_metrics_follow_the_passes(loop: Loop, port: int) -> None:
    before = metrics(port)
    assert before["squish_passes_total{}"] >= 1
    assert before.get("squish_actions_total{kind=create,result=ok}", 0) == 0
    put(loop.folder, "web.toml", web_toml(free_port()))
    after = eventually(lambda: created(port), "/metrics counts web created and Running")
    assert after["squish_actions_total{kind=create,result=ok}"] == 1
    assert after["squish_passes_total{}"] > before["squish_passes_total{}"]
    assert after["squish_pass_duration_seconds_count{}"] == after["squish_passes_total{}"]
    assert after["squish_container_restarts_total{container=web}"] == 0
    [info] = [k for k in after if k.startswith("squish_source_info")]
    assert f"revision={loop.record()['last_revision']}" in info


def test_a_signed_push_triggers_a_pass(loop: Loop, port: int) -> None:
    assert hook(port, "github", PUSH, signed(PUSH, secret=b"wrong")) == 403
    assert hook(port, "github", PUSH, signed(PUSH, secret=SECRET.strip().encode())) == 202
    eventually(lambda: loop.record().get("last_trigger") == "webhook", "a pass for the webhook")


def test_the_loop_converges_while_clients_hold_connections_open(loop: Loop, port: int) -> None:
    with ExitStack() as held:
        for _ in range(CONNECTIONS + 4):  # every slot taken, and some refused
            sock = held.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.sendall(b"GET /sta")  # and nothing more
        web = free_port()
        put(loop.folder, "web.toml", web_toml(web))
        eventually(lambda: serves(web, "<h1>site</h1>\n"), f"web answers on {web}")
    # the held connections' threads end as they see them closed: 503 until then
    eventually(lambda: request(port, "GET", "/status")[0] == 200, "/status answers again")
    assert running(port, "web")


def test_a_non_loopback_address_is_refused(folder: Path, env: dict[str, str]) -> None:
    done = cli(env, "run", str(folder), "--listen", "0.0.0.0:1")
    assert done.returncode == 1
    assert "not a loopback address" in done.stderr and "--listen-any" in done.stderr


def test_a_secret_without_listen_is_refused(folder: Path, env: dict[str, str]) -> None:
    done = cli(env, "run", str(folder), "--webhook-secret-file", "secret")
    assert done.returncode == 1
    assert "--webhook-secret-file='secret': needs --listen ADDRESS:PORT" in done.stderr
