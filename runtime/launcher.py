"""Start one container: runs in a process forked from the namespace holder.

It unshares the container's namespaces (mount, uts, ipc, net, cgroup, pid), forks the
container's init, starts slirp4netns on the init's network namespace while the init
mounts the filesystem, adds the port forwards, lets the command run, records the run in
``run.json`` and answers the client on the connection it inherited. Then it exits: the
init and slirp4netns are re-parented to the namespace holder, a child subreaper.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from runtime import slirp
from runtime import syscalls as sc
from runtime.errors import PortInUse, SlirpError
from runtime.init import run_init
from runtime.launch import LaunchRequest
from runtime.state import ProcessId, write_json_atomic

__all__ = ("CONTAINER_NAMESPACES", "launch")

CONTAINER_NAMESPACES = (
    sc.CLONE_NEWNS
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWIPC
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWCGROUP
    | sc.CLONE_NEWPID
)
_READY_TIMEOUT = 10.0


class _LaunchFailed(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("message", "launch failed"))
        self.reply = reply


def _read_with_timeout(fd: int, size: int, timeout: float, what: str) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise _LaunchFailed({"error": "start", "message": f"timed out waiting for {what}"})
    return os.read(fd, size)


def _start_slirp(
    req: LaunchRequest, init_pid: int, exit_r: int, sandbox: bool
) -> subprocess.Popen[bytes]:
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    cdir = Path(req.container_dir)
    api = cdir / "slirp.sock"
    api.unlink(missing_ok=True)
    argv = slirp.slirp_argv(slirp.slirp_binary(), init_pid, api, ready_w, exit_r, sandbox)
    with open(cdir / "slirp.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w, exit_r)
        )
    os.close(ready_w)
    try:
        ready = _read_with_timeout(ready_r, 1, _READY_TIMEOUT, "slirp4netns to be ready")
    finally:
        os.close(ready_r)
    if ready != b"1":
        code = proc.wait()
        raise SlirpError(
            f"slirp4netns exited with code {code} before it was ready (see {cdir / 'slirp.log'})"
        )
    return proc


def _network(
    req: LaunchRequest, init_pid: int, exit_r: int
) -> tuple[ProcessId, list[dict[str, Any]]]:
    try:
        proc = _start_slirp(req, init_pid, exit_r, req.sandbox_slirp)
    except SlirpError:
        if not req.sandbox_slirp:
            raise
        proc = _start_slirp(req, init_pid, exit_r, sandbox=False)
    identity = ProcessId.of(proc.pid)
    if identity is None:
        raise SlirpError("slirp4netns died right after it was ready")
    api = Path(req.container_dir) / "slirp.sock"
    forwards = []
    for forward in req.forwards:
        forward_id = slirp.add_forward(api, forward)
        forwards.append({"id": forward_id, **asdict(forward)})
    return identity, forwards


def _failure_reply(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, _LaunchFailed):
        return {"ok": False, **exc.reply}
    if isinstance(exc, PortInUse):
        return {
            "ok": False,
            "error": "port_in_use",
            "message": str(exc),
            "host_addr": exc.host_addr,
            "host_port": exc.host_port,
            "protocol": exc.protocol,
        }
    if isinstance(exc, SlirpError):
        return {"ok": False, "error": "slirp", "message": str(exc)}
    return {"ok": False, "error": "start", "message": f"{type(exc).__name__}: {exc}"}


def _fork_init(
    req: LaunchRequest,
    conn: socket.socket,
    *,
    state_fd: int,
    log_fd: int,
    go_r: int,
    report_w: int,
    close_in_init: tuple[int, ...],
) -> int:
    """Fork the container's init into new namespaces; return its pid (host view).

    An intermediate child unshares, so this process stays in the host's network
    namespace (slirp4netns must start from there) and its later children are not born
    into the container's pid namespace.
    """
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    middle = os.fork()
    if middle == 0:
        try:
            os.close(pid_r)
            sc.unshare(CONTAINER_NAMESPACES)
            init_pid = os.fork()
            if init_pid == 0:
                for fd in (*close_in_init, pid_w, conn.fileno()):
                    os.close(fd)
                run_init(req, state_fd=state_fd, log_fd=log_fd, go_r=go_r, report_w=report_w)
            os.write(pid_w, str(init_pid).encode())
        except BaseException as exc:
            os.write(pid_w, f"E{exc}".encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    answer = _read_with_timeout(pid_r, 4096, _READY_TIMEOUT, "the container init to fork")
    os.close(pid_r)
    os.waitpid(middle, 0)
    if not answer or answer.startswith(b"E"):
        raise _LaunchFailed(
            {
                "error": "start",
                "message": "cannot create the container "
                f"namespaces: {answer[1:].decode(errors='replace')}",
            }
        )
    return int(answer)


def _run(req: LaunchRequest, conn: socket.socket) -> dict[str, Any]:
    cdir = req.container_dir
    state_fd = os.open(cdir, os.O_DIRECTORY | os.O_CLOEXEC)
    log_fd = os.open(
        os.path.join(cdir, "output.log"),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
        0o600,
    )
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    init_pid = _fork_init(
        req,
        conn,
        state_fd=state_fd,
        log_fd=log_fd,
        go_r=go_r,
        report_w=report_w,
        close_in_init=(go_w, report_r, exit_r),
    )
    for fd in (go_r, report_w, exit_w, state_fd, log_fd):
        os.close(fd)
    try:
        init = ProcessId.of(init_pid)
        network: tuple[ProcessId, list[dict[str, Any]]] | None = None
        if req.network == "slirp4netns":
            network = _network(req, init_pid, exit_r)
        os.close(exit_r)
        mounted = _read_with_timeout(report_r, 4096, _READY_TIMEOUT, "the container filesystem")
        if mounted != b"M":
            raise _LaunchFailed(
                {
                    "error": "start",
                    "message": mounted[1:].decode(errors="replace")
                    or "the container init died while mounting",
                }
            )
        os.write(go_w, b"G")
        started = _read_with_timeout(report_r, 4096, _READY_TIMEOUT, "the command to start")
        if started != b"S":
            raise _LaunchFailed(
                {
                    "error": "start",
                    "message": started[1:].decode(errors="replace")
                    or "the container init died before the command started",
                }
            )
        if init is None:
            raise _LaunchFailed({"error": "start", "message": "the container init vanished"})
        run = {
            "init": init.to_json(),
            "slirp": network[0].to_json() if network else None,
            "forwards": network[1] if network else [],
            "started_at": time.time(),
        }
        write_json_atomic(Path(cdir) / "run.json", run)
        return {"ok": True, "run": run}
    except BaseException:
        os.kill(init_pid, signal.SIGKILL)
        raise


def launch(req: LaunchRequest, conn: socket.socket) -> NoReturn:
    """Start the container described by ``req``; answer on ``conn``; exit."""
    code = 0
    try:
        reply = _run(req, conn)
    except BaseException as exc:
        reply = _failure_reply(exc)
        code = 1
    try:
        conn.sendall(json.dumps(reply).encode())
        conn.close()
    finally:
        os._exit(code)
