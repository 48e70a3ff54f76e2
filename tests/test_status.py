"""What ``reconciler status`` and the loop's console say, against the fake runtime.

Each status is taken as ``reconciler status`` takes it: a fresh reconciler on the same
folder, runtime and state folder dry-runs and reads what the loop or ``apply`` recorded.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from reconciler import cli
from reconciler.control import status as status_module
from reconciler.control.converge import Converger
from reconciler.control.loop import Reconciler
from reconciler.control.status import (
    ConditionReport,
    FolderBusy,
    StatusStore,
    Writer,
    state_disk_condition,
    status_document,
)
from reconciler.desired.source import FolderSource
from reconciler.planning.plan import Condition, ConditionKind
from reconciler.settings import Settings
from reconciler.squishfile.networks import runtime_network_name
from runtime.api import ContainerInfo, ContainerState
from runtime.errors import ContainerStartError, NetworkConflict
from tests.fakes import FakeClock, FakeRuntime
from tests.support import shell

APP = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path.resolve() / "desired"  # as the folder's containers are labelled
    path.mkdir()
    (tmp_path / "state").mkdir()
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def runtime(clock: FakeClock) -> FakeRuntime:
    return FakeRuntime(clock=clock)


def reconciler(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, writer: Writer = "loop"
) -> Reconciler:
    """A reconciler as the command line makes one, on the fake runtime."""
    return Reconciler(
        # no settle time: a file written or deleted counts at the next pass
        source=FolderSource(folder, Settings(settle_ms=0)),
        runtime=runtime,
        converger=Converger(runtime, clock=clock),
        store=StatusStore(folder.parent / "state", folder),
        clock=clock,
        writer=writer,
    )


def save(path: Path, text: str) -> None:
    """Save as an editor does: written aside, renamed into place (applied at once)."""
    aside = path.with_name(f".{path.name}.swp")
    aside.write_text(text)
    aside.rename(path)


def status(folder: Path, runtime: FakeRuntime, clock: FakeClock) -> dict[str, Any]:
    viewer = reconciler(folder, runtime, clock)
    desired, actual, todo = viewer.dry_run()
    assert viewer.store is not None
    stored = viewer.store.read()
    return status_document(desired, actual, todo, stored, now=clock(), networks=viewer.networks)


def rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["containers"]}


def gone_pid() -> int:
    """The pid of a process that has ended (a loop or an apply that is over)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# -- the mass-deletion guard -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("loop_runs", [False, True])
