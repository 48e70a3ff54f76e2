"""The caller's side of the holder (``runtime.holder.server``): find it, start it, talk to it."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import runtime
from runtime.errors import (
    ContainerNotRunning,
    ContainerStartError,
    ContainerUnreachable,
    ExecFailed,
    HolderProtocolError,
    HostSetupError,
    NetworkRestoreFailed,
    PortInUse,
    ProbeFailed,
    SlirpError,
    SquishError,
)
from runtime.holder.idmap import write_id_maps
from runtime.holder.protocol import (
    HOLDER_LOCK,
    HOLDER_LOG,
    HOLDER_PROTOCOL,
    HOLDER_RECORD,
    HOLDER_SOCKET,
    MAX_REPLY,
    Done,
    ErrorCode,
    Exit,
    Failure,
    PortConflict,
    R,
    Request,
    Startup,
    decode_reply,
    detail_of,
    to_json,
)
from runtime.native import installed
from runtime.util import jsonsock
from runtime.util.files import read_json
from runtime.util.processes import ProcessId, wait_readable

__all__ = ("SUN_PATH_MAX", "Holder", "failure_error", "file_lock")

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


def failure_error(name: str, failure: Failure, *, program: str = "", port: int = 0) -> SquishError:
    """The exception that a failure the holder reported about container ``name`` stands
    for; ``program`` and ``port`` name what an exec or a probe was about."""
    message = failure.message
    match failure.code:
        case ErrorCode.PORT_IN_USE:
            return _port_in_use(failure.port, message)
        case ErrorCode.SLIRP_FAILED | ErrorCode.REWIRE_FAILED:
            return SlirpError(message)
        case ErrorCode.NOT_RUNNING:
            return ContainerNotRunning(name, message)
        case ErrorCode.UNKNOWN_CONTAINER:
            return ContainerUnreachable(name, message)
        case ErrorCode.EXEC_FAILED:
            return ExecFailed(name, program, message)
        case ErrorCode.PROBE_FAILED:
            return ProbeFailed(name, port, message)
        case ErrorCode.RESTORE_FAILED:
            return NetworkRestoreFailed(name, message)
        case ErrorCode.BAD_REQUEST | ErrorCode.REFUSED:
            return HolderProtocolError(f"the namespace holder refused a request: {message}")
        case ErrorCode.START_FAILED | ErrorCode.CGROUP_MOVE:
            return ContainerStartError(name, message)


def _port_in_use(port: PortConflict | None, message: str) -> SquishError:
    if port is None:  # decode_reply gives every PORT_IN_USE its port
        return HolderProtocolError(f"a port conflict that names no port: {message}")
    return PortInUse(port.host_addr, port.host_port, port.protocol, port.holder)


class Holder:
    """The per-user process that owns the containers' user namespace."""

    def __init__(
        self,
        state: Path,
        native: bool = True,
        place: Callable[[int], None] | None = None,
        ahead: Path | None = None,
        spares: int = 1,
    ) -> None:
        """``place`` puts a new holder (its pid) in a cgroup of its own before it forks
        anything (the cgroup driver's :meth:`~runtime.cgroups.driver.CgroupDriver.separate`);
        ``ahead`` is where its spares make the next start's cgroup leaf
        (:meth:`~runtime.cgroups.driver.CgroupDriver.ahead`); ``spares`` how many warm
        spare launchers a new holder keeps."""
        self.state = state
        self.native = native
        """Whether a holder started from here uses the native init and log pump
        (``runtime.native``) when they are installed."""
        self.spares = spares
        self.place = place
        self.ahead = ahead
        self.socket_path = state / HOLDER_SOCKET
        if len(os.fsencode(self.socket_path)) > SUN_PATH_MAX:
            raise HostSetupError(
                f"state directory path too long for a unix socket: {state}",
                fix="set SQUISH_STATE_DIR to a shorter path",
            )

    def identity(self) -> ProcessId | None:
        """The holder's (pid, start time) if it is running."""
        return self._running()[0]

    def _running(self) -> tuple[ProcessId | None, bool]:
        """The running holder, if any, and whether it serves this version's requests
        (its record's ``protocol``; an older holder wrote none)."""
        record = read_json(self.state / HOLDER_RECORD)
        identity = ProcessId.from_json(record)
        if identity is None or not identity.alive():
            return None, False
        protocol = record.get("protocol", 0) if isinstance(record, dict) else 0
        return identity, isinstance(protocol, int) and protocol >= HOLDER_PROTOCOL

    def call(self, request: Request, expected: type[R], timeout: float = 30.0) -> R | Failure:
        """Send one request, starting the holder first when it is not running; return
        its answer, or the failure it reports (:func:`failure_error` names it)."""
        self.ensure()
        return self._send(request, expected, timeout)

    def _send(self, request: Request, expected: type[R], timeout: float) -> R | Failure:
        log = self.state / HOLDER_LOG
        try:
            data = jsonsock.exchange(
                self.socket_path, to_json(request), timeout=timeout, limit=MAX_REPLY
            )
            return decode_reply(data, expected)
        except TimeoutError:
            raise HostSetupError(
                f"the namespace holder did not answer within {timeout:.0f} s (see {log})"
            ) from None
        except jsonsock.EmptyMessage:  # e.g. the worker serving it was killed
            raise HostSetupError(
                f"the namespace holder closed the connection without answering (see {log})"
            ) from None
        except ValueError as exc:
            raise HolderProtocolError(
                f"unexpected answer from the namespace holder: {exc} (see {log})"
            ) from None

    def ensure(self) -> ProcessId:
        """Return the running holder, starting one if needed (race-free across clients).
        A holder an earlier version started, which would refuse this version's requests,
        is asked to exit first: its containers keep running and the new holder takes
        them over."""
        identity, current = self._running()
        if identity is not None and current:
            return identity
        with file_lock(self.state / HOLDER_LOCK):
            identity, current = self._running()
            if identity is not None and current:
                return identity
            if identity is not None:
                self._stop_locked()
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
        native = installed() if self.native else None
        if native is not None:
            argv += ["--native", str(native)]
        if self.ahead is not None:
            argv += ["--cgroup-ahead", str(self.ahead)]
        argv += ["--spares", str(self.spares)]
        try:
            with open(self.state / HOLDER_LOG, "ab") as log:
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
            joined = detail_of(message, Startup.JOINED)
            pid = int(joined) if joined is not None else self._map_ids(message)
            if self.place is not None:  # it waits for MAPPED: nothing is forked yet
                self.place(pid)
            os.write(from_client_w, Startup.MAPPED.value)
            if _read_exactly_one(to_client_r, "get ready") != Startup.READY.value:
                raise HostSetupError(f"the namespace holder failed (see {self.state / HOLDER_LOG})")
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

    def _map_ids(self, message: bytes) -> int:
        """Write the id maps of the user namespace the new holder created (``message``
        names its pid, returned); a holder that joined its containers' namespace needs none."""
        pid = detail_of(message, Startup.USERNS)
        if pid is None:
            raise HostSetupError(
                "the namespace holder failed to create a user namespace "
                f"(see {self.state / HOLDER_LOG})",
                fix="enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1)",
            )
        pause_pid = int(pid)
        try:
            write_id_maps(pause_pid)
        except BaseException:
            os.kill(pause_pid, signal.SIGKILL)
            raise
        return pause_pid

    def stop(self) -> None:
        """Ask the holder to exit (containers keep running); kill it if it does not."""
        with file_lock(self.state / HOLDER_LOCK):
            self._stop_locked()

    def _stop_locked(self) -> None:
        identity = self.identity()
        if identity is None:
            return
        with suppress(OSError, HolderProtocolError):  # it is killed if it does not exit
            self._send(Exit(), Done, timeout=5.0)
        if not identity.wait_gone(5.0):
            identity.send(signal.SIGKILL)
            identity.wait_gone(5.0)
        for leftover in (self.socket_path, self.state / HOLDER_RECORD):
            leftover.unlink(missing_ok=True)
