"""Start containers: a warm spare, forked from the namespace holder ahead of time.

A spare unshares the container namespaces (mount, uts, ipc, net, cgroup, pid) and forks
the container's init *before* any container is asked for; the init gets warm (its /proc
view's connection mounted ahead), says so, and waits for its launch request. The spare
then hands the holder the init's pid and its view's connection (``receive_warm``), so
that the view's server serves it while the init binds the view's files into the root it
mounts ahead. When a request comes, the holder hands it to the spare together with the
client's connection (SCM_RIGHTS) and forks the next spare. The spare then starts
slirp4netns on the init's network namespace while the init mounts the filesystem, adds
the port forwards, lets the command run, records the run in ``run.json``, answers the
client and exits; the init and slirp4netns are re-parented to the holder (a subreaper).

A spare that loses its holder (EOF on its control socket) exits, and its init with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from runtime.cgroups.fs import Leaf
from runtime.errors import PortInUse, SlirpError
from runtime.holder import logpump
from runtime.holder.exec_runner import NAMESPACES
from runtime.holder.init import run_init, sample_request
from runtime.holder.protocol import (
    MAX_REQUEST,
    ErrorCode,
    Failure,
    Launched,
    Launching,
    PortConflict,
    Reply,
    detail_of,
    encode,
    marked,
)
from runtime.network import bridge
from runtime.network.driver import Starting, driver_for
from runtime.sandbox import syscalls as sc
from runtime.sandbox.mounts import RootShape
from runtime.util.fdpass import receive_with_fds, send_with_fds
from runtime.util.files import write_json_atomic
from runtime.util.processes import ProcessId, proc_start_time, wait_readable
from runtime.wire import LaunchRequest

__all__ = ("CONTAINER_NAMESPACES", "hand_over", "receive_warm", "restart_slirp", "run_spare")

CONTAINER_NAMESPACES = (
    sc.CLONE_NEWNS
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWIPC
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWCGROUP
    | sc.CLONE_NEWPID
)

_STEP_TIMEOUT = 10.0
"""How long a launch waits for each step of a container's init (fork, mount, start)."""

_WARM = struct.Struct("<ciQ")
"""Spare to holder, once its init is warm: ``Launching.WARM``, the init's pid and start
time (0 if it is gone), with the view's connection and channel if it has them (always
this size: the request's ``TAKEN`` may follow it in the stream)."""


class _LaunchFailed(Exception):
    def __init__(self, message: str, code: ErrorCode = ErrorCode.START_FAILED) -> None:
        super().__init__(message)
        self.reply = Failure(code, message)


@dataclass
class _Init:
    """The spare's container init and the pipes to it."""

    pid: int
    request_w: int
    go_w: int
    report_r: int
    exit_r: int
    log_r: int
    """The read end of the command's output pipe: the log pump's, once launched."""
    native: str | None
    """The native init and log pump (``runtime.native``), or None: Python ones."""
    view: int | str
    """A /dev/fuse descriptor for the container's /proc view, or why there is none."""
    channel: int | None
    """With the view: the socket the init sends its seccomp listener on (the holder's end)."""
    middle: int | None = None
    """The intermediate child, while it moves the init into the leaf made ahead."""
    namespaces: dict[str, int] = field(default_factory=dict)
    """The inodes of its namespaces (``run.json``'s), read while it was warm and dumpable;
    the cgroup one comes with ``M``, as the init starts that namespace once placed."""
    netns: int = -1
    """Its network namespace, opened while it was warm: the network starts in it."""

    def view_fds(self) -> list[int]:
        if isinstance(self.view, int) and self.channel is not None:
            return [self.view, self.channel]
        return []

    def close_view(self) -> None:
        """Close this process's copy of the view's descriptor (the holder has its own)."""
        for fd in self.view_fds():
            os.close(fd)


def _open_fuse() -> int | str:
    """A fresh FUSE connection (the init mounts it), or why there can be none."""
    try:
        return os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"


