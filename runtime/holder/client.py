"""The caller's side of the holder (``runtime.holder.server``): find it, start it, talk to it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import runtime
from runtime.errors import HostSetupError
from runtime.holder.idmap import write_id_maps
from runtime.holder.server import PAUSE_RECORD, PAUSE_SOCKET
from runtime.util.files import read_json
from runtime.util.processes import ProcessId, wait_readable

__all__ = ("SUN_PATH_MAX", "Holder", "file_lock")

_HANDSHAKE_TIMEOUT = 20.0
_HOLDER_ENV = frozenset(
    {
        "PATH",
        "PYTHONPATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "HOME",
        "USER",
        "LOGNAME",
        "XDG_RUNTIME_DIR",
        "XDG_CACHE_HOME",
    }
)
SUN_PATH_MAX = 107
"""Longest unix socket path (sun_path holds 108 bytes with the NUL)."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the duration of the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_exactly_one(fd: int, what: str) -> bytes:
    if not wait_readable([fd], _HANDSHAKE_TIMEOUT):
        raise HostSetupError(f"the namespace holder did not {what} in time")
    return os.read(fd, 64)


class Holder:
    """The per-user process that owns the containers' user namespace."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.socket_path = state / PAUSE_SOCKET
        if len(os.fsencode(self.socket_path)) > SUN_PATH_MAX:
            raise HostSetupError(
                f"state directory path too long for a unix socket: {state}",
                fix="set SQUISH_STATE_DIR to a shorter path",
            )

    def identity(self) -> ProcessId | None:
        """The holder's (pid, start time) if it is running."""
        identity = ProcessId.from_json(read_json(self.state / PAUSE_RECORD))
        return identity if identity is not None and identity.alive() else None

    def request(self, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send one request, starting the holder first when it is not running."""
        self.ensure()
        return self._send(payload, timeout)

    def _send(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
                sock.sendall(json.dumps(payload).encode())
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                raise HostSetupError(
                    f"the namespace holder did not answer within {timeout:.0f} s "
                    f"(see {self.state / 'pause.log'})"
                ) from None
        if not chunks:
            raise HostSetupError(
                "the namespace holder closed the connection without answering "
                f"(see {self.state / 'pause.log'})"
            )
        reply = json.loads(b"".join(chunks))
        if not isinstance(reply, dict):
            raise HostSetupError(f"unexpected answer from the namespace holder: {reply!r}")
        return reply

    def ensure(self) -> ProcessId:
        """Return the running holder, starting one if needed (race-free across clients)."""
        identity = self.identity()
        if identity is not None:
            return identity
        with file_lock(self.state / "pause.lock"):
            identity = self.identity()
            if identity is not None:
                return identity
            return self._spawn()

    def _spawn(self) -> ProcessId:
        to_client_r, to_client_w = os.pipe()
        from_client_r, from_client_w = os.pipe()
        package_root = str(Path(runtime.__file__).resolve().parent.parent)
        # The holder's environment is inherited by every container init: pass on only
        # what it needs, never the client's secrets.
        env = {k: v for k, v in os.environ.items() if k in _HOLDER_ENV or k.startswith("LC_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-m",
            "runtime.holder.server",
            "--state-dir",
            str(self.state),
            "--to-client",
            str(to_client_w),
            "--from-client",
            str(from_client_r),
        ]
        try:
            with open(self.state / "pause.log", "ab") as log:
                first = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd="/",
                    close_fds=True,
                    pass_fds=(to_client_w, from_client_r),
                    start_new_session=True,
                )
        except BaseException:
            os.close(to_client_r)  # the client is long-lived: leak nothing
            os.close(from_client_w)
            raise
        finally:
            for fd in (to_client_w, from_client_r):
                os.close(fd)
        try:
            message = _read_exactly_one(to_client_r, "create its user namespace")
            if not message.startswith(b"U"):
                raise HostSetupError(
                    "the namespace holder failed to create a user namespace "
                    f"(see {self.state / 'pause.log'})",
                    fix="enable unprivileged user namespaces "
                    "(sysctl kernel.unprivileged_userns_clone=1)",
                )
            pause_pid = int(message[1:])
            try:
                write_id_maps(pause_pid)
            except BaseException:
                os.kill(pause_pid, signal.SIGKILL)
                raise
            os.write(from_client_w, b"M")
            if _read_exactly_one(to_client_r, "get ready") != b"R":
                raise HostSetupError(
                    f"the namespace holder failed (see {self.state / 'pause.log'})"
                )
        finally:
            os.close(to_client_r)
            os.close(from_client_w)
            first.wait()  # it forks the holder and exits at once
        deadline = time.monotonic() + _HANDSHAKE_TIMEOUT
        while (identity := self.identity()) is None:
            if time.monotonic() > deadline:
                raise HostSetupError("the namespace holder did not record itself")
            time.sleep(0.001)
        return identity

    def stop(self) -> None:
        """Ask the holder to exit (containers keep running); kill it if it does not."""
        with file_lock(self.state / "pause.lock"):
            self._stop_locked()

    def _stop_locked(self) -> None:
        identity = self.identity()
        if identity is None:
            return
        with suppress(OSError):
            self._send({"op": "exit"}, timeout=5.0)
        if not identity.wait_gone(5.0):
            identity.send(signal.SIGKILL)
            identity.wait_gone(5.0)
        for leftover in (self.socket_path, self.state / PAUSE_RECORD):
            leftover.unlink(missing_ok=True)
