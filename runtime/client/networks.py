"""Bridge networks as the client sees them: their records, the addresses of containers
on them, and attaching containers. Mixed into ``LinuxRuntime``.

Networks and leases live in the state folder's address book
(:mod:`runtime.network.addresses`): a container holds an address on each network it
joins from its create (or connect) to its remove (or disconnect), stopped or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

from runtime.api.interface import ContainerInfo, ContainerState, NetworkInfo
from runtime.api.spec import ContainerSpec, NetworkAttachment, NetworkSpec
from runtime.client import binds
from runtime.client.live import RunningOps
from runtime.errors import (
    ContainerNotFound,
    ContainerRunning,
    NetworkConflict,
    NetworkInUse,
    NetworkNotFound,
)
from runtime.network import bridge, shared
from runtime.network.addresses import AddressBook, NetworkRecord, open_book, read_networks

log = logging.getLogger(__name__)

__all__ = ("REWIRING", "NetworkOps", "differences", "lease_all")

REWIRING = "rewiring"
"""In a container's folder while a connect or disconnect changes its record, leases and
interfaces: a client killed in the middle leaves it, and the next sweep finishes the job."""


@contextlib.contextmanager
def _rewiring(cdir: Path) -> Iterator[None]:
    """Mark ``cdir`` for the block; the mark stays if the block does not finish."""
    mark = cdir / REWIRING
    mark.touch()
    yield
    mark.unlink()


def _info_of(record: NetworkRecord) -> NetworkInfo:
    return NetworkInfo(
        name=record.name,
        subnet=record.subnet,
        gateway=record.gateway,
        internal=record.internal,
        dns=record.dns,
        labels=dict(record.labels),
        containers=dict(record.leases),
    )


def differences(record: NetworkRecord, spec: NetworkSpec) -> list[str]:
    """How the recorded network differs from the settings asked for."""
    found = []
    if spec.subnet is not None and spec.subnet != record.subnet:
        found.append(f"subnet {record.subnet}, asked {spec.subnet}")
    for key in ("internal", "dns", "labels"):
        have, want = getattr(record, key), getattr(spec, key)
        if have != want:
            found.append(f"{key} {have!r}, asked {want!r}")
    return found


def _ensure(book: AddressBook, spec: NetworkSpec) -> NetworkRecord:
    record = book.networks.get(spec.name)
    if record is None:
        return book.add_network(
            spec.name, spec.subnet, internal=spec.internal, dns=spec.dns, labels=spec.labels
        )
    found = differences(record, spec)
    if found:
        raise NetworkConflict(spec.name, found)
    return record


def lease_all(state: Path, spec: ContainerSpec) -> None:
    """Give container ``spec`` an address on each network it joins; a network that does
    not exist yet is made with the default settings."""
    with open_book(state) as book:
        for attachment in spec.networks:
            if attachment.network not in book.networks:
                book.add_network(attachment.network, None)
            book.lease(attachment.network, spec.name)


class NetworkOps(RunningOps):
    """Create, list and remove networks; attach and detach containers."""

    def ensure_network(self, spec: NetworkSpec) -> NetworkInfo:
        with open_book(self.state) as book:
            info = _info_of(_ensure(book, spec))
        bridge.sync_if_running(self.state)
        return info

    def remove_network(self, name: str) -> None:
        with open_book(self.state) as book:
            record = book.networks.get(name)
            if record is None:
                return
            if record.leases:
                raise NetworkInUse(name, list(record.leases))
            del book.networks[name]
            last = not book.networks
        if last:  # nothing needs the shared namespace now
            shared.stop_supervisor(self.state)
        else:
            bridge.sync_if_running(self.state)

    def list_networks(self) -> list[NetworkInfo]:
        with open_book(self.state) as book:
            return [_info_of(record) for _, record in sorted(book.networks.items())]

    def connect(self, name: str, attachment: NetworkAttachment) -> ContainerInfo:
        with self._locked(name) as cdir:
            spec = self._spec(cdir)
            if spec.network != "bridge":
                self._refuse_running(cdir, name)  # it has no interface to add to
            if attachment.network not in read_networks(self.state):
                raise NetworkNotFound(attachment.network)
            kept = tuple(a for a in spec.networks if a.network != attachment.network)
            with _rewiring(cdir):
                with open_book(self.state) as book:
                    if attachment.network not in book.networks:
                        raise NetworkNotFound(attachment.network)
                    book.lease(attachment.network, name)
                update = {"network": "bridge", "networks": (*kept, attachment)}
                return self._rewired(cdir, spec.model_copy(update=update))

    def disconnect(self, name: str, network: str) -> ContainerInfo:
        with self._locked(name) as cdir:
            spec = self._spec(cdir)
            kept = tuple(a for a in spec.networks if a.network != network)
            if not kept:
                raise ValueError(
                    f"{network!r} is container {name!r}'s last network; recreate it with "
                    'network "none" instead'
                )
            with _rewiring(cdir):
                self._rewired(cdir, spec.model_copy(update={"networks": kept}))
                with open_book(self.state) as book:
                    book.release(network, name)  # its interface there is gone now
            bridge.sync_if_running(self.state)
            return self._info(cdir)

    def _finish_rewires(self) -> None:
        """Complete the connects and disconnects a killed client left half done: each
        marks its container's folder (:data:`REWIRING`) before it changes anything, so a
        pass looks at marked folders only, and asks the keeper for a sync only when one
        was finished: its record, /etc files and interfaces made to follow its spec
        again, then the addresses it no longer needs released."""
        finished = False
        for mark in sorted(self.containers.glob(f"*/{REWIRING}")):
            try:
                self._finish_rewire(mark.parent.name)
                finished = True
            except (ContainerNotFound, ValueError):
                continue  # removed meanwhile (its remove releases), or damaged (reported)
            except Exception:  # the next sweep tries again; the others go on
                log.exception("finishing the connect or disconnect of %s failed", mark.parent.name)
        if finished:
            bridge.sync_if_running(self.state)

    def _finish_rewire(self, name: str) -> None:
        with self._locked(name) as cdir:
            if not (cdir / REWIRING).exists():
                return  # its own client finished it meanwhile
            spec = self._spec(cdir)
            joins = {a.network for a in spec.networks}
            with open_book(self.state) as book:
                left = [n for n, r in book.networks.items() if name in r.leases and n not in joins]
            with _rewiring(cdir):
                self._rewired(cdir, spec)  # the interfaces of ``left`` go (their leases name them)
                with open_book(self.state) as book:
                    for network in left:
                        book.release(network, name)

    def _rewired(self, cdir: Path, spec: ContainerSpec) -> ContainerInfo:
        """Record ``spec`` with its networks changed; its /etc files and launch request
        follow (rewritten under a running container's feet, for a stopped one's next
        start)."""
        self._write_spec(cdir, spec)
        request = self._launch_request(cdir)
        updated = dataclasses.replace(request, network=spec.network)
        self._write_launch_request(cdir, updated)
        info = self._info(cdir)
        if info.state is ContainerState.RUNNING and info.pid is not None:
            self._rewire(cdir, spec, info.pid)  # the keeper syncs before it wires
            binds.etc_rewrite(spec, cdir)  # once its interfaces are there
        else:
            binds.etc_mounts(spec, cdir)  # the files, replaced; their mounts stay the same
            bridge.sync_if_running(self.state)
        return self._info(cdir)

    def _refuse_running(self, cdir: Path, name: str) -> None:
        if self._info(cdir, fresh=False).state is ContainerState.RUNNING:
            raise ContainerRunning(
                name,
                'only a bridge container joins networks live: recreate it with network "bridge"',
            )
