"""The address book of bridge networks: subnets and leases, kept across restarts, never
handed out twice (also when several processes lease at once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.network.addresses import PoolExhausted, open_book


def test_networks_without_subnet_get_distinct_24s(tmp_path: Path) -> None:
    with open_book(tmp_path) as book:
        a = book.add_network("a", None)
        b = book.add_network("b", None)
    assert (a.subnet, a.gateway) == ("10.89.0.0/24", "10.89.0.1")
    assert (b.subnet, b.gateway) == ("10.89.1.0/24", "10.89.1.1")


def test_an_overlapping_subnet_is_refused(tmp_path: Path) -> None:
    with open_book(tmp_path) as book:
        book.add_network("a", "10.89.0.0/16")
        with pytest.raises(ValueError, match="overlaps network 'a'"):
            book.add_network("b", "10.89.7.0/24")


def test_leases_survive_a_restart_and_are_never_given_twice(tmp_path: Path) -> None:
    with open_book(tmp_path) as book:
        book.add_network("n", "10.1.2.0/29")
        first = book.lease("n", "web")
        second = book.lease("n", "db")
    # A later process (a restarted holder or controller) reads the same leases.
    with open_book(tmp_path) as book:
        assert book.lease("n", "web") == first
        third = book.lease("n", "cache")
    assert len({first, second, third, "10.1.2.1"}) == 4


def test_a_released_address_is_free_again(tmp_path: Path) -> None:
    with open_book(tmp_path) as book:
        book.add_network("n", "10.1.2.0/30")  # one address besides the gateway
        address = book.lease("n", "web")
        with pytest.raises(PoolExhausted):
            book.lease("n", "db")
        book.release_all("web")
        assert book.lease("n", "db") == address


def test_an_error_in_the_block_saves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), open_book(tmp_path) as book:
        book.add_network("n", None)
        raise RuntimeError("interrupted")
    with open_book(tmp_path) as book:
        assert book.networks == {}


def _lease_in_child(state: Path, name: str, out: int) -> None:
    with open_book(state) as book:
        os.write(out, f"{book.lease('n', name)}\n".encode())


def test_processes_leasing_at_once_get_distinct_addresses(tmp_path: Path) -> None:
    with open_book(tmp_path) as book:
        book.add_network("n", None)
    read_end, write_end = os.pipe()
    children = []
    for index in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                _lease_in_child(tmp_path, f"c{index}", write_end)
            finally:
                os._exit(0)
        children.append(pid)
    os.close(write_end)
    for pid in children:
        os.waitpid(pid, 0)
    with os.fdopen(read_end) as lines:
        addresses = lines.read().split()
    assert len(addresses) == 8 == len(set(addresses))
    with open_book(tmp_path) as book:
        assert sorted(book.networks["n"].leases.values()) == sorted(addresses)
