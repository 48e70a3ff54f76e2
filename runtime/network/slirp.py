"""slirp4netns: start one per container and talk to its API socket.

Callers outside ``runtime.network`` reach it through :mod:`runtime.network.driver`.

The API (slirp4netns 1.2) takes one JSON request per connection: send it, shut down the
write side, read to EOF. ``list_hostfwd`` answers ``{"entries": [...]}`` without the
``"return"`` wrapper the other calls use. A failed ``add_hostfwd`` says nothing about
why, so the caller checks the port itself to name the problem.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import HostSetupError, PortInUse, PortPrivileged, SlirpError
from runtime.network.ports import port_holder, unprivileged_port_start
from runtime.util import jsonsock
from runtime.util.processes import ProcessId, wait_readable
from runtime.wire import Forward

__all__ = (
    "API_SOCKET",
    "CONTAINER_ADDR",
    "DNS_ADDR",
    "LOG_FILE",
    "TUN_DEVICE",
    "LiveForward",
    "add_forward",
    "check_tun",
    "ensure_port_free",
    "find_forward",
    "list_forwards",
    "remove_forward",
    "slirp_argv",
    "slirp_binary",
    "spawn",
)

TUN_DEVICE = "/dev/net/tun"
"""The device slirp4netns opens to serve a container's tap0."""
API_SOCKET = "slirp.sock"
"""The API socket's name in the container folder."""

LOG_FILE = "slirp.log"
"""slirp4netns' messages, in the container folder."""

CONTAINER_ADDR = "10.0.2.100"
"""The address ``--configure`` gives the container's tap0."""

DNS_ADDR = "10.0.2.3"
"""slirp's built-in DNS forwarder, written into the container's /etc/resolv.conf."""

_MAX_REPLY = 1 << 20


@dataclass(frozen=True)
class LiveForward:
    """A forward as slirp4netns reports it, with its id."""

    id: int
    forward: Forward


def slirp_binary() -> str:
    path = shutil.which("slirp4netns")
    if path is None:
        raise HostSetupError(
            "slirp4netns not found; it gives containers their network",
            fix="install the 'slirp4netns' package (apt-get install slirp4netns)",
        )
    return path


