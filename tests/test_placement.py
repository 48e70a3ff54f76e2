"""``[placement]``: which hosts a squishfile's container runs on, and ``--host``/``--label``.

A file placed elsewhere is not desired on this host: the desired state leaves it out
(the planner never sees it), status and ``validate`` show it as valid, and a container
of it that runs here is removed. Against the fake runtime; the real one is in
``tests/test_fleet_e2e.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.control.converge import Converger
from reconciler.control.loop import Reconciler
from reconciler.control.status import StatusStore, status_document
from reconciler.desired.folder import load_desired
from reconciler.desired.source import FolderSource
from reconciler.desired.validation import validate_files
from reconciler.problems import SquishfileError
from reconciler.settings import BadSetting, Settings, parse_labels
from reconciler.squishfile import load_squishfile
from reconciler.squishfile.placement import HostIdentity
from tests.fakes import FakeClock, FakeRuntime

APP = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'


def placed(placement: str) -> str:
    return f"{APP}\n[placement]\n{placement}\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path.resolve() / "desired"
    path.mkdir()
    (tmp_path / "state").mkdir()
    return path


# -- the table ------------------------------------------------------------------------------


def test_placement_is_read_and_matched(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(placed('hosts = ["web-*", "db-1"]\nlabels = { zone = "a" }'))
    placement = load_squishfile(path).placement
    assert placement is not None
    assert placement.misses(HostIdentity("web-3", {"zone": "a", "disk": "ssd"})) is None
    assert placement.misses(HostIdentity("db-1", {"zone": "a"})) is None
    assert placement.misses(HostIdentity("db-2", {"zone": "a"})) == (
        'host "db-2" matches none of hosts ["web-*", "db-1"]'
    )
    assert placement.misses(HostIdentity("web-1", {"zone": "b"})) == (
        'host "web-1" has label zone="b", wanted "a"'
    )
    assert placement.misses(HostIdentity("web-1")) == (
        'host "web-1" has no label zone (wanted zone="a")'
    )


def test_a_file_without_placement_runs_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(APP)
    assert load_squishfile(path).placement is None


@pytest.mark.parametrize(
    ("placement", "line", "field", "words"),
    [
        ('hosts = "web-1"', 8, "placement.hosts", "must be an array"),
        ("hosts = []", 8, "placement.hosts", "may not be empty"),
        ('hosts = ["web-1", 3]', 8, "placement.hosts[1]", "string"),
        ('hosts = [" web"]', 8, "placement.hosts[0]", "not a host name pattern"),
        ("labels = { zone = 1 }", 8, "placement.labels.zone", "string"),
        ('zone = "a"', 8, "placement.zone", "hosts, labels"),
    ],
)
def test_a_bad_placement_is_an_error_at_its_line(
    tmp_path: Path, placement: str, line: int, field: str, words: str
) -> None:
    path = tmp_path / "web.toml"
    path.write_text(placed(placement))
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)
    assert words in problem.message


# -- the host's identity ------------------------------------------------------------------


def test_labels_are_parsed_from_key_value_pairs() -> None:
    assert parse_labels(["zone=a", "disk=", "k=v=w"]) == {"zone": "a", "disk": "", "k": "v=w"}


@pytest.mark.parametrize(("item", "words"), [("zone", "KEY=VALUE"), ("=a", "KEY=VALUE")])
def test_a_malformed_label_is_a_clear_error(item: str, words: str) -> None:
    with pytest.raises(BadSetting, match=words):
        parse_labels([item])


def test_a_label_given_twice_is_an_error() -> None:
    with pytest.raises(BadSetting, match="given twice"):
        parse_labels(["zone=a", "zone=b"])


def test_the_options_set_the_hosts_identity() -> None:
    args = cli.build_parser().parse_args(
        ["plan", "d", "--host", "web-1", "--label", "zone=a", "--label", "disk=ssd"]
    )
    settings = cli._settings(args)
    assert (settings.host, dict(settings.labels)) == ("web-1", {"zone": "a", "disk": "ssd"})


def test_without_options_the_host_is_this_machine() -> None:
    args = cli.build_parser().parse_args(["status", "d"])
    settings = cli._settings(args)
    assert (settings.host, dict(settings.labels)) == (socket.gethostname(), {})


def test_a_malformed_label_option_fails_the_command(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plan", str(folder), "--label", "zone"]) == 1
    assert "--label='zone': expected KEY=VALUE" in capsys.readouterr().err


# -- desired state --------------------------------------------------------------------------


def test_a_file_placed_elsewhere_is_not_desired_here(folder: Path) -> None:
    (folder / "web.toml").write_text(placed('hosts = ["web-*"]'))
    (folder / "db.toml").write_text(placed('labels = { role = "db" }'))
    (folder / "any.toml").write_text(APP)
    state = load_desired(folder, host=HostIdentity("web-1"))
    assert sorted(state.containers) == ["any", "web"]
    assert [(p.file.name, p.name, p.reason) for p in state.placed_elsewhere] == [
        ("db.toml", "db", 'host "web-1" has no label role (wanted role="db")')
    ]
    assert state.errors == ()
    assert sorted(load_desired(folder).containers) == ["any", "db", "web"]


def test_files_for_other_hosts_claim_no_name_here(folder: Path) -> None:
    """Two files may declare one name for two hosts: neither is refused."""
    (folder / "b.toml").write_text('name = "web"\n' + placed('hosts = ["b"]'))
    (folder / "a.toml").write_text('name = "web"\n' + placed('hosts = ["a"]'))
    for host in ("a", "b"):
        state = load_desired(folder, host=HostIdentity(host))
        assert state.errors == ()
        assert state.containers["web"].file.name == f"{host}.toml"


# -- converging with the fake runtime -------------------------------------------------------


def reconciler(folder: Path, runtime: FakeRuntime, clock: FakeClock, host: str) -> Reconciler:
    settings = Settings(host=host, labels={"zone": "a"}, settle_ms=0)  # rewrites apply at once
    return Reconciler(
        source=FolderSource(folder, settings),
        runtime=runtime,
        converger=Converger(runtime, clock=clock),
        store=StatusStore(folder.parent / "state", folder),
        clock=clock,
    )


@pytest.mark.anyio
async def test_a_file_for_another_host_is_not_created(folder: Path) -> None:
    clock = FakeClock(1000.0)
    runtime = FakeRuntime(clock=clock)
    (folder / "web.toml").write_text(placed('hosts = ["web-*"]'))
    (folder / "db.toml").write_text(placed('hosts = ["db-*"]'))
    await reconciler(folder, runtime, clock, "web-1").reconcile("start")
    assert sorted(i.name for i in runtime.list()) == ["web"]


@pytest.mark.anyio
async def test_a_file_moved_to_another_host_is_removed_here(folder: Path) -> None:
    clock = FakeClock(1000.0)
    runtime = FakeRuntime(clock=clock)
    for name in ("web", "api", "cache"):
        (folder / f"{name}.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock, "web-1")
    await loop.reconcile("start")
    (folder / "web.toml").write_text(placed('hosts = ["web-2"]'))
    result = await loop.reconcile("files changed")
    assert [(a.kind.value, a.name, a.reason) for a in result.plan.actions] == [
        (
            "destroy",
            "web",
            'web.toml is placed elsewhere (host "web-1" matches none of hosts ["web-2"])',
        )
    ]
    assert sorted(i.name for i in runtime.list()) == ["api", "cache"]
    desired, actual, todo = loop.dry_run()
    document = status_document(desired, actual, todo, {}, now=clock())
    assert document["host"] == {"name": "web-1", "labels": {"zone": "a"}}
    assert document["placed_elsewhere"] == [
        {
            "file": "web.toml",
            "name": "web",
            "reason": 'host "web-1" matches none of hosts ["web-2"]',
        }
    ]
    assert "web" not in {row["name"] for row in document["containers"]}


@pytest.mark.anyio
async def test_moving_most_files_away_is_held_by_the_mass_deletion_guard(folder: Path) -> None:
    clock = FakeClock(1000.0)
    runtime = FakeRuntime(clock=clock)
    for index in range(4):
        (folder / f"c{index}.toml").write_text(APP)
    loop = reconciler(folder, runtime, clock, "web-1")
    await loop.reconcile("start")
    for index in (1, 2, 3):
        (folder / f"c{index}.toml").write_text(placed('labels = { zone = "b" }'))
    await loop.reconcile("files changed")
    assert len(runtime.list()) == 4
    desired, actual, todo = loop.dry_run()
    rows = {r["name"]: r for r in status_document(desired, actual, todo, {})["containers"]}
    (condition,) = rows["c2"]["conditions"]
    assert condition["kind"] == "MassDeleteGuard"
    assert (
        'c2.toml is placed elsewhere (host "web-1" has label zone="a", wanted "b")'
        in (condition["message"])
    )


@pytest.mark.anyio
async def test_status_shows_what_is_placed_elsewhere_and_why(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock(1000.0)
    runtime = FakeRuntime(clock=clock)
    (folder / "db.toml").write_text(placed('hosts = ["db-*"]'))
    desired, actual, todo = reconciler(folder, runtime, clock, "web-1").dry_run()
    cli.print_status(status_document(desired, actual, todo, {}, now=clock()))
    assert 'placed elsewhere db.toml: host "web-1" matches none of hosts ["db-*"]' in (
        capsys.readouterr().out
    )


def test_validate_accepts_a_file_placed_elsewhere(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "db.toml").write_text(placed('hosts = ["nowhere-*"]'))
    assert cli.main(["validate", str(folder)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("first", "second", "conflict"),
    [
        ('hosts = ["a"]', 'hosts = ["b"]', False),
        ('hosts = ["a-1", "a-2"]', 'hosts = ["b-*"]', False),
        ('labels = { zone = "a" }', 'labels = { zone = "b" }', False),
        ('hosts = ["a"]', 'hosts = ["a"]', True),
        ('hosts = ["a-1"]', 'hosts = ["a-*"]', True),
        ('hosts = ["a-*"]', 'hosts = ["b-*"]', True),  # patterns are assumed to meet
        ('hosts = ["a"]', 'labels = { zone = "b" }', True),
        ('labels = { zone = "a" }', 'labels = { disk = "ssd" }', True),
        ('hosts = ["a"]', None, True),
    ],
)
def test_validate_refuses_a_name_or_port_twice_only_where_both_may_run(
    folder: Path, first: str, second: str | None, conflict: bool
) -> None:
    port = "[[ports]]\ncontainer = 80\nhost = 8080\n"
    (folder / "one.toml").write_text('name = "web"\n' + placed(first) + port)
    two = f"{APP}{port}" if second is None else placed(second) + port
    (folder / "two.toml").write_text('name = "web"\n' + two)
    (folder / "three.toml").write_text(placed(first) + port)
    paths = sorted(folder.iterdir())
    results = {path.name: error for path, error in validate_files(paths)}
    assert results["one.toml"] is None
    assert results["three.toml"] is not None  # same placement as one.toml: its port is taken
    assert (results["two.toml"] is not None) == conflict


def test_settings_with_labels_stay_hashable() -> None:
    settings = Settings(host="web-1", labels={"zone": "a"})
    assert hash(settings) == hash(Settings(host="web-1", labels={"zone": "b"}))
    assert settings != Settings(host="web-1", labels={"zone": "b"})
