"""The keeper's side of a wire, with a fake agent that records what it is asked: the
plug goes out before the rules are worked out, the rules follow the book whether or not
the plug worked, and a bridge new to the namespace is made before the plug; and the
launcher's side of a plug sent to the agent directly: it counts only when the agent of
the keeper that synced made it, else the keeper wires."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.network import bridge, netlink, porter, shared
from runtime.network.addresses import NetworkRecord, open_book, read_networks


class RecordingAgent:
    """Stands in for :class:`runtime.network.agent.Agent`; ``fail`` makes a plug fail."""

    def __init__(self, fail: bool = False) -> None:
        self.asked: list[str] = []
        self.fail = fail

    def call(self, op: str, fds: tuple[int, ...] = (), **args: Any) -> None:
        self.asked.append(op)

    def send(self, op: str, fds: tuple[int, ...] = (), **args: Any) -> None:
        self.asked.append(f"send {op}")

    def result(self, op: str) -> None:
        self.asked.append(f"result {op}")
        if self.fail:
            raise OSError("the pair could not be made")


def keeper(state: Path, agent: RecordingAgent) -> shared._Supervisor:
    (state / shared.CONTAINERS / "web").mkdir(parents=True)
    with open_book(state) as book:
        book.add_network("front", None)
        book.lease("front", "web")
    supervisor = shared._Supervisor(state, shared.bridge_dir(state))
    supervisor.agent = agent  # type: ignore[assignment]
    return supervisor


def wire(supervisor: shared._Supervisor) -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        supervisor._wire({"name": "web", "joins": ["front"], "fresh": True}, fd)
    finally:
        os.close(fd)


def test_a_new_bridge_is_made_before_the_plug(tmp_path: Path) -> None:
    agent = RecordingAgent()
    wire(keeper(tmp_path, agent))
    assert agent.asked == ["links", "send plug", "result plug"]
    assert (tmp_path / shared.BRIDGE_DIR / "dns.json").is_file()


def test_with_its_bridges_there_the_plug_goes_first_and_the_rules_after(tmp_path: Path) -> None:
    agent = RecordingAgent()
    supervisor = keeper(tmp_path, agent)
    supervisor.sync()
    shared.save_forwards(
        supervisor.bdir, [shared.ForwardRecord("web", "tcp", "127.0.0.1", 8080, 80, 20000)]
    )
    agent.asked.clear()
    wire(supervisor)  # the forward's rule is new: loaded after the pair
    assert agent.asked == ["send plug", "result plug", "links"]
    assert supervisor.applied is not None
    assert "dnat to 10.89.0.2:80" in supervisor.applied["ruleset"]


def test_a_failed_plug_still_leaves_rules_and_records_matching_the_book(tmp_path: Path) -> None:
    agent = RecordingAgent(fail=True)
    supervisor = keeper(tmp_path, agent)
    supervisor.sync()
    shared.save_forwards(
        supervisor.bdir, [shared.ForwardRecord("web", "tcp", "127.0.0.1", 8080, 80, 20000)]
    )
    with pytest.raises(OSError, match="could not be made"):
        wire(supervisor)
    assert agent.asked[-1] == "links"
    names = supervisor.records["servers"][0]["names"] if supervisor.records else {}
    assert names == {"web": ["10.89.0.2"]}
    assert netlink.bridge_name("front") in str(supervisor.applied)


class Answered:
    """Stands in for :class:`runtime.network.agent.Direct`."""

    def __init__(self, reply: dict[str, Any] | None) -> None:
        self.reply = reply

    def answer(self) -> dict[str, Any]:
        if self.reply is None:
            raise OSError("no bridge sqb0123456789")
        return self.reply


KEEPER = {"pid": 10, "start_time": 1}


@pytest.mark.parametrize(
    ("agent_said", "through_keeper"),
    [
        ({"ok": True, "keeper": KEEPER}, False),
        ({"ok": True, "keeper": {"pid": 11, "start_time": 2}}, True),  # another keeper's
        (None, True),  # the plug failed: a bridge the sync makes, say
    ],
)
def test_a_direct_plug_counts_only_when_the_agent_of_the_synced_keeper_made_it(
    agent_said: dict[str, Any] | None, through_keeper: bool
) -> None:
    wired: list[str] = []

    def wire() -> dict[str, Any]:
        wired.append("wire")
        return {"ok": True, "keeper": {"pid": 12, "start_time": 3}}

    direct = bridge._Direct(Answered(agent_said), wire)  # type: ignore[arg-type]
    recorded = direct.settled({"ok": True, "keeper": KEEPER})
    assert wired == (["wire"] if through_keeper else [])
    assert recorded["keeper"] == ({"pid": 12, "start_time": 3} if through_keeper else KEEPER)


def test_no_agent_to_take_the_plug_means_the_keeper_wires(tmp_path: Path) -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert shared.plug_directly(tmp_path, {"fresh": True}, fd) is None
    finally:
        os.close(fd)


def test_forwards_go_to_the_address_of_the_spec_s_first_network_not_the_first_lease() -> None:
    """A container leaving network "a" (its lease there not released yet) keeps being
    found at its address on "b", the first network of its spec: the key its namespace is
    held under must not change when the lease on "a" goes."""
    from runtime.network.addresses import NetworkRecord

    networks = {
        "a": NetworkRecord("a", "10.0.1.0/24", leases={"c": "10.0.1.2"}),
        "b": NetworkRecord("b", "10.0.2.0/24", leases={"c": "10.0.2.2"}),
    }
    assert shared._address_of(networks, "c", "b") == "10.0.2.2"
    del networks["a"].leases["c"]
    assert shared._address_of(networks, "c", "b") == "10.0.2.2"
    assert shared._address_of(networks, "c", None) == "10.0.2.2"  # no spec: any lease
    assert shared._address_of(networks, "gone", "b") is None


class RecordingPortHandler:
    """Stands in for :func:`runtime.network.porter.request`: records each request."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, control: Path, op: str, fds: tuple[int, ...] = (), **args: Any) -> Any:
        self.asked.append(op)
        return {"id": porter.FIRST_ID, **args} if op == "bind" else {}