def _read_with_timeout(fd: int, size: int, timeout: float, what: str) -> bytes:
    if not wait_readable([fd], timeout):
        raise _LaunchFailed(f"timed out waiting for {what}")
    return os.read(fd, size)


def _channel(view: int | str) -> tuple[int | None, int | None]:
    """With a view: a socket pair for the init's seccomp listener (holder's end, init's)."""
    if not isinstance(view, int):
        return None, None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    return ours.detach(), theirs.detach()


def _fork_init(
    close_in_init: tuple[int, ...],
    native: str | None,
    intercept: bytes | str,
    ahead: tuple[str, RootShape] | None = None,
    procs: int | None = None,
) -> _Init:
    """Fork the container's init into new namespaces; return it (pid in the host view).
    ``ahead``: where and of what shape it mounts a root ahead (``run_init``), or None.

    An intermediate child unshares, so this process stays in the host's network
    namespace (slirp4netns must start from there) and its later children are not born
    into the container's pid namespace. With ``procs`` (a leaf's ``cgroup.procs``, see
    :func:`_leaf_ahead`) it then moves the init there and exits 0 once it has: it is
    left to be waited for (``_Init.middle``).
    """
    request_r, request_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    log_r, log_w = logpump.log_pipe()
    view = _open_fuse()
    channel, init_channel = _channel(view)
    middle = os.fork()
    if middle == 0:
        code = 0
        try:
            sc.unshare(CONTAINER_NAMESPACES)
            init_pid = os.fork()
            if init_pid == 0:
                ours = (request_w, go_w, report_r, exit_r, pid_r, pid_w, log_r, channel)
                for fd in (*close_in_init, *ours):
                    if fd is not None:
                        os.close(fd)
                # exit_w stays open in the init only: slirp4netns exits when it closes.
                run_init(
                    request_r=request_r,
                    go_r=go_r,
                    report_w=report_w,
                    exit_w=exit_w,
                    log_w=log_w,
                    native=native,
                    view=view,
                    calls=(intercept, init_channel),
                    ahead=ahead,
                )
            os.write(pid_w, str(init_pid).encode())
            code = _move_ahead(procs, init_pid)
        except BaseException as exc:
            os.write(pid_w, marked(Launching.FAILED, str(exc)))
        finally:
            os._exit(code)
    for fd in (request_r, go_r, report_w, exit_w, pid_w, log_w, init_channel):
        if fd is not None:
            os.close(fd)
    answer = _read_with_timeout(pid_r, 4096, _STEP_TIMEOUT, "the container init to fork")
    os.close(pid_r)
    failed = not answer or answer.startswith(Launching.FAILED)
    if procs is None or failed:
        os.waitpid(middle, 0)
    if failed:
        raise _LaunchFailed(_namespaces_failure(answer))
    init = _Init(int(answer), request_w, go_w, report_r, exit_r, log_r, native, view, channel)
    init.middle = None if procs is None else middle
    return init


def _move_ahead(procs: int | None, pid: int) -> int:
    """In the intermediate child: move the init (``pid``) into the leaf whose
    ``cgroup.procs`` is open as ``procs``; the exit code that says whether it moved. The
    kernel checks the move against the cgroup namespace the file was opened in (the
    spare's), not the container's this child has entered."""
    if procs is None:
        return 0
    try:
        os.write(procs, str(pid).encode())
    except OSError as exc:
        _log(f"cannot move the next container's init into its cgroup ahead: {exc}")
        return 1
    return 0


def _namespaces_failure(answer: bytes) -> str:
    """Why the child that unshares the namespaces gave no init: what it wrote, if anything."""
    failure = detail_of(answer, Launching.FAILED)
    if failure is None:
        failure = "the process that unshares them exited without a word (killed?)"
    return f"cannot create the container namespaces: {failure}"


def _network(
    req: LaunchRequest, starting: Starting
) -> tuple[ProcessId | None, list[dict[str, Any]]]:
    try:
        identity, ids = starting()
    except TimeoutError as exc:  # a helper not ready in time fails the launch
        raise _LaunchFailed(str(exc)) from exc
    return identity, [{"id": i, **asdict(f)} for i, f in zip(ids, req.forwards, strict=True)]


