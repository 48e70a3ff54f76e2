"""Run a command inside a running container (``exec``), on the holder's side.

The container's init is not dumpable, so only the holder (which owns the user namespace)
may join its namespaces. The holder stays single-threaded and never waits for a command:
for each request it forks a *runner* that answers on the request's connection itself.

The runner keeps only that connection (and the container's namespace descriptors, opened
by the launcher while the init was still dumpable), becomes non-dumpable, joins the
container's cgroup, joins its namespaces one by one (the mount namespace last) and forks
the command there: it is a process of the container's pid namespace, with the
container's root, hostname, network and cgroup namespace, and none of the holder's
descriptors. The runner collects its output (up to a limit), kills it at the deadline,
and writes the reply.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import NoReturn

from runtime.holder.protocol import ErrorCode, Exec, ExecResult, Failure, Reply
from runtime.holder.workers import fork_worker
from runtime.sandbox import confine
from runtime.sandbox import syscalls as sc
from runtime.util.processes import close_fds_except, wait_readable
from runtime.wire import find_program, read_filter

__all__ = ("NAMESPACES", "OUTPUT_LIMIT", "start_runner")

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


def start_runner(conn: socket.socket, request: Exec, namespaces: dict[str, int]) -> None:
    """Fork the runner for ``request`` in ``namespaces``; it answers on ``conn`` (the
    caller closes its copy). The holder reaps the runner like any other child."""
    fork_worker(
        conn,
        namespaces.values(),
        lambda: _run(request, namespaces),
        ErrorCode.EXEC_FAILED,
    )


def _run(request: Exec, namespaces: dict[str, int]) -> Reply:
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
    child = os.fork()  # the first process of this runner inside the container's pid namespace
    if child == 0:
        _command(program, argv, env, request.workdir, out_w, (syscall_filter, last_capability))
    os.close(out_w)
    try:
        return _collect(child, out_r, time.monotonic() + request.timeout)
    except BaseException:  # the runner failed: the command must not run on unwatched
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
        raise


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
) -> NoReturn:
    try:
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


def _collect(child: int, out_r: int, deadline: float) -> ExecResult:
    """Read the command's output until it exits, or kill it at the deadline.

    Output that what it left running in the background writes later is not waited for.
    """
    pidfd = os.pidfd_open(child)
    os.set_blocking(out_r, False)
    kept = bytearray()
    watched = [out_r, pidfd]
    timed_out = exited = False
    while not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            try:
                os.killpg(child, signal.SIGKILL)  # its own session: what it started goes too
            except ProcessLookupError:
                os.kill(child, signal.SIGKILL)
            break
        readable = wait_readable(watched, left)
        exited = pidfd in readable
        if (out_r in readable or exited) and not _drain(out_r, kept):
            watched = [pidfd]  # EOF: the command closed its output, it may still run
    _, status = os.waitpid(child, 0)
    return ExecResult(
        exit_code=124 if timed_out else os.waitstatus_to_exitcode(status),
        output=kept.decode(errors="replace"),
        timed_out=timed_out,
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
