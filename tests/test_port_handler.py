"""The host-side port handler of bridge forwards, end to end: a forward that moves under
a steady request loop refuses nothing, a killed handler comes back with every forward,
a container's end lets its namespace and forwards go, and slirp4netns stays a choice."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from runtime.api.spec import BindMount, ContainerSpec, NetworkAttachment, PortMapping, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.errors import PortInUse, SlirpError
from runtime.network import porter, shared, slirp
from runtime.settings import RuntimeSettings
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.support import free_port, http_get, http_refused, page
from tests.test_reconciler_e2e import eventually

pytestmark = rootless

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def web(name: str, site: Path, *ports: PortMapping) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=("httpd", "-f", "-p", "80", "-h", "/site"),
        binds=(BindMount(source=str(site), target="/site"),),
        network="bridge",
        networks=(NetworkAttachment(network="front"),),
        ports=ports,
    )


def sites(root: Path, *names: str) -> list[Path]:
    made = []
    for name in names:
        (root / name).mkdir()
        (root / name / "index.html").write_text(f"{name}\n")
        made.append(root / name)
    return made


def serving(rt: LinuxRuntime, name: str) -> None:
    eventually(lambda: rt.probe_tcp(name, 80), f"{name}'s httpd listening")


def pair(rt: LinuxRuntime, tmp_path: Path, first: str, second: str) -> PortMapping:
    """Two serving containers, each with a page of its name; the first has a forward
    (returned) and answers on it."""
    port = free_port()
    mapping = PortMapping(container=80, host=port)
    one, two = sites(tmp_path, first, second)
    rt.run(web(first, one, mapping))
    rt.run(web(second, two))
    serving(rt, second)
    assert http_get(port, "/index.html") == f"{first}\n".encode()
    return mapping


def keeper(state: Path) -> dict[str, object]:
    record = json.loads((state / shared.BRIDGE_DIR / "keeper.json").read_text())
    assert isinstance(record, dict)
    return record


def listeners(state: Path) -> list[dict[str, object]]:
    reply = porter.request(state / shared.BRIDGE_DIR / porter.CONTROL_SOCKET, "list")
    return list(reply["listeners"])


def held_namespaces(state: Path) -> int:
    """Network namespaces the keeper holds a descriptor of (its own shared one counted)."""
    supervisor = ProcessId.from_json(keeper(state)["supervisor"])
    assert supervisor is not None
    fds = Path(f"/proc/{supervisor.pid}/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd).startswith("net:["))


def _link(fd: Path) -> str:
    """What descriptor ``fd`` of another process refers to; "" once it is closed (the
    keeper opens and closes a pidfd of each child each time it waits)."""
    try:
        return os.readlink(fd)
    except FileNotFoundError:
        return ""


def test_a_forward_moving_back_and_forth_under_a_request_loop_refuses_nothing(
    nets: LinuxRuntime, tmp_path: Path
) -> None:
    mapping = pair(nets, tmp_path, "m1", "m2")
    port = mapping.host
    answers: list[bytes | None] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answers.append(page(port, "/index.html"))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for _ in range(5):
            for giver, taker in (("m1", "m2"), ("m2", "m1")):
                seen = len(answers)
                nets.move_port(giver, taker, mapping)
                while len(answers) < seen + 5:  # a few requests on each side of each move
                    time.sleep(0.005)
    finally:
        stop.set()
        thread.join()
    assert answers.count(None) == 0
    assert set(answers) == {b"m1\n", b"m2\n"}
    assert nets.inspect("m1").ports == (mapping,) and nets.inspect("m2").ports == ()


def test_a_killed_port_handler_comes_back_with_every_forward(
    nets: LinuxRuntime, tmp_path: Path, state_path: Path
) -> None:
    ports = free_port(), free_port()
    started = []
    for name, site, port in zip(("k1", "k2"), sites(tmp_path, "k1", "k2"), ports, strict=True):
        started.append(nets.run(web(name, site, PortMapping(container=80, host=port))))
        assert http_get(port, "/index.html") == f"{name}\n".encode()
    old = ProcessId.from_json(keeper(state_path)["porter"])
    assert old is not None and old.send(signal.SIGKILL)
    assert old.wait_gone(5.0)
    assert http_get(ports[0], "/index.html") == b"k1\n"
    assert http_get(ports[1], "/index.html") == b"k2\n"
    new = ProcessId.from_json(keeper(state_path)["porter"])
    assert new is not None and new != old and new.alive()
    for info, port in zip(started, ports, strict=True):
        now = nets.inspect(info.name)
        assert (now.pid, now.ports) == (info.pid, (PortMapping(container=80, host=port),))


def test_a_containers_end_lets_its_namespace_and_its_forwards_go(
    nets: LinuxRuntime, tmp_path: Path, state_path: Path
) -> None:
    (site,) = sites(tmp_path, "gone")
    nets.run(web("base", site))  # the keeper runs, with one container's namespace
    baseline = held_namespaces(state_path)
    port = free_port()
    info = nets.run(web("gone", site, PortMapping(container=80, host=port)))
    assert http_get(port, "/index.html") == b"gone\n"
    assert held_namespaces(state_path) == baseline + 1
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)  # the init ends on its own: no stop, no remove
    # the keeper lets the namespace go, then has the port handler unbind: wait for both
    eventually(
        lambda: held_namespaces(state_path) == baseline and not listeners(state_path),
        "the namespace and its forward let go",
    )
    assert http_refused(port)
    nets.remove("gone", force=True)
    nets.remove("base", force=True)  # the keeper sees its init end, in its own time
    eventually(lambda: held_namespaces(state_path) == baseline - 1, "base's namespace let go")


def test_slirp4netns_stays_a_choice_and_its_forwards_move_by_hand(
    nets: LinuxRuntime, tmp_path: Path, state_path: Path
) -> None:
    chosen = dataclasses.replace(nets.settings, port_handler="slirp4netns")
    rt = LinuxRuntime(state=state_path, cache=nets.cache, settings=chosen)
    mapping = pair(rt, tmp_path, "s1", "s2")
    port = mapping.host
    api = state_path / shared.BRIDGE_DIR / slirp.API_SOCKET
    assert [live.forward.host_port for live in slirp.list_forwards(api)] == [port]
    assert listeners(state_path) == []
    rt.move_port("s1", "s2", mapping)
    assert http_get(port, "/index.html") == b"s2\n"
    assert [live.forward.host_port for live in slirp.list_forwards(api)] == [port]
    assert rt.inspect("s2").ports == (mapping,)


def test_a_port_held_through_the_handler_is_refused_to_another_container(
    nets: LinuxRuntime, tmp_path: Path
) -> None:
    (site,) = sites(tmp_path, "h")
    port = free_port()
    mapping = PortMapping(container=80, host=port)
    nets.run(web("h1", site, mapping))
    nets.run(web("h2", site))
    with pytest.raises(PortInUse):
        nets.add_port("h2", mapping)
    assert http_get(port, "/index.html") == b"h\n"
    assert nets.inspect("h2").ports == ()


def test_the_default_handler_is_splice() -> None:
    assert RuntimeSettings().port_handler == "splice" == porter.HANDLERS[0]


def test_a_udp_forward_stays_with_slirp4netns(
    nets: LinuxRuntime, tmp_path: Path, state_path: Path
) -> None:
    (site,) = sites(tmp_path, "u")
    mapping = PortMapping(container=5353, host=free_port(), protocol="udp")
    nets.run(web("u", site))
    assert nets.add_port("u", mapping).ports == (mapping,)
    api = state_path / shared.BRIDGE_DIR / slirp.API_SOCKET
    assert [(f.forward.proto, f.forward.host_port) for f in slirp.list_forwards(api)] == [
        ("udp", mapping.host)
    ]
    assert listeners(state_path) == []
    records = shared.load_forwards(state_path / shared.BRIDGE_DIR)
    assert [(r.proto, r.handler) for r in records] == [("udp", "slirp4netns")]
    assert nets.remove_port("u", mapping).ports == ()
    assert slirp.list_forwards(api) == []


def test_a_port_handler_that_never_says_it_is_ready_is_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler alive but never ready: the keeper ends it (and tries again after its
    retry time, as for any helper that cannot start), where it was left running, never
    tried again, and outlived a keeper that failed to start."""
    monkeypatch.setattr(shared, "READY_TIMEOUT", 0.2)
    monkeypatch.setattr(porter, "run", lambda *_: time.sleep(600))  # in the forked child
    exit_r, exit_w = os.pipe()
    keeper = shared._Supervisor(tmp_path, tmp_path, exit_r=exit_r, exit_w=exit_w)
    forked: list[int] = []
    fork = os.fork

    def recorded_fork() -> int:
        pid = fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recorded_fork)
    try:
        with pytest.raises(SlirpError, match="did not start"):
            keeper._start_porter()
        (child,) = forked
        assert keeper.children == {}  # not one of its helpers: its end brings nothing back
        with pytest.raises(ChildProcessError):  # reaped already: it is gone
            os.waitpid(child, os.WNOHANG)
    finally:
        monkeypatch.undo()
        for pid in forked:  # should the assertions above fail: by its pid
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(exit_r)
        os.close(exit_w)
