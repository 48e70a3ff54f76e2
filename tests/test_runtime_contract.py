"""The ``Runtime`` contract: one suite run against the fake and against ``LinuxRuntime``.

The converger's tests trust ``tests.fakes.FakeRuntime`` to behave as the real runtime
does; this suite is where that trust is checked. Every test runs twice: ``[fake]`` in
memory, ``[linux]`` with real rootless containers (skipped as root). What the fake cannot
do by itself (a command that ends, a port nothing listens on) a :class:`Backend` arranges:
for the real runtime the container's own command does it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from runtime.api.interface import ContainerState, Runtime
from runtime.api.spec import ContainerSpec, PortMapping
from runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerPaused,
    ContainerRunning,
    PortInUse,
    SlirpError,
)
from tests.conftest import ROOTLESS_REASON
from tests.fakes import FakeRuntime
from tests.support import free_port, free_ports, kill_slirp, shell

LISTEN_PORT = 8080
"""The port the listening containers serve inside (busybox httpd)."""


@dataclass
class Backend:
    """A runtime under test, and how a test makes things happen in its containers."""

    runtime: Runtime
    fake: FakeRuntime | None = None

    def sleeper(self, name: str, *ports: PortMapping, network: str = "") -> ContainerSpec:
        """A container that runs until stopped, forwarding ``ports`` (slirp4netns when
        there are ports or ``network`` says so)."""
        net = network or ("slirp4netns" if ports else "none")
        return shell(name, "exec sleep 1000", ports=ports, network=net, stop_timeout=5.0)

    def listener(self, name: str) -> ContainerSpec:
        """A container that accepts TCP on :data:`LISTEN_PORT` inside."""
        return shell(name, f"exec httpd -f -p {LISTEN_PORT} -h /")

    def exiting(self, name: str, code: int) -> ContainerSpec:
        """A container whose command exits with ``code`` once :meth:`let_end` allows it."""
        return shell(name, f"exit {code}")

    def let_end(self, name: str, code: int) -> None:
        """The real command ends by itself; the fake's is ended here."""
        if self.fake is not None:
            self.fake.finish(name, code)

    def cut_network(self, name: str) -> None:
        """The container's slirp4netns dies (the real one is killed, as a crash would)."""
        if self.fake is not None:
            self.fake.lose_network(name)
        else:
            kill_slirp(self.runtime, name)

    def can_pause(self) -> bool:
        """The real runtime pauses through a cgroup of the container's own."""
        cgroups = getattr(self.runtime, "cgroups", None)
        return self.fake is not None or (cgroups is not None and cgroups.name != "none")

    def nothing_listens(self, name: str) -> None:
        """The real container listens only on :data:`LISTEN_PORT`; the fake is told."""
        if self.fake is not None:
            self.fake.never_ready.add(name)


