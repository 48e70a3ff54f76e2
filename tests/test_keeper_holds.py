"""What the bridge keeper holds for the port handler: a wired container's namespace,
let go when its init ends, and only then (the pidfd that said so may carry the number of
a newer container's, held at the same address in the same round)."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.network import shared
from runtime.util.processes import wait_readable


def holding(pidfd: int) -> shared._Held:
    ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return shared._Held(ns, pidfd, os.fstat(ns).st_ino)


def keeper(tmp_path: Path) -> tuple[shared._Supervisor, list[str]]:
    supervisor = shared._Supervisor(tmp_path, tmp_path)
    synced: list[str] = []

    def sync() -> dict[str, object]:
        synced.append("sync")
        return {}

    supervisor.sync = sync  # type: ignore[method-assign,assignment]
    return supervisor, synced


def test_an_ended_init_lets_its_namespace_go_and_syncs(tmp_path: Path) -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    pidfd = os.pidfd_open(child)
    try:
        assert wait_readable([pidfd], 5.0)  # ended, not yet reaped
        supervisor, synced = keeper(tmp_path)
        supervisor.held["10.89.0.2"] = holding(pidfd)
        supervisor._ended("10.89.0.2")
        assert supervisor.held == {} and synced == ["sync"]
    finally:
        os.waitpid(child, 0)


def test_a_container_held_again_at_that_address_is_kept(tmp_path: Path) -> None:
    supervisor, synced = keeper(tmp_path)
    supervisor.held["10.89.0.2"] = holding(os.pidfd_open(os.getpid()))  # a live init
    supervisor._ended("10.89.0.2")
    assert list(supervisor.held) == ["10.89.0.2"] and synced == []
    supervisor._let_go("10.89.0.2")
    supervisor._ended("10.89.0.2")  # let go already: nothing to do
    assert synced == []
