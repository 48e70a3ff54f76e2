"""The keeper's side of a wire, with a fake agent that records what it is asked: the
plug goes out before the rules are worked out, the rules follow the book whether or not
the plug worked, and a bridge new to the namespace is made before the plug; and the
launcher's side of a plug sent to the agent directly: it counts only when the agent of
the keeper that synced made it, else the keeper wires."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from runtime.network import bridge, netlink, shared
from runtime.network.addresses import open_book


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