@pytest.fixture
def serving_web(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[shared._Supervisor, RecordingPortHandler]]:
    """A keeper whose port handler listens on a splice forward of container "web"
    (running: its namespace held, the test's own)."""
    state, handler = tmp_path, RecordingPortHandler()
    monkeypatch.setattr(porter, "request", handler)
    supervisor = keeper(state, RecordingAgent())
    forward = shared.ForwardRecord("web", "tcp", "127.0.0.1", 8080, 80, 20000, "splice")
    shared.save_forwards(supervisor.bdir, [forward])
    networks = supervisor.sync()
    ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    pidfd = os.pidfd_open(os.getpid())
    try:
        supervisor._hold(networks, "web", [ns_fd, pidfd])
    finally:
        os.close(ns_fd)
        os.close(pidfd)
    assert handler.asked == ["bind"]
    yield supervisor, handler
    for address in list(supervisor.held):
        supervisor._let_go(address)


def _rename(state: Path, name: str, new_name: str) -> None:
    """What :meth:`runtime.client.linux.LinuxRuntime.rename` does to what a sync reads."""
    with bridge.renaming(state, name, new_name):
        (state / shared.CONTAINERS / name).rename(state / shared.CONTAINERS / new_name)
        with open_book(state) as book:
            book.rename(name, new_name)


def test_a_sync_overtaken_by_a_rename_keeps_the_listener(
    serving_web: tuple[shared._Supervisor, RecordingPortHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync reads the book (its leases under the old name), then the container is
    renamed, then the sync reads the forwards (under the new name): the forward's
    container is nowhere in the book it read. The host port stays bound."""
    supervisor, handler = serving_web

    def renamed_right_after(state: Path) -> dict[str, NetworkRecord]:
        networks = read_networks(state)
        monkeypatch.setattr("runtime.network.shared.read_networks", read_networks)  # once
        _rename(state, "web", "web.2")
        return networks

    monkeypatch.setattr("runtime.network.shared.read_networks", renamed_right_after)
    supervisor.sync()
    supervisor.sync()  # the book and the forwards both renamed
    assert handler.asked == ["bind"]
    assert [r.container for r in shared.load_forwards(supervisor.bdir)] == ["web.2"]
    shared.save_forwards(supervisor.bdir, [])  # told to let go: it does
    supervisor.sync()
    assert handler.asked == ["bind", "unbind"]


def test_a_sync_that_cannot_read_the_forwards_keeps_them(
    serving_web: tuple[shared._Supervisor, RecordingPortHandler],
) -> None:
    """A forwards file that is there but cannot be read (damaged, a failing disk) is
    not "no forwards": the sync keeps its listeners and rewrites nothing."""
    supervisor, handler = serving_web
    path = supervisor.bdir / "forwards.json"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    supervisor.sync()
    assert handler.asked == ["bind"]
    assert path.read_bytes() == whole[: len(whole) // 2]
    path.write_bytes(whole)
    supervisor.sync()
    assert handler.asked == ["bind"]
