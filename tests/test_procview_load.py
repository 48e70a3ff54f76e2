"""The /proc view's load sampling: the processes of each container, found by its pid
namespace, with ``/proc`` read once a sample however many containers are served."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.procview import limits
from runtime.procview.server import Connection, Server
from tests.fakes import HANG_GUARD


@pytest.fixture
def container() -> Iterator[int]:
    """A process that is pid 1 of a pid namespace of its own with two ``sleep`` in it
    (as a container's init and its processes); its pid as this namespace sees it."""
    namespace = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--"]
    unshare = subprocess.Popen([*namespace, "sh", "-c", "sleep 100 & sleep 100 & wait"])
    try:
        deadline = time.monotonic() + HANG_GUARD
        while time.monotonic() < deadline:
            children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text()
            init = int(children.split()[0]) if children.split() else 0
            if init and len(limits.container_tasks(init)) == 2:
                yield init
                return
            time.sleep(0.01)
        raise AssertionError("the namespace's two sleeps never showed")
    finally:
        unshare.kill()
        unshare.wait()


def test_a_containers_tasks_are_those_of_its_pid_namespace_but_its_init(container: int) -> None:
    tasks = limits.Tasks.read()
    assert tasks.of(container) == ["S", "S"]
    assert len(tasks.of(os.getpid())) > 2, "this namespace's processes, not the container's"


def test_one_sample_reads_proc_once_for_every_container(
    container: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []
    scandir = os.scandir

    def counting(path: str) -> Iterator[os.DirEntry[str]]:
        listed.append(path)
        return scandir(path)

    monkeypatch.setattr("os.scandir", counting)
    pipes = [os.pipe() for _ in range(3)]
    server = Server(None, [Connection(read, container) for read, _ in pipes])
    try:
        server.sample_load()
        assert listed.count("/proc") == 1
        assert all(conn.load[0] == 0.0 for conn in server.connections.values())  # all asleep
    finally:
        for conn in list(server.connections.values()):
            server.drop(conn, None)
        server.workers.shutdown()
        for _, write in pipes:
            os.close(write)
