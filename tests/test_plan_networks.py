"""Networks planned and converged: made before what joins them, joined and left live,
remade only while unused, removed after the last container leaves (against the fake
runtime, which keeps networks and hands out addresses as the real one does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.control.converge import Converger
from reconciler.desired.folder import load_desired
from reconciler.planning.plan import PHASE, ActionKind, ConditionKind, NetworkLinger, Plan, plan
from reconciler.squishfile.networks import runtime_network_name
from runtime.api import ContainerState, NetworkSpec
from runtime.errors import NetworkConflict
from tests.fakes import NETWORK_MUTATING, FakeClock, FakeRuntime


def container(folder: Path, name: str, extra: str = "") -> None:
    """A squishfile on the folder's network unless ``extra`` says which network."""
    if "network" not in extra:
        extra = 'networks = ["default"]\n' + extra
    (folder / f"{name}.toml").write_text(
        extra + '[layers]\nbusybox = "builtin"\n[run]\ncommand = "httpd"\nargs = ["-f"]\n'
    )


def net(folder: Path, name: str) -> str:
    return runtime_network_name(folder, name)


def planned(folder: Path, fake: FakeRuntime) -> Plan:
    return plan(load_desired(folder), fake.list(), networks=fake.list_networks())


def summary(todo: Plan) -> list[tuple[int, str, str]]:
    """(phase, kind, name and network joined or left) of each action, in plan order."""
    return [
        (PHASE[a.kind], a.kind.value, a.name + (f" {a.attachment.network}" if a.attachment else ""))
        for a in todo.actions
    ]


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime(FakeClock(1000.0))


async def converged(folder: Path, fake: FakeRuntime) -> Plan:
    """Plan and apply one pass; every action must succeed."""
    todo = planned(folder, fake)
    outcomes = await Converger(fake).apply(todo)
    assert [o.error for o in outcomes if not o.ok] == []
    return todo


# -- the planner, as a table ------------------------------------------------------------------


def test_a_network_is_made_before_the_containers_that_join_it(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "web")
    container(tmp_path, "db")
    default = net(tmp_path, "default")
    assert summary(planned(tmp_path, fake)) == [
        (0, "ensure-network", default),
        (1, "create", "db"),
        (1, "create", "web"),
    ]


def test_the_network_file_settings_are_the_ones_made(tmp_path: Path, fake: FakeRuntime) -> None:
    container(tmp_path, "db", 'networks = ["back"]\n')
    (tmp_path / "back.network.toml").write_text('subnet = "10.89.40.0/24"\ninternal = true\n')
    (ensure,) = [a for a in planned(tmp_path, fake).actions if a.for_network]
    assert ensure.network is not None
    assert (ensure.network.name, ensure.network.subnet, ensure.network.internal) == (
        net(tmp_path, "back"),
        "10.89.40.0/24",
        True,
    )
    assert ensure.network.labels["squish.network"] == "back"


@pytest.mark.anyio
async def test_a_running_container_joins_new_networks_before_it_leaves_old_ones(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "web")
    await converged(tmp_path, fake)
    container(tmp_path, "web", 'networks = ["back", "front"]\n')
    default, back, front = (net(tmp_path, n) for n in ("default", "back", "front"))
    assert summary(planned(tmp_path, fake)) == [
        (0, "ensure-network", back),
        (0, "ensure-network", front),
        (1, "connect", f"web {back}"),
        (1, "connect", f"web {front}"),
        (2, "disconnect", f"web {default}"),
        (3, "remove-network", default),
    ]


@pytest.mark.anyio
async def test_a_network_stays_while_another_container_uses_it(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "web")
    container(tmp_path, "db")
    await converged(tmp_path, fake)
    (tmp_path / "web.toml").unlink()
    assert summary(planned(tmp_path, fake)) == [(0, "destroy", "web")]
    (tmp_path / "db.toml").unlink()
    default = net(tmp_path, "default")
    assert summary(planned(tmp_path, fake)) == [
        (0, "destroy", "db"),
        (0, "destroy", "web"),
        (3, "remove-network", default),
    ]


