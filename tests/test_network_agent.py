"""The shared namespace's agent on its own (:mod:`runtime.network.agent`), in a user and
network namespace of the test's own: a launcher's connection it fails to accept (out of
descriptors) costs that connection only, never the agent, which holds the namespace and
whose end takes its keeper and every bridge network along; a container started again
is reached through its new pair at once, while the pair of its ended namespace, with
the same link-layer address, is still on the bridge; a plugged container's own address
answers from inside it at once (its loopback is up)."""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path
from typing import Any

from runtime.network import agent, inside, netlink, wiring
from runtime.network.addresses import NetworkRecord
from runtime.sandbox import syscalls as sc
from tests.support import in_own_namespaces


def _lowest_free_fd(pid: int) -> int:
    taken = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(taken) + 1) if fd not in taken)


def _plug_nothing(direct: Path) -> str:
    """A launcher's plug that makes no pair (this namespace's own, nothing to add): "ok"
    when the agent made it, else why not."""
    ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sent = agent.plug(direct, ns_fd, 5.0, left=[], fresh=True, pairs=[], gateway=None)
        return "ok" if sent.answer()["ok"] is True else "no"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.close(ns_fd)


def _accept_out_of_descriptors(direct: Path) -> dict[str, Any]:
    keeper = agent.start(10.0, direct)
    try:
        keeper.call("listening", addresses=[], port=53)  # past its start: serving requests
        limits = resource.prlimit(keeper.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(
            keeper.pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(keeper.pid), limits[1])
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as launcher:
            launcher.connect(str(direct))  # queued: the agent cannot accept it
            try:
                keeper.call("listening", addresses=[], port=53)
                served = "ok"
            except OSError as exc:
                served = f"{type(exc).__name__}: {exc}"
        resource.prlimit(keeper.pid, resource.RLIMIT_NOFILE, limits)
        return {"keeper served": served, "plug": _plug_nothing(direct)}
    finally:
        os.kill(keeper.pid, 9)
        os.waitpid(keeper.pid, 0)


def test_a_failed_accept_costs_that_connection_only(tmp_path: Path) -> None:
    found = in_own_namespaces(lambda: _accept_out_of_descriptors(tmp_path / "agent.sock"))
    assert found == {"keeper served": "ok", "plug": "ok"}


FRONT = NetworkRecord("front", "10.89.0.0/24", leases={"peer": "10.89.0.3", "web": "10.89.0.2"})


def _namespace(listen: int | None = None) -> tuple[int, socket.socket | None]:
    """A new network namespace, held by the descriptor returned only (as the kernel's
    late teardown, or anything holding it, keeps an ended container's), without IPv6
    (whose unasked frames would teach the bridge now one port, now the other), and a
    socket listening there on port ``listen``; the caller stays where it was."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWNET)
        Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").write_text("1\n")
        held = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        listener = None if listen is None else socket.create_server(("0.0.0.0", listen))
        sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)
    return held, listener


def _plug(direct: Path, name: str, ns_fd: int) -> None:
    plan = wiring.plan(name, ["front"], {"front": FRONT}, os.fstat(ns_fd).st_ino)
    assert agent.plug(direct, ns_fd, 5.0, fresh=True, **plan).answer()["ok"] is True


def _connect(ns_fd: int, address: str, port: int) -> str:
    """What a TCP connection from namespace ``ns_fd`` to ``address`` and ``port`` meets."""
    with inside.entered(ns_fd), socket.socket() as sock:
        sock.settimeout(2.0)
        try:
            sock.connect((address, port))
        except OSError as exc:
            return type(exc).__name__
        return "connected"


def _speak(ns_fd: int, address: str) -> None:
    """One datagram from namespace ``ns_fd`` to ``address`` (and so a frame from its
    interface onto the bridge: the datagram, or the ARP request before it)."""
    with inside.entered(ns_fd), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"here", (address, 9))


def _started_again(direct: Path) -> dict[str, Any]:
    keeper = agent.start(10.0, direct)
    try:
        keeper.call("links", bridges=[[netlink.bridge_name("front"), FRONT.subnet]], ruleset="")
        (peer, _), (ended, _) = _namespace(), _namespace()
        _plug(direct, "peer", peer)
        _plug(direct, "web", ended)
        web = FRONT.leases["web"]
        before = _connect(peer, web, 8080)  # the ended one's: the bridge learns its port
        again, _listener = _namespace(listen=8080)  # closed as the child ends
        _plug(direct, "web", again)  # the same lease, so the same link-layer address
        first = _connect(peer, web, 8080)
        _speak(ended, FRONT.gateway)  # the old pair's namespace sends on, as a live one may
        then = _connect(peer, web, 8080)
        return {"before": before, "at once": first, "once the old spoke": then}
    finally:
        os.kill(keeper.pid, 9)
        os.waitpid(keeper.pid, 0)


def test_a_container_started_again_is_reached_while_its_old_pair_lingers(tmp_path: Path) -> None:
    found = in_own_namespaces(lambda: _started_again(tmp_path / "agent.sock"))
    assert found == {
        "before": "ConnectionRefusedError",
        "at once": "connected",
        "once the old spoke": "connected",
    }


def _reached_from_inside(direct: Path) -> dict[str, str]:
    keeper = agent.start(10.0, direct)
    try:
        keeper.call("links", bridges=[[netlink.bridge_name("front"), FRONT.subnet]], ruleset="")
        fresh, _ = _namespace()  # its loopback down, as a new container's may still be
        _plug(direct, "web", fresh)
        return {"connect": _connect(fresh, FRONT.leases["web"], 8080)}  # nothing listens there
    finally:
        os.kill(keeper.pid, 9)
        os.waitpid(keeper.pid, 0)


def test_a_plugged_container_is_reached_at_its_own_address_at_once(tmp_path: Path) -> None:
    """The port handler connects to a container's address from inside its namespace, and
    may do so as soon as it is plugged (the keeper binds a new container's forwards
    while the agent plugs it): refused while nothing listens, never a dropped SYN (the
    loopback down), which the kernel sends again only a second later."""
    found = in_own_namespaces(lambda: _reached_from_inside(tmp_path / "agent.sock"))
    assert found == {"connect": "ConnectionRefusedError"}


def _pyroute2_bytes(message: Any) -> bytes:
    """What pyroute2's message class encodes after the netlink header."""
    message.encode()
    return bytes(message.data[16:])


def test_a_veth_request_is_encoded_as_pyroute2_encodes_it() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    for host_end, master, end, ns_fd in (
        ("sqv0123456789", 3, netlink.Inside("eth0", "02:42:0a:58:00:02"), 7),
        ("sqvabcdef0123", 65536, netlink.Inside("eth12", "02:42:ac:10:ff:fe"), 1023),
    ):
        peer = [
            ["IFLA_IFNAME", end.ifname],
            ["IFLA_NET_NS_FD", ns_fd],
            ["IFLA_ADDRESS", end.mac],
            ["IFLA_MTU", netlink.MTU],
        ]
        info = [
            ["IFLA_INFO_KIND", "veth"],
            ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER", {"attrs": peer}]]}],
        ]
        message: Any = ifinfmsg()
        message["flags"] = message["change"] = 1  # IFF_UP
        message["attrs"] = [
            ["IFLA_IFNAME", host_end],
            ["IFLA_MASTER", master],
            ["IFLA_MTU", netlink.MTU],
            ["IFLA_LINKINFO", {"attrs": info}],
        ]
        assert netlink.veth_message(host_end, master, end, ns_fd) == _pyroute2_bytes(message)


def test_a_forwarding_entry_request_is_encoded_as_pyroute2_encodes_it() -> None:
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    for index, mac in ((3, "02:42:0a:58:00:02"), (70000, "02:42:ac:10:ff:fe")):
        message: Any = ndmsg()
        message["family"] = socket.AF_BRIDGE
        message["ifindex"] = index
        message["state"] = 0x40  # NUD_NOARP
        message["flags"] = 0x04 | 0x40  # NTF_MASTER | NTF_STICKY
        message["attrs"] = [["NDA_LLADDR", mac]]
        assert netlink.fdb_message(index, mac) == _pyroute2_bytes(message)
