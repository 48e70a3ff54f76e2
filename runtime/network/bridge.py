"""Bridge networks (``network = "bridge"``): containers join bridges in one network
namespace shared by the user's containers (:mod:`runtime.network.shared`), each through a
veth pair, with the address the address book leased it.

At a launch (in the spare, in the holder's user namespace) the driver makes sure the
shared namespace's keeper runs and matches the book, then wires one veth pair per network
the container joins: ``eth0`` for the first (its gateway carries the default route unless
the network is internal), ``eth1``... for the others. The pairs go when the container's
namespace goes. There is no helper of the container's own: host forwards go through the
shared slirp4netns (:class:`BridgeForwards`), which its keeper restarts when it dies.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import PortInUse, SlirpError
from runtime.network import agent, porter, shared, slirp, wiring
from runtime.network.addresses import NetworkRecord, open_book, read_networks
from runtime.network.slirp import LiveForward
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from runtime.wire import Forward

__all__ = (
    "BridgeDriver",
    "BridgeForwards",
    "Wiring",
    "begin_wire",
    "drop_forwards",
    "etc_facts",
    "joined",
    "live_forwards",
    "prewarm",
    "renaming",
    "state_of",
    "sync_if_running",
    "wire",
    "wired_to",
)


WIRED = "wired.json"
"""In the container folder: the keeper whose namespace the container is wired into."""


def wired_to(cdir: Path) -> object:
    """The keeper container folder ``cdir`` was last wired to (None: never)."""
    wired = read_json(cdir / WIRED)
    return wired.get("keeper") if isinstance(wired, dict) else None


def state_of(cdir: Path) -> Path:
    """The state folder of container folder ``cdir`` (``STATE/containers/NAME``)."""
    return cdir.parent.parent


def joined(cdir: Path) -> list[str]:
    """The networks the container of folder ``cdir`` joins, in its spec's order (read as
    plain JSON: the launching side loads no pydantic)."""
    spec = read_json(cdir / "spec.json")
    entries = spec.get("networks", []) if isinstance(spec, dict) else []
    return [str(entry["network"]) for entry in entries]


def etc_facts(state: Path, name: str, joins: list[str]) -> tuple[str, str | None]:
    """The address container ``name``'s hostname resolves to (its first network's) and
    its nameserver: the first network's DNS responder, else slirp's forwarder unless
    the network is internal (then none)."""
    networks = read_networks(state)
    first = networks.get(joins[0]) if joins else None
    if first is None or name not in first.leases:
        return "127.0.1.1", None
    if first.dns:
        return first.leases[name], first.gateway
    return first.leases[name], None if first.internal else slirp.DNS_ADDR


def sync_if_running(state: Path) -> None:
    """Bring the shared namespace in line with the book, when its keeper runs. A keeper
    that dies during the call fails nothing: the book is already right (callers change
    it first), and the next keeper syncs from it when it starts."""
    if shared.slirp_identity(state) is None:
        return
    try:
        shared.call(state, "sync")
    except OSError:
        if shared.supervisor_alive(state):
            raise


def drop_forwards(state: Path, name: str) -> None:
    """Take container ``name``'s host forwards out of the shared slirp4netns, the port
    handler and the rules (it stopped, or starts again and adds them anew)."""
    with shared.locked(state) as bdir:
        records = shared.load_forwards(bdir)
        gone = [r for r in records if r.container == name]
        if not gone:
            return
        shared.save_forwards(bdir, [r for r in records if r.container != name])
    if shared.slirp_identity(state) is None:
        return  # no keeper: nothing holds them
    mine = {(r.proto, r.guest_port) for r in gone if r.handler != "splice"}
    api = bdir / slirp.API_SOCKET
    for live in slirp.list_forwards(api) if mine else ():
        if (live.forward.proto, live.forward.guest_port) in mine:
            slirp.remove_forward(api, live.id)
    shared.call(state, "sync")  # the port handler lets go of the others


@contextlib.contextmanager
def renaming(state: Path, name: str, new_name: str) -> Iterator[None]:
    """Container ``name`` becomes ``new_name`` in the block (its folder renamed, its
    leases moved); its host forwards are recorded under the new name as the block ends,
    all under the forwards file's lock, which a keeper's sync holds while it reads the
    forwards and looks for their containers' folders: no sync sees the folder under one
    name and its forwards under the other (it would drop them as a removed container's).
    Then the keeper syncs (its rules and DNS records follow the book). Nothing is
    renamed when the block fails."""
    with shared.locked(state) as bdir:
        yield
        records = shared.load_forwards(bdir)
        if any(r.container == name for r in records):
            for record in records:
                if record.container == name:
                    record.container = new_name
            shared.save_forwards(bdir, records)
    sync_if_running(state)


def wire(
    state: Path,
    name: str,
    joins: list[str],
    container_ns: int,
    init_pid: int,
    *,
    fresh: bool = False,
) -> None:
    """Make container ``name``'s interfaces match ``joins`` (the networks it is on, in
    order), in its network namespace ``container_ns``: a veth pair for each network it
    joins anew, the pair of each network it left deleted (its inside end goes with it),
    the default route through the first network unless that one is internal. Leases
    come first, so the keeper's sync makes any network the container brought along.
    ``fresh``: a new namespace, so every pair is made anew (the kernel deletes those of
    an ended namespace a little later, and one may still be there). The keeper has the
    namespace's agent do the work with the descriptor this sends it, and keeps it while
    the container's init ``init_pid`` runs, for the port handler."""
    begin_wire(state, name, joins, container_ns, init_pid, fresh=fresh).done()


