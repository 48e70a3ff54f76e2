"""A holder killed (SIGKILL) leaves nothing broken: the helpers it started end with it,
a container restarted later is not blocked by what it left, and a new holder takes the
running containers over (their commands run, their networks heal)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.api.spec import ContainerSpec, PortMapping
from runtime.client.linux import LinuxRuntime
from runtime.network import slirp
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from runtime.wire import Forward
from tests.conftest import rootless
from tests.support import free_port, http_get, kill_slirp, shell

pytestmark = rootless

SERVE = "echo served > /tmp/index.html; exec httpd -f -p 80 -h /tmp"


def served(name: str, port: int) -> ContainerSpec:
    """A web server forwarded from 127.0.0.1:``port``."""
    return shell(
        name,
        SERVE,
        network="slirp4netns",
        ports=(PortMapping(container=80, host=port),),
        stop_timeout=0,
    )


def kill_holder(rt: LinuxRuntime) -> None:
    """SIGKILL the holder this test's runtime started and wait until it is gone."""
    holder = rt.holder.identity()
    assert holder is not None
    assert holder.send(signal.SIGKILL)
    assert holder.wait_gone(30.0)


@pytest.fixture
def started_here() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; each is killed (by its pid) after the test."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def test_a_restored_helper_ends_with_the_holder_and_the_container_starts_again(
    rt: LinuxRuntime,
) -> None:
    port = free_port()
    rt.run(served("orphan", port))
    kill_slirp(rt, "orphan")
    healed = rt.restore_network("orphan").slirp_pid
    assert healed is not None
    restored = ProcessId.of(healed)
    assert restored is not None
    kill_holder(rt)
    assert restored.wait_gone(30.0)  # its exit pipe was the holder's
    rt.stop("orphan")
    rt.start("orphan")
    assert http_get(port, "/index.html") == b"served\n"


def _record_helper(rt: LinuxRuntime, name: str, helper: ProcessId) -> None:
    """Make the stopped container's run record name ``helper`` as its slirp4netns, as a
    holder that gave a restored helper no exit pipe (an older squish) leaves it."""
    run_file = rt.containers / name / "run.json"
    run = read_json(run_file)
    assert isinstance(run, dict)
    write_json_atomic(run_file, {**run, "slirp": helper.to_json()})


def test_a_leftover_helper_holding_the_port_is_ended_before_the_port_check(
    rt: LinuxRuntime, tmp_path: Path, started_here: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    rt.run(served("left", port))
    rt.stop("left")
    netns = subprocess.Popen(["unshare", "-Urn", "sleep", "600"])
    started_here.append(netns)
    for _ in range(3000):  # unshare runs sleep once its namespaces exist
        if Path(f"/proc/{netns.pid}/comm").read_text() == "sleep\n":
            break
        time.sleep(0.001)
    leftover = slirp.spawn(tmp_path, False, 10.0, target_pid=netns.pid)
    try:
        slirp.add_forward(tmp_path / slirp.API_SOCKET, Forward("tcp", "127.0.0.1", port, 80))
        _record_helper(rt, "left", leftover)
        rt.start("left")
        assert not leftover.alive()
    finally:
        leftover.send(signal.SIGKILL)  # the slirp4netns this test started, if it still runs
    assert http_get(port, "/index.html") == b"served\n"


def test_a_recorded_helper_pid_that_is_another_program_now_is_left_alone(
    rt: LinuxRuntime, started_here: list[subprocess.Popen[bytes]]
) -> None:
    rt.run(served("reused", free_port()))
    rt.stop("reused")
    stranger = subprocess.Popen(["sleep", "600"])
    started_here.append(stranger)
    identity = ProcessId.of(stranger.pid)
    assert identity is not None
    _record_helper(rt, "reused", identity)
    rt.start("reused")
    assert identity.alive()
