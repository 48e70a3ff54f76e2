"""Watching a loop from elsewhere: the event journal a loop writes and ``reconciler events``
follows (before or after the loop starts, across rotations), and ``status --watch``."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
from rich.console import Console

from reconciler.control.converge import Converger
from reconciler.control.journal import Journal, follow, journal_path
from reconciler.control.loop import PassResult, Reconciler, run_loop
from reconciler.control.status import StatusStore
from reconciler.desired.source import FolderSource
from reconciler.planning.actions import Condition, ConditionKind, Plan
from reconciler.settings import Settings
from reconciler.watching import describe_event, watch_json, watch_status
from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless
from tests.fakes import FakeClock, FakeRuntime
from tests.support import REPO, start_controller

SQUISHFILE = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "sleep"\nargs = ["600"]\n'


def _written(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.anyio
async def test_a_loop_journals_its_actions_and_conditions(tmp_path: Path) -> None:
    folder, state = tmp_path / "desired", tmp_path / "state"
    folder.mkdir()
    state.mkdir()
    (folder / "web.toml").write_text(SQUISHFILE)
    (folder / "bad.toml").write_text("[run\n")
    clock = FakeClock(100.0)
    runtime = FakeRuntime(clock=clock)
    store = StatusStore(state, folder)
    loop = Reconciler(
        FolderSource(folder), runtime, Converger(runtime, clock=clock), store, clock=clock
    )
    journal = Journal(journal_path(store), folder=str(folder), clock=clock)
    stop = anyio.Event()

    def on_pass(result: PassResult) -> None:
        journal.passed(result)
        stop.set()

    await run_loop(loop, settings=Settings(), on_pass=on_pass, stop=stop)
    events = _written(journal_path(store))
    actions = [e for e in events if e["event"] == "action"]
    assert [(e["action"], e["name"], e["ok"]) for e in actions if e["name"] == "web"] == [
        ("create", "web", True)
    ]
    rejected = [e for e in events if e["event"] == "condition"]
    assert [e["name"] for e in rejected] == ["bad"]
    assert events[-1]["event"] == "pass" and events[-1]["trigger"] == "start"
    assert events[-1]["actions"] == len(actions) and events[-1]["failed"] == 0


def test_conditions_are_journaled_once_and_when_they_clear(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl", folder=str(tmp_path))
    bad = Condition("bad", ConditionKind.INVALID_SPEC, "bad.toml:1: <syntax>: oops")
    for conditions in ((bad,), (bad,), ()):
        journal.passed(PassResult(Plan((), conditions), (), 0.0, 0.01, "test"))
    said = [(e["event"], e["name"]) for e in _written(journal.path) if e["event"] != "pass"]
    assert said == [("condition", "bad"), ("condition-cleared", "bad")]


def test_a_follower_started_first_sees_every_event_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    journal = Journal(path, folder=str(tmp_path), max_bytes=300)
    total = 40
    written = iter(range(total))

    def write_some(_: float) -> None:  # the follower waits: the loop writes meanwhile
        for _ in range(3):
            number = next(written, None)
            if number is not None:
                journal.write("test", number=number)

    seen = [event["number"] for event in islice(follow(path, sleep=write_some), total)]
    assert seen == list(range(total))
    assert path.with_name("events.jsonl.1").exists()  # it did rotate
    assert path.stat().st_size < 300 + 100  # and it stays bounded


def test_a_follower_started_later_sees_only_new_events_or_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    journal = Journal(path, folder=str(tmp_path), max_bytes=300)
    for number in range(10):
        journal.write("test", number=number)
    numbers = iter(range(100, 200))

    def write_one(_: float) -> None:
        journal.write("test", number=next(numbers))

    seen = [event["number"] for event in islice(follow(path, sleep=write_one), 2)]
    assert seen == [100, 101]
    kept = [e["number"] for e in follow(path, history=True, stop=lambda: True)]
    assert kept == sorted(kept) and kept[-1] == 101 and len(kept) > 2
    assert kept == [*range(kept[0], 10), 100, 101]  # what rotation kept, in order


def test_a_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    line = json.dumps({"event": "test", "number": 1}).encode() + b"\n"
    steps = iter([line[:10], line[10:]])

    def write_part(_: float) -> None:
        with path.open("ab") as file:
            file.write(next(steps, b""))

    assert next(follow(path, sleep=write_part)) == {"event": "test", "number": 1}


def _kept(path: Path) -> list[int]:
    """The numbers of the events a reader finds in the journal at ``path``."""
    return [event["number"] for event in follow(path, history=True, stop=lambda: True)]


def test_writes_cut_short_still_land_every_line_whole(tmp_path: Path) -> None:
    def five_bytes_at_most(fd: int, data: bytes) -> int:  # as a signal or a filling disk
        return os.write(fd, data[:5])

    journal = Journal(tmp_path / "j.jsonl", folder=str(tmp_path), write=five_bytes_at_most)
    for number in range(3):
        journal.write("test", number=number)
    assert [e["number"] for e in _written(journal.path)] == [0, 1, 2]


class FailingDisk:
    """``os.write`` on a disk that takes ``room`` more bytes, then fails (ENOSPC) until
    given room again; with ``once``, it fails one write only (an I/O error that passes)."""

    def __init__(self, room: int, once: bool = False) -> None:
        self.room = room
        self.once = once

    def __call__(self, fd: int, data: bytes) -> int:
        if self.room <= 0:
            self.room = 1 << 20 if self.once else 0
            raise OSError(errno.ENOSPC, "No space left on device")
        written = os.write(fd, data[: self.room])
        self.room -= written
        return written


def test_a_write_failing_part_way_leaves_no_line_the_next_one_joins(tmp_path: Path) -> None:
    disk = FailingDisk(room=1000)
    journal = Journal(tmp_path / "j.jsonl", folder=str(tmp_path), write=disk)
    journal.write("test", number=0)
    disk.room = 10  # the next event is torn: its first 10 bytes only, not even ended
    journal.write("test", number=1)
    assert not journal.path.read_bytes().endswith(b"\n")
    disk.room = 1000  # room again
    journal.write("test", number=2)
    assert _kept(journal.path) == [0, 2]
    assert len(journal.path.read_bytes().splitlines()) == 3  # the torn one, on its own


def test_a_torn_line_is_ended_at_once_when_the_disk_takes_it(tmp_path: Path) -> None:
    disk = FailingDisk(room=1000)
    journal = Journal(tmp_path / "j.jsonl", folder=str(tmp_path), write=disk)
    journal.write("test", number=0)
    disk.room, disk.once = 10, True  # one write fails, after 10 bytes of the event
    journal.write("test", number=1)
    assert journal.path.read_bytes().endswith(b"\n")
    journal.write("test", number=2)
    assert _kept(journal.path) == [0, 2]


def test_events_read_as_the_loop_says_them() -> None:
    failed = {"event": "action", "text": "create web: new", "ok": False, "error": "no [x]"}
    assert describe_event(failed) == r"create web: new [red]failed:[/] no \[x]"
    assert describe_event({"event": "pass", "actions": 0}) is None  # a pass that did nothing
    hostile = {"event": "condition", "condition": "BackOff", "name": "w", "message": "a\x1b[2Jb"}
    assert "\x1b" not in describe_event(hostile)  # type: ignore[operator]
    assert "a\\x1b" in describe_event(hostile)  # type: ignore[operator]
    one = {"event": "pass", "trigger": "start", "actions": 1, "failed": 0, "duration_ms": 3.5}
    assert describe_event(one) == "pass (start): 1 action, 0 failed, 3.5 ms"
    assert describe_event({"event": "stopped"}) == "loop stopped; the containers keep running"


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_status_watch_redraws_only_on_change(terminal: bool) -> None:
    row: dict[str, Any] = {"name": "web", "age_s": 1.0}
    documents: Iterator[dict[str, Any]] = iter(
        [
            {"containers": [row]},
            {"containers": [{**row, "age_s": 2.0}]},  # only older: nothing to redraw
            {"containers": [row], "loop": {"passes": 7, "last_pass_at": 5.0}},  # a pass, no more
            {"containers": [{**row, "phase": "Exited"}]},
        ]
    )
    drawn: list[dict[str, Any]] = []
    left = [4]

    def parts(document: dict[str, Any], now: float) -> list[str]:
        drawn.append(document)
        return [f"{row['name']} {row.get('phase', 'Running')}" for row in document["containers"]]

    def stop() -> bool:
        left[0] -= 1
        return left[0] < 0

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=terminal, width=80)
    watch_status(
        lambda: next(documents),
        parts,
        printed=lambda document: console.print(*parts(document, 0.0)),
        interval=1.0,
        console=console,
        stop=stop,
        sleep=lambda _: None,
    )
    assert [d["containers"][0].get("phase") for d in drawn] == [None, "Exited"]
    shown = screen.getvalue()
    assert "web Exited" in shown
    if not terminal:  # each change printed whole, below the last
        assert shown.index("web Running") < shown.index("web Exited")


def test_status_watch_json_prints_a_line_per_change(capsys: pytest.CaptureFixture[str]) -> None:
    web: dict[str, Any] = {"containers": [{"name": "web"}]}
    documents = iter([{"containers": []}, {"containers": []}, web])
    left = [3]

    def stop() -> bool:
        left[0] -= 1
        return left[0] < 0

    watch_json(lambda: next(documents), interval=1.0, stop=stop, sleep=lambda _: None)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"containers": []}, web]


# -- end to end: a real `reconciler run` and `reconciler events` ----------------------------


def _events_process(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "events", "--json", str(folder)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _folder(tmp_path: Path, state_path: Path, cache_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with one squishfile (first.toml), and the environment of commands on it."""
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "first.toml").write_text('network = "none"\n' + SQUISHFILE)
    env = {
        **os.environ,
        "SQUISH_STATE_DIR": str(state_path),
        "XDG_CACHE_HOME": str(cache_path / "xdg"),  # never the account's own ~/.cache
    }
    return folder, env


