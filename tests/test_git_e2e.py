"""``reconciler run --git`` end to end: a real process following a repository made in the
test (over file://) with the real runtime, observed from outside (HTTP on 127.0.0.1,
``reconciler status --json``, the source's record), steered only by commits and the
``plan``, ``suspend`` and ``resume`` commands."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from reconciler.control.status import StatusStore
from reconciler.desired.git import GitSource
from reconciler.settings import GitSettings, Settings
from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless
from tests.gitrepos import Origin
from tests.support import free_port
from tests.test_reconciler_e2e import (
    ROOT,
    WAIT,
    cli,
    cli_env,
    eventually,
    greeting_toml,
    serves,
)

pytestmark = rootless

LOOP_OPTIONS = ("--interval", "200ms", "--resync", "0.5")


def test_run_follows_commits_plans_a_revision_and_suspends(
    tmp_path: Path, rt: LinuxRuntime, state_path: Path, cache_path: Path
) -> None:
    env = cli_env(state_path, cache_path)
    origin = Origin(tmp_path / "origin")
    port, name = free_port(), f"git-{secrets.token_hex(3)}"
    file = f"deploy/{name}.toml"
    first = origin.commit({file: greeting_toml(port, "one"), "README": "hi\n"}, "one")
    options = ("--git", origin.url, "--path", "deploy")
    source = GitSource(Settings(git=GitSettings(url=origin.url, path="deploy")), state_path)
    loop = Followed(env, source, StatusStore(state_path, source.folder).path)
    output = tmp_path / "loop.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", *options, *LOOP_OPTIONS],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: serves(port, "one\n"), f"{name} serves the first commit")
        assert loop.status(*options)["source"]["applied"]["commit"] == first
        second = origin.commit({file: greeting_toml(port, "two")}, "two")
        eventually(lambda: serves(port, "two\n"), f"{name} serves the second commit")
        document = eventually(
            lambda: (d := loop.status(*options))["source"]["applied"]["commit"] == second and d,
            "status names the second commit",
        )
        row = next(r for r in document["containers"] if r["name"] == name)
        assert (row["phase"], row["in_sync"]) == ("Running", True)
        assert document["loop"]["last_revision"] == second

        plan = cli(env, "plan", *options, "--rev", first[:10])
        assert plan.returncode == 2, plan.stdout + plan.stderr
        assert f"plan for {first[:12]} 'one'" in plan.stdout and name in plan.stdout
        assert serves(port, "two\n")  # a plan changes nothing

        assert cli(env, "suspend", "--git", origin.url, "--path", "deploy").returncode == 0
        eventually(lambda: loop.record().get("suspended"), "the loop sees the suspension")
        origin.commit({file: greeting_toml(port, "three")}, "three")
        passes = loop.passes()
        eventually(lambda: loop.passes() >= passes + 3, "three passes while suspended")
        assert serves(port, "two\n")
        assert loop.record()["applied"]["commit"] == second
        assert loop.status(*options)["source"]["suspended"] is True

        assert cli(env, "resume", "--git", origin.url, "--path", "deploy").returncode == 0
        eventually(lambda: serves(port, "three\n"), "resumed: the third commit is served")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0, output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
        down = cli(env, "down", *options)
    assert down.returncode == 0, down.stderr
    assert name not in {i.name for i in rt.list()}


class Followed:
    """What a loop following a repository records: its source's and its own."""

    def __init__(self, env: dict[str, str], source: GitSource, store: Path) -> None:
        self.env, self.source, self.store = env, source, store

    def status(self, *options: str) -> dict[str, Any]:
        done = cli(self.env, "status", *options, "--json")
        assert done.returncode == 0, done.stderr
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def record(self) -> dict[str, Any]:
        """The source's record as the loop wrote it last."""
        try:
            data: dict[str, Any] = json.loads((self.source.home / "source.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def passes(self) -> int:
        try:
            return int(json.loads(self.store.read_text())["loop"]["passes"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0