class Wiring:
    """A wire asked of the keeper (:func:`begin_wire`): :meth:`done` waits for it."""

    def __init__(self, state: Path, name: str, asked: shared.Asked, pidfd: int) -> None:
        self.state = state
        self.name = name
        self.asked = asked
        self.pidfd = pidfd
        self.direct: _Direct | None = None

    def done(self) -> dict[str, Any]:
        """Once the container is wired (OSError when it could not be), recorded in its
        folder with the keeper that did it; the keeper's answer. With a direct plug, the
        keeper of the sync is recorded as soon as it answers, while the agent may still
        be plugging (the usual last step of the network's start), and again only when
        the plug's own wiring settled on another."""
        try:
            reply = self.asked.answer()
            if self.direct is not None:
                self._record(reply)
                settled = self.direct.settled(reply)
                if settled["keeper"] != reply["keeper"]:
                    self._record(settled)
                return settled
            self._record(reply)
            return reply
        finally:
            os.close(self.pidfd)

    def _record(self, reply: dict[str, Any]) -> None:
        wired = {"keeper": reply["keeper"]}
        write_json_atomic(self.state / shared.CONTAINERS / self.name / WIRED, wired)


@dataclass
class _Direct:
    """A new container's pairs asked of the agent itself, beside the keeper's sync."""

    sent: agent.Direct | None
    """None: no agent took the plug."""
    through_keeper: Callable[[], dict[str, Any]]
    """The wire through the keeper, for when the direct plug did not do it."""

    def settled(self, synced: dict[str, Any]) -> dict[str, Any]:
        """The keeper's answer to record: the sync's when the agent of that very keeper
        made the pairs; else (no agent answered, a bridge new to the namespace was not
        there yet, the keeper changed in between) the keeper's own wire's."""
        try:
            plugged = self.sent.answer() if self.sent is not None else None
        except OSError:
            plugged = None
        if plugged is not None and plugged.get("keeper") == synced["keeper"]:
            return synced
        return self.through_keeper()


def begin_wire(
    state: Path,
    name: str,
    joins: list[str],
    container_ns: int,
    init_pid: int,
    *,
    fresh: bool = False,
    before_sync: Callable[[], None] = lambda: None,
) -> Wiring:
    """:func:`wire`, only asked: the caller does other work while the keeper wires, then
    waits with :meth:`Wiring.done` (``container_ns`` stays open until then); the book is
    read once for both the leases and the plan. A new
    namespace's pairs (``fresh``) are asked of the keeper's agent directly, while the
    keeper syncs (the DNS records and rules follow the book before it answers). The
    keeper keeps the namespace and a pidfd of ``init_pid`` for the port handler.
    ``before_sync`` runs once the agent has the plug, before the keeper is asked: what
    the keeper's sync is to read (a new container's forwards) is written there."""
    networks = _leased(state, name, joins)
    pidfd = os.pidfd_open(init_pid)
    try:
        fds = (container_ns, pidfd)
        return _ask_wire(state, name, joins, fds, networks, fresh=fresh, before=before_sync)
    except BaseException:
        os.close(pidfd)
        raise