@pytest.mark.anyio
async def test_changed_settings_remake_an_unused_network_and_wait_for_a_used_one(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "db", 'networks = ["back"]\n')
    await converged(tmp_path, fake)
    (tmp_path / "back.network.toml").write_text("internal = true\n")
    todo = planned(tmp_path, fake)
    assert summary(todo) == []
    (condition,) = todo.conditions
    assert (condition.name, condition.kind, condition.network) == (
        "*",
        ConditionKind.NETWORK_IN_USE,
        "back",
    )
    assert "internal false -> true" in condition.message and "now: db" in condition.message

    fake.remove("db", force=True)  # nothing uses it now
    assert summary(planned(tmp_path, fake))[0] == (0, "renew-network", net(tmp_path, "back"))


@pytest.mark.anyio
async def test_aliases_changed_recreate_and_a_stopped_container_is_recreated(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "db", "[networks.back]\naliases = ['database']\n")
    await converged(tmp_path, fake)
    container(tmp_path, "db", "[networks.back]\naliases = ['sql']\n")
    (recreate,) = planned(tmp_path, fake).actions
    assert (recreate.kind, recreate.reason) == (ActionKind.RECREATE, "aliases changed on back")

    container(tmp_path, "db", 'networks = ["back", "front"]\n[restart]\npolicy = "always"\n')
    fake.stop("db")
    assert fake.inspect("db").state is ContainerState.EXITED
    kinds = [(a.kind, a.reason) for a in planned(tmp_path, fake).actions if not a.for_network]
    assert kinds == [(ActionKind.RECREATE, "networks changed while stopped")]


def test_a_broken_network_file_leaves_its_network_and_holds_what_needs_it(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "db", 'networks = ["back"]\n')
    container(tmp_path, "web")
    (tmp_path / "back.network.toml").write_text('subnet = "10.89.40.1/24"\n')
    todo = planned(tmp_path, fake)
    assert summary(todo) == [(0, "ensure-network", net(tmp_path, "default")), (1, "create", "web")]
    kinds = sorted((c.name, c.kind.value, c.network) for c in todo.conditions)
    assert kinds == [("*", "InvalidNetwork", "back"), ("db", "InvalidNetwork", None)]
    assert "back.network.toml:1: subnet" in next(
        c.message for c in todo.conditions if c.name == "*"
    )


def test_a_network_the_folder_did_not_make_is_never_changed(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "db", 'networks = ["back"]\n')
    (tmp_path / "back.network.toml").write_text("dns = false\n")
    fake.seed_network(NetworkSpec(name=net(tmp_path, "back")))  # made by someone else
    fake.seed_network(NetworkSpec(name=net(tmp_path, "old")))  # unused, but not ours
    todo = planned(tmp_path, fake)
    assert summary(todo) == [(1, "create", "db")]
    (condition,) = todo.conditions
    assert condition.kind is ConditionKind.NETWORK_CONFLICT and "dns true -> false" in (
        condition.message
    )


# -- converged against the fake runtime -------------------------------------------------------


@pytest.mark.anyio
async def test_a_folder_converges_onto_its_network_and_back_to_nothing(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "web")
    container(tmp_path, "db", "[networks.default]\naliases = ['database']\n")
    await converged(tmp_path, fake)
    default = net(tmp_path, "default")
    (network,) = fake.list_networks()
    assert network.name == default and network.labels["squish.folder"] == str(tmp_path)
    assert sorted(network.containers) == ["db", "web"]
    assert fake.inspect("web").addresses == {default: network.containers["web"]}
    assert planned(tmp_path, fake).actions == ()

    (tmp_path / "web.toml").unlink()
    (tmp_path / "db.toml").unlink()
    await converged(tmp_path, fake)
    assert fake.list() == [] and fake.list_networks() == []
    assert fake.history(*NETWORK_MUTATING) == [
        ("ensure_network", default),
        ("remove_network", default),
    ]