def check_tun() -> None:
    """Raise :class:`HostSetupError` when this user cannot open the tun device
    (slirp4netns opens it as the user, and fails the same way)."""
    try:
        os.close(os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise HostSetupError(
            f"{TUN_DEVICE} cannot be opened by uid {os.getuid()}: {exc.strerror}",
            fix="as root: chmod 0666 /dev/net/tun (the mode distributions ship)",
        ) from None


def slirp_argv(
    binary: str,
    target_pid: int,
    api_socket: Path,
    ready_fd: int,
    exit_fd: int | None,
    sandbox: bool,
    *,
    netns_path: str | None = None,
) -> list[str]:
    """The command line for one container's slirp4netns: the network namespace of
    ``target_pid``, or the one at ``netns_path`` (a namespace file or /proc/self/fd/N)."""
    argv = [
        binary,
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        f"--api-socket={api_socket}",
        f"--ready-fd={ready_fd}",
    ]
    if exit_fd is not None:
        argv.append(f"--exit-fd={exit_fd}")
    if sandbox:
        argv += ["--enable-sandbox", "--enable-seccomp"]
    if netns_path is not None:
        return [*argv, "--netns-type=path", netns_path, "tap0"]
    return [*argv, str(target_pid), "tap0"]


def spawn(
    cdir: Path,
    sandbox: bool,
    timeout: float,
    *,
    target_pid: int = 0,
    exit_fd: int | None = None,
    netns_fd: int | None = None,
) -> ProcessId:
    """Start slirp4netns on a container's network namespace (by init pid, or by a
    namespace descriptor) and wait until it is ready; kill it on any failure. Raises
    :class:`TimeoutError` when it is not ready within ``timeout`` seconds."""
    api = cdir / API_SOCKET
    api.unlink(missing_ok=True)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    netns_path = None if netns_fd is None else f"/proc/self/fd/{netns_fd}"
    argv = slirp_argv(
        slirp_binary(), target_pid, api, ready_w, exit_fd, sandbox, netns_path=netns_path
    )
    try:
        with open(cdir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=tuple(fd for fd in (ready_w, exit_fd, netns_fd) if fd is not None),
            )
    finally:
        os.close(ready_w)
    try:
        if not wait_readable([ready_r], timeout):
            raise TimeoutError("timed out waiting for slirp4netns to be ready")
        ready = os.read(ready_r, 1)
        identity = ProcessId.of(proc.pid)
        if ready != b"1" or identity is None:
            tail = (cdir / LOG_FILE).read_bytes()[-400:].decode(errors="replace").strip()
            raise SlirpError(f"slirp4netns stopped before it was ready: {tail}")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(ready_r)
    proc.returncode = 0  # reaped by the holder, a subreaper, not through this object
    return identity


def _request(api_socket: Path, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        return jsonsock.exchange(api_socket, payload, timeout=timeout, limit=_MAX_REPLY)
    except OSError as exc:
        raise SlirpError(
            f"slirp4netns API at {api_socket} unreachable: {exc}", request=payload
        ) from exc
    except ValueError as exc:
        raise SlirpError(f"unexpected slirp4netns reply: {exc}", request=payload) from exc


def _bind_error(forward: Forward) -> OSError | None:
    """Why the host port of ``forward`` cannot be bound right now (None: it can)."""
    family = socket.AF_INET6 if ":" in forward.host_addr else socket.AF_INET
    kind = socket.SOCK_DGRAM if forward.proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            # As every TCP server (slirp4netns included) does: TIME_WAIT is no conflict.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((forward.host_addr, forward.host_port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return exc
            raise
    return None


def ensure_port_free(forward: Forward) -> None:
    """Raise :class:`PortInUse`, naming the holder when visible, if the port is taken;
    :class:`PortPrivileged` if it lies below the host's first unprivileged port."""
    error = _bind_error(forward)
    if error is None:
        return
    if error.errno == errno.EACCES:
        start = unprivileged_port_start()
        if forward.host_port < start:
            raise PortPrivileged(forward.host_addr, forward.host_port, forward.proto, start)
        raise error  # refused for another reason (a security module): say so as it is
    holder = port_holder(forward.proto, forward.host_addr, forward.host_port)
    raise PortInUse(forward.host_addr, forward.host_port, forward.proto, holder)


def add_forward(api_socket: Path, forward: Forward, timeout: float = 5.0) -> int:
    """Add a host forward; return its slirp id. A taken port raises :class:`PortInUse`,
    a privileged one :class:`PortPrivileged`."""
    payload = {
        "execute": "add_hostfwd",
        "arguments": {
            "proto": forward.proto,
            "host_addr": forward.host_addr,
            "host_port": forward.host_port,
            "guest_addr": CONTAINER_ADDR,
            "guest_port": forward.guest_port,
        },
    }
    reply = _request(api_socket, payload, timeout)
    result = reply.get("return")
    if isinstance(result, dict) and isinstance(result.get("id"), int):
        return int(result["id"])
    ensure_port_free(forward)  # the likely reasons, which slirp4netns does not say
    raise SlirpError(f"slirp4netns refused forward {forward}: {reply}", request=payload)


def list_forwards(api_socket: Path, timeout: float = 5.0) -> list[LiveForward]:
    """The forwards slirp4netns holds now (its own view, the source of truth)."""
    reply = _request(api_socket, {"execute": "list_hostfwd"}, timeout)
    entries = reply.get("entries")
    if entries is None and isinstance(reply.get("return"), dict):
        entries = reply["return"].get("entries")
    if not isinstance(entries, list):
        raise SlirpError(f"unexpected list_hostfwd reply {reply!r}")
    forwards = []
    for entry in entries:
        forward = Forward(
            proto=str(entry["proto"]),
            host_addr=str(entry.get("host_addr") or "0.0.0.0"),
            host_port=int(entry["host_port"]),
            guest_port=int(entry["guest_port"]),
        )
        forwards.append(LiveForward(id=int(entry["id"]), forward=forward))
    return forwards


def find_forward(api_socket: Path, forward: Forward) -> LiveForward | None:
    """The live forward equal to ``forward``, if slirp4netns holds one."""
    for live in list_forwards(api_socket):
        if live.forward == forward:
            return live
    return None


def remove_forward(api_socket: Path, forward_id: int, timeout: float = 5.0) -> None:
    payload = {"execute": "remove_hostfwd", "arguments": {"id": forward_id}}
    reply = _request(api_socket, payload, timeout)
    if "error" in reply:
        raise SlirpError(f"slirp4netns refused to remove forward {forward_id}: {reply['error']}")