def _leased(state: Path, name: str, joins: list[str]) -> dict[str, NetworkRecord]:
    """The book's networks, with a lease of container ``name`` on each of ``joins``."""
    networks = read_networks(state)  # the usual case reads, never locks
    if all(n in networks and name in networks[n].leases for n in joins):
        return networks
    with open_book(state) as book:
        for network in joins:
            if network not in book.networks:
                book.add_network(network, None)  # removed while the container was stopped
            book.lease(network, name)  # kept if it has one
    return read_networks(state)


def _ask_wire(
    state: Path,
    name: str,
    joins: list[str],
    fds: tuple[int, int],
    networks: dict[str, NetworkRecord],
    *,
    fresh: bool,
    before: Callable[[], None],
) -> Wiring:
    container_ns, pidfd = fds
    args: dict[str, Any] = {"name": name, "joins": joins, "fresh": fresh}
    if not fresh:
        before()
        return Wiring(state, name, shared.ask_started(state, "wire", fds, **args), pidfd)
    # The pairs first: the agent's part is the longest, and nothing in it waits for the
    # keeper's sync (asked right after, with the descriptors it keeps).
    plug = wiring.plan(name, joins, networks, os.fstat(container_ns).st_ino)
    sent = shared.plug_directly(state, {"fresh": True, **plug}, container_ns)
    try:
        before()
        asked = shared.ask_started(state, "sync", fds, name=name)
    except BaseException:
        if sent is not None:
            sent.sock.close()
        raise
    wiring_ = Wiring(state, name, asked, pidfd)
    wiring_.direct = _Direct(sent, lambda: shared.call(state, "wire", fds=fds, **args))
    return wiring_


def live_forwards(state: Path) -> dict[str, list[LiveForward]]:
    """The forwards the shared slirp4netns and the port handler hold now, by bridge
    container: one look at the records and one request to each, which observing every
    container needs once, not once per container (each answer lists every container's
    forwards)."""
    with shared.locked(state) as bdir:
        loaded = shared.load_forwards(bdir)
    found: dict[str, list[LiveForward]] = {}
    slirped = {(r.proto, r.guest_port): r for r in loaded if r.handler != "splice"}
    if slirped:
        for live in slirp.list_forwards(shared.bridge_dir(state) / slirp.API_SOCKET):
            record = slirped.get((live.forward.proto, live.forward.guest_port))
            if record is not None and live.forward.host_port == record.host_port:
                live_forward = LiveForward(live.id, _forward(record))
                found.setdefault(record.container, []).append(live_forward)
    spliced = {(r.host_addr, r.host_port, r.port): r for r in loaded if r.handler == "splice"}
    if spliced:
        for entry in _listeners(state):
            record = spliced.get((entry["host_addr"], entry["host_port"], entry["port"]))
            if record is not None:
                found.setdefault(record.container, []).append(
                    LiveForward(int(entry["id"]), _forward(record))
                )
    return found


def _listeners(state: Path) -> tuple[dict[str, Any], ...]:
    """The port handler's listeners now (it is the truth, as slirp4netns' list is)."""
    control = shared.bridge_dir(state) / porter.CONTROL_SOCKET
    try:
        listeners = porter.request(control, "list")["listeners"]
    except (OSError, ValueError) as exc:
        raise SlirpError(f"the port handler at {control} is unreachable: {exc}") from exc
    return tuple(listeners)


