"""Three hosts following one repository served by a real ``git daemon`` on 127.0.0.1, with
the real runtime: each runs what is placed on it, and git is the only thing they share.

Each "host" is a ``reconciler run --git`` process with its own state folder (so its own
holder, containers and networks, as on its own machine), its own ``--host`` name and its
own ``--listen`` endpoint. h2 and h3 poll the repository; h1 polls only once an hour, so
it moves to a new commit when its webhook is called. Steered only by commits, webhooks
and one SIGKILL; observed from outside (HTTP on 127.0.0.1, each host's ``/status``, and
``reconciler fleet status`` over all three).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless, short_folder
from tests.gitrepos import Origin, git, git_daemon
from tests.support import free_port, processes_mentioning
from tests.test_reconciler_e2e import ROOT, WAIT, cli, cli_env, eventually, greeting_toml, serves

pytestmark = rootless

HOSTS = ("h1", "h2", "h3")
SECRET = "fleet-secret"


def placed(port: int, greeting: str, host: str) -> str:
    return greeting_toml(port, greeting) + f'\n[placement]\nhosts = ["{host}"]\n'


class Host:
    """One host: its state folder, its loop process, its endpoint."""

    def __init__(self, name: str, state: Path, cache: Path, url: str, secret: Path) -> None:
        self.name, self.state, self.env = name, state, cli_env(state, cache)
        self.port = free_port()
        self.source = ("--git", url)
        interval = "1h" if name == "h1" else "200ms"  # h1 follows webhooks only
        argv = [sys.executable, "-m", "reconciler.cli", "run", *self.source, "--host", name]
        argv += ["--interval", interval, "--resync", "0.5"]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--webhook-secret-file", str(secret)]
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any] | None:
        try:
            answer = httpx.get(f"{self.url}/status", timeout=5)
        except httpx.HTTPError:
            return None
        document: dict[str, Any] = answer.json()
        return document

    def running(self) -> set[str] | None:
        document = self.status()
        if document is None:
            return None
        return {r["name"] for r in document["containers"] if r["phase"] == "Running"}

    def applied(self) -> str | None:
        document = self.status()
        source = (document or {}).get("source") or {}
        return (source.get("applied") or {}).get("commit")

    def hook(self, secret: str) -> int:
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={digest}"}
        answer = httpx.post(f"{self.url}/hooks/github", content=body, headers=headers, timeout=5)
        return answer.status_code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # a process this test started
        self.process.wait(timeout=WAIT)


@pytest.fixture
def states() -> Iterator[list[Path]]:
    with ExitStack() as stack:
        yield [stack.enter_context(short_folder(f"sq{name}")) for name in HOSTS]


def test_three_hosts_follow_one_repository_each_running_its_share(
    tmp_path: Path, cache_path: Path, states: list[Path]
) -> None:
    origin = Origin(tmp_path / "work")
    ports = {name: free_port() for name in ("a", "b", "c")}
    files = {f"{n}.toml": placed(ports[n], f"{n}1", h) for n, h in zip("abc", HOSTS, strict=True)}
    origin.commit(files, "one container per host")
    served = tmp_path / "served"
    served.mkdir()
    git(served, "clone", "--quiet", "--bare", str(origin.path), "ops.git")
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    with git_daemon(served) as base:
        hosts = [
            Host(n, s, cache_path, f"{base}/ops.git", secret)
            for n, s in zip(HOSTS, states, strict=True)
        ]

        def push(changes: dict[str, str], message: str) -> str:
            sha = origin.commit(changes, message)
            git(origin.path, "push", "--quiet", str(served / "ops.git"), "main")
            return sha

        try:
            _scenario(hosts, ports, push)
        finally:
            for host in hosts:
                host.stop()
            downs = [cli(host.env, "down", *host.source) for host in hosts]
            for host in hosts:
                LinuxRuntime(state=host.state, cache=cache_path).shutdown()
    assert [down.returncode for down in downs] == [0, 0, 0], [d.stderr for d in downs]
    for state in states:
        assert not processes_mentioning(str(state))


def _serves_alone(host: Host, ports: dict[str, int], name: str) -> bool:
    return serves(ports[name], f"{name}1\n") and host.running() == {name}


def _scenario(hosts: list[Host], ports: dict[str, int], push: Any) -> None:
    h1, h2, h3 = hosts
    for name, host in zip("abc", hosts, strict=True):
        alone = functools.partial(_serves_alone, host, ports, name)
        eventually(alone, f"{name} serves from {host.name}")

    moved = push({"a.toml": placed(ports["a"], "a2", "h2")}, "a moves to h2")
    assert h1.hook("not the secret") == 403  # refused: h1 stays where it was
    assert h1.hook(SECRET) == 202
    eventually(lambda: serves(ports["a"], "a2\n"), "a serves from h2")
    eventually(lambda: h1.running() == set() and h2.running() == {"a", "b"}, "a moved")
    eventually(lambda: all(h.applied() == moved for h in hosts), "every host at the move")

    broken = push({"b.toml": "[run]\ncommand = 5\n"}, "b broken")
    assert h1.hook(SECRET) == 202
    eventually(lambda: h2.applied() == broken, "h2 took the broken commit")
    document = h2.status()
    assert document is not None
    row = next(r for r in document["containers"] if r["name"] == "b")
    text = json.dumps(row) + json.dumps(document["source"])
    assert broken in text and "b.toml:2" in text, text  # the commit and the line
    assert serves(ports["b"], "b1\n")  # the previous version keeps running
    assert row["pid"] is not None, row

    h3.process.send_signal(signal.SIGKILL)  # a process this test started
    h3.process.wait(timeout=WAIT)
    fixed = push({"b.toml": placed(ports["b"], "b2", "h2")}, "b fixed")
    assert h1.hook(SECRET) == 202
    eventually(lambda: serves(ports["b"], "b2\n"), "h2 goes on without h3")
    eventually(lambda: h1.applied() == fixed and h2.applied() == fixed, "h1 and h2 at the fix")
    assert serves(ports["c"], "c1\n")  # h3's container runs on without its loop

    urls = [host.url for host in hosts]
    fleet = cli(h1.env, "fleet", "status", *urls, "--json")
    assert fleet.returncode == 1, fleet.stdout + fleet.stderr  # one host cannot be read
    report = json.dumps(json.loads(fleet.stdout))
    assert "unreachable" in report and fixed in report
