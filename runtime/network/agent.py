"""The process that lives in the shared network namespace of bridge networks.

The keeper (:mod:`runtime.network.shared`) forks it: it unshares a network namespace,
which lives as long as it does (it *pins* it), opens one netlink socket there and serves
the keeper's requests over a socket pair, one at a time, until the keeper goes:

- ``links``: routing on, a bridge per network with its gateway address (bridges no
  network has deleted), and the nftables ruleset loaded;
- ``plug``: a container's veth pairs, made with their inside end directly in the
  container's namespace (sent along as a descriptor), the pairs of networks it left
  deleted, and its side configured (:mod:`runtime.network.inside`);
- ``listening``: wait (a few seconds at most) until each of ``addresses`` accepts TCP
  on ``port``: the DNS responder took up a new network.

It also listens on a unix socket (``agent.sock`` in the keeper's folder) for the
``plug`` of a new container, sent by its launcher (:func:`plug`), one connection each,
served between the keeper's requests; the answer names the keeper it serves.

Each request is one framed JSON object (a 4-byte length, then the object) and gets one
back: ``{"ok": true}`` or ``{"error": "..."}``. Living in the namespace is what makes a
request cheap: no process is forked to enter it, and pyroute2's socket is opened once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from runtime.network import inside, netlink, nft
from runtime.sandbox import netif
from runtime.sandbox import syscalls as sc
from runtime.util import jsonsock
from runtime.util.fdpass import receive_with_fds, send_with_fds
from runtime.util.processes import ProcessId, close_fds_except, wait_readable

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ("Agent", "Direct", "plug", "start")

_MAX = 16 << 20
_HEADER = struct.Struct("!I")


def _send(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    sent = send_with_fds(sock, data, fds)
    if sent < len(data):
        sock.sendall(data[sent:])


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer went away")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors sent with it; EOFError when the peer is gone."""
    head, fds = receive_with_fds(sock, _HEADER.size, 4)
    try:
        return _message(sock, head), fds
    except BaseException:  # a message that cannot be read keeps none of its descriptors
        for fd in fds:
            os.close(fd)
        raise


def _message(sock: socket.socket, head: bytes) -> dict[str, Any]:
    if not head:
        raise EOFError("the peer went away")
    head += _exactly(sock, _HEADER.size - len(head))
    (size,) = _HEADER.unpack(head)
    if size > _MAX:
        raise ValueError(f"message of {size} bytes")
    message = json.loads(_exactly(sock, size))
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


class Agent:
    """The keeper's side: the agent's pid and the socket to it."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def call(self, op: str, fds: tuple[int, ...] = (), **args: Any) -> None:
        """Have the agent do ``op``; OSError with its message when it fails or is gone."""
        self.send(op, fds, **args)
        self.result(op)

    def send(self, op: str, fds: tuple[int, ...] = (), **args: Any) -> None:
        """Ask the agent to do ``op``; :meth:`result` awaits it (before anything else
        is sent)."""
        _send(self.sock, {"op": op, **args}, fds)

    def result(self, op: str) -> None:
        """Once ``op``, the last request sent, is done; OSError with its message when it
        failed or the agent is gone."""
        _answer(self.sock, op)


def _answer(sock: socket.socket, op: str) -> dict[str, Any]:
    """The agent's answer to ``op``; OSError with its message when it failed or the
    agent is gone."""
    try:
        reply, _ = _receive(sock)
    except (EOFError, ValueError) as exc:
        raise OSError(f"the shared namespace's agent gave no answer to {op}: {exc}") from exc
    if "error" in reply:
        raise OSError(str(reply["error"]))
    return reply


class Direct:
    """A ``plug`` sent to the agent by a launcher, straight to its socket (no keeper in
    between); :meth:`answer` reads the outcome."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def answer(self) -> dict[str, Any]:
        """The agent's answer, with ``keeper``: the keeper it serves; OSError when the
        plug failed or the agent gave no answer."""
        with self.sock:
            return _answer(self.sock, "plug")


