"""Run a command inside a running container (``exec``), on the holder's side.

The container's init is not dumpable, so only the holder (which owns the user namespace)
may join its namespaces. The holder stays single-threaded and never waits for a command:
for each request it forks a *runner* that answers on the request's connection itself.

The runner keeps only that connection (and the container's namespace descriptors, opened
by the launcher while the init was still dumpable), becomes non-dumpable, joins the
container's cgroup, joins its namespaces one by one (the mount namespace last) and forks
a *keeper* there, which forks the command: both are processes of the container's pid
namespace, with the container's root, hostname, network and cgroup namespace, and none
of the holder's descriptors. The runner collects the command's output (up to a limit)
and writes the reply. With the container's /proc view, the command first hands its
``sysinfo`` and ``sched_getaffinity`` calls to the view's server, as the container's own
command does (``runtime.procview.intercept``): its listener goes to the holder on a
socket (the *channel*) the holder gave the runner.

The keeper is a child subreaper in the container's pid namespace (the runner, outside
it, cannot be one: the kernel never re-parents an orphan across a pid namespace), so
whatever the command starts stays below it even after a double fork and ``setsid``.
When the command exits the keeper reports its status and exits, and what the command
left running is re-parented to the container's init, as before. At the deadline, or if
the runner goes away, the runner's end of the keeper's stop pipe closes and the keeper
SIGKILLs every process below it until none is left: a process group (or session) would
miss what called ``setsid``; walking the container's process list for descendants would
miss an orphan already re-parented to the init; a child cgroup needs a delegated cgroup
v2 leaf with no processes of its own, which a container does not always have.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from runtime.holder.protocol import ErrorCode, Exec, ExecResult, Failure, Reply
from runtime.holder.workers import fork_worker
from runtime.sandbox import confine
from runtime.sandbox import syscalls as sc
from runtime.util.processes import close_fds_except, descendants, retitle, wait_readable
from runtime.wire import find_program, read_filter

__all__ = ("KEEPER_TITLE", "NAMESPACES", "OUTPUT_LIMIT", "start_runner")

KEEPER_TITLE = "squish-exec"
"""The command line the container sees for a keeper (``ps`` lists it while the command
runs)."""

OUTPUT_LIMIT = 64 * 1024
"""Bytes of a command's output kept in the reply; the rest is read and dropped."""

NAMESPACES = (
    ("net", sc.CLONE_NEWNET),
    ("uts", sc.CLONE_NEWUTS),
    ("ipc", sc.CLONE_NEWIPC),
    ("cgroup", sc.CLONE_NEWCGROUP),
    ("pid", sc.CLONE_NEWPID),
    ("mnt", sc.CLONE_NEWNS),
)
"""A container's namespaces the holder keeps, in the order a command joins them (the
mount namespace last: joining it moves the root into the container)."""


Calls = tuple[bytes, int] | None
"""The filter of the calls the /proc view answers and the channel its listener goes to
the holder on, or None: the command's calls are the kernel's."""


def start_runner(
    conn: socket.socket, request: Exec, namespaces: dict[str, int], calls: Calls = None
) -> int:
    """Fork the runner for ``request`` in ``namespaces``; it answers on ``conn`` (the
    caller closes its copy, and its copy of ``calls``' channel). The holder reaps the
    runner, whose pid this returns, like any other child."""
    return fork_worker(
        conn,
        [*namespaces.values(), *([calls[1]] if calls else [])],
        lambda: _run(request, namespaces, calls),
        ErrorCode.EXEC_FAILED,
    )


def _run(request: Exec, namespaces: dict[str, int], calls: Calls) -> Reply:
    # Its keeper, a fork of this, shows the container this, not the holder's command
    # line; first: a process that is not dumpable may not write its own memory.
    retitle(KEEPER_TITLE, name=True)
    sc.prctl(sc.PR_SET_DUMPABLE, 0)  # the container's root may not read the holder's memory
    argv, env = list(request.argv), request.env
    refused = _refusal(argv, env, request.timeout)
    if refused is not None:
        return Failure(ErrorCode.EXEC_FAILED, refused)
    syscall_filter = read_filter(request.container_dir, request.seccomp)
    last_capability = confine.last_capability()
    _enter(request.cgroup, namespaces)
    program = find_program(argv[0], env)
    if program is None:
        return ExecResult(exit_code=127, output=f"{argv[0]}: not found\n")
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    keeper = os.fork()  # the first process of this runner inside the container's pid namespace
    if keeper == 0:
        confinement = (syscall_filter, last_capability)
        command = functools.partial(
            _command, program, argv, env, request.workdir, out_w, confinement, calls
        )
        _keep(command, (out_w, stop_r, status_w), calls[1] if calls else None)
    for fd in (out_w, stop_r, status_w, *([calls[1]] if calls else [])):
        os.close(fd)
    watched = _Keeper(keeper, stop_w, status_r)
    try:
        return _collect(watched, out_r, time.monotonic() + request.timeout)
    finally:  # at the latest here: a runner that fails leaves nothing running
        watched.release()


