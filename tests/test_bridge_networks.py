"""Bridge networks end to end: real namespaces, veth pairs, the shared slirp4netns and
nftables, busybox inside. Containers on one network reach each other by address; other
networks cannot; forwards from the host reach bridge containers, move live and come back
when the shared slirp4netns is killed; nothing is left once everything is removed."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from runtime.api.interface import ContainerInfo
from runtime.api.spec import (
    BindMount,
    ContainerSpec,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
    RootfsRef,
)
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerStartError
from runtime.network import bridge, shared
from runtime.network.addresses import AddressBook, open_book
from runtime.network.netlink import mac_of
from runtime.network.slirp import LiveForward
from runtime.sandbox import syscalls as sc
from runtime.util.processes import ProcessId
from tests.conftest import rootless, short_folder
from tests.support import (
    built_static,
    free_port,
    http_get,
    http_refused,
    in_child,
    processes_mentioning,
    remove_everything,
)
from tests.test_reconciler_e2e import eventually

pytestmark = rootless

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def on(*networks: str) -> dict[str, object]:
    return {
        "network": "bridge",
        "networks": tuple(NetworkAttachment(network=n) for n in networks),
    }


def web(name: str, site: Path, *networks: str, **fields: object) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=("httpd", "-f", "-p", "80", "-h", "/site"),
        binds=(BindMount(source=str(site), target="/site"),),
        **on(*networks),
        **fields,
    )


def serving(rt: LinuxRuntime, *names: str) -> None:
    """Wait until each container's httpd accepts connections."""
    for name in names:
        eventually(partial(rt.probe_tcp, name, 80), f"{name}'s httpd listening")


def fetch(rt: LinuxRuntime, name: str, address: str, port: int = 80) -> str:
    """The body ``name`` gets from http://address:port/ (``unreachable`` when nothing).
    With nc: busybox wget run through ``exec_command`` crashes (SIGSEGV) here, on every
    network mode."""
    request = r"printf 'GET / HTTP/1.0\r\n\r\n'"
    script = (
        f"{request} | nc -w 2 {address} {port} 2>/dev/null | tail -n 1 | grep . || echo unreachable"
    )
    result = rt.exec_command(name, ("/bin/sh", "-c", script), timeout=10)
    return result.output.strip()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("hello over the bridge\n")
    return root


def test_containers_on_one_network_reach_each_other_and_not_another(
    nets: LinuxRuntime, site: Path
) -> None:
    a = nets.run(web("ba", site, "front"))
    b = nets.run(web("bb", site, "front"))
    c = nets.run(web("bc", site, "back"))
    serving(nets, "ba", "bb", "bc")
    assert a.addresses["front"] != b.addresses["front"]
    assert fetch(nets, "ba", b.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "bb", a.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "bc", a.addresses["front"]) == "unreachable"
    assert fetch(nets, "ba", c.addresses["back"]) == "unreachable"


def test_bridge_interfaces_carry_frames_as_large_as_the_loopback_nearly(
    nets: LinuxRuntime, site: Path
) -> None:
    """1500-byte frames held a container-to-container transfer at 3/4 of loopback."""
    nets.run(web("mt", site, "front", "back"))
    script = "cat /sys/class/net/eth0/mtu /sys/class/net/eth1/mtu"
    assert nets.exec_command("mt", ("/bin/sh", "-c", script)).output.split() == ["65520"] * 2


def test_inside_ends_carry_the_link_layer_address_of_their_lease(
    nets: LinuxRuntime, site: Path
) -> None:
    """Derived from the address, so a container started again keeps it (peers' ARP
    caches stay right)."""
    info = nets.run(web("mc", site, "front", "back"))
    script = "cat /sys/class/net/eth0/address /sys/class/net/eth1/address"
    found = nets.exec_command("mc", ("/bin/sh", "-c", script)).output.split()
    assert found == [mac_of(info.addresses["front"]), mac_of(info.addresses["back"])]


