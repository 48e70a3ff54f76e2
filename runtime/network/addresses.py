"""The networks of one user and the addresses handed out on them, in one JSON file.

``networks.json`` in the state folder holds every network (its subnet, gateway and
settings) and every lease (network -> container -> address). Each change happens under
an exclusive ``flock`` of ``networks.lock`` and is written atomically, so controllers,
holders and their restarts all see one truth: an address is handed out once and stays
with its container until it is released (the container left the network or was
removed); only then may it go to another.

A network without a subnet of its own gets the first /24 of ``POOL`` that overlaps no
other network; the gateway is the subnet's first host address, the bridge's.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.util.files import read_json, write_json_atomic

__all__ = (
    "LOCK_FILE",
    "POOL",
    "STATE_FILE",
    "AddressBook",
    "NetworkRecord",
    "PoolExhausted",
    "leases_of",
    "open_book",
    "read_networks",
)

STATE_FILE = "networks.json"
LOCK_FILE = "networks.lock"
POOL = ipaddress.IPv4Network("10.89.0.0/16")
"""Where subnets are picked for networks that name none: podman's habit (10.88/16 is its
default network's), one /24 each."""


class PoolExhausted(RuntimeError):
    """No free subnet, or no free address on a network's subnet."""


@dataclass
class NetworkRecord:
    """One network as recorded: its settings and its leases."""

    name: str
    subnet: str
    internal: bool = False
    dns: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    leases: dict[str, str] = field(default_factory=dict)
    """Container name -> address."""

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))

    def to_json(self) -> dict[str, Any]:
        return {
            "subnet": self.subnet,
            "internal": self.internal,
            "dns": self.dns,
            "labels": self.labels,
            "leases": self.leases,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> NetworkRecord:
        return cls(
            name=name,
            subnet=str(data["subnet"]),
            internal=bool(data.get("internal", False)),
            dns=bool(data.get("dns", True)),
            labels={str(k): str(v) for k, v in data.get("labels", {}).items()},
            leases={str(k): str(v) for k, v in data.get("leases", {}).items()},
        )


class AddressBook:
    """The networks and leases read under the lock; changes are saved on leaving
    :func:`open_book`'s block."""

    def __init__(self, networks: dict[str, NetworkRecord]) -> None:
        self.networks = networks

    def add_network(
        self,
        name: str,
        subnet: str | None,
        *,
        internal: bool = False,
        dns: bool = True,
        labels: dict[str, str] | None = None,
    ) -> NetworkRecord:
        """Record a new network, on ``subnet`` or the first free /24 of :data:`POOL`."""
        chosen = self._check_free(subnet) if subnet is not None else self._free_subnet()
        record = NetworkRecord(name, chosen, internal, dns, dict(labels or {}))
        self.networks[name] = record
        return record

    def lease(self, network: str, container: str) -> str:
        """The address of ``container`` on ``network``: its lease, or a new one (the
        lowest address nobody holds)."""
        record = self.networks[network]
        if container in record.leases:
            return record.leases[container]
        taken = {record.gateway, *record.leases.values()}
        for host in ipaddress.IPv4Network(record.subnet).hosts():
            if str(host) not in taken:
                record.leases[container] = str(host)
                return str(host)
        raise PoolExhausted(f"network {network!r} ({record.subnet}) has no free address")

    def release(self, network: str, container: str) -> None:
        record = self.networks.get(network)
        if record is not None:
            record.leases.pop(container, None)

    def release_all(self, container: str) -> None:
        """Free every address ``container`` holds (it was removed)."""
        for record in self.networks.values():
            record.leases.pop(container, None)

    def rename(self, container: str, new_name: str) -> None:
        for record in self.networks.values():
            if container in record.leases:
                record.leases[new_name] = record.leases.pop(container)

    def _overlaps(self, subnet: ipaddress.IPv4Network) -> str | None:
        for record in self.networks.values():
            if subnet.overlaps(ipaddress.IPv4Network(record.subnet)):
                return record.name
        return None

    def _check_free(self, subnet: str) -> str:
        net = ipaddress.IPv4Network(subnet)
        other = self._overlaps(net)
        if other is not None:
            raise ValueError(f"subnet {subnet} overlaps network {other!r}")
        return str(net)

    def _free_subnet(self) -> str:
        for candidate in POOL.subnets(new_prefix=24):
            if self._overlaps(candidate) is None:
                return str(candidate)
        raise PoolExhausted(f"every /24 of {POOL} is taken")


def _load(path: Path) -> dict[str, NetworkRecord]:
    data = read_json(path)
    if not isinstance(data, dict):
        return {}
    networks = data.get("networks", {})
    return {name: NetworkRecord.from_json(name, entry) for name, entry in networks.items()}


def _save(path: Path, book: AddressBook) -> None:
    networks = {name: record.to_json() for name, record in sorted(book.networks.items())}
    write_json_atomic(path, {"version": 1, "networks": networks})


@contextlib.contextmanager
def open_book(state: Path) -> Iterator[AddressBook]:
    """The address book of the state folder ``state``, locked for the block; saved when
    the block ends without an error (an error leaves the file as it was)."""
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        book = AddressBook(_load(state / STATE_FILE))
        before = copy.deepcopy(book.networks)
        yield book
        if book.networks != before:
            _save(state / STATE_FILE, book)
    finally:
        os.close(fd)


def leases_of(state: Path, container: str) -> dict[str, str]:
    """Network -> address of ``container``, read without the lock (the file is only
    ever replaced whole)."""
    return {
        name: record.leases[container]
        for name, record in sorted(_load(state / STATE_FILE).items())
        if container in record.leases
    }


def read_networks(state: Path) -> dict[str, NetworkRecord]:
    """The networks as last saved, read without the lock."""
    return _load(state / STATE_FILE)