@pytest.fixture(params=["fake", "linux"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        fake = FakeRuntime()
        yield Backend(fake, fake)
        return
    if os.geteuid() == 0:
        pytest.skip(ROOTLESS_REASON)
    yield Backend(request.getfixturevalue("rt"))


def tcp(host: int, container: int = 80) -> PortMapping:
    return PortMapping(container=container, host=host)


# -- lifecycle ----------------------------------------------------------------------------


def test_a_created_container_is_listed_but_does_not_run(backend: Backend) -> None:
    rt = backend.runtime
    info = rt.create(backend.sleeper("made"))
    assert (info.name, info.state, info.pid, info.started_at) == ("made", "created", None, None)
    assert [i.name for i in rt.list()] == ["made"]
    assert rt.inspect("made").state is ContainerState.CREATED


def test_a_name_is_created_once(backend: Backend) -> None:
    backend.runtime.create(backend.sleeper("twice"))
    with pytest.raises(ContainerExists):
        backend.runtime.create(backend.sleeper("twice"))


def test_start_runs_it_and_a_second_start_leaves_it_as_it_is(backend: Backend) -> None:
    rt = backend.runtime
    rt.create(backend.sleeper("runner"))
    started = rt.start("runner")
    assert started.state is ContainerState.RUNNING
    assert started.pid is not None and started.started_at is not None
    again = rt.start("runner")
    assert (again.pid, again.restarts) == (started.pid, 0)


def test_list_is_sorted_by_name(backend: Backend) -> None:
    for name in ("charlie", "alpha", "bravo"):
        backend.runtime.create(backend.sleeper(name))
    assert [i.name for i in backend.runtime.list()] == ["alpha", "bravo", "charlie"]


def test_stop_ends_it_and_start_runs_it_again_as_a_restart(backend: Backend) -> None:
    rt = backend.runtime
    rt.run(backend.sleeper("cycle"))
    stopped = rt.stop("cycle", timeout=5.0)
    assert stopped.state is ContainerState.EXITED
    assert stopped.pid is None and stopped.exit_code is not None
    assert stopped.finished_at is not None
    assert rt.stop("cycle").state is ContainerState.EXITED  # stopping again changes nothing
    restarted = rt.start("cycle")
    assert (restarted.state, restarted.restarts) == (ContainerState.RUNNING, 1)


def test_wait_returns_the_exit_code_of_the_command(backend: Backend) -> None:
    backend.runtime.run(backend.exiting("seven", 7))
    backend.let_end("seven", 7)
    assert backend.runtime.wait("seven", timeout=60) == 7
    info = backend.runtime.inspect("seven")
    assert (info.state, info.exit_code) == (ContainerState.EXITED, 7)


def test_wait_on_a_container_never_started_is_refused(backend: Backend) -> None:
    backend.runtime.create(backend.sleeper("idle"))
    with pytest.raises(ContainerNotRunning):
        backend.runtime.wait("idle", timeout=1)


def test_a_running_container_is_removed_only_with_force(backend: Backend) -> None:
    rt = backend.runtime
    rt.run(backend.sleeper("busy"))
    with pytest.raises(ContainerRunning):
        rt.remove("busy")
    assert rt.inspect("busy").state is ContainerState.RUNNING
    rt.remove("busy", force=True)
    assert rt.list() == []
    with pytest.raises(ContainerNotFound):
        rt.inspect("busy")


def test_a_stopped_container_is_removed_without_force(backend: Backend) -> None:
    rt = backend.runtime
    rt.run(backend.sleeper("done"))
    rt.stop("done", timeout=5.0)
    rt.remove("done")
    assert rt.list() == []


def test_nothing_to_sweep_after_clean_calls(backend: Backend) -> None:
    backend.runtime.run(backend.sleeper("tidy"))
    assert backend.runtime.sweep() == []
    assert [i.name for i in backend.runtime.list()] == ["tidy"]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda rt: rt.inspect("ghost"), id="inspect"),
        pytest.param(lambda rt: rt.start("ghost"), id="start"),
        pytest.param(lambda rt: rt.stop("ghost"), id="stop"),
        pytest.param(lambda rt: rt.remove("ghost", force=True), id="remove"),
        pytest.param(lambda rt: rt.logs("ghost"), id="logs"),
        pytest.param(lambda rt: rt.wait("ghost", timeout=1), id="wait"),
        pytest.param(lambda rt: rt.add_port("ghost", tcp(free_port())), id="add_port"),
        pytest.param(lambda rt: rt.remove_port("ghost", tcp(free_port())), id="remove_port"),
        pytest.param(lambda rt: rt.probe_tcp("ghost", 80), id="probe_tcp"),
        pytest.param(lambda rt: rt.rename("ghost", "spirit"), id="rename"),
        pytest.param(lambda rt: rt.exec_command("ghost", ["true"]), id="exec_command"),
        pytest.param(lambda rt: rt.move_port("ghost", "spirit", tcp(80)), id="move_port"),
        pytest.param(lambda rt: rt.restore_network("ghost"), id="restore_network"),
        pytest.param(lambda rt: rt.pause("ghost"), id="pause"),
        pytest.param(lambda rt: rt.resume("ghost"), id="resume"),
        pytest.param(lambda rt: rt.update_resources("ghost", None), id="update_resources"),
    ],
)
def test_an_unknown_name_is_not_found(backend: Backend, call: Callable[[Runtime], object]) -> None:
    with pytest.raises(ContainerNotFound) as caught:
        call(backend.runtime)
    assert caught.value.name == "ghost"


# -- ports --------------------------------------------------------------------------------


