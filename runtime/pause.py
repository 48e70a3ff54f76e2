"""The namespace holder: one long-lived process per user, like podman's pause process.

It creates the user namespace every container lives in (so a later network between
containers can be wired inside one namespace), and it is the single-threaded process
containers are forked from: the client may run threads (anyio, watchfiles), and forking
from a threaded process can deadlock the child. It is also a child subreaper, so every
container init and slirp4netns is re-parented to it and reaped.

Start-up handshake with the client that spawned it (two pipes): this process unshares
its user namespace and writes ``U``; the client, still outside, writes the id maps and
answers ``M``; this process binds its socket and writes ``R``.

Control protocol on ``pause.sock``: one JSON request per connection, the client shuts
down its write side, the answer is one JSON object. Requests: ``{"op": "ping"}``,
``{"op": "launch", "request": LaunchRequest}``, ``{"op": "exit"}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from runtime import syscalls as sc
from runtime.launcher import hand_over, restart_slirp, run_spare
from runtime.state import ProcessId, write_json_atomic

__all__ = ("PAUSE_RECORD", "PAUSE_SOCKET", "main")

PAUSE_SOCKET = "pause.sock"
PAUSE_RECORD = "pause.json"
_MAX_REQUEST = 4 << 20


def _log(message: str) -> None:
    print(
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pause[{os.getpid()}]: {message}",
        file=sys.stderr,
        flush=True,
    )


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(2.0)
    chunks, size = [], 0
    while chunk := conn.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REQUEST:
            raise ValueError("request too large")
    return b"".join(chunks)


def _reply(conn: socket.socket, data: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(data).encode())
    except OSError as exc:
        _log(f"cannot answer the client: {exc}")


class _Spares:
    """At most one warm spare launcher, forked ahead of the next request.

    A spare is refilled only while no launch is under way, so forking the next one
    never competes for the CPU with a container that is starting.
    """

    def __init__(self, listener: socket.socket, wake: tuple[int, int]) -> None:
        self.listener = listener
        self.wake = wake
        self.spare: tuple[int, socket.socket] | None = None
        self.launching: set[int] = set()

    def take(self) -> socket.socket:
        if self.spare is None:
            self._fork()
        assert self.spare is not None
        pid, ctrl = self.spare
        self.spare = None
        self.launching.add(pid)
        return ctrl

    def reaped(self, pid: int) -> None:
        self.launching.discard(pid)
        if self.spare is not None and self.spare[0] == pid:
            _log(f"the spare launcher {pid} died; forking another")
            self.spare[1].close()
            self.spare = None

    def refill(self) -> None:
        if self.spare is None and not self.launching:
            self._fork()

    def _fork(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child = os.fork()
        if child == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Nothing of the holder may reach a container: not the listener, not a
            # client connection being served while this spare is forked.
            keep = theirs.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
            run_spare(theirs)
        theirs.close()
        self.spare = (child, ours)

    def drop(self) -> None:
        """Close the spare's control socket (it exits, and its init with it) and wait."""
        if self.spare is None:
            return
        pid, ctrl = self.spare
        self.spare = None
        ctrl.close()
        os.waitpid(pid, 0)


class _Networks:
    """The network namespace of every container this holder started, by name.

    Kept so that a slirp4netns that died can be started again for the same namespace
    (the container's init is not dumpable, so nobody else can reach it). Released when
    the init is reaped, which also ends a restarted slirp4netns (its exit pipe closes).
    """

    def __init__(self) -> None:
        self.by_name: dict[str, tuple[int, int, int | None]] = {}
        """name -> (init pid, netns fd, exit pipe of a restarted slirp4netns or None)"""

    def add(self, name: str, init_pid: int, netns_fd: int) -> None:
        self.release(name)
        self.by_name[name] = (init_pid, netns_fd, None)

    def release(self, name: str) -> None:
        entry = self.by_name.pop(name, None)
        if entry is not None:
            for fd in entry[1:]:
                if fd is not None:
                    os.close(fd)

    def reaped(self, pid: int) -> None:
        for name, entry in list(self.by_name.items()):
            if entry[0] == pid:
                self.release(name)

    def restore(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request.get("name"))
        entry = self.by_name.get(name)
        if entry is None:
            return {
                "ok": False,
                "error": "start",
                "message": f"this holder did not start {name!r} (it was restarted since): "
                "recreate the container to restore its network",
            }
        init_pid, netns_fd, old_exit = entry
        identity, exit_w = restart_slirp(
            str(request["container_dir"]), netns_fd, bool(request.get("sandbox", True))
        )
        if old_exit is not None:
            os.close(old_exit)
        self.by_name[name] = (init_pid, netns_fd, exit_w)
        return {"ok": True, "slirp": identity.to_json()}