def restart_slirp(
    container_dir: str, netns_fd: int, sandbox: bool, network: str, exit_fd: int
) -> ProcessId:
    """Start the network helper (slirp4netns) again for a running container, from its
    network namespace fd, with the driver of its ``network`` mode.

    Nothing inside the running container can hold its exit pipe now: the holder holds
    the other end of ``exit_fd``, so the helper ends when the holder does (whoever
    outlives it could not end the helper), and the holder kills it when it sees the
    container's init end; a remove kills it through ``run.json``.
    """
    return driver_for(network).restart(Path(container_dir), sandbox, netns_fd, exit_fd)


def _failure_reply(exc: BaseException) -> Failure:
    if isinstance(exc, _LaunchFailed):
        return exc.reply
    if isinstance(exc, PortInUse):
        port = PortConflict(exc.host_addr, exc.host_port, exc.protocol, exc.holder)
        return Failure(ErrorCode.PORT_IN_USE, str(exc), port)
    if isinstance(exc, SlirpError):
        return Failure(ErrorCode.SLIRP_FAILED, str(exc))
    return Failure(ErrorCode.START_FAILED, f"{type(exc).__name__}: {exc}")


def _start_pump(init: _Init, req: LaunchRequest) -> ProcessId | None:
    """Start the container's log pump on the read end of its output pipe."""
    path = req.log_file()
    try:
        log_fd = logpump.open_log(path)
    except OSError as exc:
        raise _LaunchFailed(f"cannot open the container's log {path}: {exc.strerror}") from exc
    try:
        pid = logpump.start_pump(
            init.log_r, log_fd, path, req.log_max_size, req.log_max_files, init.native
        )
    finally:
        os.close(log_fd)
        os.close(init.log_r)
    return ProcessId.of(pid)


def _launch(init: _Init, req: LaunchRequest, raw: bytes, ahead: _Ahead | None) -> Launched:
    leaf, raw = _cgroup(init, req, raw, ahead)
    cgroup = "" if leaf is None else str(leaf.path)
    # The init first: its mounts are the longer way to the command. A bridge network's
    # wiring, begun next and finished after the log pump, is done by other processes
    # meanwhile, overlapping the init's mounts, the cgroup move and the pump's fork.
    identity = ProcessId.of(init.pid)
    try:
        try:
            os.write(init.request_w, raw)  # EPIPE: the warm init died; its leaf goes below
        finally:
            os.close(init.request_w)
        starting = driver_for(req).start(
            Path(req.container_dir),
            req.sandbox_slirp,
            target_pid=init.pid,
            netns_fd=init.netns,
            exit_fd=init.exit_r,
            forwards=req.forwards,
            handler=req.port_handler,
        )
        if leaf is not None and not _in_place(leaf, req, ahead):
            _move(init, leaf)  # while the init mounts (again if the mover failed: why)
        if leaf is not None and req.cgroup_limits:
            _write_limits(leaf, req.cgroup_limits)
        with contextlib.suppress(BrokenPipeError):  # it failed: its report says why
            os.write(init.go_w, Launching.PLACED.value)
        log_pump = _start_pump(init, req)
        helper, forwards = _network(req, starting)
        os.close(init.exit_r)
        mounted = _read_with_timeout(init.report_r, 4096, _STEP_TIMEOUT, "the filesystem")
        view_detail = _mounted(init, mounted)
        if identity is None:
            raise _LaunchFailed("the container init vanished")
        run = _run_record(identity, init.namespaces, helper, forwards, cgroup, log_pump)
        run["proc_view"] = _view_state(req, view_detail)
        # Recorded before the command runs: whoever sees it serve also sees it running.
        write_json_atomic(Path(req.container_dir) / "run.json", run)
        os.write(init.go_w, Launching.GO.value)
        started = _read_with_timeout(init.report_r, 4096, _STEP_TIMEOUT, "the command")
        if started != Launching.STARTED.value:
            detail = detail_of(started, Launching.FAILED)
            raise _LaunchFailed(detail or "the container init died before the command started")
        return Launched(run)
    except BaseException as exc:
        failed = _init_failure(init)
        if identity is not None:  # the init may be gone and reaped (by the holder) already
            identity.send(signal.SIGKILL)
        if leaf is not None and (ahead is None or leaf != ahead.leaf) and not req.systemd_scope:
            leaf.discard()  # made for this launch (the spare's own goes after it)
        if failed is not None:
            raise _LaunchFailed(failed) from exc
        raise