def plug(path: Path, ns_fd: int, timeout: float, **request: Any) -> Direct:
    """Send the agent listening on ``path`` a ``plug`` (see :func:`runtime.network.wiring.plan`)
    for the namespace ``ns_fd``; OSError when it cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        jsonsock.connect(sock, path, timeout)
        _send(sock, {"op": "plug", **request}, (ns_fd,))
    except BaseException:
        sock.close()
        raise
    return Direct(sock)


def start(timeout: float, direct: Path) -> Agent:
    """Fork the agent; return once its namespace is made and it listens on ``direct``
    for launchers' plugs (OSError if not)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    child = os.fork()
    if child == 0:
        try:
            ours.close()
            close_fds_except({theirs.fileno(), 2})
            _run(theirs, direct)
        finally:
            os._exit(1)
    theirs.close()
    ours.settimeout(timeout)
    try:
        ready, _ = _receive(ours)
    except (OSError, EOFError, ValueError) as exc:
        raise OSError(f"the shared network namespace could not be made: {exc}") from exc
    if "error" in ready:
        raise OSError(f"the shared network namespace could not be made: {ready['error']}")
    ours.settimeout(None)
    return Agent(child, ours)


@dataclass
class _Namespace:
    """What the agent keeps of its namespace: its netlink sockets, and the index of each
    bridge (looked up once: a pair is made on its bridge by index)."""

    ipr: IPRoute
    requests: netlink.Requests
    bridges: dict[str, int] = field(default_factory=dict)

    def bridge(self, name: str) -> int:
        index = self.bridges.get(name)
        if index is None:
            index = self.bridges[name] = netlink.bridge_index(self.ipr, name)
        return index


