"""The container's init: pid 1 of its pid namespace.

It assembles the filesystem, waits for the network, starts the command, then forwards
signals to it and reaps every zombie. When the command exits, init records the exit code
in ``exit.json`` (through a directory fd opened before ``pivot_root``) and exits with the
same code; the kernel then kills whatever else is left in the namespace.

A pid-namespace init gets no signal it has no handler for: this one blocks the signals it
forwards and collects them with ``sigwaitinfo``, so ``stop`` (SIGTERM) works.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from runtime.holder.protocol import Launching, marked
from runtime.sandbox import confine, mounts, netif
from runtime.sandbox import syscalls as sc
from runtime.util.files import write_json_atomic
from runtime.util.processes import close_fds_except, reap_children, retitle
from runtime.wire import Forward, LaunchRequest, MountPoint, find_program, read_filter

__all__ = ("FORWARDED_SIGNALS", "INIT_TITLE", "run_init", "sample_request")

INIT_TITLE = "squish-init"
"""The Python init's command line, as the native init's (``ps`` in the container)."""

FORWARDED_SIGNALS = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGCONT,
    }
)

_EXIT_FILE = Path("exit.json")


def _find_command(req: LaunchRequest) -> tuple[str, dict[str, str]]:
    """The command's program and environment, from its working directory (entered here)."""
    env = req.command_env()
    program = find_program(req.argv[0], env)
    if program is None:
        raise FileNotFoundError(errno.ENOENT, f"{req.argv[0]!r} not found in PATH {env['PATH']}")
    try:
        os.chdir(req.workdir)
    except OSError as exc:
        raise OSError(exc.errno, f"working directory {req.workdir}: {exc.strerror}") from None
    return program, env


def _spawn_command(
    req: LaunchRequest, program: str, env: dict[str, str], log_fd: int, old_mask: Iterable[int]
) -> int:
    """Start the command with posix_spawn (vfork speed, exec errors raised here)."""
    return os.posix_spawn(
        program,
        list(req.argv),
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ],
        setsid=True,
        setsigmask=old_mask,
        # Python ignores SIGPIPE and SIGXFSZ; the command gets the defaults back.
        setsigdef=FORWARDED_SIGNALS | {signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ},
    )


def _wait_for_command(child: int, state_fd: int) -> NoReturn:
    waited = signal.SIGCHLD, *FORWARDED_SIGNALS
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, info.si_signo)
            continue
        for pid, status in reap_children():
            if pid == child:
                _finish(status, state_fd)


_EVENTS = {"oom_kills": ("memory.events", "oom_kill"), "pids_refused": ("pids.events", "max")}
_event_fds: dict[str, int] = {}
"""The container's cgroup event files, opened before the root changed: a systemd scope is
gone as soon as it is empty, so the init records the counts itself when it ends."""


def _open_events(cgroup: str) -> None:
    for key, (file, _) in _EVENTS.items():
        with contextlib.suppress(OSError):  # a controller the leaf does not have
            _event_fds[key] = os.open(os.path.join(cgroup, file), os.O_RDONLY | os.O_CLOEXEC)


def _read_events() -> dict[str, int]:
    counts = {}
    for key, fd in _event_fds.items():
        with contextlib.suppress(OSError, ValueError):
            for line in os.pread(fd, 4096, 0).decode().splitlines():
                name, _, value = line.partition(" ")
                if name == _EVENTS[key][1]:
                    counts[key] = int(value)
    return counts


def _finish(status: int, state_fd: int) -> NoReturn:
    if os.WIFSIGNALED(status):
        code, signum = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    else:
        code, signum = os.waitstatus_to_exitcode(status), 0
    record = {"exit_code": code, "signal": signum, "finished_at": time.time(), **_read_events()}
    try:
        write_json_atomic(_EXIT_FILE, record, dir_fd=state_fd)
    finally:
        os._exit(code)


def _receive_request(request_r: int) -> LaunchRequest:
    chunks = []
    while chunk := os.read(request_r, 65536):
        chunks.append(chunk)
    os.close(request_r)
    if not chunks:
        os._exit(0)  # the launcher went away before a container was asked for
    return LaunchRequest.from_json(json.loads(b"".join(chunks)))


