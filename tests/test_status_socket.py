"""``status`` answered by the running loop: the status socket (who may ask, for what),
the quick path of the command line (what it leaves to the full one), and, with a real
loop on real rootless containers, the same document as a fresh ``status`` and never an
older one than what was just done."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.control.places import status_socket
from reconciler.desired.types import LABEL_FOLDER, LABEL_MANAGED, LABEL_NETWORK, MANAGER
from reconciler.endpoint.local import StatusSocket
from reconciler.quick import _quick_args, ask_loop
from reconciler.settings import Settings
from reconciler.squishfile.networks import runtime_network_name
from runtime.api import NetworkSpec
from runtime.util.jsonsock import exchange
from tests import test_reconciler_e2e as e2e
from tests.conftest import rootless
from tests.fakes import FakeRuntime
from tests.support import SLEEPER
from tests.test_endpoint_e2e import steady
from tests.test_reconciler_e2e import Loop, eventually, put

FOLDER = Path("/srv/desired")


class Documents:
    """A document function that records what it was asked."""

    def __init__(self, fails: bool = False) -> None:
        self.asked: list[tuple[str, dict[str, str]]] = []
        self.fails = fails

    def __call__(self, host: str, labels: Mapping[str, str]) -> dict[str, Any]:
        self.asked.append((host, dict(labels)))
        if self.fails:
            raise OSError("the folder is gone")
        return {"version": 1, "folder": str(FOLDER), "host": {"name": host}}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "reconciler").mkdir(mode=0o700)
    return tmp_path


def test_the_loop_answers_its_folder_for_the_host_asked_about(state: Path) -> None:
    documents = Documents()
    path = status_socket(state, FOLDER)
    with StatusSocket(path, FOLDER, documents):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        answer = ask_loop(state, FOLDER, "web-1", {"zone": "a"})
    assert answer == {"version": 1, "folder": str(FOLDER), "host": {"name": "web-1"}}
    assert documents.asked == [("web-1", {"zone": "a"})]
    assert not path.exists(), "the socket goes with the loop"


def test_another_folder_or_a_bad_request_gets_an_error_not_a_document(state: Path) -> None:
    documents = Documents()
    path = status_socket(state, FOLDER)
    asked = {"version": 1, "folder": str(FOLDER), "host": "h", "labels": {}}
    wrong = (
        {**asked, "folder": "/srv/other"},
        {**asked, "version": 2},
        {**asked, "host": 3},
        {**asked, "labels": {"zone": 1}},
        {**asked, "labels": ["zone"]},
    )
    with StatusSocket(path, FOLDER, documents):
        answers = [exchange(path, request, timeout=5, limit=1 << 16) for request in wrong]
    assert all(set(answer) == {"error"} for answer in answers), answers
    assert "answers for /srv/desired only" in answers[0]["error"]
    assert documents.asked == []


def test_no_answer_falls_back_when_no_loop_runs_a_dead_one_left_its_socket_or_it_fails(
    state: Path,
) -> None:
    assert ask_loop(state, FOLDER, "h", {}) is None  # no socket
    path = status_socket(state, FOLDER)
    with socket.socket(socket.AF_UNIX) as left:  # bound, then its loop died
        left.bind(str(path))
    assert ask_loop(state, FOLDER, "h", {}) is None
    with StatusSocket(path, FOLDER, Documents(fails=True)):  # it replaces the dead one
        assert ask_loop(state, FOLDER, "h", {}) is None
    with StatusSocket(path, FOLDER, Documents()):
        assert ask_loop(state, FOLDER, "h", {}) is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "d"],
        ["status", "d", "--watch"],
        ["status", "d", "--git", "file:///r"],
        ["status", "--js"],  # an abbreviation: the full command line decides
        ["status", "-o", "yaml"],
        ["-v", "status"],
        ["status", "--help"],
    ],
)
def test_the_quick_path_leaves_what_it_does_not_know_to_the_full_command_line(
    argv: list[str],
) -> None:
    assert _quick_args(argv) is None


def test_the_quick_path_takes_status_and_its_output_and_host_options() -> None:
    args = _quick_args(["status", "d", "-o", "wide", "--host", "h", "--label", "a=b"])
    assert args is not None
    assert (args.dir, args.output, args.host, args.label) == ("d", "wide", "h", ["a=b"])


@rootless
def test_a_process_in_another_pid_namespace_is_not_answered(state: Path) -> None:
    """A container's root is this account's uid as the loop sees it: its pid namespace
    tells it apart."""
    documents = Documents()
    asking = (
        "import sys; from pathlib import Path; from reconciler.quick import ask_loop; "
        f"sys.exit(ask_loop(Path({str(state)!r}), Path({str(FOLDER)!r}), 'h', {{}}) is None)"
    )
    with StatusSocket(status_socket(state, FOLDER), FOLDER, documents):
        unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork"]
        inside = subprocess.run(
            [*unshare, sys.executable, "-c", asking],
            cwd=e2e.ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        outside = subprocess.run(
            [sys.executable, "-c", asking], cwd=e2e.ROOT, capture_output=True, check=False
        )
    assert (inside.returncode, outside.returncode) == (1, 0), inside.stderr
    assert len(documents.asked) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="asking as another uid needs root")
def test_another_uid_is_not_answered_even_through_loosened_modes() -> None:
    documents = Documents()
    state = Path(tempfile.mkdtemp(prefix="sq-status-"))  # not under root's 0700 temp
    (state / "reconciler").mkdir()
    path = status_socket(state, FOLDER)
    request = {"version": 1, "folder": str(FOLDER), "host": "h", "labels": {}}
    asking = f"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({str(path)!r})
try:
    s.sendall({json.dumps(request).encode()!r})
    s.shutdown(socket.SHUT_WR)
    answer = s.recv(65536)
except OSError:  # closed unanswered before the request was sent
    answer = b""
sys.stdout.write(repr(answer))
"""  # the standard library only: the other account need not read this tree
    try:
        with StatusSocket(path, FOLDER, documents):
            for loosened in (state, path.parent):
                loosened.chmod(0o755)
            path.chmod(0o666)
            nobody = subprocess.run(  # Debian's python: any account may run it
                ["/usr/bin/python3", "-c", asking], user=65534, capture_output=True, text=True
            )
    finally:
        shutil.rmtree(state)
    assert nobody.returncode == 0, nobody.stderr
    assert nobody.stdout == "b''"
    assert documents.asked == []