def test_a_container_on_two_networks_reaches_both(nets: LinuxRuntime, site: Path) -> None:
    front = nets.run(web("tf", site, "front"))
    back = nets.run(web("tb", site, "back"))
    both = nets.run(web("t2", site, "front", "back"))
    serving(nets, "tf", "tb", "t2")
    assert set(both.addresses) == {"front", "back"}
    assert fetch(nets, "t2", front.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "t2", back.addresses["back"]) == "hello over the bridge"
    assert fetch(nets, "t2", "tb") == "hello over the bridge"  # asks front's gateway
    assert fetch(nets, "t2", "tf") == "hello over the bridge"
    assert fetch(nets, "tb", "tf") == "unreachable"  # not a name on its network


def test_a_forward_to_a_bridge_container_answers_and_moves_live(
    nets: LinuxRuntime, site: Path
) -> None:
    first, second = free_port(), free_port()
    before = nets.run(web("fw", site, "front", ports=(PortMapping(container=80, host=first),)))
    assert http_get(first, "/index.html") == b"hello over the bridge\n"
    nets.add_port("fw", PortMapping(container=80, host=second))
    after = nets.remove_port("fw", PortMapping(container=80, host=first))
    assert http_get(second, "/index.html") == b"hello over the bridge\n"
    assert http_refused(first)
    assert (after.pid, after.pid_start_time) == (before.pid, before.pid_start_time)
    assert after.ports == (PortMapping(container=80, host=second),)