def sample_request() -> LaunchRequest:
    """A launch request that is never launched: what a fork of the holder runs its
    request-handling code on while idle (its ``_prewarm``)."""
    return LaunchRequest(
        name="warm",
        container_dir="/",
        rootfs="/",
        argv=("true",),
        mounts=(MountPoint(source="/", target="/warm"),),
        forwards=(Forward(proto="tcp", host_addr="127.0.0.1", host_port=1, guest_port=1),),
    )


def _prewarm() -> None:
    """Run the request-handling code once on a sample before any request comes.

    A forked Python process copies every memory page it writes to, reference counts
    included; paying for those copies while idle keeps them off the start-up path.
    """
    sample = sample_request()
    LaunchRequest.from_json(json.loads(json.dumps(sample.to_json()))).command_env()


def _enter_cgroup_namespace(go_r: int, report_w: int, cgroup: str) -> None:
    """Once the spare has moved this process into its leaf (it says so on ``go_r``;
    the move overlaps the mounts), make that leaf the root of a new cgroup namespace."""
    if os.read(go_r, 1) != Launching.PLACED.value:
        os._exit(125)
    if cgroup:  # a systemd scope's too
        try:
            sc.unshare(sc.CLONE_NEWCGROUP)
        except OSError as exc:
            _fail(report_w, f"cannot start the container's cgroup namespace: {exc}", 126)


def _intercept(calls: tuple[bytes | str, int | None], wanted: bool) -> str:
    """Hand this process's (and its children's) ``sysinfo`` and ``sched_getaffinity``
    calls to the view's server (``runtime.procview.intercept``) if ``wanted``: install
    the filter and send its listener to the holder on the channel. Return why not ("" once
    done, or not wanted). This process makes neither call: nothing of its waits."""
    program, channel = calls
    if channel is None:
        return ""  # no view: the files' reason says it
    if wanted and isinstance(program, bytes):
        return confine.hand_calls(program, channel)
    os.close(channel)
    return program if wanted and isinstance(program, str) else ""


def _fail(report_w: int, reason: str, code: int) -> NoReturn:
    """Tell the spare what failed, and exit with ``code``."""
    os.write(report_w, marked(Launching.FAILED, reason))
    os._exit(code)


def _cannot_start(report_w: int, req: LaunchRequest, exc: OSError) -> NoReturn:
    """Tell the spare the command cannot start (as the native init does), and exit 127."""
    _fail(report_w, f"{req.argv[0]!r} cannot start: {exc.strerror}", 127)


def _exec_native(
    native_fd: int,
    req: LaunchRequest,
    command: tuple[str, dict[str, str]],
    fds: tuple[int, int, int, int, int],
    old_mask: Iterable[int],
) -> None:
    """Become the native init (``runtime.native``), which waits for ``G``, starts the
    command and does what :func:`_wait_for_command` does; return only if it cannot be
    executed. ``fds``: the go pipe, the state folder, the report pipe, the command's
    output, the exit pipe."""
    program, env = command
    events = [_event_fds.get(key, -1) for key in ("oom_kills", "pids_refused")]
    mask = sum(1 << (signum - 1) for signum in old_mask)
    numbers = [str(fd) for fd in (*fds, *events)]
    argv = ["squish-init", "init", *numbers, f"{mask:x}", repr(req.argv[0]), program, *req.argv]
    passed: list[int] = []
    # Under the container's filter: a profile may refuse execveat, or the ioctl that
    # makes a descriptor inheritable; the command is started here then. (What cannot be
    # made close-on-exec again ends this process: the command never gets it.)
    with contextlib.suppress(OSError):
        for fd in (fd for fd in (*fds, *events) if fd >= 0):
            os.set_inheritable(fd, True)
            passed.append(fd)
        os.execve(native_fd, argv, env)
    for fd in passed:
        os.set_inheritable(fd, False)