def _until(stream: IO[str] | None, wanted: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events read from ``stream`` up to the first that has every item of ``wanted``
    (the test's timeout ends a wait that never ends)."""
    assert stream is not None
    for line in stream:
        event: dict[str, Any] = json.loads(line)
        yield event
        if wanted.items() <= event.items():
            return
    raise AssertionError(f"the events ended before {wanted}")


@rootless
def test_events_follow_a_real_loop_started_before_and_after(
    rt: LinuxRuntime, state_path: Path, cache_path: Path, tmp_path: Path
) -> None:
    folder, env = _folder(tmp_path, state_path, cache_path)
    started: list[subprocess.Popen[Any]] = []
    try:
        before = _events_process(folder, env)  # no loop yet, no journal yet
        started.append(before)
        assert before.stderr is not None
        assert "waiting for one" in before.stderr.readline()  # it follows: start the loop
        loop = start_controller(folder, env, "--resync", "1")
        started.append(loop)
        seen = list(_until(before.stdout, {"event": "action", "name": "first"}))
        assert seen[0]["event"] == "started" and seen[0]["pid"] == loop.pid
        assert seen[-1]["action"] == "create" and seen[-1]["ok"] is True
        list(_until(before.stdout, {"event": "pass"}))

        after = _events_process(folder, env)  # the loop runs already
        started.append(after)
        list(_until(after.stdout, {"event": "pass"}))  # it follows: the next resync came
        (folder / "second.toml").write_text('network = "none"\n' + SQUISHFILE)
        for follower in (before, after):
            seen = list(_until(follower.stdout, {"event": "action", "name": "second"}))
            assert seen[-1]["action"] == "create" and seen[-1]["ok"] is True
            assert all(e.get("name") != "first" for e in seen if e["event"] == "action")

        loop.send_signal(signal.SIGTERM)
        loop.wait()
        for follower in (before, after):
            assert list(_until(follower.stdout, {"event": "stopped"}))
    finally:
        for process in started:
            process.kill()
            process.communicate()


@rootless
def test_status_watch_shows_each_change_of_a_folder(
    rt: LinuxRuntime, state_path: Path, cache_path: Path, tmp_path: Path
) -> None:
    """Through a pipe, every change is printed whole (no loop runs: status plans itself)."""
    folder, env = _folder(tmp_path, state_path, cache_path)
    watch = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "status", "-w", "--interval", "0.2", str(folder)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert watch.stdout is not None
        lines = iter(watch.stdout)
        first = list(_through_a_view(lines))
        assert any("first.toml" in line for line in first)
        assert not any("second.toml" in line for line in first)
        (folder / "second.toml").write_text('network = "none"\n' + SQUISHFILE)
        second = list(_through_a_view(lines))
        while not any("second.toml" in line for line in second):  # a change of another kind
            second = list(_through_a_view(lines))
        assert any("first.toml" in line for line in second)
    finally:
        watch.kill()
        watch.communicate()


def _through_a_view(lines: Iterator[str]) -> Iterator[str]:
    """The lines of the next status printed (a blank line comes before each)."""
    assert next(lines) == "\n"
    for line in lines:
        if line.startswith("└"):  # the end of the containers' table
            return
        yield line