def _serve_one(conn: socket.socket, spares: _Spares, networks: _Networks) -> bool:
    """Handle one connection; return False when asked to exit."""
    try:
        raw = _read_request(conn)
        request = json.loads(raw)
        if not isinstance(request, dict):
            raise ValueError("request is not a JSON object")
    except (OSError, ValueError) as exc:
        _reply(conn, {"ok": False, "error": "protocol", "message": str(exc)})
        return True
    op = request.get("op")
    if op == "ping":
        _reply(conn, {"ok": True, "pid": os.getpid()})
        return True
    if op == "exit":
        spares.drop()
        _reply(conn, {"ok": True})
        return False
    if op == "restore_network":
        try:
            _reply(conn, networks.restore(request))
        except (OSError, ValueError, KeyError) as exc:
            _reply(conn, {"ok": False, "error": "slirp", "message": str(exc)})
        return True
    if op != "launch":
        _reply(conn, {"ok": False, "error": "protocol", "message": f"unknown op {op!r}"})
        return True
    launch = request.get("request")
    raw_request = json.dumps(launch).encode()
    for attempt in (1, 2):
        ctrl = spares.take()
        try:
            # The spare parses and checks the request: keep this single loop lean.
            init_pid, netns_fd = hand_over(ctrl, raw_request, conn)
            name = launch.get("name") if isinstance(launch, dict) else None
            if isinstance(name, str):
                networks.add(name, init_pid, netns_fd)
            else:
                os.close(netns_fd)
            break
        except OSError as exc:
            _log(f"handing a request to a spare failed ({exc}); attempt {attempt}")
            if attempt == 2:
                _reply(conn, {"ok": False, "error": "start", "message": f"launcher lost: {exc}"})
        finally:
            ctrl.close()
    return True


def _reap(spares: _Spares, networks: _Networks) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        spares.reaped(pid)
        networks.reaped(pid)


def serve(listener: socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    gc.freeze()
    spares = _Spares(listener, (wake_r, wake_w))
    networks = _Networks()
    running = True
    while running:
        spares.refill()
        try:
            readable, _, _ = select.select([listener.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            _reap(spares, networks)
        if listener.fileno() in readable:
            conn, _ = listener.accept()
            with conn:
                running = _serve_one(conn, spares, networks)
    _reap(spares, networks)
    _log("exiting on request")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.pause")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--to-client", required=True, type=int)
    parser.add_argument("--from-client", required=True, type=int)
    args = parser.parse_args(argv)
    state: Path = args.state_dir
    os.chdir("/")
    if os.fork() != 0:
        os._exit(0)  # the client reaps this first process; the holder is its orphan
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError as exc:
        _log(f"cannot create a user namespace: {exc}")
        os.write(args.to_client, b"X")
        sys.exit(1)
    os.write(args.to_client, f"U{os.getpid()}".encode())
    if os.read(args.from_client, 1) != b"M":
        _log("the client did not map ids; giving up")
        sys.exit(1)
    os.close(args.from_client)
    sock_path = state / PAUSE_SOCKET
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(sock_path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    me = ProcessId.of(os.getpid())
    assert me is not None
    write_json_atomic(state / PAUSE_RECORD, me.to_json())
    _log(f"holding the user namespace; listening on {sock_path}")
    os.write(args.to_client, b"R")
    os.close(args.to_client)
    serve(listener)


if __name__ == "__main__":
    main()