# -- a real loop -----------------------------------------------------------------------------

env = e2e.env  # the loop fixture and what it needs, as the e2e tests have them
folder = e2e.folder
loop = e2e.loop
loop_options = e2e.loop_options


def asked(loop: Loop) -> dict[str, Any]:
    document = ask_loop(Path(loop.env["SQUISH_STATE_DIR"]), loop.folder, cli._settings().host, {})
    assert document is not None, "the loop does not answer"
    return document


def phases(document: dict[str, Any]) -> dict[str, str]:
    return {row["name"]: row["phase"] for row in document["containers"]}


def fresh(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The document as a ``status`` that asks no loop works it out."""
    monkeypatch.setenv("SQUISH_STATE_DIR", loop.env["SQUISH_STATE_DIR"])
    monkeypatch.setenv("XDG_CACHE_HOME", loop.env["XDG_CACHE_HOME"])
    return cli.status_json(cli._reconciler(loop.folder, cli._settings()))


@rootless
def test_the_loops_answer_is_the_document_a_fresh_status_works_out(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("one", "two"):
        put(loop.folder, f"{name}.toml", SLEEPER)
    running = {"one": "Running", "two": "Running"}
    eventually(lambda: phases(asked(loop)) == running, "both run, as the loop says")
    answer, computed = asked(loop), fresh(loop, monkeypatch)
    assert answer["loop"]["running"] is True and answer["loop"]["pid"] == loop.process.pid
    assert steady(answer) == steady(computed)
    printed = subprocess.run(
        [sys.executable, "-m", "reconciler", "status", str(loop.folder), "--json"],
        cwd=e2e.ROOT,
        env=loop.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert steady(json.loads(printed.stdout)) == steady(answer)


@rootless
def test_the_loops_answer_is_never_older_than_the_edit_just_made(loop: Loop) -> None:
    put(loop.folder, "one.toml", SLEEPER)
    eventually(lambda: phases(asked(loop)) == {"one": "Running"}, "one runs")
    put(loop.folder, "two.toml", SLEEPER)
    assert "two" in phases(asked(loop)), "a file dropped just now is in the next status"
    eventually(lambda: phases(asked(loop)).get("two") == "Running", "two runs")
    (loop.folder / "one.toml").unlink()
    assert phases(asked(loop)).get("one", "Terminating") == "Terminating"
    eventually(lambda: "one" not in phases(asked(loop)), "one is removed")


@rootless
def test_a_file_broken_after_the_loop_answered_reads_as_a_fresh_status_reads_it(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's answer parses only what changed since the last question; a file that
    no longer parses must not claim the name that answer's cache remembers, where a
    fresh ``status`` has no memory to take it from."""
    put(loop.folder, "site.toml", 'name = "web"\n' + SLEEPER)
    eventually(lambda: phases(asked(loop)) == {"web": "Running"}, "web runs")
    put(loop.folder, "site.toml", 'name = "web"\n[run\n')
    answer, computed = asked(loop), fresh(loop, monkeypatch)
    assert steady(answer) == steady(computed)


class _StatefulRuntime(FakeRuntime):
    """The fake runtime with a state folder, as the loop's runtime has."""

    def __init__(self, state: Path) -> None:
        super().__init__()
        self.state = state


def test_the_loops_answer_keeps_a_network_only_for_the_loops_own_linger(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run --network-linger 0``: the loop removes a network nothing joins, so its
    answer says the network goes (``Terminating``), not that it is kept (``Lingering``,
    what the default linger of the environment would do)."""
    monkeypatch.setattr(cli, "LinuxRuntime", _StatefulRuntime)  # the loop's runtime here
    monkeypatch.delenv("SQUISH_NETWORK_LINGER", raising=False)
    folder = state / "desired"
    folder.mkdir()
    runtime = _StatefulRuntime(state)
    labels = {LABEL_MANAGED: MANAGER, LABEL_FOLDER: str(folder), LABEL_NETWORK: "default"}
    runtime.seed_network(NetworkSpec(name=runtime_network_name(folder, "default"), labels=labels))
    loop = cli._reconciler(folder, Settings(network_linger=0.0), runtime=runtime)  # type: ignore[arg-type]
    answering = cli._status_socket(loop)
    assert answering is not None
    with answering:
        document = ask_loop(state, folder, "h", {})
    assert document is not None
    assert [row["state"] for row in document["networks"]] == ["Terminating"]