@pytest.mark.anyio
async def test_joining_and_leaving_keep_the_same_pid(tmp_path: Path, fake: FakeRuntime) -> None:
    container(tmp_path, "web")
    await converged(tmp_path, fake)
    pid = fake.inspect("web").pid
    container(tmp_path, "web", 'networks = ["back"]\n')
    await converged(tmp_path, fake)
    web = fake.inspect("web")
    assert web.pid == pid and list(web.addresses) == [net(tmp_path, "back")]
    assert [n.name for n in fake.list_networks()] == [net(tmp_path, "back")]
    assert fake.history("remove", "run") == [("run", "web")]


@pytest.mark.anyio
async def test_a_network_that_cannot_be_made_holds_back_what_joins_it(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "db", 'networks = ["back"]\n')
    back = net(tmp_path, "back")
    fake.fail("ensure_network", back, NetworkConflict(back, ["subnet"]))
    outcomes = await Converger(fake).apply(planned(tmp_path, fake))
    assert [(o.action.kind, o.ok) for o in outcomes] == [(ActionKind.ENSURE_NETWORK, False)]
    assert fake.history("run") == []  # not made with other settings than written


@pytest.mark.anyio
async def test_a_container_that_cannot_join_keeps_its_old_network(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "web")
    await converged(tmp_path, fake)
    container(tmp_path, "web", 'networks = ["back"]\n')
    fake.fail("connect", "web", ValueError("no more interfaces"))
    outcomes = await Converger(fake).apply(planned(tmp_path, fake))
    assert [(o.action.kind, o.ok) for o in outcomes] == [
        (ActionKind.ENSURE_NETWORK, True),
        (ActionKind.CONNECT, False),
    ]
    assert list(fake.inspect("web").addresses) == [net(tmp_path, "default")]


@pytest.mark.anyio
async def test_a_lingering_network_stays_until_its_linger_is_over(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    container(tmp_path, "web")
    await converged(tmp_path, fake)
    (tmp_path / "web.toml").unlink()
    default = net(tmp_path, "default")

    def planned_at(now: float, since: dict[str, float]) -> Plan:
        desired, networks = load_desired(tmp_path), fake.list_networks()
        linger = NetworkLinger(60.0, since)
        return plan(desired, fake.list(), networks=networks, now=now, linger=linger)

    leaving = planned_at(100.0, {})
    assert summary(leaving) == [(0, "destroy", "web")] and leaving.lingering == (default,)
    assert [o.error for o in await Converger(fake).apply(leaving)] == [None]
    assert planned_at(159.0, {default: 100.0}) == Plan(lingering=(default,))
    assert summary(planned_at(160.0, {default: 100.0})) == [(3, "remove-network", default)]


@pytest.mark.anyio
async def test_a_network_file_renamed_does_not_linger_on_the_subnet_its_new_name_needs(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """The runtime refuses a subnet that overlaps another network's: the old name's
    network, kept for its linger, would hold the new name's subnet for the whole linger."""
    (tmp_path / "back.network.toml").write_text('subnet = "10.89.40.0/24"\n')
    (tmp_path / "idle.network.toml").write_text('subnet = "10.89.50.0/24"\n')
    container(tmp_path, "web", 'networks = ["back"]\n')
    container(tmp_path, "cron", 'networks = ["idle"]\n')
    await converged(tmp_path, fake)
    (tmp_path / "back.network.toml").rename(tmp_path / "front.network.toml")
    container(tmp_path, "web", 'networks = ["front"]\n')
    (tmp_path / "cron.toml").unlink()
    renamed = plan(
        load_desired(tmp_path),
        fake.list(),
        networks=fake.list_networks(),
        now=100.0,
        linger=NetworkLinger(60.0, {}),
    )
    removed = [a.name for a in renamed.actions if a.kind is ActionKind.REMOVE_NETWORK]
    assert removed == [net(tmp_path, "back")]
    assert renamed.lingering == (net(tmp_path, "idle"),)  # its subnet is wanted by none