def test_listing_asks_the_shared_slirp4netns_once_for_every_container(
    nets: LinuxRuntime, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each answer lists every container's forwards: asking once per container made
    observing a fleet (every pass, every ``status``) quadratic in its size."""
    ports = {f"lf{n}": PortMapping(container=80, host=free_port()) for n in range(3)}
    for name, port in ports.items():
        nets.run(web(name, site, "front", ports=(port,)))
    asked: list[Path] = []
    live = bridge.live_forwards

    def counted(state: Path) -> dict[str, list[LiveForward]]:
        asked.append(state)
        return live(state)

    monkeypatch.setattr(bridge, "live_forwards", counted)
    monkeypatch.setattr(nets, "forward_check_interval", 0.0)  # every listing asks
    listed = {info.name: info.ports for info in nets.list()}
    assert listed == {name: (port,) for name, port in ports.items()}
    assert len(asked) == 1


def test_a_killed_shared_slirp4netns_comes_back_with_every_forward(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    ports = free_port(), free_port()
    for name, port in zip(("k1", "k2"), ports, strict=True):
        nets.run(web(name, site, "front", ports=(PortMapping(container=80, host=port),)))
        assert http_get(port, "/index.html") == b"hello over the bridge\n"
    old = shared.slirp_identity(state_path)
    assert old is not None and nets.inspect("k1").slirp_pid == old.pid
    old.send(signal.SIGKILL)
    for port in ports:
        assert http_get(port, "/index.html") == b"hello over the bridge\n"
    new = shared.slirp_identity(state_path)
    assert new is not None and new != old
    assert nets.inspect("k2").ports == (PortMapping(container=80, host=ports[1]),)


def test_a_start_that_fails_leaves_its_host_ports_to_others(nets: LinuxRuntime, site: Path) -> None:
    """Its forwards are recorded while it is wired, before its command is known not to
    start: they go with the failure, and another container can have the port."""
    port = PortMapping(container=80, host=free_port())
    broken = web("fa", site, "front", ports=(port,))
    nets.create(broken.model_copy(update={"argv": ("/no/such/command",)}))
    with pytest.raises(ContainerStartError):
        nets.start("fa")
    nets.run(web("fb", site, "front", ports=(port,)))
    assert http_get(port.host, "/index.html") == b"hello over the bridge\n"


def test_a_keeper_whose_slirp4netns_cannot_start_again_lives_on_and_tries_again(
    site: Path, tmp_path: Path, cache_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slirp4netns killed, and refused twice when the keeper starts it again: the keeper
    (and with it the namespace, every container's interfaces and forwards) lives on, and
    starts it once it can. A slirp4netns of the test's own in PATH refuses while told to."""
    real = shutil.which("slirp4netns")
    assert real is not None
    bin_dir, refuse, calls = tmp_path / "bin", tmp_path / "refuse", tmp_path / "calls"
    bin_dir.mkdir()
    wrapper = bin_dir / "slirp4netns"
    wrapper.write_text(
        f'#!/bin/sh\necho $$ >> {calls}\n[ -e {refuse} ] && exit 1\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def started() -> int:
        return len(calls.read_text().split()) if calls.exists() else 0

    with short_folder("sqk") as state:
        rt = LinuxRuntime(state=state, cache=cache_path)
        try:
            port = free_port()
            rt.run(web("k1", site, "front", ports=(PortMapping(container=80, host=port),)))
            assert http_get(port, "/index.html") == b"hello over the bridge\n"
            keeper, old = shared._keeper(state)["supervisor"], shared.slirp_identity(state)
            assert old is not None and old.to_json() != keeper
            before = started()
            refuse.touch()
            old.send(signal.SIGKILL)
            eventually(lambda: started() >= before + 3, "two refused starts, then a try again")
            refuse.unlink()

            def serving() -> ProcessId | None:  # the keeper itself while it has none
                now = shared.slirp_identity(state)
                return (
                    now
                    if now is not None and now.to_json() not in (old.to_json(), keeper)
                    else None
                )

            new = eventually(serving, "slirp4netns started again")
            assert new.alive()
            assert shared._keeper(state)["supervisor"] == keeper and shared.supervisor_alive(state)
            assert http_get(port, "/index.html") == b"hello over the bridge\n"
        finally:
            remove_everything(rt)
            rt.shutdown()


def test_an_internal_network_has_no_way_out(nets: LinuxRuntime, site: Path) -> None:
    nets.ensure_network(NetworkSpec(name="sealed", internal=True))
    nets.run(web("in", site, "sealed"))
    nets.run(web("out", site, "front"))
    route = "ip route; ping -c 1 -W 2 10.0.2.2 >/dev/null 2>&1 && echo way-out || echo no-way"
    inside = nets.exec_command("in", ("/bin/sh", "-c", route)).output
    outside = nets.exec_command("out", ("/bin/sh", "-c", route)).output
    assert "default" not in inside and "no-way" in inside
    assert "default via" in outside and "way-out" in outside


def test_nothing_is_left_after_removing_everything(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    nets.run(web("l1", site, "front", ports=(PortMapping(container=80, host=free_port()),)))
    nets.run(web("l2", site, "back"))
    keeper = json.loads((state_path / shared.BRIDGE_DIR / "keeper.json").read_text())
    processes = [ProcessId.from_json(keeper[key]) for key in ("supervisor", "agent", "slirp")]
    agent = processes[1]
    assert agent is not None
    shared_ns = os.stat(f"/proc/{agent.pid}/ns/net").st_ino
    for name in ("l1", "l2"):
        nets.remove(name, force=True)
    for network in nets.list_networks():
        nets.remove_network(network.name)
    for process in processes:  # the keeper, the namespace's agent, the slirp4netns
        assert process is not None and process.wait_gone(5.0)
    assert not processes_mentioning(str(state_path / shared.BRIDGE_DIR))
    assert shared_ns not in _network_namespaces_in_use()  # and with it every veth pair
    assert nets.list_networks() == []
    assert not (state_path / shared.BRIDGE_DIR / "keeper.json").exists()


def _network_namespaces_in_use() -> set[int]:
    """Network namespaces our processes are in or hold a descriptor of."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found.add(os.stat(entry / "ns" / "net").st_ino)
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        found.update(int(link[5:-1]) for link in links if link.startswith("net:["))
    return found


def test_a_running_container_connects_and_disconnects_live(nets: LinuxRuntime, site: Path) -> None:
    back = nets.run(web("lb", site, "back"))
    before = nets.run(web("lc", site, "front"))
    serving(nets, "lb", "lc")
    assert fetch(nets, "lc", back.addresses["back"]) == "unreachable"
    joined = nets.connect("lc", NetworkAttachment(network="back"))
    assert set(joined.addresses) == {"front", "back"}
    assert fetch(nets, "lc", back.addresses["back"]) == "hello over the bridge"
    assert fetch(nets, "lb", joined.addresses["back"]) == "hello over the bridge"
    interfaces = nets.exec_command("lc", ("/bin/sh", "-c", "ls /sys/class/net")).output.split()
    assert sorted(interfaces) == ["eth0", "eth1", "lo"]
    left = nets.disconnect("lc", "back")
    assert set(left.addresses) == {"front"}
    assert fetch(nets, "lc", back.addresses["back"]) == "unreachable"
    assert (left.pid, left.pid_start_time) == (before.pid, before.pid_start_time)
    assert {n.name: sorted(n.containers) for n in nets.list_networks()} == {
        "back": ["lb"],
        "front": ["lc"],
    }


def test_leaving_the_first_network_live_moves_dns_and_hosts_to_the_next(
    nets: LinuxRuntime, site: Path
) -> None:
    """Its resolv.conf named the gateway of a network it had left: no name answered."""
    nets.run(web("db", site, "back"))
    nets.run(web("fe", site, "front", "back"))
    serving(nets, "db", "fe")
    assert fetch(nets, "fe", "db") == "hello over the bridge"
    left = nets.disconnect("fe", "front")
    gateway = {n.name: n.gateway for n in nets.list_networks()}["back"]
    etc = nets.exec_command("fe", ("cat", "/etc/resolv.conf", "/etc/hosts")).output
    assert f"nameserver {gateway}" in etc.splitlines()
    assert f"{left.addresses['back']}\tfe" in etc.splitlines()
    assert fetch(nets, "fe", "db") == "hello over the bridge"
    joined = nets.connect("fe", NetworkAttachment(network="front"))
    assert joined.pid == left.pid
    assert f"nameserver {gateway}" in nets.exec_command("fe", ("cat", "/etc/resolv.conf")).output


def test_addresses_are_never_handed_out_twice_across_a_holder_restart(
    nets: LinuxRuntime, site: Path
) -> None:
    first = nets.run(web("h1", site, "front"))
    holder = nets.holder.identity()
    assert holder is not None and holder.send(signal.SIGKILL) and holder.wait_gone(30.0)
    second = nets.run(web("h2", site, "front"))
    serving(nets, "h1", "h2")
    assert first.addresses["front"] != second.addresses["front"]
    assert fetch(nets, "h2", first.addresses["front"]) == "hello over the bridge"
    nets.remove("h1", force=True)
    third = nets.run(web("h3", site, "front"))
    assert third.addresses["front"] not in {second.addresses["front"]}


def test_resolv_conf_names_the_gateway_and_the_records_name_everyone(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    nets.ensure_network(NetworkSpec(name="quiet", dns=False))
    aliased = {
        "network": "bridge",
        "networks": (NetworkAttachment(network="front", aliases=("www",)),),
    }
    spec = ContainerSpec(name="dn", rootfs=BUSYBOX, argv=("httpd", "-f", "-p", "80"), **aliased)
    info = nets.run(spec)
    nets.run(web("dq", site, "quiet"))
    front = {n.name: n for n in nets.list_networks()}["front"]
    resolv = nets.exec_command("dn", ("cat", "/etc/resolv.conf")).output
    assert resolv == f"nameserver {front.gateway}\n"
    assert nets.exec_command("dq", ("cat", "/etc/resolv.conf")).output == "nameserver 10.0.2.3\n"
    records = json.loads((state_path / shared.BRIDGE_DIR / "dns.json").read_text())
    servers = {server["listen"]: server for server in records["servers"]}
    assert set(servers) == {front.gateway}  # none for the network without DNS
    address = info.addresses["front"]
    assert servers[front.gateway]["names"] == {"dn": [address], "www": [address]}
    assert servers[front.gateway]["upstream"] == ["10.0.2.3"]


@pytest.mark.skipif(
    importlib.util.find_spec("runtime.network.dnsserver") is None,
    reason="the DNS responder (runtime.network.dnsserver) is not in this tree",
)
def test_containers_find_each_other_by_name(nets: LinuxRuntime, site: Path) -> None:
    server = nets.run(web("named", site, "front"))
    nets.run(web("asker", site, "front"))
    serving(nets, "named", "asker")
    answer = nets.exec_command("asker", ("nslookup", "named")).output
    assert server.addresses["front"] in answer
    assert fetch(nets, "asker", "named") == "hello over the bridge"


def test_a_forward_moves_between_bridge_containers(nets: LinuxRuntime, tmp_path: Path) -> None:
    sites = []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / "index.html").write_text(f"{name}\n")
        sites.append(root)
    port = free_port()
    mapping = PortMapping(container=80, host=port)
    nets.run(web("mv1", sites[0], "front", ports=(mapping,)))
    target = nets.run(web("mv2", sites[1], "front"))
    assert http_get(port, "/index.html") == b"one\n"
    nets.move_port("mv1", "mv2", mapping)
    assert http_get(port, "/index.html") == b"two\n"
    moved = nets.inspect("mv2")
    assert moved.ports == (mapping,) and nets.inspect("mv1").ports == ()
    assert (moved.pid, moved.pid_start_time) == (target.pid, target.pid_start_time)


def test_a_dead_keeper_is_healed_by_wiring_every_container_again(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    port = free_port()
    one = nets.run(web("r1", site, "front", ports=(PortMapping(container=80, host=port),)))
    two = nets.run(web("r2", site, "front"))
    serving(nets, "r1", "r2")
    keeper = json.loads((state_path / shared.BRIDGE_DIR / "keeper.json").read_text())
    supervisor = ProcessId.from_json(keeper["supervisor"])
    assert supervisor is not None and supervisor.send(signal.SIGKILL)
    assert supervisor.wait_gone(5.0)
    assert nets.inspect("r1").slirp_pid is None  # what the reconciler's heal looks for
    healed = nets.restore_network("r1")
    assert healed.slirp_pid is not None
    assert nets.inspect("r2").slirp_pid is None  # the new namespace has no way to it yet
    assert nets.restore_network("r2").slirp_pid == healed.slirp_pid
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    assert fetch(nets, "r2", one.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "r1", two.addresses["front"]) == "hello over the bridge"
    assert nets.inspect("r1").pid == one.pid


def test_a_killed_namespace_agent_takes_its_keeper_along_and_is_healed_the_same_way(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    """The agent holds the shared namespace: when it dies the networks are gone, and
    the keeper must not go on as if they were there (a reader would see a network)."""
    port = free_port()
    one = nets.run(web("a1", site, "front", ports=(PortMapping(container=80, host=port),)))
    two = nets.run(web("a2", site, "front"))
    serving(nets, "a1", "a2")
    keeper = json.loads((state_path / shared.BRIDGE_DIR / "keeper.json").read_text())
    agent = ProcessId.from_json(keeper.get("agent", keeper.get("pinner")))
    supervisor = ProcessId.from_json(keeper["supervisor"])
    assert agent is not None and supervisor is not None and agent.send(signal.SIGKILL)
    assert supervisor.wait_gone(5.0)
    assert nets.inspect("a1").slirp_pid is None  # what the reconciler's heal looks for
    assert nets.restore_network("a1").slirp_pid is not None
    assert nets.restore_network("a2").slirp_pid is not None
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    assert fetch(nets, "a2", one.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "a1", two.addresses["front"]) == "hello over the bridge"
    assert nets.inspect("a1").pid == one.pid


def test_a_stopped_bridge_container_starts_again_with_its_address_and_forward(
    nets: LinuxRuntime, site: Path
) -> None:
    port = free_port()
    first = nets.run(web("again", site, "front", ports=(PortMapping(container=80, host=port),)))
    peer = nets.run(web("peer", site, "front"))
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    serving(nets, "again", "peer")
    assert fetch(nets, "peer", first.addresses["front"]) == "hello over the bridge"
    nets.stop("again")
    assert http_refused(port)  # its forward went with it
    second = nets.start("again")
    assert second.pid != first.pid and second.addresses == first.addresses
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    serving(nets, "again")
    assert fetch(nets, "peer", first.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "again", peer.addresses["front"]) == "hello over the bridge"


def _networks_held_by(pid: int) -> dict[str, Path]:
    """The network namespaces process ``pid`` holds a descriptor of, by name
    (``net:[inode]``): the container's own init cannot be looked into (it is not
    dumpable), the keeper, which holds each running container's, can."""
    found = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (link := os.readlink(fd)).startswith("net:["):
                found[link] = fd
    return found


def _speak_from(namespaces: tuple[int, int], address: str) -> None:
    """One datagram to ``address`` from the network namespace of ``namespaces`` (and so a
    frame from its interface onto the bridge: the datagram, or the ARP request before
    it)."""
    user, net = namespaces

    def speak() -> dict[str, object]:
        sc.setns(user, sc.CLONE_NEWUSER)
        sc.setns(net, sc.CLONE_NEWNET)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"here", (address, 9))
        return {}

    result = in_child(speak)
    assert "crashed" not in result, result["crashed"]


def test_a_bridge_container_started_again_is_reached_by_peers_while_its_old_pair_lingers(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    """The kernel deletes an ended namespace's veth pair in its own time (seconds on a
    busy machine). Held open here, the old namespace keeps its pair on the bridge, with
    the lease's link-layer address, and even sends a frame from it after the start: its
    peers reach the new container all the same."""
    first = nets.run(web("linger", site, "front"))
    peer = nets.run(web("lpeer", site, "front"))
    serving(nets, "linger", "lpeer")
    address = first.addresses["front"]
    assert fetch(nets, "lpeer", address) == "hello over the bridge"  # the bridge learns its port
    keeper = json.loads((state_path / shared.BRIDGE_DIR / "keeper.json").read_text())
    supervisor = ProcessId.from_json(keeper["supervisor"])
    assert supervisor is not None
    user = os.open(f"/proc/{supervisor.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    held = {
        name: os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        for name, path in _networks_held_by(supervisor.pid).items()
    }
    try:
        nets.stop("linger")
        assert nets.start("linger").addresses == first.addresses
        serving(nets, "linger")
        let_go = set(held) - set(_networks_held_by(supervisor.pid))
        (old,) = (held[name] for name in let_go)  # the ended container's
        _speak_from((user, old), peer.addresses["front"])
        assert fetch(nets, "lpeer", address) == "hello over the bridge"
    finally:
        for fd in (user, *held.values()):
            os.close(fd)


def test_a_renamed_bridge_container_keeps_its_forward_and_answers_to_its_new_name(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    port = free_port()
    mapping = PortMapping(container=80, host=port)
    first = nets.run(web("web.next", site, "front", ports=(mapping,)))
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    renamed = nets.rename("web.next", "web")
    assert renamed.ports == (mapping,) and renamed.addresses == first.addresses
    nets.run(web("other", site, "front"))  # the keeper syncs its rules again
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    records = json.loads((state_path / shared.BRIDGE_DIR / "dns.json").read_text())
    (server,) = records["servers"]
    assert server["names"]["web"] == [first.addresses["front"]]
    assert "web.next" not in server["names"]


def _forwards_lock_free(state: Path) -> bool:
    """Whether a keeper's sync could take the forwards file's lock now."""
    fd = os.open(shared.bridge_dir(state) / "forwards.lock", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (a lock taken goes with it)
    return True


def test_a_sync_at_any_step_of_a_rename_keeps_the_forward(
    nets: LinuxRuntime, site: Path, state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client's sync comes before and after the rename moves the leases (after
    the folder moved, before the forwards do): at once when it can run then, else it
    is asked then and answered after. The forward is neither dropped nor let go."""
    port = free_port()
    nets.run(web("web.next", site, "front", ports=(PortMapping(container=80, host=port),)))
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    later: list[shared.Asked] = []

    def sync_now() -> None:
        if _forwards_lock_free(state_path):
            shared.call(state_path, "sync")
        else:
            later.append(shared.ask(state_path, "sync"))

    @contextlib.contextmanager
    def synced_around(state: Path) -> Iterator[AddressBook]:
        sync_now()
        with open_book(state) as book:
            yield book
        sync_now()

    monkeypatch.setattr("runtime.client.linux.open_book", synced_around)
    nets.rename("web.next", "web")
    monkeypatch.undo()
    for asked in later:
        asked.answer()
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    records = shared.load_forwards(shared.bridge_dir(state_path))
    assert [(r.container, r.host_port) for r in records] == [("web", port)]


def test_a_shared_slirp4netns_dying_while_inspected_never_reads_as_a_lost_network(
    nets: LinuxRuntime, site: Path, state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """slirp4netns killed (and reaped by the keeper) right after inspect found it alive:
    inspect said it had no helper (a lost network, which the reconciler heals), as it
    checked the helper's life a second time."""
    nets.run(web("kept", site, "front", ports=(PortMapping(container=80, host=free_port()),)))
    found = shared.slirp_identity

    def found_then_killed(state: Path, wired_to: object = None) -> ProcessId | None:
        helper = found(state, wired_to)
        if helper is not None and helper.to_json() != shared._keeper(state)["supervisor"]:
            assert helper.send(signal.SIGKILL) and helper.wait_gone(30.0)
        return helper

    monkeypatch.setattr(shared, "slirp_identity", found_then_killed)
    assert nets.inspect("kept").slirp_pid is not None
    monkeypatch.undo()
    eventually(lambda: shared.slirp_identity(state_path), "the keeper's slirp4netns again")


def test_a_restarting_shared_slirp4netns_never_reads_as_a_lost_network(
    nets: LinuxRuntime, site: Path, state_path: Path
) -> None:
    port = free_port()
    mapping = PortMapping(container=80, host=port)
    nets.run(web("kept", site, "front", ports=(mapping,)))
    old = shared.slirp_identity(state_path)
    assert old is not None and old.send(signal.SIGKILL)
    seen: list[ContainerInfo] = []
    while not seen or seen[-1].slirp_pid == old.pid:  # until the keeper's new one shows
        seen.append(nets.inspect("kept"))
    # what the reconciler reads: no lost network to heal, the forward still there
    assert [info.slirp_pid for info in seen if info.slirp_pid is None] == []
    assert seen[-1].ports == (mapping,)
    assert http_get(port, "/index.html") == b"hello over the bridge\n"


def test_a_container_taking_a_renamed_ones_old_name_leaves_its_interfaces_alone(
    nets: LinuxRuntime, site: Path
) -> None:
    port = free_port()
    nets.run(web("swap", site, "front", ports=(PortMapping(container=80, host=port),)))
    assert http_get(port, "/index.html") == b"hello over the bridge\n"
    retired = nets.rename("swap", "swap.old")
    fresh = nets.run(web("swap", site, "front"))
    serving(nets, "swap")
    assert http_get(port, "/index.html") == b"hello over the bridge\n"  # still swap.old's
    assert fetch(nets, "swap", retired.addresses["front"]) == "hello over the bridge"
    assert fetch(nets, "swap.old", fresh.addresses["front"]) == "hello over the bridge"


def test_killed_holders_leave_bridge_containers_to_the_next_one(
    nets: LinuxRuntime, site: Path
) -> None:
    """A holder that joined the containers' user namespace dies too; the shared
    slirp4netns is killed meanwhile: each next holder still serves every request."""
    port = free_port()
    nets.run(web("hk", site, "front", ports=(PortMapping(container=80, host=port),)))
    serving(nets, "hk")
    for _ in range(3):
        holder = nets.holder.identity()
        assert holder is not None
        assert holder.send(signal.SIGKILL)
        assert holder.wait_gone(30.0)
        (info,) = nets.list()
        slirp4netns = ProcessId.of(info.slirp_pid or 0)
        assert slirp4netns is not None and slirp4netns.send(signal.SIGKILL)
        ran = nets.exec_command("hk", ["cat", "/site/index.html"])
        assert (ran.exit_code, ran.output) == (0, "hello over the bridge\n")
        assert http_get(port, "/index.html") == b"hello over the bridge\n"
    nets.stop("hk")
    nets.remove("hk")
    nets.remove_network("front")
    assert nets.list() == []


_FORGE = r"""
/* "prog listen PORT": write every UDP datagram that comes to PORT to standard output.
   "prog SOURCE SPORT DEST DPORT": send one DNS query for "web" over UDP from
   SOURCE:SPORT to DEST:DPORT, the IP header written here (a raw socket: the
   container's root holds CAP_NET_RAW). */
#include <arpa/inet.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (s < 0 || bind(s, (struct sockaddr *)&at, sizeof(at)) < 0) return 2;
    char buffer[2048];
    for (;;) {
        ssize_t got = recv(s, buffer, sizeof(buffer), 0);
        if (got > 0 && write(1, buffer, got) != got) return 3;
    }
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "listen") == 0) return listen_on(atoi(argv[2]));
    static const unsigned char query[] = {
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'e', 'b', 0, 0, 1, 0, 1};
    unsigned char packet[sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(query)];
    struct iphdr *ip = (struct iphdr *)packet;
    struct udphdr *udp = (struct udphdr *)(packet + sizeof(*ip));
    memset(packet, 0, sizeof(packet));
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->tot_len = htons(sizeof(packet));
    ip->saddr = inet_addr(argv[1]);
    ip->daddr = inet_addr(argv[3]);
    udp->source = htons(atoi(argv[2]));
    udp->dest = htons(atoi(argv[4]));
    udp->len = htons(sizeof(*udp) + sizeof(query));
    memcpy(packet + sizeof(*ip) + sizeof(*udp), query, sizeof(query));
    int s = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (s < 0) return 2;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = ip->daddr};
    return sendto(s, packet, sizeof(packet), 0, (struct sockaddr *)&to, sizeof(to)) < 0 ? 3 : 0;
}
"""

_LISTEN = "exec /probe/prog listen 9999 > /tmp/got"
"""What a container runs to keep what comes to its UDP port 9999."""


def _got(rt: LinuxRuntime, name: str) -> int:
    return int(rt.exec_command(name, ("/bin/sh", "-c", "wc -c < /tmp/got")).output.strip())


def test_a_forged_source_reaches_no_other_network_through_the_gateway(
    nets: LinuxRuntime, tmp_path: Path
) -> None:
    """Found in review: the shared namespace did not check a packet's source address.
    A container could send its gateway's DNS responder a query in the name of a
    container on another network, and the answer went out of that network's bridge
    (as could a reply through the way out): no network was apart from another."""
    built_static(_FORGE, tmp_path)
    probe = (BindMount(source=str(tmp_path), target="/probe"),)
    shell = ("/bin/sh", "-c", _LISTEN)
    a = nets.run(ContainerSpec(name="fa", rootfs=BUSYBOX, argv=shell, binds=probe, **on("front")))
    b = nets.run(ContainerSpec(name="fb", rootfs=BUSYBOX, argv=shell, binds=probe, **on("back")))
    gateway = nets.exec_command("fa", ("/bin/sh", "-c", "awk '{print $2}' /etc/resolv.conf"))
    forge = ("/probe/prog", "{}", "9999", gateway.output.strip(), "53")
    theirs = " ".join(forge).format(b.addresses["back"])
    mine = " ".join(forge).format(a.addresses["front"])  # the same, in its own name
    assert nets.exec_command("fa", ("/bin/sh", "-c", f"{theirs} && {mine}")).exit_code == 0
    eventually(lambda: _got(nets, "fa") > 0, "the answer to the query in its own name")
    assert _got(nets, "fb") == 0