def _run(sock: socket.socket, direct: Path) -> NoReturn:
    try:
        sc.unshare(sc.CLONE_NEWNET)
        here = _Namespace(netlink.open_route(), netlink.Requests())
        listener = _listen(direct)
    except BaseException as exc:
        _send(sock, {"error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    _send(sock, {"ok": True})
    keeper = ProcessId.of(os.getppid())
    served = {"keeper": keeper.to_json() if keeper is not None else None}
    while True:
        ready = wait_readable([sock.fileno(), listener.fileno()], None)
        if listener.fileno() in ready:
            _serve_launcher(here, listener, served)
        if sock.fileno() in ready and not _serve_one(here, sock, _HANDLERS, {}):
            os._exit(0)  # the keeper is gone: so is the namespace


DIRECT_TIMEOUT = 5.0
"""How long a launcher's connection may take to send its plug."""


def _serve_launcher(here: _Namespace, listener: socket.socket, served: dict[str, Any]) -> None:
    """Serve the next launcher's plug. A connection that cannot be accepted (out of
    descriptors, or aborted) costs that connection only, never the agent: its end would
    take the namespace, the keeper and every bridge network along."""
    try:
        conn, _ = listener.accept()
    except ConnectionAbortedError:
        return
    except OSError:  # EMFILE, ENFILE, ENOBUFS: the launcher waits, or its keeper wires it
        time.sleep(0.01)  # not a busy loop while the listener stays readable
        return
    with conn:
        conn.settimeout(DIRECT_TIMEOUT)
        _serve_one(here, conn, {"plug": _plug}, served)


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # an ended agent's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(str(path))
    listener.listen(16)
    return listener


Handler = Callable[["_Namespace", dict[str, Any], list[int]], None]


def _serve_one(
    here: _Namespace, conn: socket.socket, handlers: dict[str, Handler], served: dict[str, Any]
) -> bool:
    """Read one request from ``conn``, do it and answer (``served`` added to a success);
    False when the peer is gone."""
    try:
        request, fds = _receive(conn)
    except (OSError, EOFError, ValueError):
        return False
    reply: dict[str, Any] = {"ok": True, **served}
    try:
        handlers[str(request.get("op"))](here, request, fds)
    except inside.Stranded:
        os._exit(1)  # stuck in a container's namespace: serve nothing from there
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for fd in fds:
            os.close(fd)
    with contextlib.suppress(OSError):
        _send(conn, reply)
    return True


def _links(here: _Namespace, request: dict[str, Any], fds: list[int]) -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")  # this namespace's own
    for family in ("iptables", "ip6tables", "arptables"):
        _off(Path(f"/proc/sys/net/bridge/bridge-nf-call-{family}"))
    wanted = {str(name): str(subnet) for name, subnet in request["bridges"]}
    here.bridges.clear()
    for name, subnet in wanted.items():
        here.bridges[name] = netlink.ensure_bridge(here.ipr, name, subnet)
    for name in netlink.link_names(here.ipr):
        if name.startswith("sqb") and name not in wanted:
            netlink.delete_link(here.ipr, name)
    nft.apply(str(request["ruleset"]))


LISTEN_TRIES = 3000
"""About three seconds of tries, a millisecond apart, for each address."""


def _listening(here: _Namespace, request: dict[str, Any], fds: list[int]) -> None:
    """Return once every address accepts TCP on the port, or after the tries ran out
    (the responder may be down: a keeper restarts it, and then it reads every address)."""
    for address in request["addresses"]:
        for _ in range(LISTEN_TRIES):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                if probe.connect_ex((str(address), int(request["port"]))) == 0:
                    break
            time.sleep(0.001)


def _off(switch: Path) -> None:
    """Frames switched inside one bridge stay out of the IP hooks (conntrack and the
    ruleset cost a quarter of a transfer's speed there; nothing filters them anyway).
    Where the kernel has no such switch, there is nothing to turn off."""
    with contextlib.suppress(FileNotFoundError):
        switch.write_text("0\n")


def _plug(here: _Namespace, request: dict[str, Any], fds: list[int]) -> None:
    """A container's pairs: see :func:`runtime.network.wiring.plan` for the request."""
    (ns_fd,) = fds
    for host_end in request["left"]:
        netlink.delete_link(here.ipr, str(host_end))
    fresh = bool(request["fresh"])
    present = set() if fresh else netlink.link_names(here.ipr)
    new = [pair for pair in request["pairs"] if pair["host_end"] not in present]
    taken = {"lo"}
    if not fresh:
        with inside.entered(ns_fd):
            taken = inside.names()
    addresses = []
    for pair in new:
        ifname = next(f"eth{n}" for n in range(len(taken) + 1) if f"eth{n}" not in taken)
        taken.add(ifname)
        _make_pair(here, pair, netlink.Inside(ifname, str(pair["mac"])), ns_fd)
        addresses.append(inside.Address(ifname, str(pair["address"]), int(pair["prefixlen"])))
    gateway = request["gateway"]
    with inside.entered(ns_fd):
        # The loopback first: a host forward may be bound already (the keeper's sync
        # binds it while this plugs), and a connection to an address of the container
        # goes through it; while it is down the SYN is dropped, and the kernel sends it
        # again only a second later. Its init brings it up too, maybe later than this.
        netif.bring_up("lo")
        inside.configure(addresses, None if gateway is None else str(gateway))


def _make_pair(here: _Namespace, pair: dict[str, Any], end: netlink.Inside, ns_fd: int) -> None:
    host_end, master = str(pair["host_end"]), here.bridge(str(pair["bridge"]))
    try:
        netlink.make_veth(here.requests, host_end, master, end, ns_fd)
    except OSError as exc:  # EEXIST: left by an ended namespace
        if exc.errno != errno.EEXIST:
            raise
        netlink.delete_link(here.ipr, host_end)
        netlink.make_veth(here.requests, host_end, master, end, ns_fd)
    netlink.claim_address(here.requests, host_end, end.mac)


_HANDLERS: dict[str, Handler] = {"links": _links, "plug": _plug, "listening": _listening}
"""The keeper's requests."""