def _open_native(native: str | None) -> int | None:
    """The native init, opened while its path is still in view (before ``pivot_root``):
    ``O_PATH``, as the file is not readable, only executable (``runtime.native``)."""
    if native is None:
        return None
    try:
        return os.open(native, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None


def _premount_view(view: int | str) -> tuple[int | str, int | None]:
    """The view's connection mounted ahead, attached nowhere yet
    (:func:`runtime.sandbox.mounts.premount_view`), or None: mounted at the start, as
    before, where the kernel cannot mount it so (or there is no connection); and the
    view as the start is to mount it. Mounted ahead, the mount stands for the
    connection, whose descriptor is closed: the holder and the view's server hold it,
    and an init whose spare and holder are gone is not left waiting in its binds ahead
    for a server that never comes (the connection ends with their copies)."""
    if not isinstance(view, int):
        return view, None
    try:
        premounted = mounts.premount_view(view)
    except OSError:
        return view, None
    os.close(view)
    return premounted, premounted


def _bind_view_ahead(premade: mounts.Premade | None, premounted: int | None) -> None:
    """Bind the view's files into the root mounted ahead, while warm
    (:meth:`runtime.sandbox.mounts.Premade.bind_view`): each bind waits for the view's
    server, which the holder hands the connection to if one runs (else the first
    launch starts it, and waits for these binds as a cold start waits for its own)."""
    if premade is None or premounted is None:
        return
    with contextlib.suppress(OSError):  # not attached: the start mounts it as it would
        premade.bind_view(premounted)


def _premount_root(ahead: tuple[str, mounts.RootShape] | None) -> mounts.Premade | None:
    """A root of the shape ``ahead`` names mounted ahead on its staging folder
    (:func:`runtime.sandbox.mounts.premount_root`), or None: none asked for, or it
    cannot be mounted so (a launch then mounts its root as a cold start does)."""
    if ahead is None:
        return None
    try:
        return mounts.premount_root(*ahead)
    except (OSError, ValueError):
        return None


def _mount_root(
    req: LaunchRequest, premade: mounts.Premade | None, view: int | str, premounted: int | None
) -> tuple[str, str]:
    """Mount the container's filesystem: on the root mounted ahead if it fits the
    request, else in full (the root mounted ahead thrown away). Returns the root and
    why the view is missing ("" if it is not)."""
    wanted = view if req.proc_view else None
    if premade is not None and premade.fits(req.rootfs, req.mounts):
        return premade.root, premade.assemble(req.mounts, wanted, premounted)
    root = os.path.join(req.container_dir, "root")
    skel = os.path.join(req.container_dir, "skel")
    missing = mounts.assemble(root, skel, req.rootfs, req.mounts, wanted, premounted, premade)
    return root, missing


def _loopback_up() -> bool:
    """Bring the container's loopback up while idle (setting it up in a new network
    namespace costs about 0.15 ms: adding its addresses and routes); whether it is.
    Every container has it up: slirp4netns ``--configure`` and the bridge's agent bring
    it up as well, which finds it so."""
    try:
        netif.bring_up("lo")
    except OSError:
        return False
    return True


def _narrow(last_capability: int) -> bool:
    """Take the steps of the confinement that leave this process the capabilities it
    still uses (:func:`runtime.sandbox.confine.narrow`) while idle; whether they are
    taken (if not, the whole confinement is applied at the start)."""
    try:
        confine.narrow(last_capability)
    except OSError:
        return False
    return True


def _close_view(view: int | str, premounted: int | None) -> None:
    """Close the init's copies of the view's connection and of its mount made ahead:
    mounted (or not wanted), the holder and the view's server hold the connection."""
    for fd in {view, premounted}:  # the same one, once mounted ahead
        if isinstance(fd, int):
            os.close(fd)


def run_init(
    *,
    request_r: int,
    go_r: int,
    report_w: int,
    exit_w: int,
    log_w: int,
    native: str | None,
    view: int | str,
    calls: tuple[bytes | str, int | None] = ("not asked for", None),
    ahead: tuple[str, mounts.RootShape] | None = None,
) -> NoReturn:
    """Body of pid 1, started before the container is asked for (a warm spare).

    It reports ``W`` on ``report_w`` once warm (the view's connection mounted ahead),
    reads the launch request from ``request_r`` (to EOF), mounts, waits for ``P``
    (placed in its cgroup) on ``go_r``, then reports on ``report_w``: ``M`` when the
    filesystem is mounted and the process confined (followed by the inode of its cgroup
    namespace and a newline), then, after ``G`` on ``go_r``, ``S`` (started) or
    ``E<why>``. ``exit_w``
    stays open for as long as the init lives: slirp4netns exits when it closes. ``log_w``
    becomes the command's stdout and stderr: the write end of the pipe the log pump
    (``runtime.holder.logpump``) reads, outside the container. ``native`` is the native
    init to become once ``M`` is written (``runtime.native``; it waits for ``G``), or None.
    ``view`` is the /dev/fuse descriptor of the /proc and /sys view, or why there is
    none; ``M``'s detail goes on (after the inode's line) with why the view is missing
    when it was asked for and is not there. ``calls`` is the seccomp filter of the calls
    the view answers (or why there is none) and, with the view, the channel its
    listener goes to the holder on; ``M``'s detail then says, after a newline, why they
    are not intercepted. ``ahead``: an empty folder and the shape of root to mount there
    once warm, while the request is on its way
    (``runtime.sandbox.mounts.premount_root``), or None.
    """
    native_fd = _open_native(native)
    _prewarm()
    last_capability = confine.last_capability()  # read while idle, off the start path
    view, premounted = _premount_view(view)
    os.write(report_w, Launching.WARM.value)
    retitle(INIT_TITLE)  # the container sees pid 1's, not the holder's (the native's too)
    premade = _premount_root(ahead)
    _bind_view_ahead(premade, premounted)
    loopback_up = _loopback_up()
    narrowed = _narrow(last_capability)
    try:
        req = _receive_request(request_r)
        if req.cgroup:
            _open_events(req.cgroup)
        state_fd = os.open(req.container_dir, os.O_DIRECTORY | os.O_CLOEXEC)
        syscall_filter = read_filter(state_fd, req.seccomp)
        sc.sethostname(req.hostname or req.name)
        if not loopback_up and req.network in ("none", "bridge"):  # again, to say why not
            netif.bring_up("lo")  # (slirp4netns --configure does it for its own)
        root, missing_view = _mount_root(req, premade, view, premounted)
        mounts.enter_root(root)
    except Exception as exc:
        _fail(report_w, f"setting up the container filesystem failed: {exc}", 126)
    _close_view(view, premounted)
    _enter_cgroup_namespace(go_r, report_w, req.cgroup)
    no_calls = _intercept(calls, req.proc_view and not missing_view)
    # Before the seal: the container's profile may refuse stat or close_range.
    kept = {go_r, log_w, report_w, state_fd, exit_w, *_event_fds.values()}
    close_fds_except(kept if native_fd is None else {*kept, native_fd})
    detail = f"{missing_view}\n{no_calls}" if no_calls else missing_view
    mounted = marked(Launching.MOUNTED, f"{_cgroup_namespace()}\n{detail}")
    try:  # before the seal too: a profile may refuse the stat and access calls of the lookup
        command = _find_command(req)
    except OSError as exc:
        _cannot_start(report_w, req, exc)
    old_mask = _confine(narrowed, syscall_filter, last_capability, report_w)
    os.write(report_w, mounted)
    if native_fd is not None:
        _exec_native(native_fd, req, command, (go_r, state_fd, report_w, log_w, exit_w), old_mask)
    if os.read(go_r, 1) != Launching.GO.value:
        os._exit(125)
    os.close(go_r)
    try:
        child = _spawn_command(req, *command, log_w, old_mask)
    except OSError as exc:
        _cannot_start(report_w, req, exc)
    os.close(log_w)
    os.chdir("/")
    os.write(report_w, Launching.STARTED.value)
    os.close(report_w)
    _wait_for_command(child, state_fd)


def _cgroup_namespace() -> int:
    """The inode of this process's cgroup namespace (started a moment ago): the spare
    records it in ``run.json`` with the others it opened while the init was warm,
    since this process is not dumpable any more when the spare reads ``M``."""
    return os.stat("/proc/self/ns/cgroup").st_ino


def _confine(
    narrowed: bool, syscall_filter: bytes | None, last_capability: int, report_w: int
) -> set[int | signal.Signals]:
    """Confine this process before the spare is told it is mounted: the signals it
    forwards blocked (the old mask returned, for the command), not dumpable, stdio on
    /dev/null, Docker's capability set and the seccomp filter. The spare needs nothing of
    this process's /proc after ``M``: it opened the namespaces while the init was warm."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *FORWARDED_SIGNALS})
    # Container code runs from ``G`` on. Not dumpable: the container's root may not open
    # /proc/1/fd, /proc/1/environ or /proc/1/mem of this process, a fork of the holder.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # the holder's log stays outside
    os.close(null)
    try:
        # Docker's capability set (no_new_privs and the bounding set taken while idle,
        # if they could be), the seccomp filter: for the init (what it still does needs
        # none of what they take away) and for what it starts.
        if narrowed:
            confine.seal(syscall_filter)
        else:  # it fails here again, and says why
            confine.apply(syscall_filter, last_capability)
    except OSError as exc:
        _fail(report_w, f"confining the container failed: {exc}", 126)
    return old_mask