def _mounted(init: _Init, report: bytes) -> str:
    """Take the init's ``M`` report (its cgroup namespace's inode, then why its view or
    its intercepted calls are missing, if they are), or raise why it failed."""
    detail = detail_of(report, Launching.MOUNTED)
    if detail is None:
        failed = detail_of(report, Launching.FAILED)
        raise _LaunchFailed(failed or "the container init died while mounting")
    inode, _, view_detail = detail.partition("\n")
    init.namespaces["cgroup"] = int(inode)
    return view_detail


def _init_failure(init: _Init) -> str | None:
    """Why the init failed, if it reported so by now: a step that failed after the
    init had its request (its network, its cgroup move) may have failed because the
    init had ended (no namespace left to join), and the init's reason is the one to
    tell. Never waits: a report not written yet is no failure of the init's."""
    if not wait_readable([init.report_r], 0):
        return None
    try:
        return detail_of(os.read(init.report_r, 4096), Launching.FAILED)
    except OSError:
        return None


def _run_record(
    init: ProcessId,
    namespaces: dict[str, int],
    helper: ProcessId | None,
    forwards: list[dict[str, Any]],
    cgroup: str,
    log_pump: ProcessId | None,
) -> dict[str, Any]:
    """What ``run.json`` records of a run (its ``proc_view`` apart)."""
    return {
        "init": init.to_json(),
        "slirp": helper.to_json() if helper is not None else None,
        "forwards": forwards,
        "started_at": time.time(),
        "cgroup": cgroup,
        "log_pump": log_pump.to_json() if log_pump is not None else None,
        # A later holder finds them again in the command's /proc/PID/ns
        # (runtime.holder.adoption).
        "namespaces": namespaces,
    }


def _view_state(req: LaunchRequest, detail: str) -> str:
    """What ``status`` says of the container's /proc view: on, off, or why it is not; the
    init's ``detail`` is why the view is missing, then (after a newline) why its
    syscalls are not intercepted."""
    if not req.proc_view:
        return "off"
    missing, _, no_calls = detail.partition("\n")
    if missing:
        return f"unavailable: {missing}"
    return f"on (files only: {no_calls})" if no_calls else "on"


def _into_scope(init: _Init, req: LaunchRequest, raw: bytes) -> tuple[str, bytes]:
    """Put the init into a systemd scope before it reads its request, which names the
    scope's cgroup; return the cgroup and the request as the init is to read it."""
    from runtime.cgroups import systemd  # jeepney is loaded only with the systemd driver

    try:
        cgroup = str(systemd.start_scope(req.systemd_scope, init.pid))
    except (OSError, ValueError) as exc:
        _dismiss(init)  # it never got a request: it exits on EOF
        raise _LaunchFailed(f"the user's systemd gave the container no scope: {exc}") from exc
    return cgroup, json.dumps({**json.loads(raw), "cgroup": cgroup}).encode()


@dataclass
class _Ahead:
    """The leaf made for the next start, and the process moving the warm init into it."""

    leaf: Leaf
    procs: int
    """The leaf's ``cgroup.procs``, open for the intermediate child (:func:`_fork_init`)."""
    mover: int | None = None
    """The intermediate child's pid until it has been waited for."""
    moved: bool = False

    def settle(self) -> bool:
        """Wait for the mover (if it still runs); whether the init is in the leaf."""
        if self.mover is not None:
            _, status = os.waitpid(self.mover, 0)
            self.mover = None
            self.moved = status == 0
        return self.moved

    def discard(self) -> None:
        self.settle()
        self.leaf.discard()