def test_a_forward_is_added_and_removed_live(backend: Backend) -> None:
    rt = backend.runtime
    first, second = free_ports(2)
    running = rt.run(backend.sleeper("web", tcp(first)))
    assert running.ports == (tcp(first),)
    added = rt.add_port("web", tcp(second))
    assert set(added.ports) == {tcp(first), tcp(second)}
    assert set(rt.inspect("web").ports) == {tcp(first), tcp(second)}
    assert rt.add_port("web", tcp(second)).ports == added.ports  # adding again: no change
    removed = rt.remove_port("web", tcp(first))
    assert removed.ports == (tcp(second),)
    assert rt.inspect("web").pid == running.pid  # never restarted


def test_a_port_another_container_forwards_is_refused(backend: Backend) -> None:
    rt = backend.runtime
    port, other = free_ports(2)
    rt.run(backend.sleeper("holder", tcp(port)))
    rt.run(backend.sleeper("asker", tcp(other)))
    with pytest.raises(PortInUse) as caught:
        rt.add_port("asker", tcp(port, container=81))
    assert (caught.value.host_addr, caught.value.host_port) == ("127.0.0.1", port)
    assert rt.inspect("asker").ports == (tcp(other),)


def test_a_start_whose_port_is_taken_fails_and_a_run_leaves_nothing(backend: Backend) -> None:
    rt = backend.runtime
    port = free_port()
    rt.run(backend.sleeper("first", tcp(port)))
    rt.create(backend.sleeper("second", tcp(port)))
    with pytest.raises(PortInUse):
        rt.start("second")
    assert rt.inspect("second").state is ContainerState.CREATED
    with pytest.raises(PortInUse):
        rt.run(backend.sleeper("third", tcp(port)))
    assert [i.name for i in rt.list()] == ["first", "second"]


def test_forwards_need_a_running_container_with_a_network(backend: Backend) -> None:
    rt = backend.runtime
    rt.create(backend.sleeper("cold", network="slirp4netns"))
    with pytest.raises(ContainerNotRunning):
        rt.add_port("cold", tcp(free_port()))
    rt.run(backend.sleeper("offline"))
    with pytest.raises(SlirpError):
        rt.add_port("offline", tcp(free_port()))
    assert rt.inspect("offline").ports == ()


def test_a_forward_moves_between_running_containers(backend: Backend) -> None:
    rt = backend.runtime
    port, other = free_ports(2)
    rt.run(backend.sleeper("old", tcp(port)))
    rt.run(backend.sleeper("new", tcp(other)))
    rt.move_port("old", "new", tcp(port))
    assert rt.inspect("old").ports == ()
    assert set(rt.inspect("new").ports) == {tcp(port), tcp(other)}


def test_a_forward_does_not_move_to_its_own_container(backend: Backend) -> None:
    port = free_port()
    backend.runtime.run(backend.sleeper("self", tcp(port)))
    with pytest.raises(ValueError, match="container it is on"):
        backend.runtime.move_port("self", "self", tcp(port))
    assert backend.runtime.inspect("self").ports == (tcp(port),)


def test_a_forward_does_not_move_to_a_stopped_container(backend: Backend) -> None:
    rt = backend.runtime
    port = free_port()
    rt.run(backend.sleeper("from", tcp(port)))
    rt.create(backend.sleeper("to", network="slirp4netns"))
    with pytest.raises(ContainerNotRunning):
        rt.move_port("from", "to", tcp(port))
    assert rt.inspect("from").ports == (tcp(port),)


def test_restoring_a_network_that_works_changes_nothing(backend: Backend) -> None:
    rt = backend.runtime
    port = free_port()
    online = rt.run(backend.sleeper("online", tcp(port)))
    restored = rt.restore_network("online")
    assert (restored.slirp_pid, restored.ports) == (online.slirp_pid, (tcp(port),))
    rt.run(backend.sleeper("unplugged"))
    assert rt.restore_network("unplugged").slirp_pid is None  # it has no network to restore
    rt.stop("online", timeout=5.0)
    with pytest.raises(ContainerNotRunning):
        rt.restore_network("online")


