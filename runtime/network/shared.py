"""The shared network namespace of bridge networks and the process that keeps it.

One per state folder, in the holder's user namespace: the *supervisor* forks the
namespace's *agent* (:mod:`runtime.network.agent`: it unshares a network namespace, which
lives as long as it does, and does the netlink and nftables work there), starts one
slirp4netns on that namespace (tap0, 10.0.2.100/24, the default route: the
networks' way out and the host forwards' way in), starts the DNS responder in it when
``runtime.network.dnsserver`` is there, and serves requests on ``ctl.sock``:

- ``sync``: make the namespace match the address book: a bridge per network with its
  gateway address (bridges of removed networks deleted), the nftables ruleset
  (:mod:`runtime.network.nft`, forwards of containers no longer running dropped), and the
  DNS responder's records file; what did not change since the last sync is not done
  again; sent with a new container's network namespace and init pidfd (its pairs made
  by the agent directly), the keeper keeps both for the port handler;
- ``wire``: a container's veth pairs (:mod:`runtime.network.wiring`), with a sync (and,
  with the two descriptors, kept as ``sync`` keeps them);
  the agent makes the pairs while the keeper works out the rest of the sync, unless a
  bridge is new (then the sync comes first); the answer can be read later
  (:func:`ask`), so a launch goes on meanwhile;
- ``ping``; ``stop``: end slirp4netns, the responder and the agent, then itself.

A slirp4netns or responder that dies is started again at once, and every recorded host
forward is put back into the new slirp4netns. An agent that dies took the namespace with
it: the supervisor ends what it started and itself, and the next caller starts a new one
(containers wired to the old one are healed by rewiring). Files, in ``STATE/bridge``:
``ctl.sock``, ``agent.sock`` (the agent's, for launchers' plugs), ``slirp.sock``,
``slirp.log``, ``keeper.json`` (pids), ``forwards.json``, ``dns.json``, ``dns.log``,
``keeper.lock``, ``forwards.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from runtime.errors import SlirpError
from runtime.network import agent as agent_process
from runtime.network import netlink, nft, porter, slirp, wiring
from runtime.network.addresses import NetworkRecord, read_networks
from runtime.sandbox import syscalls as sc
from runtime.util import jsonsock
from runtime.util.fdpass import receive_with_fds, send_with_fds
from runtime.util.files import Landmark, parse_json, read_json, write_json_atomic
from runtime.util.processes import ProcessId, close_fds_except, wait_readable
from runtime.wire import Forward

__all__ = (
    "BRIDGE_DIR",
    "Asked",
    "ForwardRecord",
    "ask",
    "ask_started",
    "bridge_dir",
    "call",
    "ensure_supervisor",
    "free_guest_port",
    "load_forwards",
    "locked",
    "plug_directly",
    "save_forwards",
    "slirp_forward",
    "slirp_identity",
    "stop_supervisor",
    "supervisor_alive",
)

BRIDGE_DIR = "bridge"
CONTAINERS = "containers"
"""The containers' folder in the state folder (the holder's ``CONTAINERS_DIR``)."""
READY_TIMEOUT = 10.0
KEEPER_LOCK = "keeper.lock"
AGENT_SOCKET = "agent.sock"
"""Where the agent takes launchers' plugs (:func:`plug_directly`)."""
DNS_MODULE = "runtime.network.dnsserver"
STATE_CHECK = 10.0
"""Seconds of quiet after which the keeper checks that its control socket (and so its
state folder) is still there; it ends, with what it started, when it is not."""
RESTART_RETRY = 1.0
"""Seconds before the keeper tries again to start a helper (slirp4netns, the port
handler, the DNS responder) whose start after its death failed."""
FIRST_GUEST_PORT = 20000
"""Host forwards arrive at 10.0.2.100 on ports from here up, one per forward."""