def _leaf_ahead(ahead: str) -> _Ahead | None:
    """Make the leaf ``ahead`` names for the next start and open its ``cgroup.procs``:
    the intermediate child that forks the init moves it there at once, while no start
    waits. A move takes the cgroup threadgroup lock for writing, which waits for an RCU
    grace period (about 12 ms after a quiet spell); the child waits for it, not this
    spare, and a request that comes meanwhile waits for it only once the init mounts
    (as a move at launch did). None when not asked for, or the leaf cannot be made."""
    if not ahead:
        return None
    leaf = Leaf(Path(ahead))
    try:
        leaf.path.mkdir(parents=True)
        return _Ahead(leaf, os.open(leaf.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
    except OSError as exc:
        _log(f"cannot make the next start's cgroup {ahead}: {exc}")
        leaf.remove()
        return None


def _cgroup(
    init: _Init, req: LaunchRequest, raw: bytes, ahead: _Ahead | None
) -> tuple[Leaf | None, bytes]:
    """The cgroup the container runs in and the request as the init is to read it
    (naming that cgroup): a systemd scope, else the leaf made ahead (when in the folder
    asked for, or none was asked for and the init is in it), else a leaf made now in
    that folder (the init is moved there at launch), else none. The init goes elsewhere
    only once the mover ahead is done: its move, if later, would put the init back in
    the leaf made ahead, which is killed and removed when no container runs in it."""
    own = ahead is not None and not req.systemd_scope and _fits(ahead, req)
    if ahead is not None and not own:
        ahead.settle()
    if req.systemd_scope:
        cgroup, raw = _into_scope(init, req, raw)
        return Leaf(Path(cgroup)), raw
    if own and ahead is not None:
        leaf = ahead.leaf
    elif req.cgroup_parent:
        leaf = Leaf(Path(req.cgroup_parent, f"{req.name}.{secrets.token_hex(3)}"))
        try:
            leaf.path.mkdir()
        except OSError as exc:
            _dismiss(init)  # it never got a request: it exits on EOF
            raise _LaunchFailed(
                f"cannot make the container's cgroup {leaf.path}: {exc}", ErrorCode.CGROUP_MOVE
            ) from exc
    else:
        return None, raw
    return leaf, json.dumps({**json.loads(raw), "cgroup": str(leaf.path)}).encode()


def _fits(ahead: _Ahead, req: LaunchRequest) -> bool:
    """Whether the launch uses the leaf made ahead: it is in the folder asked for, or no
    folder was asked for and the init is in it (a container then gets a leaf anyway)."""
    if req.cgroup_parent:
        return req.cgroup_parent == str(ahead.leaf.path.parent)
    return ahead.settle()


def _in_place(leaf: Leaf, req: LaunchRequest, ahead: _Ahead | None) -> bool:
    """Whether the init is in ``leaf`` without a move by the launch: a systemd scope's,
    or the leaf made ahead once its mover is done (it moved the init while the init
    mounted, if not before)."""
    return bool(req.systemd_scope) or (ahead is not None and leaf == ahead.leaf and ahead.settle())


def _write_limits(leaf: Leaf, limits: dict[str, str]) -> None:
    """Write the container's limits into its leaf, before its command runs."""
    try:
        leaf.write_limits(limits)
    except OSError as exc:
        raise _LaunchFailed(f"cannot write the container's limits into {leaf.path}: {exc}") from exc


def _move(init: _Init, leaf: Leaf) -> None:
    """Move the init into a leaf made at launch (no leaf was made ahead).

    The move waits for an RCU grace period in the kernel (the cgroup threadgroup lock
    is taken for writing): milliseconds on a busy machine, which the init spends on its
    mounts meanwhile; it starts its cgroup namespace once told it is placed."""
    try:
        (leaf.path / "cgroup.procs").write_text(str(init.pid))
    except OSError as exc:
        raise _LaunchFailed(
            f"cannot move the container into {leaf.path}: {exc}", ErrorCode.CGROUP_MOVE
        ) from exc


def _receive(ctrl: socket.socket) -> tuple[bytes, socket.socket] | None:
    """The launch request and the client connection, or None when the holder is gone
    (a holder that ended without reading this spare's warm word resets the socket)."""
    try:
        data, fds = receive_with_fds(ctrl, MAX_REQUEST, 1)
    except ConnectionResetError:
        return None
    if not data or not fds:
        return None
    chunks = [data]
    while chunk := ctrl.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks), socket.socket(fileno=fds[0])


def _prewarm() -> None:
    """Run a launch's own steps once on samples while the init warms up, as the init
    does (``runtime.holder.init._prewarm``): the pages they write are copied now, off
    the start's path."""
    sample = sample_request()
    request = LaunchRequest.from_json(json.loads(json.dumps(sample.to_json())))
    driver_for(request)
    bridge.prewarm()
    encode(Launched({"init": {"pid": 1, "start_time": 1}, "forwards": [], "namespaces": {}}))


def _await_warm(init: _Init) -> None:
    """Wait until the init is ready for a request: then the view's connection, which
    goes to the holder next, is mounted already."""
    warm = _read_with_timeout(init.report_r, len(Launching.WARM.value), _STEP_TIMEOUT, "warm")
    if warm != Launching.WARM.value:
        raise _LaunchFailed("the container init died before it was ready")


def _dismiss(init: _Init) -> None:
    """Let an unused init go and wait until it has exited: killed, as it may wait in a
    bind of the view's files ahead for a server none runs (not reading its request pipe)."""
    os.close(init.request_w)
    try:
        pidfd = os.pidfd_open(init.pid)
    except ProcessLookupError:  # it ended, and the holder reaped it
        return
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    wait_readable([pidfd], _STEP_TIMEOUT)
    os.close(pidfd)


def _send_warm(ctrl: socket.socket, init: _Init) -> bool:
    """Hand the holder the warm init's pid and its view's connection and channel (this
    process's copies closed then): its server, if one runs, serves the init's binds
    ahead. False when the holder is gone (the spare lets its init and leaf go, as on EOF)."""
    try:
        start = proc_start_time(init.pid) or 0
        send_with_fds(ctrl, _WARM.pack(Launching.WARM.value, init.pid, start), init.view_fds())
    except OSError:
        return False
    finally:
        init.close_view()
    return True


log = logging.getLogger("launcher")
"""A spare's diagnostics; the holder it was forked from configured where they go."""


def _log(message: str) -> None:
    log.info(message)


def run_spare(
    ctrl: socket.socket,
    native: str | None = None,
    intercept: bytes | str = "not asked for",
    ahead: tuple[str, RootShape] | None = None,
    leaf_ahead: str = "",
) -> NoReturn:
    """Body of a spare: prepare a container init, wait for a request, launch it, exit.
    ``native`` is the native init and log pump (``runtime.native``), or None;
    ``intercept`` the seccomp filter of the calls the view answers
    (``runtime.procview.intercept``), or why there is none; ``ahead`` the empty folder
    the init mounts a root of the shape of the last launch on while it waits, and that
    shape (``runtime.sandbox.mounts.premount_root``), or None; ``leaf_ahead`` the cgroup
    leaf to make and move the init into while waiting ("" for none: the launch places
    it)."""
    code = 1
    try:
        leaf = _leaf_ahead(leaf_ahead)
        procs = None if leaf is None else leaf.procs
        closed = (ctrl.fileno(),) if procs is None else (ctrl.fileno(), procs)
        init = _fork_init(closed, native, intercept, ahead, procs)
        if leaf is not None:
            os.close(leaf.procs)
            leaf.mover = init.middle
        _prewarm()
        _await_warm(init)
        sent = _send_warm(ctrl, init)
        # The container's namespaces, opened while the init is still dumpable: the holder
        # keeps them, to start a slirp4netns that died again and to run commands in it.
        namespaces = [
            os.open(f"/proc/{init.pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            for kind, _ in NAMESPACES
        ]
        _keep_namespaces(init, namespaces)
        received = _receive(ctrl) if sent else None
        if received is not None:
            # The holder waits for this before it forgets the request.
            send_with_fds(ctrl, marked(Launching.TAKEN, init.pid), namespaces)
        for fd in namespaces:
            os.close(fd)
        ctrl.close()
        if received is None:
            _dismiss(init)
            if leaf is not None:
                leaf.discard()
            os._exit(0)
        raw, conn = received
        reply = _answer(init, raw, leaf)
        code = 0 if isinstance(reply, Launched) else 1
        with conn:
            conn.sendall(encode(reply))
    except BaseException as exc:
        _log(f"spare failed: {type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _keep_namespaces(init: _Init, fds: list[int]) -> None:
    """Read what the launch needs of the warm init's namespaces (``fds``, in the order
    of ``NAMESPACES``) while it is still dumpable: it is not from ``M`` on."""
    init.namespaces = {"user": os.stat("/proc/self/ns/user").st_ino}  # the spare's own
    for (kind, _), fd in zip(NAMESPACES, fds, strict=True):
        init.namespaces[kind] = os.fstat(fd).st_ino
        if kind == "net":
            init.netns = os.dup(fd)


def _answer(init: _Init, raw: bytes, leaf: _Ahead | None) -> Reply:
    """Launch the container request ``raw`` asks for; what to answer. The leaf made
    ahead (``leaf``) goes before the answer unless the container runs in it."""
    reply: Reply
    try:
        request = LaunchRequest.from_json(json.loads(raw))
    except ValueError as exc:
        _dismiss(init)
        reply = Failure(ErrorCode.BAD_REQUEST, str(exc))
    else:
        try:
            reply = _launch(init, request, raw, leaf)
        except BaseException as exc:
            reply = _failure_reply(exc)
            _log(f"launching {request.name} failed: {reply.message}")
    used = reply.run.get("cgroup") if isinstance(reply, Launched) else None
    if leaf is not None and used != str(leaf.leaf.path):
        leaf.discard()
    return reply


def receive_warm(ctrl: socket.socket, timeout: float) -> tuple[ProcessId, tuple[int, int] | None]:
    """What a spare hands over once its init is warm (:func:`_send_warm`): the init, and
    its view's connection with the channel its seccomp listener comes on, if
    /dev/fuse could be opened (the caller owns them). Raises OSError when the spare died
    first, or said nothing within ``timeout`` seconds."""
    ctrl.settimeout(timeout)
    try:
        data, fds = receive_with_fds(ctrl, _WARM.size, 2, socket.MSG_CMSG_CLOEXEC)
    finally:
        ctrl.settimeout(None)
    if len(data) != _WARM.size or len(fds) not in (0, 2) or data[:1] != Launching.WARM.value:
        for fd in fds:
            os.close(fd)
        raise ConnectionAbortedError("the spare launcher died before its init was warm")
    _, pid, start = _WARM.unpack(data)
    return ProcessId(pid, start), (fds[0], fds[1]) if fds else None


def hand_over(
    ctrl: socket.socket, raw_request: bytes, conn: socket.socket
) -> tuple[int, list[int]]:
    """Give a spare (whose warm hand-over was received: :func:`receive_warm`) its launch
    request and the client connection to answer on.

    Returns the container init's pid and descriptors of its namespaces, in the order of
    ``NAMESPACES`` (the caller owns them). Raises OSError when the spare did not take
    the request (it died): the caller still holds the connection and can try another
    spare.
    """
    send_with_fds(ctrl, raw_request, [conn.fileno()])
    ctrl.shutdown(socket.SHUT_WR)
    ctrl.settimeout(_STEP_TIMEOUT)
    data, fds = receive_with_fds(ctrl, 64, len(NAMESPACES), socket.MSG_CMSG_CLOEXEC)
    taken = detail_of(data, Launching.TAKEN)
    if taken is None or len(fds) != len(NAMESPACES):
        for fd in fds:
            os.close(fd)
        raise ConnectionAbortedError("the spare launcher died before it took the request")
    return int(taken), fds