def test_a_lost_network_is_restored_with_its_forwards(backend: Backend) -> None:
    rt = backend.runtime
    first, second = free_ports(2)
    before = rt.run(backend.sleeper("heal", tcp(first)))
    rt.add_port("heal", tcp(second))
    backend.cut_network("heal")
    assert rt.inspect("heal").slirp_pid is None
    restored = rt.restore_network("heal")
    assert restored.slirp_pid not in (None, before.slirp_pid)
    assert (restored.pid, set(restored.ports)) == (before.pid, {tcp(first), tcp(second)})


# -- probes and commands ----------------------------------------------------------------


def test_probe_says_whether_something_listens_inside(backend: Backend) -> None:
    rt = backend.runtime
    rt.run(backend.listener("server"))
    assert any(rt.probe_tcp("server", LISTEN_PORT) for _ in range(500))  # httpd starting
    rt.run(backend.sleeper("quiet"))
    backend.nothing_listens("quiet")
    assert rt.probe_tcp("quiet", LISTEN_PORT) is False


def test_probe_of_a_container_that_does_not_run_is_false(backend: Backend) -> None:
    rt = backend.runtime
    rt.create(backend.listener("unstarted"))
    assert rt.probe_tcp("unstarted", LISTEN_PORT) is False
    rt.run(backend.listener("stopped"))
    rt.stop("stopped", timeout=5.0)
    assert rt.probe_tcp("stopped", LISTEN_PORT) is False


def test_exec_runs_only_in_a_running_container(backend: Backend) -> None:
    rt = backend.runtime
    rt.run(backend.sleeper("shell"))
    result = rt.exec_command("shell", ["true"])
    assert (result.exit_code, result.timed_out) == (0, False)
    rt.stop("shell", timeout=5.0)
    with pytest.raises(ContainerNotRunning):
        rt.exec_command("shell", ["true"])


def test_pause_freezes_a_running_container_until_resumed(backend: Backend) -> None:
    if not backend.can_pause():
        pytest.skip("no cgroup v2 folder delegated here: nothing to freeze with")
    rt = backend.runtime
    rt.create(backend.sleeper("frozen"))
    with pytest.raises(ContainerNotRunning):
        rt.pause("frozen")
    running = rt.start("frozen")
    assert rt.pause("frozen").paused is True
    assert rt.inspect("frozen").paused is True
    with pytest.raises(ContainerPaused):
        rt.exec_command("frozen", ["true"])
    resumed = rt.resume("frozen")
    assert (resumed.paused, resumed.pid) == (False, running.pid)
    assert rt.exec_command("frozen", ["true"]).exit_code == 0
    rt.pause("frozen")
    stopped = rt.stop("frozen", timeout=5.0)  # a paused container stops too
    assert (stopped.state, stopped.paused) == (ContainerState.EXITED, False)


# -- rename -------------------------------------------------------------------------------


def test_rename_moves_a_running_container_to_the_new_name(backend: Backend) -> None:
    rt = backend.runtime
    port = free_port()
    before = rt.run(backend.sleeper("draft", tcp(port)))
    renamed = rt.rename("draft", "final")
    assert (renamed.name, renamed.spec.name) == ("final", "final")
    assert (renamed.state, renamed.pid, renamed.ports) == ("running", before.pid, (tcp(port),))
    assert [i.name for i in rt.list()] == ["final"]
    with pytest.raises(ContainerNotFound):
        rt.inspect("draft")
    rt.stop("final", timeout=5.0)
    assert rt.inspect("final").state is ContainerState.EXITED


def test_rename_refuses_a_taken_name_and_leaves_both(backend: Backend) -> None:
    rt = backend.runtime
    rt.create(backend.sleeper("left"))
    rt.create(backend.sleeper("right"))
    with pytest.raises(ContainerExists):
        rt.rename("left", "right")
    assert [(i.name, i.spec.name) for i in rt.list()] == [("left", "left"), ("right", "right")]


def test_rename_refuses_a_name_a_spec_could_not_have(backend: Backend) -> None:
    backend.runtime.create(backend.sleeper("plain"))
    with pytest.raises(ValidationError):
        backend.runtime.rename("plain", "no/slashes")
    assert [i.name for i in backend.runtime.list()] == ["plain"]