def bridge_dir(state: Path) -> Path:
    path = state / BRIDGE_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(state: Path, lock: str = "forwards.lock") -> Iterator[Path]:
    """The bridge folder, under an exclusive lock: ``forwards.lock`` for the forwards
    file, ``keeper.lock`` while a keeper is started or stopped."""
    bdir = bridge_dir(state)
    fd = os.open(bdir / lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield bdir
    finally:
        os.close(fd)


# -- what callers use ----------------------------------------------------------------


class Asked:
    """A request sent to the supervisor, its answer not read yet: the caller goes on
    with other work meanwhile and reads it with :meth:`answer`."""

    def __init__(
        self, sock: socket.socket, op: str, again: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self.sock = sock
        self.op = op
        self.again = again
        """What to do instead when the connection is reset (:func:`ask_started`)."""

    def answer(self) -> dict[str, Any]:
        """The supervisor's answer (the connection is closed); OSError when it gives
        none or failed."""
        with self.sock:
            try:
                reply = jsonsock.decode_object(jsonsock.read_to_eof(self.sock, 1 << 20))
            except ConnectionError:
                if self.again is None:
                    raise
                return self.again()
            except jsonsock.EmptyMessage:  # it died mid-request, or is going away
                raise OSError(f"the bridge network keeper gave no answer to {self.op}") from None
        if "error" in reply:
            raise OSError(f"the bridge network keeper failed to {self.op}: {reply['error']}")
        return reply


def ask(
    state: Path, op: str, timeout: float = 20.0, fds: tuple[int, ...] = (), **args: Any
) -> Asked:
    """Send ``op`` (with ``args``, and descriptors ``fds``) to the supervisor."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        jsonsock.connect(sock, bridge_dir(state) / "ctl.sock", timeout)
        send_with_fds(sock, json.dumps({"op": op, **args}).encode(), fds)
        sock.shutdown(socket.SHUT_WR)
    except BaseException:
        sock.close()
        raise
    return Asked(sock, op)


def call(
    state: Path, op: str, timeout: float = 20.0, fds: tuple[int, ...] = (), **args: Any
) -> dict[str, Any]:
    """Send ``op`` (with ``args``, and descriptors ``fds``) to the supervisor; OSError
    when it does not answer or fails."""
    return ask(state, op, timeout, fds, **args).answer()


def _keeper(state: Path) -> dict[str, Any]:
    record = read_json(bridge_dir(state) / "keeper.json")
    return record if isinstance(record, dict) else {}


def _own_userns() -> int:
    return os.stat("/proc/self/ns/user").st_ino


def _usable(state: Path) -> bool:
    """Whether a supervisor of this user namespace answers."""
    keeper = _keeper(state)
    if keeper.get("userns") != _own_userns():
        return False
    try:
        call(state, "ping", timeout=5.0)
    except (OSError, ValueError):
        return False
    return True


def ensure_supervisor(state: Path) -> None:
    """Start the supervisor unless one of this user namespace runs (one of another, left
    by an earlier holder, is stopped: its namespace cannot be entered from here)."""
    with locked(state, KEEPER_LOCK) as bdir:
        if _usable(state):
            return
        _end(_keeper(state))
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                close_fds_except({write_end, 2})
                _Supervisor(state, bdir).run(write_end)
            finally:
                os._exit(1)
        os.close(write_end)
        ready = os.read(read_end, 4096) if wait_readable([read_end], READY_TIMEOUT) else b""
        os.close(read_end)
        if ready != b"1":
            message = ready.decode(errors="replace") if ready else "no answer"
            raise SlirpError(f"the bridge network keeper did not start: {message}")


def ask_started(state: Path, op: str, fds: tuple[int, ...] = (), **args: Any) -> Asked:
    """:func:`ask`, starting the supervisor first when none of this user namespace is
    there to answer (no ping when one is: the common case costs one round trip); one
    that goes away before it answers (a reset connection) is started again and asked
    again."""

    def again() -> dict[str, Any]:
        ensure_supervisor(state)
        return call(state, op, fds=fds, **args)

    if _keeper(state).get("userns") == _own_userns():
        with contextlib.suppress(ConnectionError, FileNotFoundError):
            asked = ask(state, op, fds=fds, **args)
            asked.again = again
            return asked
    ensure_supervisor(state)
    return ask(state, op, fds=fds, **args)


def plug_directly(state: Path, plug: dict[str, Any], ns_fd: int) -> agent_process.Direct | None:
    """Send the agent of the running keeper ``plug`` (a new container's pairs) itself:
    one process less each way than through the keeper. None when no agent answers."""
    try:
        return agent_process.plug(bridge_dir(state) / AGENT_SOCKET, ns_fd, 20.0, **plug)
    except OSError:  # none there, or too busy to accept in time: the keeper wires it
        return None


def stop_supervisor(state: Path) -> None:
    """End the supervisor and what it started (the last network is gone)."""
    with locked(state, KEEPER_LOCK):
        keeper = _keeper(state)
        with contextlib.suppress(OSError, ValueError):
            call(state, "stop", timeout=5.0)
        _end(keeper)
        (bridge_dir(state) / "keeper.json").unlink(missing_ok=True)


def _end(keeper: dict[str, Any]) -> None:
    # "pinner": in earlier records
    for key in ("supervisor", "slirp", "porter", "dns", "agent", "pinner"):
        process = ProcessId.from_json(keeper.get(key))
        if process is not None and process.send(signal.SIGKILL):
            process.wait_gone(5.0)


def supervisor_alive(state: Path) -> bool:
    """Whether the keeper's supervisor (the one ``keeper.json`` names) runs."""
    supervisor = ProcessId.from_json(_keeper(state).get("supervisor"))
    return supervisor is not None and supervisor.alive()


def slirp_identity(state: Path, wired_to: object = None) -> ProcessId | None:
    """The helper serving the shared namespace now: its slirp4netns, or, while a living
    keeper restarts a slirp4netns that died, the keeper itself (the namespace and its
    containers' interfaces are intact; the keeper puts every forward back), so a reader
    never waits and a restart never reads as a lost network. With ``wired_to`` (the
    keeper a container was wired to), only if that keeper is the one running: a
    container wired into the namespace of a keeper that died has no network, whatever
    runs now."""
    keeper = _keeper(state)
    supervisor = ProcessId.from_json(keeper.get("supervisor"))
    process = ProcessId.from_json(keeper.get("slirp"))
    if supervisor is None or not supervisor.alive() or process is None:
        return None
    if wired_to is not None and wired_to != supervisor.to_json():
        return None
    return process if process.alive() else supervisor


@dataclass
class ForwardRecord:
    """A host forward to a bridge container: slirp4netns sends host_addr:host_port to
    10.0.2.100:guest_port, nftables on to the container's address:port."""

    container: str
    proto: str
    host_addr: str
    host_port: int
    port: int
    guest_port: int
    handler: str = "slirp4netns"
    """Who serves it: ``splice`` (the port handler, :mod:`runtime.network.porter`:
    host_addr:host_port straight to the container's address:port) or ``slirp4netns``
    (the way above; records written before the port handler existed)."""


def load_forwards(bdir: Path) -> list[ForwardRecord]:
    return _records_in(read_json(bdir / "forwards.json"))


def _records_in(data: object) -> list[ForwardRecord]:
    entries = data.get("forwards", []) if isinstance(data, dict) else []
    return [ForwardRecord(**entry) for entry in entries]


def _read_forwards(bdir: Path) -> list[ForwardRecord] | None:
    """:func:`load_forwards`, but None when the file is there and cannot be read (a
    failing disk, a damaged file) rather than no forwards."""
    try:
        data = parse_json((bdir / "forwards.json").read_bytes())
    except FileNotFoundError:
        return []
    except OSError:
        return None
    return _records_in(data) if isinstance(data, dict) else None


def save_forwards(bdir: Path, records: list[ForwardRecord]) -> None:
    entries = [record.__dict__ for record in records]
    write_json_atomic(bdir / "forwards.json", {"version": 1, "forwards": entries})


def free_guest_port(records: list[ForwardRecord], proto: str) -> int:
    taken = {r.guest_port for r in records if r.proto == proto}
    return next(port for port in range(FIRST_GUEST_PORT, 65536) if port not in taken)


# -- the supervisor ------------------------------------------------------------------


def _exists(state: Path, container: str) -> bool:
    return (state / CONTAINERS / container).is_dir()


Aliases = Callable[[str, str], list[str]]
"""(container, network) -> the container's aliases there."""


def _records(networks: dict[str, NetworkRecord], aliases: Aliases) -> dict[str, Any]:
    """The DNS responder's records: each network with dns on, its containers' names and
    aliases (from their specs), and for each container also on other such networks,
    their gateways (``peers``: it finds their containers' names too)."""
    servers = []
    served = [record for record in networks.values() if record.dns]
    for record in served:
        names: dict[str, list[str]] = {}
        peers: dict[str, list[str]] = {}
        for container, address in record.leases.items():
            for name in (container, *aliases(container, record.name)):
                names.setdefault(name.lower(), []).append(address)
            others = [o.gateway for o in served if o is not record and container in o.leases]
            if others:
                peers[address] = others
        upstream = [] if record.internal else [slirp.DNS_ADDR]
        server = {"listen": record.gateway, "upstream": upstream, "names": names, "peers": peers}
        servers.append(server)
    return {"version": 1, "servers": servers}


class _AliasBook:
    """Containers' aliases per network, read from their ``spec.json`` again only when the
    file changed (inode, mtime, size): a wire reads every container's otherwise, about
    30 µs each, 3 ms with a hundred containers."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.seen: dict[str, tuple[tuple[int, int, int], dict[str, list[str]]]] = {}

    def __call__(self, container: str, network: str) -> list[str]:
        return self._read(container).get(network, [])

    def first_network(self, container: str) -> str | None:
        """The first network ``container``'s spec joins (its address there is the one
        its name stands for), or None when its spec cannot be read."""
        return next(iter(self._read(container)), None)

    def _read(self, container: str) -> dict[str, list[str]]:
        path = self.state / CONTAINERS / container / "spec.json"
        try:
            stat = path.stat()
        except OSError:
            return {}
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self.seen.get(container)
        if cached is None or cached[0] != stamp:
            cached = (stamp, _aliases_in(read_json(path)))
            self.seen[container] = cached
        return cached[1]


def _aliases_in(spec: object) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for attachment in spec.get("networks", []) if isinstance(spec, dict) else []:
        if isinstance(attachment, dict):
            aliases = [str(alias) for alias in attachment.get("aliases", [])]
            found[str(attachment.get("network"))] = aliases
    return found


@dataclass
class _Held:
    """A wired container's network namespace, kept while its init runs."""

    ns_fd: int
    pidfd: int
    """Readable once the init ended."""
    inode: int


@dataclass
class _Supervisor:
    state: Path
    bdir: Path
    agent: agent_process.Agent | None = None
    ns_fd: int = -1
    exit_r: int = -1
    """What slirp4netns and the responder watch: EOF when this process ends."""
    exit_w: int = -1
    slirp: ProcessId | None = None
    porter: ProcessId | None = None
    bound: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    """The port handler's listeners, by host address and port, as it reported them (and
    the inode of the namespace each sends to)."""
    held: dict[str, _Held] = field(default_factory=dict)
    """The network namespaces of wired containers whose init runs, by the address host
    forwards to that container go to."""
    forwarded: list[ForwardRecord] = field(default_factory=list)
    """The forwards as the last sync read them."""
    unbound: list[dict[str, Any]] = field(default_factory=list)
    """The splice forwards the last sync could not bind, with the errno."""
    dns: ProcessId | None = None
    children: dict[int, str] = field(default_factory=dict)
    applied: dict[str, Any] | None = None
    """The last ``links`` request the agent carried out."""
    records: dict[str, Any] | None = None
    """The DNS records last written."""
    listening: set[str] = field(default_factory=set)
    """The addresses the DNS responder was seen to listen on."""
    pending: dict[str, float] = field(default_factory=dict)
    """Helpers whose start again failed, by kind: when it is tried again (monotonic)."""
    aliases: _AliasBook | None = None

    def run(self, ready_w: int) -> NoReturn:
        try:
            os.setsid()
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            netlink.prewarm()  # loaded once: every step forked from here has it
            self.exit_r, self.exit_w = os.pipe2(os.O_CLOEXEC)
            self._start_agent()
            self._start_slirp()
            self._start_porter()
            self.sync()
            self._start_dns()
            self._await_dns()
            ctl = self._listen()
            self._record()
            os.write(ready_w, b"1")
            os.close(ready_w)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(ready_w, f"{type(exc).__name__}: {exc}".encode()[:4000])
            os._exit(1)
        self._serve(ctl)

    def _start_agent(self) -> None:
        self.agent = agent_process.start(READY_TIMEOUT, self.bdir / AGENT_SOCKET)
        self.children[self.agent.pid] = "agent"
        self.ns_fd = os.open(f"/proc/{self.agent.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def _start_slirp(self) -> None:
        fds = {"netns_fd": self.ns_fd, "exit_fd": self.exit_r}
        try:
            self.slirp = slirp.spawn(self.bdir, True, READY_TIMEOUT, **fds)
        except (SlirpError, TimeoutError):
            self.slirp = slirp.spawn(self.bdir, False, READY_TIMEOUT, **fds)
        self.children[self.slirp.pid] = "slirp"
        for record in load_forwards(self.bdir):
            if record.handler == "splice":
                continue
            with contextlib.suppress(OSError):  # a port taken meanwhile stays out
                slirp.add_forward(self.bdir / slirp.API_SOCKET, slirp_forward(record))

    def _start_porter(self) -> None:
        """Fork the port handler (the next sync binds its listeners)."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:
            try:
                close_fds_except({self.exit_r, ready_w, self.ns_fd, 2})
                control = self.bdir / porter.CONTROL_SOCKET
                porter.run(self.exit_r, control, ready_w, self.ns_fd)
            finally:
                os._exit(1)
        os.close(ready_w)
        ready = os.read(ready_r, 1) if wait_readable([ready_r], READY_TIMEOUT) else b""
        os.close(ready_r)
        if ready != b"1":  # hung or failed: ended here, tried again after RESTART_RETRY
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise SlirpError("the port handler did not start")
        self.children[child] = "porter"
        self.porter = ProcessId.of(child)
        self.bound = {}

    def _ports(self, networks: dict[str, NetworkRecord]) -> None:
        """Have the port handler listen for each splice forward whose container runs,
        and send it into that container's namespace now; a listener whose container
        changed is swapped in one step. ``self.forwarded``: as the sync before this
        (in every request that gets here) read and pruned them."""
        wanted = _backends(networks, self.forwarded, self.held, self._book().first_network)
        control = self.bdir / porter.CONTROL_SOCKET
        for key in self._released(wanted):
            porter.request(control, "unbind", id=self.bound.pop(key)["id"])
        self.unbound = []
        for (host_addr, host_port), (addr, port, held) in wanted.items():
            backend: dict[str, Any] = {"addr": addr, "port": port, "inode": held.inode}
            have = self.bound.get((host_addr, host_port))
            if have is not None and {k: have[k] for k in backend} != backend:
                porter.request(control, "swap", (held.ns_fd,), id=have["id"], **backend)
                have.update(backend)
            elif have is None:
                at: dict[str, Any] = {"host_addr": host_addr, "host_port": host_port}
                try:
                    entry = porter.request(control, "bind", (held.ns_fd,), **at, **backend)
                except OSError as exc:
                    self.unbound.append({**at, "errno": exc.errno})
                    continue
                self.bound[(host_addr, host_port)] = {**entry, "inode": held.inode}

    def _released(self, wanted: dict[tuple[str, int], Any]) -> list[tuple[str, int]]:
        """The listeners to let go: those of host ports no forward record names any
        more, and those whose container's namespace is not held now (its init ended).
        One whose record is still there, but whose container this sync did not find
        under that name in the book (it is being renamed, or replaced), keeps its
        listener as it was: a sync never frees a host port it was not told to."""
        recorded = {(r.host_addr, r.host_port) for r in self.forwarded if r.handler == "splice"}
        inodes = {held.inode for held in self.held.values()}
        return [
            key
            for key, have in self.bound.items()
            if key not in wanted and (key not in recorded or have["inode"] not in inodes)
        ]

    def _hold(self, networks: dict[str, NetworkRecord], name: str, fds: list[int]) -> None:
        """Keep copies of wired container ``name``'s namespace and init pidfd (``fds``)
        for the forwards that go to it, in place of any earlier ones."""
        container_ns, pidfd = fds
        inode = os.fstat(container_ns).st_ino
        address = _address_of(networks, name, self._book().first_network(name))
        for key in [
            key for key, held in self.held.items() if key == address or held.inode == inode
        ]:
            self._let_go(key)
        if address is not None:
            self.held[address] = _Held(os.dup(container_ns), os.dup(pidfd), inode)
        self._ports(networks)

    def _ended(self, address: str) -> None:
        """The init of the container held at ``address`` was seen to end: its namespace
        and its forwards go, unless a wire of this same round held another container
        there (its pidfd may even have the number the old one had)."""
        held = self.held.get(address)
        if held is None or not wait_readable([held.pidfd], 0):
            return
        self._let_go(address)
        with contextlib.suppress(OSError):  # a dying handler: its restart binds
            self.sync()

    def _let_go(self, address: str) -> None:
        held = self.held.pop(address)
        os.close(held.ns_fd)
        os.close(held.pidfd)

    def _start_dns(self) -> None:
        if importlib.util.find_spec(DNS_MODULE) is None:
            return
        argv = [sys.executable, "-m", DNS_MODULE, str(self.bdir / "dns.json")]
        argv += ["--exit-fd", str(self.exit_r)]
        ns_fd = self.ns_fd

        def enter() -> None:
            sc.setns(ns_fd, sc.CLONE_NEWNET)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its handler is set

        with open(self.bdir / "dns.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(self.exit_r,),
                preexec_fn=enter,
            )
        proc.returncode = 0  # reaped through its pid, by this process
        self.dns = ProcessId.of(proc.pid)
        self.children[proc.pid] = "dns"

    def _listen(self) -> socket.socket:
        path = self.bdir / "ctl.sock"
        path.unlink(missing_ok=True)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        ctl.bind(str(path))
        ctl.listen(16)
        return ctl

    def _record(self) -> None:
        keeper = {
            "supervisor": _json(ProcessId.of(os.getpid())),
            "agent": _json(ProcessId.of(self.agent.pid) if self.agent else None),
            "slirp": _json(self.slirp),
            "porter": _json(self.porter),
            "dns": _json(self.dns),
            "userns": _own_userns(),
        }
        write_json_atomic(self.bdir / "keeper.json", keeper)

    def sync(self) -> dict[str, NetworkRecord]:
        """Bring the namespace in line with the address book; return the book's networks."""
        networks = read_networks(self.state)  # replaced whole by its writers: no lock
        self._apply(self._links(networks))
        self._ports(networks)
        self._write_records(networks)
        self._await_dns()
        return networks

    def _links(self, networks: dict[str, NetworkRecord]) -> dict[str, Any]:
        """The agent's ``links`` request for ``networks`` (the forwards of containers
        that are gone are dropped from the forwards file on the way)."""
        with locked(self.state):
            loaded = _read_forwards(self.bdir)
            if loaded is not None:  # unreadable: the forwards as the last sync read them
                self.forwarded = [r for r in loaded if _exists(self.state, r.container)]
                if self.forwarded != loaded:
                    save_forwards(self.bdir, self.forwarded)
        records = self.forwarded
        return {
            "bridges": _bridge_list(networks),
            "ruleset": nft.ruleset(
                _bridges(networks), _dnats(networks, records, self._book().first_network)
            ),
        }

    def _apply(self, links: dict[str, Any]) -> None:
        if links != self.applied:
            self._agent().call("links", (), **links)
            self.applied = links

    def _write_records(self, networks: dict[str, NetworkRecord]) -> None:
        """The DNS responder's records file, when they changed (it reads the file again
        before it answers the next query)."""
        dns = _records(networks, self._book())
        if dns != self.records:
            write_json_atomic(self.bdir / "dns.json", dns)
            self.records = dns

    def _await_dns(self) -> None:
        """Once the responder listens on every network's gateway, so that a container
        started right after its network was made never has its first query refused."""
        listen = {str(server["listen"]) for server in (self.records or {}).get("servers", [])}
        new, self.listening = listen - self.listening, listen & self.listening
        if not new or self.dns is None:
            return
        self.dns.send(signal.SIGHUP)
        self._agent().call("listening", (), addresses=sorted(new), port=53)
        self.listening |= new

    def _book(self) -> _AliasBook:
        if self.aliases is None:
            self.aliases = _AliasBook(self.state)
        return self.aliases

    def _agent(self) -> agent_process.Agent:
        assert self.agent is not None
        return self.agent

    def _serve(self, ctl: socket.socket) -> NoReturn:
        landmark = Landmark(ctl.getsockname())
        while True:
            pidfds = {os.pidfd_open(pid): pid for pid in self.children}
            ended = {held.pidfd: address for address, held in self.held.items()}
            ready = wait_readable([ctl.fileno(), *pidfds, *ended], self._quiet_for())
            for fd in pidfds:
                os.close(fd)
            if not ready and landmark.gone():  # its state folder was deleted
                self._end_all()
                os._exit(0)
            for fd in ready:
                if fd == ctl.fileno():
                    self._answer(ctl)
                elif fd in ended:
                    self._ended(ended[fd])
                else:
                    self._restart(pidfds[fd])
            self._retry_due()

    def _quiet_for(self) -> float:
        """Seconds to wait for a request or a helper's end: until the next retry."""
        if not self.pending:
            return STATE_CHECK
        return min(max(min(self.pending.values()) - time.monotonic(), 0.0), STATE_CHECK)

    def _restart(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        kind = self.children.pop(pid)
        if kind == "agent":  # the namespace went with it
            self._end_all()
            os._exit(1)
        self._bring_back(kind)

    def _bring_back(self, kind: str) -> None:
        """Start the helper ``kind`` again. A failure (slirp4netns timing out twice, the
        responder not listening) is tried again after :data:`RESTART_RETRY`: it never
        ends the keeper, whose end takes every bridge container's network along."""
        self.pending.pop(kind, None)
        if kind in self.children.values():
            return  # it started, then failed on: its own end brings it back
        try:
            self._start(kind)
        except Exception as exc:
            print(
                f"squish network keeper: cannot start the {kind} again: {type(exc).__name__}:"
                f" {exc}; trying again in {RESTART_RETRY:g} s",
                file=sys.stderr,
                flush=True,
            )
            self.pending[kind] = time.monotonic() + RESTART_RETRY
            return
        self._record()

    def _start(self, kind: str) -> None:
        if kind == "slirp":
            self._start_slirp()
        elif kind == "porter":
            self._start_porter()
            with contextlib.suppress(OSError):  # it died again: its restart binds
                self.sync()
        else:
            self._start_dns()
            self.listening = set()  # a new responder: wait for each address again
            self._await_dns()

    def _retry_due(self) -> None:
        now = time.monotonic()
        for kind in [kind for kind, due in self.pending.items() if due <= now]:
            self._bring_back(kind)

    def _answer(self, ctl: socket.socket) -> None:
        conn, _ = ctl.accept()
        with conn:
            reply: dict[str, Any] = {"ok": True, "keeper": _json(ProcessId.of(os.getpid()))}
            fds: list[int] = []
            try:
                conn.settimeout(10.0)
                request, fds = _receive(conn)
                op = request.get("op")
                if op == "sync":
                    networks = self.sync()
                    if len(fds) == 2:  # a new container the agent wired directly
                        self._hold(networks, str(request["name"]), fds)
                    reply["listeners"] = list(self.bound.values())
                    reply["unbound"] = self.unbound
                elif op == "wire":
                    self._wire(request, fds[0])
                    if len(fds) == 2:  # (a holder started before the port handler sends one)
                        self._hold(read_networks(self.state), str(request["name"]), fds)
                elif op == "stop":
                    self._stop(conn)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                for fd in fds:
                    os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode())

    def _wire(self, request: dict[str, Any], container_ns: int) -> None:
        """A container's veth pairs (see :func:`runtime.network.bridge.wire`), with a
        sync. When every bridge is there already, the agent makes the pairs while this
        process works out the rest of the sync (rules, DNS records), and the rules are
        loaded after (they hold nothing the pairs need); a new bridge comes first."""
        networks = read_networks(self.state)
        if self.applied is None or _bridge_list(networks) != self.applied["bridges"]:
            networks = self.sync()
        name, joins = str(request["name"]), [str(n) for n in request["joins"]]
        plug = wiring.plan(name, joins, networks, os.fstat(container_ns).st_ino)
        self._agent().send("plug", (container_ns,), fresh=bool(request["fresh"]), **plug)
        failed: OSError | None = None
        try:
            links = self._links(networks)
            self._write_records(networks)
        finally:
            try:
                self._agent().result("plug")
            except OSError as exc:  # raised once the sync is done, as when it came first
                failed = exc
        self._apply(links)
        self._ports(networks)
        self._await_dns()
        if failed is not None:
            raise failed

    def _stop(self, conn: socket.socket) -> NoReturn:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"ok": True}).encode())
        self._end_all()
        os._exit(0)

    def _end_all(self) -> None:
        for process in (self.slirp, self.porter, self.dns):
            if process is not None:
                process.send(signal.SIGKILL)
        if self.agent is not None:
            os.kill(self.agent.pid, signal.SIGKILL)  # a child not yet waited for: its pid


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """A request and the descriptors that came with it."""
    data, fds = receive_with_fds(conn, 1 << 16, 4)
    try:
        rest = jsonsock.read_to_eof(conn, 1 << 16, within=10.0) if data else b""
        return jsonsock.decode_object(data + rest), fds
    except BaseException:  # a request that cannot be read keeps none of its descriptors
        for fd in fds:
            os.close(fd)
        raise