def _refusal(argv: list[str], env: dict[str, str], timeout: float) -> str | None:
    """Why the request cannot run, or None."""
    if not argv:
        return "no command"
    if not 0 < timeout <= 86_400:  # NaN fails this too
        return f"bad timeout {timeout!r}"
    if any("\0" in part for part in (*argv, *env, *env.values())) or any("=" in k for k in env):
        return "NUL in an argument or a bad env name"
    return None


def _enter(cgroup: str, namespaces: dict[str, int]) -> None:
    """Join the container's cgroup (its limits, kill and freeze) and its namespaces."""
    if cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        except PermissionError:  # a systemd scope we may not move into from here
            pass  # (the holder runs outside user@.service): the command runs unlimited
    for kind, flag in NAMESPACES:
        sc.setns(namespaces[kind], flag)
        os.close(namespaces[kind])
    if cgroup:  # as the init did once it was moved: the leaf is "/"
        sc.unshare(sc.CLONE_NEWCGROUP)


def _command(
    program: str,
    argv: list[str],
    env: dict[str, str],
    workdir: str,
    out: int,
    confinement: tuple[bytes | None, int],
    calls: Calls,
) -> NoReturn:
    try:
        if calls is not None:
            confine.hand_calls(*calls)  # why not is the container's proc_view already
        os.chdir(workdir)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        close_fds_except(())
        os.setsid()
        for ignored_by_python in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(ignored_by_python, signal.SIG_DFL)
        confine.apply(*confinement)  # as the container's own processes are confined
        os.execve(program, argv, env)
    except BaseException as exc:  # never back into the runner's code: exit here
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        with contextlib.suppress(OSError):
            os.write(2, f"{argv[0]}: {reason}\n".encode())
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    os._exit(126)


def _keep(
    command: Callable[[], NoReturn], pipes: tuple[int, int, int], channel: int | None
) -> NoReturn:
    """Body of the keeper: fork the command, then report its wait status on the status
    pipe when it exits, or end everything below this process once the stop pipe closes.
    ``pipes``: the command's output, the stop pipe, the status pipe; ``channel`` is the
    command's, for its seccomp listener."""
    out, stop_r, status_w = pipes
    try:
        close_fds_except({*pipes, *([channel] if channel is not None else [])})
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        child = os.fork()
        if child == 0:
            command()
        for fd in (out, *([channel] if channel is not None else [])):
            os.close(fd)
        pidfd = os.pidfd_open(child)
        if pidfd in wait_readable([pidfd, stop_r], None):
            _, status = os.waitpid(child, 0)
            os.write(status_w, str(status).encode())
        else:
            _end_descendants()
    finally:
        os._exit(0)


def _end_descendants() -> None:
    """SIGKILL every process below this one and reap what comes back up to it, until
    nothing is left (an orphan of a deeper process arrives here: this is a subreaper)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    me = os.getpid()
    while True:
        for pid in descendants(me):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        signal.sigtimedwait({signal.SIGCHLD}, 0.01)  # then look again: new orphans too


_STOP_GRACE = 2.0
"""Seconds a keeper gets to end what is below it once told to."""


@dataclass
class _Keeper:
    """The runner's view of its keeper: its pid, the stop pipe, the status pipe."""

    pid: int
    stop_w: int | None
    status_r: int

    def release(self) -> None:
        """Close the stop pipe: the keeper ends every process below it (if it still runs)."""
        if self.stop_w is not None:
            os.close(self.stop_w)
            self.stop_w = None

    def stop(self, pidfd: int) -> None:
        """:meth:`release`, and wait until the keeper has ended everything. A keeper the
        container stopped (SIGSTOP) is killed after ``_STOP_GRACE`` seconds, so the
        runner still answers; what was below it is then left to the container's init."""
        self.release()
        if not wait_readable([pidfd], _STOP_GRACE):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def status(self) -> int:
        """The command's wait status; the keeper's own if it died without reporting."""
        _, own = os.waitpid(self.pid, 0)
        reported = os.read(self.status_r, 64)
        os.close(self.status_r)
        return int(reported) if reported else own


def _collect(keeper: _Keeper, out_r: int, deadline: float) -> ExecResult:
    """Read the command's output until it exits, or end it, with everything it started,
    at the deadline.

    Output that what it left running in the background writes later is not waited for.
    """
    pidfd = os.pidfd_open(keeper.pid)
    os.set_blocking(out_r, False)
    kept = bytearray()
    watched = [out_r, pidfd]
    exited = False
    while not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            keeper.stop(pidfd)
            return ExecResult(exit_code=124, output=kept.decode(errors="replace"), timed_out=True)
        readable = wait_readable(watched, left)
        exited = pidfd in readable
        if (out_r in readable or exited) and not _drain(out_r, kept):
            watched = [pidfd]  # EOF: the command closed its output, it may still run
    return ExecResult(
        exit_code=os.waitstatus_to_exitcode(keeper.status()),
        output=kept.decode(errors="replace"),
    )


def _drain(fd: int, kept: bytearray) -> bool:
    """Read what is there into ``kept`` (up to the limit); False at end of file."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        kept += chunk[: max(0, OUTPUT_LIMIT - len(kept))]