class BridgeForwards:
    """Host forwards of one bridge container: TCP through the port handler of the shared
    namespace when ``handler`` is ``splice`` (:mod:`runtime.network.porter`), the rest
    through the shared slirp4netns."""

    def __init__(self, state: Path, name: str, handler: str = porter.HANDLERS[0]) -> None:
        self.state = state
        self.name = name
        self.handler = handler
        self.api = shared.bridge_dir(state) / slirp.API_SOCKET

    def add(self, forward: Forward) -> int:
        # the sync makes the DNAT rule before the first packet
        return self.settle(self.record((forward,)), lambda: shared.call(self.state, "sync"))[0]

    def record(self, forwards: Sequence[Forward]) -> list[shared.ForwardRecord]:
        """Write ``forwards`` into the forwards file, each with a guest port of its own
        (a record of this container's for the same forward, left by a client killed
        before it was bound, replaced): the keeper's next sync serves them.
        :class:`PortInUse` when another container's record holds a host port."""
        made: list[shared.ForwardRecord] = []
        if not forwards:  # a container without any: the file is not even read
            return made
        with shared.locked(self.state) as bdir:
            records = shared.load_forwards(bdir)
            for forward in forwards:
                mine = [r for r in records if r.container == self.name and _same(r, forward)]
                for left in mine:
                    records.remove(left)
                _check_unclaimed(records, forward)
                record = shared.ForwardRecord(
                    self.name,
                    forward.proto,
                    forward.host_addr,
                    forward.host_port,
                    forward.guest_port,
                    shared.free_guest_port(records, forward.proto),
                    self.handler if forward.proto == "tcp" else "slirp4netns",
                )
                records.append(record)
                made.append(record)
            shared.save_forwards(bdir, records)
        return made

    def settle(
        self, records: list[shared.ForwardRecord], sync: Callable[[], dict[str, Any]]
    ) -> list[int]:
        """The ids of the forwards of ``records`` once ``sync`` returned the answer of a
        keeper's sync that read them (it made their DNAT rules and bound their
        listeners): a listener's id as the sync reported it, a forward through
        slirp4netns added there now. On a failure (a host port taken, no answer) the
        records are dropped again."""
        try:
            synced = sync()
            return [self._bound(record, synced) for record in records]
        except BaseException:
            self.forget(records)
            raise

    def forget(self, records: list[shared.ForwardRecord]) -> None:
        """Drop ``records`` from the forwards file (all of them, then one sync)."""
        self._drop({(record.proto, record.guest_port) for record in records})

    def _bound(self, record: shared.ForwardRecord, synced: dict[str, Any]) -> int:
        if record.handler == "splice" and "listeners" in synced:
            return _listener_id(synced, _forward(record))
        if record.handler == "splice":  # a keeper started before the port handler existed
            self._through_slirp(record)
        return _added_to_slirp(self.api, shared.slirp_forward(record))

    def _through_slirp(self, record: shared.ForwardRecord) -> None:
        """Record ``record`` as served by slirp4netns, and have its DNAT rule made."""
        with shared.locked(self.state) as bdir:
            records = shared.load_forwards(bdir)
            for r in records:
                if (r.proto, r.guest_port) == (record.proto, record.guest_port):
                    r.handler = record.handler = "slirp4netns"
            shared.save_forwards(bdir, records)
        shared.call(self.state, "sync")

    def take(self, forward: Forward, giver: str) -> int | None:
        """Hand ``forward`` of container ``giver`` over to this one in one step: the
        port handler's listener stays open and sends the next connection here. None
        when ``giver`` holds no such forward through the port handler."""
        with shared.locked(self.state) as bdir:
            records = shared.load_forwards(bdir)
            record = next((r for r in records if r.container == giver and _same(r, forward)), None)
            if record is None or record.handler != "splice":
                return None
            record.container = self.name
            shared.save_forwards(bdir, records)
        return _listener_id(shared.call(self.state, "sync"), forward)

    def remove(self, forward_id: int) -> None:
        if forward_id >= porter.FIRST_ID:
            self._remove_spliced(forward_id)
            return
        for live in slirp.list_forwards(self.api):
            if live.id == forward_id:
                slirp.remove_forward(self.api, forward_id)
                self._drop({(live.forward.proto, live.forward.guest_port)})

    def _remove_spliced(self, forward_id: int) -> None:
        entry = next((e for e in _listeners(self.state) if e["id"] == forward_id), None)
        if entry is None:
            return
        with shared.locked(self.state) as bdir:
            records = shared.load_forwards(bdir)
        key = (entry["host_addr"], entry["host_port"])
        mine = (
            r for r in records if r.container == self.name and (r.host_addr, r.host_port) == key
        )
        self._drop({(r.proto, r.guest_port) for r in mine})

    def list(self) -> list[LiveForward]:
        return live_forwards(self.state).get(self.name, [])

    def find(self, forward: Forward) -> LiveForward | None:
        return next((live for live in self.list() if live.forward == forward), None)

    def _drop(self, keys: set[tuple[str, int]]) -> None:
        """Drop the records of ``keys`` (protocol, guest port), then have the keeper sync."""
        if not keys:
            return
        with shared.locked(self.state) as bdir:
            records = shared.load_forwards(bdir)
            kept = [r for r in records if (r.proto, r.guest_port) not in keys]
            shared.save_forwards(bdir, kept)
        shared.call(self.state, "sync")