def _json(process: ProcessId | None) -> dict[str, int] | None:
    return process.to_json() if process is not None else None


def _bridge_list(networks: dict[str, NetworkRecord]) -> list[list[str]]:
    """The bridges of ``networks``, as the ``links`` request names them."""
    return [[netlink.bridge_name(n), r.subnet] for n, r in sorted(networks.items())]


def _bridges(networks: dict[str, NetworkRecord]) -> list[nft.Bridge]:
    return [
        nft.Bridge(netlink.bridge_name(r.name), r.subnet, r.gateway, r.internal)
        for r in networks.values()
    ]


def _address_of(
    networks: dict[str, NetworkRecord], container: str, first: str | None
) -> str | None:
    """Where host forwards to ``container`` go: its address on ``first``, the first network
    of its spec; else (no spec) on the first network it holds a lease on. Not simply the
    latter: a lease on a network being left sorts wherever it does until it is released."""
    record = networks.get(first) if first is not None else None
    if record is not None and container in record.leases:
        return record.leases[container]
    return next((n.leases[container] for n in networks.values() if container in n.leases), None)


def _backends(
    networks: dict[str, NetworkRecord],
    records: list[ForwardRecord],
    held: dict[str, _Held],
    first: Callable[[str], str | None],
) -> dict[tuple[str, int], tuple[str, int, _Held]]:
    """(host address, host port) -> (container address, port, its namespace) of each
    splice forward whose container runs (the first record of a host port wins: a later
    one is a conflict, never a move)."""
    wanted: dict[tuple[str, int], tuple[str, int, _Held]] = {}
    for record in records:
        if record.handler != "splice":
            continue  # slirp4netns serves it: no spec to read
        address = _address_of(networks, record.container, first(record.container))
        namespace = held.get(address) if address is not None else None
        if address is not None and namespace is not None:
            key = (record.host_addr, record.host_port)
            wanted.setdefault(key, (address, record.port, namespace))
    return wanted


def _dnats(
    networks: dict[str, NetworkRecord],
    records: list[ForwardRecord],
    first: Callable[[str], str | None],
) -> list[nft.Dnat]:
    dnats = []
    for record in records:
        address = _address_of(networks, record.container, first(record.container))
        if address is not None and record.handler != "splice":
            dnats.append(nft.Dnat(record.proto, record.guest_port, address, record.port))
    return dnats


def slirp_forward(record: ForwardRecord) -> Forward:
    return Forward(record.proto, record.host_addr, record.host_port, record.guest_port)
