"""The nftables ruleset of the shared namespace, as text (what goes out, what comes in,
what is dropped), and the link-layer address a container's interface gets. The rules
themselves are exercised in tests/test_bridge_networks.py."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from runtime.network import bridge, shared
from runtime.network.netlink import mac_of
from runtime.network.nft import Bridge, Dnat, ruleset
from runtime.util.files import write_json_atomic
from runtime.util.processes import ProcessId

OPEN = Bridge("sqbopen", "10.89.0.0/24", "10.89.0.1", internal=False)
SEALED = Bridge("sqbsealed", "10.89.1.0/24", "10.89.1.1", internal=True)


def test_only_networks_that_are_not_internal_go_out() -> None:
    text = ruleset([OPEN, SEALED], [])
    assert "oifname tap0 ip saddr 10.89.0.0/24 masquerade" in text
    assert "iifname sqbopen oifname tap0 accept" in text
    assert "10.89.1.0/24 masquerade" not in text
    assert "iifname sqbsealed oifname tap0" not in text


def test_forwarding_drops_all_but_answers_dnat_and_one_bridge_to_itself() -> None:
    text = ruleset([OPEN, SEALED], [])
    assert "type filter hook forward priority filter; policy drop;" in text
    assert "iifname sqbopen oifname sqbopen accept" in text
    assert "iifname sqbopen oifname sqbsealed" not in text
    assert "iifname sqbsealed ip daddr != 10.89.1.1 drop" in text


def test_a_forward_is_a_dnat_from_its_guest_port() -> None:
    text = ruleset([OPEN], [Dnat("udp", 20001, "10.89.0.7", 53)])
    assert "iifname tap0 udp dport 20001 dnat to 10.89.0.7:53" in text


def test_the_table_is_replaced_whole() -> None:
    lines = ruleset([], []).splitlines()
    assert lines[:3] == ["table ip squish {}", "delete table ip squish", "table ip squish {"]


def test_an_address_has_one_link_layer_address_across_restarts() -> None:
    assert mac_of("10.89.0.2") == "02:42:0a:59:00:02"
    assert mac_of("10.89.0.2") != mac_of("10.89.1.2")


def test_a_keeper_that_hangs_up_without_answering_is_an_oserror(tmp_path: Path) -> None:
    """A keeper killed mid-request closes its end with nothing written: callers (``down``,
    a sync) handle OSError, as the keeper not answering at all is."""
    path = shared.bridge_dir(tmp_path) / "ctl.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def hang_up() -> None:
            connection, _ = server.accept()
            connection.recv(1 << 16)
            connection.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        try:
            with pytest.raises(OSError, match="no answer"):
                shared.call(tmp_path, "sync")
        finally:
            thread.join()


def _keeper_that_hangs_up(
    state: Path, started: list[subprocess.Popen[bytes]], dies: bool
) -> threading.Thread:
    """A keeper (two ``sleep`` processes as its supervisor and slirp4netns) that hangs
    up on the next request; with ``dies`` its supervisor is killed first, as a keeper
    killed mid-request is."""
    supervisor = subprocess.Popen(["sleep", "600"])
    started.append(supervisor)
    started.append(subprocess.Popen(["sleep", "600"]))
    keeper = {
        key: ProcessId.of(process.pid).to_json()  # type: ignore[union-attr]
        for key, process in zip(("supervisor", "slirp"), started, strict=True)
    }
    write_json_atomic(shared.bridge_dir(state) / "keeper.json", keeper)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(shared.bridge_dir(state) / "ctl.sock"))
    server.listen(1)

    def hang_up() -> None:
        with server:
            connection, _ = server.accept()
            connection.recv(1 << 16)
            if dies:
                supervisor.kill()
                supervisor.wait()
            connection.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    return thread


def test_a_sync_whose_keeper_dies_mid_call_does_not_fail_the_caller(
    tmp_path: Path, started_here: list[subprocess.Popen[bytes]]
) -> None:
    """The address book is already right (callers change it first): the next keeper
    syncs from it when it starts."""
    thread = _keeper_that_hangs_up(tmp_path, started_here, dies=True)
    bridge.sync_if_running(tmp_path)
    thread.join()


def test_a_living_keeper_that_hangs_up_still_fails_the_sync(
    tmp_path: Path, started_here: list[subprocess.Popen[bytes]]
) -> None:
    thread = _keeper_that_hangs_up(tmp_path, started_here, dies=False)
    with pytest.raises(OSError, match="no answer"):
        bridge.sync_if_running(tmp_path)
    thread.join()
