"""The network driver interface, in the parts that need no namespace: which driver serves
each mode, what each writes into a container's /etc, what ``NoNetwork`` refuses, that
slirp4netns forwards go to the container folder's API socket, and the sandbox fallback."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.api.spec import ContainerSpec, RootfsRef
from runtime.client.binds import etc_contents
from runtime.errors import HostSetupError, PortInUse, PortPrivileged, SlirpError
from runtime.network import shared, slirp
from runtime.network.bridge import BridgeDriver
from runtime.network.driver import NoNetwork, Slirp4netnsDriver, driver_for
from runtime.network.ports import unprivileged_port_start
from runtime.util.jsonsock import read_to_eof
from runtime.util.processes import ProcessId
from runtime.wire import Forward, LaunchRequest
from tests.support import host_without_tun

FORWARD = Forward(proto="tcp", host_addr="127.0.0.1", host_port=8080, guest_port=80)


def spec(network: str, **fields: Any) -> ContainerSpec:
    return ContainerSpec(
        name="web",
        rootfs=RootfsRef(kind="busybox", version="builtin"),
        argv=("true",),
        network=network,
        **fields,
    )


def request(network: str) -> LaunchRequest:
    return LaunchRequest(
        name="web", container_dir="/state/web", rootfs="/r", argv=("true",), network=network
    )


def test_each_mode_has_its_driver_from_a_spec_a_request_or_the_mode() -> None:
    for network, kind in (("slirp4netns", Slirp4netnsDriver), ("none", NoNetwork)):
        for container in (spec(network), request(network), network):
            driver = driver_for(container)
            assert isinstance(driver, kind) and driver.name == network
    for container in (request("bridge"), "bridge"):
        assert isinstance(driver_for(container), BridgeDriver)
    with pytest.raises(ValueError, match="no network driver for 'macvlan'"):
        driver_for("macvlan")


def test_the_etc_files_name_the_drivers_addresses() -> None:
    slirp_etc = etc_contents(spec("slirp4netns", hostname="box"))
    assert slirp_etc["resolv.conf"] == f"nameserver {slirp.DNS_ADDR}\n"
    assert f"{slirp.CONTAINER_ADDR}\tbox\n" in slirp_etc["hosts"]
    none_etc = etc_contents(spec("none"))
    assert none_etc["resolv.conf"] == ""
    assert none_etc["hosts"].endswith("127.0.1.1\tweb\n")


def test_no_network_starts_nothing_and_refuses_forwards(tmp_path: Path) -> None:
    none = driver_for("none")
    assert none.start(tmp_path, True, target_pid=1, netns_fd=-1, exit_fd=-1)() == (None, [])
    with pytest.raises(SlirpError, match="no network to forward ports into"):
        none.start(tmp_path, True, target_pid=1, netns_fd=-1, exit_fd=-1, forwards=[FORWARD])()
    assert not none.has_helper and none.sockets == ()
    with pytest.raises(SlirpError, match="'web': network = \"none\" has no network"):
        none.forwards(tmp_path, "web")
    with pytest.raises(SlirpError, match='port 8080: network = "none"'):
        none.ensure_port_free(FORWARD)
    with pytest.raises(SlirpError):
        none.restart(tmp_path, True, netns_fd=-1, exit_fd=-1)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """A stand-in slirp4netns API on the container folder's socket: it answers
    ``add_hostfwd`` with id 7, ``list_hostfwd`` with one forward, and records requests."""
    seen: list[dict[str, Any]] = []
    replies = {
        "add_hostfwd": {"return": {"id": 7}},
        "remove_hostfwd": {"return": {}},
        "list_hostfwd": {
            "entries": [
                {
                    "id": 7,
                    "proto": "tcp",
                    "host_addr": "127.0.0.1",
                    "host_port": 8080,
                    "guest_addr": slirp.CONTAINER_ADDR,
                    "guest_port": 80,
                }
            ]
        },
    }
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "slirp.sock"))
    server.listen()

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                raw = read_to_eof(conn, 1 << 16)
                if not raw:  # the fixture's own empty connection: done
                    return
                seen.append(json.loads(raw))
                conn.sendall(json.dumps(replies[seen[-1]["execute"]]).encode())

    thread = threading.Thread(target=serve)
    thread.start()
    yield seen
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as last:
        last.connect(str(tmp_path / "slirp.sock"))
    thread.join()
    server.close()


def test_slirp4netns_forwards_use_the_folders_api_socket(
    tmp_path: Path, api: list[dict[str, Any]]
) -> None:
    forwards = driver_for("slirp4netns").forwards(tmp_path, "web")
    assert forwards.add(FORWARD) == 7
    [live] = forwards.list()
    assert (live.id, live.forward) == (7, FORWARD)
    assert forwards.find(FORWARD) == live
    forwards.remove(7)
    assert [r["execute"] for r in api] == [
        "add_hostfwd",
        "list_hostfwd",
        "list_hostfwd",
        "remove_hostfwd",
    ]
    assert api[0]["arguments"]["guest_addr"] == slirp.CONTAINER_ADDR
    assert api[-1]["arguments"] == {"id": 7}


@pytest.mark.parametrize("failure", [SlirpError("no seccomp here"), TimeoutError("slow")])
def test_slirp4netns_starts_again_unsandboxed_where_the_sandbox_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    tries: list[bool] = []
    me = ProcessId.of(1)
    assert me is not None
    broken = {True}  # which sandbox settings fail

    def spawn(cdir: Path, sandbox: bool, timeout: float, **where: int) -> ProcessId:
        tries.append(sandbox)
        if sandbox in broken:
            raise failure
        return me

    monkeypatch.setattr(slirp, "spawn", spawn)
    driver = driver_for("slirp4netns")
    assert driver.start(tmp_path, True, target_pid=42, netns_fd=9, exit_fd=5)() == (me, [])
    assert driver.restart(tmp_path, True, netns_fd=9, exit_fd=5) is me
    assert tries == [True, False, True, False]
    tries.clear()
    broken.add(False)
    with pytest.raises(type(failure)):
        driver.start(tmp_path, False, target_pid=42, netns_fd=9, exit_fd=5)()
    with pytest.raises(type(failure)):
        driver.start(tmp_path, True, target_pid=42, netns_fd=9, exit_fd=5)()
    assert tries == [False, True, False]


def test_slirp4netns_needs_the_tun_device_as_well_as_its_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tun = host_without_tun(tmp_path, monkeypatch)
    with pytest.raises(HostSetupError, match=f"{tun} cannot be opened") as raised:
        driver_for("slirp4netns").check_host()
    assert "chmod 0666" in raised.value.fix
    NoNetwork().check_host()  # no helper, no device


def test_the_first_unprivileged_port_is_read_from_the_sysctl(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("80\n")
    assert unprivileged_port_start(sysctl) == 80
    sysctl.write_text("garbage\n")
    assert unprivileged_port_start(sysctl) == 1024  # the kernel's default
    assert unprivileged_port_start(tmp_path / "missing") == 1024


def test_a_privileged_port_error_names_the_sysctl_its_value_and_the_fix() -> None:
    error = PortPrivileged("127.0.0.1", 80, "tcp", 1024)
    assert isinstance(error, PermissionError)
    assert str(error) == (
        "host port 127.0.0.1:80/tcp is privileged on this host "
        "(net.ipv4.ip_unprivileged_port_start is 1024); fix: as root: "
        "sysctl net.ipv4.ip_unprivileged_port_start=80 (now 1024), "
        "or choose a host port from 1024 up"
    )
    assert (error.host_port, error.unprivileged_start) == (80, 1024)


def test_a_bridge_start_whose_port_another_container_holds_is_port_in_use(
    tmp_path: Path,
) -> None:
    """A bridge container's forwards are recorded on the way to its wiring: a host port
    another container's record holds is refused as PortInUse, naming that container
    (not as a failure to join its networks), and nothing of it stays recorded."""
    cdir = tmp_path / "containers" / "web"
    cdir.mkdir(parents=True)
    (cdir / "spec.json").write_text(json.dumps({"networks": [{"network": "front"}]}))
    bdir = shared.bridge_dir(tmp_path)
    held = shared.ForwardRecord("other", "tcp", "127.0.0.1", 8080, 80, 20000, "splice")
    shared.save_forwards(bdir, [held])
    netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(PortInUse, match="container 'other'"):
            driver_for("bridge").start(
                cdir, True, target_pid=os.getpid(), netns_fd=netns, exit_fd=-1, forwards=[FORWARD]
            )
    finally:
        os.close(netns)
    assert shared.load_forwards(bdir) == [held]
