"""Helpers shared by the tests that run real containers."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.api.interface import Runtime
from runtime.api.spec import BindMount, ContainerSpec, RootfsRef
from runtime.cgroups.driver import CgroupDriver, detect
from runtime.network import slirp
from runtime.sandbox import netif
from runtime.sandbox import syscalls as sc
from runtime.settings import RuntimeSettings

__all__ = (
    "BUSYBOX",
    "children_of",
    "descendants_of",
    "detected_cgroups",
    "free_port",
    "free_ports",
    "host_without_tun",
    "http_get",
    "http_refused",
    "in_child",
    "in_own_namespaces",
    "kill_slirp",
    "page",
    "processes_mentioning",
    "run_probes",
    "shell",
    "start_controller",
    "write_atomically",
)


def built_static(source: str, folder: Path) -> Path:
    """The C program ``source`` compiled static into ``folder``/prog, for a container to
    run from a bind of ``folder`` (skipped without a C compiler: the project's set-up
    installs one for its native init)."""
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (make host-setup installs one)")
    (folder / "prog.c").write_text(source)
    subprocess.run(
        [compiler, "-static", "-O2", "-o", str(folder / "prog"), str(folder / "prog.c")],
        check=True,
    )
    return folder / "prog"


def detected_cgroups() -> CgroupDriver:
    """How a runtime made in this process's environment gets cgroups."""
    return detect(RuntimeSettings.from_environ())


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing listens on (held together, so all differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def page(port: int, path: str = "/", timeout: float = 5.0) -> bytes | None:
    """GET http://127.0.0.1:PORT/PATH once; None when nothing answers properly."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return bytes(reply.read())
    except (OSError, http.client.HTTPException):
        return None


def write_atomically(path: Path, text: str) -> None:
    """Write a file through a hidden temp file and a rename, as ``sed -i`` and ``mv`` do."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def write_anew(path: Path, text: str) -> None:
    """Delete the file, then create it and write it, as git checks a file out (ext4 may
    give the new file the inode number the old one freed)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(fd, "w") as file:
        file.write(text)


STARTING = 30.0
"""How long :func:`http_get` retries while a server starts (well under a second on an
idle machine): a bound that holds when other work shares the cores, not a measure."""


def http_get(port: int, path: str = "/", timeout: float = STARTING) -> bytes:
    """GET http://127.0.0.1:PORT/PATH, retrying for up to ``timeout`` seconds while the
    server is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return bytes(reply.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"no HTTP answer on 127.0.0.1:{port}{path}: {exc}") from exc
            time.sleep(0.01)


def http_refused(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:PORT is refused."""
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every live process (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields[0] != "Z":
            yield int(entry.name), int(fields[1]), cmdline


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text`` (this one excluded)."""
    return [(pid, cmd) for pid, _, cmd in _processes() if text in cmd and pid != os.getpid()]


def children_of(parent: int) -> list[tuple[int, str]]:
    """Live children of ``parent``: (pid, command line)."""
    return [(pid, cmd) for pid, ppid, cmd in _processes() if ppid == parent]


def descendants_of(ancestor: int) -> list[tuple[int, str]]:
    """Live descendants of ``ancestor``, at any depth: (pid, command line)."""
    table = _processes()
    found: list[tuple[int, str]] = []
    kin = {ancestor}
    while True:
        more = [(pid, cmd) for pid, ppid, cmd in table if ppid in kin and pid not in kin]
        if not more:
            return found
        found += more
        kin |= {pid for pid, _ in more}


REPO = Path(__file__).resolve().parents[1]


def start_controller(folder: Path, env: dict[str, str], *options: str) -> subprocess.Popen[bytes]:
    """``reconciler run [OPTIONS] FOLDER`` in the background, quiet; the caller kills it
    by pid."""
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "run", *options, str(folder)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


BUSYBOX = RootfsRef(kind="busybox", version="builtin")

SLEEPER = """\
network = "none"

[layers]
busybox = "builtin"

[run]
command = "sleep"
args = ["100000"]
"""
"""A squishfile of an idle container: busybox ``sleep``, no network."""


def shell(name: str, script: str, **fields: object) -> ContainerSpec:
    """A busybox container running ``sh -c script``, without a network unless told."""
    fields.setdefault("network", "none")
    return ContainerSpec(name=name, rootfs=BUSYBOX, argv=("/bin/sh", "-c", script), **fields)


def kill_slirp(rt: Runtime, name: str) -> None:
    """SIGKILL the slirp4netns of a running container (one this test's runtime started)
    and wait until the runtime sees it gone."""
    slirp_pid = rt.inspect(name).slirp_pid
    assert slirp_pid is not None, f"{name} has no slirp4netns"
    os.kill(slirp_pid, signal.SIGKILL)
    for _ in range(500):
        if rt.inspect(name).slirp_pid is None:
            return
        time.sleep(0.01)
    raise AssertionError(f"the runtime still sees the slirp4netns of {name}")


def host_without_tun(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host as slirp4netns's check sees it: a (do-nothing) slirp4netns on the PATH, and
    a tun device that cannot be opened (in ``folder``, absent); returns the device."""
    binary = folder / "slirp4netns"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.setattr(slirp, "TUN_DEVICE", str(folder / "tun"))
    return folder / "tun"


def run_probes(
    rt: Runtime, name: str, probes: Path, seccomp_setting: object = "default"
) -> dict[str, int]:
    """Run every probe in ``probes`` inside a container; their exit codes by name."""
    script = "for p in /probes/*; do $p; echo ${p#/probes/} $?; done"
    binds = (BindMount(source=str(probes), target="/probes"),)
    rt.run(shell(name, script, binds=binds, seccomp=seccomp_setting))
    assert rt.wait(name, timeout=60) == 0, rt.logs(name)
    found = {}
    for line in rt.logs(name).decode().splitlines():
        probe, code = line.rsplit(" ", 1)
        found[probe] = int(code)
    return found


def in_child(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``work`` in a forked child (namespaces it enters stay its own) and return the
    dict it returned, through a pipe as JSON; an exception it raised comes back as
    ``{"crashed": "<traceback>"}``, for the caller to fail on once it cleaned up."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        result: dict[str, object] = {}
        try:
            os.close(report_r)
            result = work()
        except BaseException as exc:
            result = {"crashed": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
        finally:
            with os.fdopen(report_w, "wb") as report:
                report.write(json.dumps(result).encode())
            os._exit(0)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as report:
        data = report.read()
    os.waitpid(child, 0)
    answer = json.loads(data) if data else {"crashed": "the child ended without a report"}
    assert isinstance(answer, dict)
    return answer


def in_own_namespaces(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work()`` in a forked child that is the first process of a new user and
    network namespace (this account mapped to itself, every capability there, ``lo``
    up): what needs CAP_SYS_ADMIN over a network namespace runs as any account, root or
    not. Returns what ``work`` returned (JSON); its exception fails the test with its
    traceback. ``work`` ends whatever it started before it returns."""

    def entered() -> dict[str, object]:
        _enter_own_namespaces()
        return work()

    result = in_child(entered)
    assert "crashed" not in result, result["crashed"]
    return dict(result)


def _enter_own_namespaces() -> None:
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNET)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        netif.up(sock, "lo")


def remove_everything(runtime: Runtime) -> None:
    """Remove every container of ``runtime`` (forced), then every network."""
    for info in runtime.list():
        runtime.remove(info.name, force=True)
    for network in runtime.list_networks():
        runtime.remove_network(network.name)