async def test_a_container_the_guard_holds_runs_and_says_what_releases_it(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, loop_runs: bool
) -> None:
    for index in range(4):
        (folder / f"c{index}.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock)
    await loop.reconcile("start")
    for index in (1, 2, 3):
        (folder / f"c{index}.toml").unlink()
    if loop_runs:
        loop.record.started(os.getpid())
    await loop.reconcile("files changed")
    document = status(folder, runtime, clock)
    assert [c["kind"] for c in document["conditions"]] == ["MassDeleteGuard"]
    by_name = rows(document)
    assert (by_name["c0"]["phase"], by_name["c0"]["conditions"]) == ("Running", [])
    held = by_name["c2"]
    assert (held["phase"], held["in_sync"]) == ("Running", False)
    (condition,) = held["conditions"]
    assert condition["kind"] == "MassDeleteGuard"
    assert "c2.toml is gone" in condition["message"]
    command = "run" if loop_runs else "apply"
    assert f"`reconciler {command} --allow-mass-delete {folder}`" in condition["message"]


@pytest.mark.anyio
async def test_a_container_kept_by_the_other_guards_runs_and_names_them(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    """A file whose container cannot be known holds every removal; so does a folder that
    cannot be read: the containers they keep run, and say why."""
    for name in ("web", "old"):
        (folder / f"{name}.toml").write_text(APP)
    await reconciler(folder, runtime, clock).reconcile("start")
    (folder / "old.toml").unlink()
    (folder / "new.toml").write_text("name = [\n")
    (row,) = [r for r in status(folder, runtime, clock)["containers"] if r["name"] == "old"]
    assert row["phase"] == "Running"
    assert [c["kind"] for c in row["conditions"]] == ["InvalidSpec"]
    assert row["conditions"][0]["message"].startswith(
        "kept while nothing is removed while new.toml"
    )
    os.rename(folder, folder.with_name("moved"))
    by_name = rows(status(folder, runtime, clock))
    assert [by_name[n]["phase"] for n in ("old", "web")] == ["Running", "Running"]
    assert by_name["web"]["conditions"] == [
        {
            "kind": "FolderUnreadable",
            "message": f"kept while {folder} is missing or unreadable; "
            "nothing is changed until it is back",
        }
    ]


# -- the last known state, whoever recorded it ----------------------------------------------


@pytest.mark.anyio
async def test_a_crash_loop_still_shows_after_the_loop_stopped(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    (folder / "crash.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock)
    loop.record.started(os.getpid())
    await loop.reconcile("start")
    for _ in range(3):
        runtime.finish("crash", 3)
        clock.advance(100.0)  # past the crash back-off: the loop restarts it
        await loop.reconcile("a process exited")
    last_pass = clock()
    loop.record.pid = gone_pid()  # the loop has stopped ...
    loop.save()
    runtime.finish("crash", 3)  # ... and its container exited once more
    clock.advance(600.0)
    document = status(folder, runtime, clock)
    assert document["loop"]["running"] is False
    (row,) = document["containers"]
    assert (row["phase"], row["exit_code"]) == ("CrashLoopBackOff", 3)
    assert document["recorded"]["by"] == "loop"
    assert document["recorded"]["at"] == last_pass
    runtime.remove("crash")  # `reconciler down` or `rm`: that crash loop is over
    (row,) = status(folder, runtime, clock)["containers"]
    assert row["phase"] == "Pending"


@pytest.mark.anyio
async def test_a_failed_apply_reaches_status_with_its_error_and_time(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    (folder / "web.toml").write_text(APP)
    runtime.fail("run", "web", ContainerStartError("web", "no such command: httpd"))
    apply = reconciler(folder, runtime, clock, writer="apply")
    apply.record.started(gone_pid())
    applied_at = clock()
    result = await apply.reconcile("apply")
    assert [o.action.name for o in result.failed] == ["web"]
    clock.advance(5.0)
    document = status(folder, runtime, clock)
    (row,) = document["containers"]
    assert row["phase"] == "Failed"
    assert "no such command: httpd" in row["last_error"]
    assert (document["recorded"]["by"], document["recorded"]["at"]) == ("apply", applied_at)
    made = document["apply"]["last_actions"]
    assert [a for a in made if not a.startswith("ensure-network ")] == [
        "create web: new in web.toml"
    ]


@pytest.mark.anyio
async def test_an_apply_keeps_the_loops_record_and_a_loop_the_applys(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    (folder / "web.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock)
    loop.record.started(gone_pid())
    await loop.reconcile("start")
    await loop.reconcile("resync")
    clock.advance(10.0)
    apply = reconciler(folder, runtime, clock, writer="apply")
    await apply.reconcile("apply")
    document = status(folder, runtime, clock)
    assert (document["loop"]["passes"], document["loop"]["last_trigger"]) == (2, "resync")
    assert (document["apply"]["passes"], document["recorded"]["by"]) == (1, "apply")
    clock.advance(10.0)
    await loop.reconcile("resync")
    document = status(folder, runtime, clock)
    assert (document["loop"]["passes"], document["recorded"]["by"]) == (3, "loop")
    assert document["apply"]["last_pass_at"] == 1010.0


@pytest.mark.parametrize(
    ("holder", "said"),
    [("loop", "already manages this folder"), ("apply", "`reconciler apply` (pid")],
)
def test_a_refused_claim_names_the_process_that_holds_the_folder(
    folder: Path, holder: Writer, said: str
) -> None:
    """flock conflicts between two open files of one process too: the second claim here
    is refused as a second process's would be."""
    StatusStore(folder.parent / "state", folder).claim(holder)
    with pytest.raises(FolderBusy) as refused:
        StatusStore(folder.parent / "state", folder).claim("loop")
    assert f"(pid {os.getpid()})" in str(refused.value)
    assert said in str(refused.value)


# -- tables: whole values off a terminal, and with -o wide ------------------------------------

LONG_NAME = "a-container-whose-name-is-long-enough-to-be-cut"
LONG_REASON = "the command /usr/local/bin/some-long-program-name was not found in the image"


@pytest.fixture
def failed_long(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container with a long name whose apply failed with a long error; the command
    line's ``status`` sees this fake runtime and state."""
    (folder / "app.toml").write_text(f'name = "{LONG_NAME}"\n{APP}')
    runtime.fail("run", LONG_NAME, ContainerStartError(LONG_NAME, LONG_REASON))
    anyio.run(reconciler(folder, runtime, clock, writer="apply").reconcile, "apply")

    def made(path: Path, settings: Settings, writer: Writer = "loop") -> Reconciler:
        return reconciler(path, runtime, clock, writer)

    monkeypatch.setattr(cli, "_reconciler", made)
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.mark.usefixtures("failed_long")
def test_status_off_a_terminal_never_cuts_a_value(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    (line,) = [line for line in out.splitlines() if LONG_NAME in line]
    assert all(word in line for word in ("app.toml", "Failed", LONG_REASON)), line
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1000.0))
    assert f"as `reconciler apply` last recorded them, {at}" in out


def terminal(monkeypatch: pytest.MonkeyPatch, width: int = 80) -> io.StringIO:
    """Make the command line print to a terminal this wide (no colours); what it prints."""
    screen = io.StringIO()
    console = Console(
        file=screen,
        force_terminal=True,
        width=width,
        color_system=None,
        highlight=False,
        soft_wrap=cli._out.soft_wrap,
    )
    monkeypatch.setattr(cli, "_out", console)
    return screen


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in ("┏", "┃", "│", "└")]


@pytest.mark.usefixtures("failed_long")
def test_status_on_a_terminal_fits_it_and_wide_shows_everything(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = terminal(monkeypatch)
    assert cli.main(["status", str(folder)]) == 0
    fitted = table_lines(screen.getvalue())
    assert fitted and max(len(line) for line in fitted) <= 80
    screen = terminal(monkeypatch)
    assert cli.main(["status", str(folder), "-o", "wide"]) == 0
    out = screen.getvalue()
    assert "…" not in out
    (line,) = [line for line in table_lines(out) if LONG_NAME in line]
    assert LONG_REASON in line


# -- the loop's console ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_loop_console_says_a_rejected_file_once_and_when_it_is_fixed(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = terminal(monkeypatch)
    (folder / "web.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock)
    on_pass = cli.pass_printer(str(folder))
    on_pass(await loop.reconcile("start"))
    save(folder / "web.toml", APP + "\n[bogus]\n")
    for _ in range(3):
        on_pass(await loop.reconcile("resync"))
    save(folder / "web.toml", APP)
    for _ in range(2):
        on_pass(await loop.reconcile("resync"))
    lines = screen.getvalue().splitlines()
    assert lines[0].startswith("ensure-network sq-desired-")  # the folder's network first
    assert lines[1] == "create web: new in web.toml"
    (rejected,) = [line for line in lines if line.startswith("InvalidSpec web: ")][:-1]
    assert f"InvalidSpec web: {folder / 'web.toml'}:7: bogus" in rejected
    assert lines[2:] == [rejected, "InvalidSpec web: cleared"]


@pytest.mark.anyio
async def test_the_loop_console_says_a_guard_hold_once_with_what_releases_it(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = terminal(monkeypatch)
    for index in range(3):
        (folder / f"c{index}.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock)
    on_pass = cli.pass_printer(str(folder))
    await loop.reconcile("start")
    for index in range(3):
        (folder / f"c{index}.toml").unlink()
    for _ in range(3):
        on_pass(await loop.reconcile("resync"))
    (folder / "c0.toml").write_text(APP)
    on_pass(await loop.reconcile("files changed"))
    lines = screen.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("MassDeleteGuard: this pass would remove 3 of the folder's 3")
    assert f"`reconciler run --allow-mass-delete {folder}`" in lines[0]
    assert sorted(lines[1:3]) == ["destroy c1: c1.toml is gone", "destroy c2: c2.toml is gone"]
    assert lines[3] == "MassDeleteGuard: cleared"


def test_a_state_disk_with_room_is_no_condition(tmp_path: Path) -> None:
    assert state_disk_condition(tmp_path, []) is None


def test_a_full_state_disk_names_only_the_logs_on_that_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exited(name: str, log: Path, size: int) -> ContainerInfo:
        log.parent.mkdir(parents=True)
        log.write_bytes(bytes(size))
        spec = shell(name, "true")
        return ContainerInfo(
            name=name, state=ContainerState.EXITED, spec=spec, log_path=str(log), created_at=0.0
        )

    state = tmp_path / "state"
    state.mkdir()
    elsewhere = Path("/dev/shm") / f"squish-test-{os.getpid()}"  # another file system
    assert os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev
    try:
        actual = [
            exited("near", tmp_path / "logs" / "a" / "output.log", 1000),
            exited("afar", elsewhere / "b" / "output.log", 5000),
        ]
        monkeypatch.setattr(status_module, "FULL_BELOW", 1 << 62)  # the condition, whatever is free
        condition = state_disk_condition(state, actual)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert condition is not None and condition.kind is ConditionKind.STATE_DISK_FULL
    assert "the biggest logs on that disk: near 1000 B;" in condition.message
    assert "afar" not in condition.message


def test_the_console_says_a_full_disk_once_while_its_free_space_moves() -> None:
    report = ConditionReport("/desired")
    full = [
        Condition("*", ConditionKind.STATE_DISK_FULL, f"the state disk is full: {free} B free")
        for free in (900, 400, 100)
    ]
    lines = [line for condition in full for line in report.changes([condition])]
    lines += report.changes([])
    assert lines == [
        "StateDiskFull: the state disk is full: 900 B free",
        "StateDiskFull: cleared",
    ]


# -- networks: addresses per network, and the folder's networks ---------------------------------


def web_and_db(folder: Path) -> None:
    (folder / "web.toml").write_text(APP)
    (folder / "db.toml").write_text('networks = ["default", "back"]\n' + APP)
    (folder / "back.network.toml").write_text('subnet = "10.89.40.0/24"\ninternal = true\n')
    (folder / "spare.network.toml").write_text("dns = false\n")


@pytest.mark.anyio
async def test_status_shows_addresses_per_network_and_the_networks(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    web_and_db(folder)
    before = status(folder, runtime, clock)
    assert {n["name"]: n["state"] for n in before["networks"]} == {
        "back": "Pending",
        "default": "Pending",
        "spare": "Unused",
    }
    await reconciler(folder, runtime, clock).reconcile("test")

    document = status(folder, runtime, clock)
    db, web = rows(document)["db"], rows(document)["web"]
    assert list(db["addresses"]) == ["back", "default"]
    assert db["addresses"]["back"].startswith("10.89.40.")
    assert list(web["addresses"]) == ["default"] and web["in_sync"]
    networks = {n["name"]: n for n in document["networks"]}
    back = networks["back"]
    assert (back["network"], back["file"], back["state"]) == (
        runtime_network_name(folder, "back"),
        "back.network.toml",
        "Ready",
    )
    assert (back["subnet"], back["gateway"], back["internal"], back["dns"]) == (
        "10.89.40.0/24",
        "10.89.40.1",
        True,
        True,
    )
    assert back["containers"] == {"db": db["addresses"]["back"]}
    assert networks["default"]["containers"] == {
        "db": db["addresses"]["default"],
        "web": web["addresses"]["default"],
    }
    assert (networks["spare"]["state"], networks["spare"]["dns"]) == ("Unused", False)

    (folder / "db.toml").unlink()
    leaving = {n["name"]: n["state"] for n in status(folder, runtime, clock)["networks"]}
    assert leaving["back"] == "Terminating" and leaving["default"] == "Ready"


@pytest.mark.anyio
async def test_a_network_condition_is_on_its_network_and_the_folder(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    web_and_db(folder)
    await reconciler(folder, runtime, clock).reconcile("test")
    (folder / "back.network.toml").write_text('subnet = "10.89.41.0/24"\n')
    document = status(folder, runtime, clock)
    (condition,) = document["conditions"]
    assert (condition["kind"], condition["network"]) == ("NetworkInUse", "back")
    back = next(n for n in document["networks"] if n["name"] == "back")
    assert [c["kind"] for c in back["conditions"]] == ["NetworkInUse"]
    assert "now: db" in back["conditions"][0]["message"]


@pytest.mark.anyio
async def test_the_status_table_lists_addresses_and_networks(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    web_and_db(folder)
    await reconciler(folder, runtime, clock).reconcile("test")
    document = status(folder, runtime, clock)
    screen = io.StringIO()
    monkeypatch.setattr(cli, "_out", Console(file=screen, width=200, color_system=None))
    cli.print_status(document, wide=True)
    out = screen.getvalue()
    web = rows(document)["web"]
    assert f"default={web['addresses']['default']}" in out
    (back,) = [line for line in out.splitlines() if "back.network.toml" in line]
    assert all(word in back for word in ("Ready", "10.89.40.0/24", "yes", "db=10.89.40."))


@pytest.mark.anyio
async def test_a_network_that_cannot_be_made_shows_why(
    folder: Path, runtime: FakeRuntime, clock: FakeClock
) -> None:
    web_and_db(folder)
    back = runtime_network_name(folder, "back")
    runtime.fail("ensure_network", back, NetworkConflict(back, ["subnet"]), times=None)
    await reconciler(folder, runtime, clock).reconcile("test")
    document = status(folder, runtime, clock)
    row = next(n for n in document["networks"] if n["name"] == "back")
    assert row["state"] == "Pending" and "other settings (subnet)" in row["last_error"]
    assert rows(document)["db"]["phase"] == "Pending"  # it waits for its network
    assert rows(document)["web"]["phase"] == "Running"


@pytest.mark.anyio
async def test_the_status_table_says_why_a_container_has_no_proc_view(
    folder: Path, runtime: FakeRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    web_and_db(folder)
    await reconciler(folder, runtime, clock).reconcile("test")
    why = "unavailable: /dev/fuse cannot be opened: Permission denied"
    with runtime._cond:
        name = next(n for n in runtime._containers if n.startswith("web"))
        info = runtime._containers[name]
        runtime._containers[name] = info.model_copy(update={"proc_view": why})
    document = status(folder, runtime, clock)
    assert rows(document)["web"]["proc_view"] == why
    screen = terminal(monkeypatch, width=300)
    cli.print_status(document, wide=True)
    assert "/proc view unavailable: /dev/fuse cannot be opened" in screen.getvalue()
