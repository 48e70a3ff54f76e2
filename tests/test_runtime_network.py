"""Networking and layers end to end: slirp4netns forwards, live port changes, Alpine
from a local mirror, SDK layers from a local index, and clean removal."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime.api.spec import BindMount, ContainerSpec, PortMapping, RootfsRef, SdkLayer
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerNotFound, PortInUse, PortPrivileged
from runtime.images.rootfs import find_host_busybox
from runtime.network import slirp
from runtime.network.ports import unprivileged_port_start
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.fixtures.mirror import make_alpine_mirror, make_layer_index, serve_directory
from tests.support import (
    free_port,
    http_get,
    http_refused,
    kill_slirp,
    processes_mentioning,
    shell,
)

pytestmark = rootless

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def web(name: str, site: Path, port: int, **fields: object) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=("httpd", "-f", "-p", "80", "-h", "/app/site"),
        binds=(BindMount(source=str(site), target="/app/site"),),
        ports=(PortMapping(container=80, host=port),),
        **fields,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>hello from squish</h1>\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 64)
    return root


def test_forwarded_port_serves_bind_mounted_files_unchanged(rt: LinuxRuntime, site: Path) -> None:
    port = free_port()
    info = rt.run(web("web", site, port))
    assert info.slirp_pid is not None
    assert http_get(port, "/index.html") == b"<h1>hello from squish</h1>\n"
    assert http_get(port, "/blob.bin") == (site / "blob.bin").read_bytes()


def test_port_forward_added_and_removed_live(rt: LinuxRuntime, site: Path) -> None:
    first, second = free_port(), free_port()
    before = rt.run(web("live", site, first))
    http_get(first, "/index.html")
    rt.add_port("live", PortMapping(container=80, host=second))
    assert http_get(second, "/index.html") == b"<h1>hello from squish</h1>\n"
    after = rt.remove_port("live", PortMapping(container=80, host=first))
    assert http_refused(first)
    assert http_get(second, "/index.html")
    assert (after.pid, after.pid_start_time) == (before.pid, before.pid_start_time)
    assert after.ports == (PortMapping(container=80, host=second),)
    assert rt.inspect("live").restarts == 0


def test_taken_host_port_is_named_and_nothing_is_left(rt: LinuxRuntime, site: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(
            PortInUse, match=f"127.0.0.1:{port}/tcp is already in use by pid {os.getpid()} "
        ):
            rt.run(web("taken", site, port))
        with pytest.raises(ContainerNotFound):
            rt.inspect("taken")
        running = rt.run(web("taken2", site, free_port()))
        with pytest.raises(PortInUse, match=str(port)):
            rt.add_port("taken2", PortMapping(container=80, host=port))
        assert rt.inspect("taken2").pid == running.pid


def test_a_privileged_host_port_is_named_as_such_with_the_sysctl(
    rt: LinuxRuntime, site: Path
) -> None:
    start = unprivileged_port_start()
    if start <= 80:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start is {start}: port 80 is not privileged")
    expected = (
        rf"host port 127.0.0.1:80/tcp is privileged on this host "
        rf"\(net.ipv4.ip_unprivileged_port_start is {start}\); "
        rf"fix: as root: sysctl net.ipv4.ip_unprivileged_port_start=80 "
    )
    with pytest.raises(PortPrivileged, match=expected) as caught:
        rt.run(web("low", site, 80))
    assert (caught.value.host_port, caught.value.unprivileged_start) == (80, start)
    with pytest.raises(ContainerNotFound):
        rt.inspect("low")
    running = rt.run(web("low2", site, free_port()))
    with pytest.raises(PortPrivileged, match="is privileged"):
        rt.add_port("low2", PortMapping(container=80, host=80))
    assert rt.inspect("low2").pid == running.pid


def test_dns_points_at_slirp_and_host_loopback_is_unreachable(rt: LinuxRuntime) -> None:
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host loopback reached")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        script = (
            "cat /etc/resolv.conf; ip -4 addr show tap0 | grep -o 'inet [0-9.]*';"
            f"wget -q -T 2 -O - http://10.0.2.2:{port}/ || echo unreachable"
        )
        spec = ContainerSpec(name="dns", rootfs=BUSYBOX, argv=("/bin/sh", "-c", script))
        rt.run(spec)
        assert rt.wait("dns", timeout=60) == 0
        out = rt.logs("dns").decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "nameserver 10.0.2.3" in out
    assert "inet 10.0.2.100" in out
    assert "unreachable" in out
    assert "host loopback reached" not in out


def test_remove_leaves_nothing_behind(rt: LinuxRuntime, site: Path, state_path: Path) -> None:
    port = free_port()
    info = rt.run(web("gone", site, port))
    http_get(port, "/index.html")
    cdir = state_path / "containers" / "gone"
    assert (cdir / "slirp.sock").exists()
    rt.remove("gone", force=True)
    assert not cdir.exists()
    for pid in (info.pid, info.slirp_pid):
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert processes_mentioning(str(cdir)) == []  # slirp4netns names its socket there
    assert http_refused(port)


def with_settings(rt: LinuxRuntime, **changes: Any) -> LinuxRuntime:
    """A runtime on ``rt``'s state and cache whose settings differ by ``changes`` (as if
    the ``SQUISH_*`` variable were set)."""
    settings = dataclasses.replace(rt.settings, **changes)
    return LinuxRuntime(state=rt.state, cache=rt.cache, settings=settings)


@pytest.fixture(scope="module")
def alpine_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mirror")
    make_alpine_mirror(root, ["3.19", "3.20"], find_host_busybox())
    with serve_directory(root) as url:
        yield url


@pytest.mark.parametrize("version", ["3.19", "3.20"])
def test_alpine_versions_from_a_local_mirror(
    rt: LinuxRuntime, alpine_mirror: str, version: str
) -> None:
    rt = with_settings(rt, alpine_mirror=alpine_mirror)
    spec = ContainerSpec(
        name=f"alpine-{version}",
        rootfs=RootfsRef(kind="alpine", version=version),
        argv=("/bin/sh", "-c", "cat /etc/alpine-release; touch /etc/x 2>/dev/null || echo ro"),
        network="none",
    )
    rt.run(spec)
    assert rt.wait(spec.name, timeout=60) == 0
    assert rt.logs(spec.name).decode().split() == [f"{version}.0", "ro"]


def test_sdk_layer_from_an_index_is_mounted_read_only(rt: LinuxRuntime, tmp_path: Path) -> None:
    tree = tmp_path / "python-tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("#!/bin/sh\necho hello from the sdk layer\n")
    os.chmod(tree / "bin" / "hello", 0o755)
    index = tmp_path / "index"
    index.mkdir()
    make_layer_index(index, {"python": {"3.12": tree}})
    with serve_directory(index) as url:
        rt = with_settings(rt, layer_index=url)
        spec = ContainerSpec(
            name="sdk",
            rootfs=BUSYBOX,
            sdks=(SdkLayer(name="python", version="3.12"),),
            argv=(
                "/bin/sh",
                "-c",
                "/sdk/python/bin/hello; touch /sdk/python/x 2>/dev/null || echo ro",
            ),
            network="none",
        )
        rt.run(spec)
    assert rt.wait("sdk", timeout=60) == 0
    assert rt.logs("sdk").decode() == "hello from the sdk layer\nro\n"


def test_a_forward_removed_behind_our_back_is_seen_and_added_again(
    rt: LinuxRuntime, site: Path, state_path: Path
) -> None:
    port = free_port()
    rt.run(web("drift", site, port))
    http_get(port, "/index.html")
    api = state_path / "containers" / "drift" / "slirp.sock"
    [live] = slirp.list_forwards(api)
    slirp.remove_forward(api, live.id)  # someone else, through the API socket
    assert http_refused(port)
    assert rt.inspect("drift").ports == ()  # inspect asks slirp4netns itself
    rt.add_port("drift", PortMapping(container=80, host=port))
    assert http_get(port, "/index.html") == b"<h1>hello from squish</h1>\n"


def test_ports_changed_live_are_kept_across_a_restart(rt: LinuxRuntime, site: Path) -> None:
    first, second = free_port(), free_port()
    rt.run(web("carry", site, first, stop_timeout=1))
    rt.add_port("carry", PortMapping(container=80, host=second))
    rt.remove_port("carry", PortMapping(container=80, host=first))
    rt.stop("carry")
    assert rt.inspect("carry").spec.ports == (PortMapping(container=80, host=second),)
    rt.start("carry")
    assert http_get(second, "/index.html") == b"<h1>hello from squish</h1>\n"
    assert http_refused(first)


def test_a_killed_slirp4netns_is_restored_with_its_forwards(rt: LinuxRuntime, site: Path) -> None:
    port = free_port()
    before = rt.run(web("heal", site, port))
    http_get(port, "/index.html")
    assert before.slirp_pid is not None
    slirp_id = ProcessId.of(before.slirp_pid)
    assert slirp_id is not None
    os.kill(slirp_id.pid, signal.SIGKILL)  # a process this test's runtime started
    for _ in range(500):
        if rt.inspect("heal").slirp_pid is None:
            break
        time.sleep(0.01)
    assert rt.inspect("heal").slirp_pid is None
    after = rt.restore_network("heal")
    assert after.slirp_pid not in (None, before.slirp_pid)
    assert (after.pid, after.pid_start_time) == (before.pid, before.pid_start_time)
    assert http_get(port, "/index.html") == b"<h1>hello from squish</h1>\n"
    assert rt.inspect("heal").restarts == 0


def test_a_heal_puts_back_what_it_can_and_can_heal_again(rt: LinuxRuntime, site: Path) -> None:
    free, blocked = free_port(), free_port()
    first = rt.run(web("reheal", site, free, stop_timeout=1))
    rt.add_port("reheal", PortMapping(container=80, host=blocked))
    for round_ in range(2):
        kill_slirp(rt, "reheal")
        with socket.socket() as holder:  # someone takes one of its ports meanwhile
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", blocked))
            holder.listen()
            healed = rt.restore_network("reheal")
        assert healed.ports == (PortMapping(container=80, host=free),), round_
        assert http_get(free, "/index.html") == b"<h1>hello from squish</h1>\n"
        rt.add_port("reheal", PortMapping(container=80, host=blocked))  # free again
        assert http_get(blocked, "/index.html")
    assert rt.inspect("reheal").pid == first.pid


def test_a_damaged_record_names_its_file_when_the_network_is_restored(
    rt: LinuxRuntime, state_path: Path
) -> None:
    rt.run(shell("scarred", "exec sleep 600", network="slirp4netns", stop_timeout=0))
    kill_slirp(rt, "scarred")
    record = state_path / "containers" / "scarred" / "launch.json"
    record.write_text("[]")
    with pytest.raises(ValueError, match=f"{record}: launch request is not an object"):
        rt.restore_network("scarred")