def _added_to_slirp(api: Path, forward: Forward) -> int:
    """Add ``forward`` to the shared slirp4netns; its id. A keeper started after the
    forward was recorded (by the wiring of its container) added it already, with every
    other it read: then that one's id."""
    try:
        return slirp.add_forward(api, forward)
    except OSError:
        live = next((each for each in slirp.list_forwards(api) if each.forward == forward), None)
        if live is None:
            raise
        return live.id


@contextlib.contextmanager
def _joining(cdir: Path) -> Iterator[None]:
    try:
        yield
    except PortInUse:  # a forward recorded on the way: the caller is told which port
        raise
    except OSError as exc:
        raise SlirpError(f"cannot join container {cdir.name!r} to its networks: {exc}") from exc


def _check_unclaimed(records: list[shared.ForwardRecord], forward: Forward) -> None:
    """:class:`PortInUse` when a container already holds the host port of ``forward``
    through the port handler (whose listener the plain check sees as anyone's)."""
    port = (forward.proto, forward.host_addr, forward.host_port)
    for r in records:
        if (r.proto, r.host_addr, r.host_port) == port:
            holder = f"container {r.container!r}"
            raise PortInUse(forward.host_addr, forward.host_port, forward.proto, holder)


def _same(record: shared.ForwardRecord, forward: Forward) -> bool:
    return _forward(record) == forward


def _forward(record: shared.ForwardRecord) -> Forward:
    return Forward(record.proto, record.host_addr, record.host_port, record.port)


def _listener_id(reply: dict[str, Any], forward: Forward) -> int:
    """The id of the port handler's listener for ``forward``, as a keeper's sync reported
    it; :class:`PortInUse` or :class:`PortPrivileged` when it could not be bound."""
    for entry in reply.get("listeners", []):
        if (entry["host_addr"], entry["host_port"]) == (forward.host_addr, forward.host_port):
            return int(entry["id"])
    failed = [f for f in reply.get("unbound", []) if f.get("host_port") == forward.host_port]
    if not failed:  # not even tried: the keeper holds no way into the container
        raise NotHeld(f"the bridge network keeper holds no namespace for {forward}'s container")
    slirp.ensure_port_free(forward)  # the likely reasons, named
    raise SlirpError(f"the port handler could not bind {forward}: {failed}")


def _begin(
    cdir: Path, target_pid: int, netns_fd: int, before_sync: Callable[[], None]
) -> tuple[Wiring, int]:
    """Ask for the wiring of the new container of ``cdir`` with init ``target_pid`` and
    network namespace ``netns_fd`` (``before_sync``: see :func:`begin_wire`); the wiring,
    and a copy of that namespace's descriptor (open until :func:`_wired`)."""
    container_ns = os.dup(netns_fd)
    try:
        with _joining(cdir):
            wiring_ = begin_wire(
                state_of(cdir),
                cdir.name,
                joined(cdir),
                container_ns,
                target_pid,
                fresh=True,
                before_sync=before_sync,
            )
    except BaseException:
        os.close(container_ns)
        raise
    return wiring_, container_ns


def _wired(
    cdir: Path, wiring_: Wiring, container_ns: int, recorded: list[shared.ForwardRecord]
) -> dict[str, Any]:
    """The answer of the sync that wired the container, once it is wired; a sync of its
    own when the keeper wired it without one (its ``wire``) and forwards wait for it."""
    try:
        with _joining(cdir):
            synced = wiring_.done()
    finally:
        os.close(container_ns)
    if recorded and "listeners" not in synced:
        return shared.call(state_of(cdir), "sync")
    return synced


def prewarm() -> None:
    """Run a start's own steps of the network once on samples, in a process forked to
    launch one (a spare) before its request comes: a fork copies each memory page it
    writes to, reference counts included, and the steps from the book read to the plug
    sent took 0.5-0.8 ms in a fresh spare, tens of µs in a warm process. Nothing is
    read, written or sent."""
    record = NetworkRecord("warm", "10.255.255.0/24", leases={"warm": "10.255.255.2"})
    book = {"warm": NetworkRecord.from_json("warm", json.loads(json.dumps(record.to_json())))}
    json.dumps(wiring.plan("warm", ["warm"], book, 1))
    forward = Forward("tcp", "127.0.0.1", 1, 1)
    made = shared.ForwardRecord("warm", "tcp", "127.0.0.1", 1, 1, shared.FIRST_GUEST_PORT)
    records = [shared.ForwardRecord(**json.loads(json.dumps(made.__dict__)))]
    _check_unclaimed([], forward)
    _same(records[0], forward)
    shared.free_guest_port(records, "tcp")
    _listener_id({"listeners": [{"host_addr": "127.0.0.1", "host_port": 1, "id": 1}]}, forward)


class NotHeld(SlirpError):
    """The keeper has no copy of the container's network namespace to send the port
    handler into (a keeper that started after it was wired and missed its hand-over):
    wiring the container again hands the namespace over."""


class BridgeDriver:
    """Containers on bridges in the shared namespace (``network = "bridge"``)."""

    name = "bridge"
    dns_server: str | None = None  # per container: see runtime.client.binds
    sockets: tuple[str, ...] = ()
    has_helper = False

    def container_addr(self, name: str) -> str:
        return "127.0.1.1"  # its addresses differ per network; its name stays its own

    def check_host(self) -> None:
        slirp.slirp_binary()
        slirp.check_tun()
        from runtime.network import nft

        nft.nft_binary()

    def ensure_port_free(self, forward: Forward) -> None:
        slirp.ensure_port_free(forward)

    def start(
        self,
        cdir: Path,
        sandbox: bool,
        *,
        target_pid: int,
        netns_fd: int,
        exit_fd: int,
        forwards: Sequence[Forward] = (),
        handler: str = porter.HANDLERS[0],
    ) -> Callable[[], tuple[None, list[int]]]:
        """The keeper is asked to wire the container at once, and awaited at the end: the
        launch goes on meanwhile (its init mounts its filesystem). Its forwards are
        recorded while the agent plugs it, before the keeper is asked, so that the sync
        that wires it binds their listeners and makes their rules as well: they cost no
        round trip of their own."""
        table = self.forwards(cdir, cdir.name, handler)
        recorded: list[shared.ForwardRecord] = []
        try:
            asked = _begin(
                cdir, target_pid, netns_fd, lambda: recorded.extend(table.record(forwards))
            )
        except BaseException:
            table.forget(recorded)
            raise
        return lambda: (None, table.settle(recorded, lambda: _wired(cdir, *asked, recorded)))

    def restart(self, cdir: Path, sandbox: bool, netns_fd: int, exit_fd: int) -> ProcessId:
        raise SlirpError("bridge containers share one slirp4netns; its keeper restarts it")

    def forwards(self, cdir: Path, name: str, handler: str = porter.HANDLERS[0]) -> BridgeForwards:
        return BridgeForwards(state_of(cdir), name, handler)
