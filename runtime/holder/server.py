"""The namespace holder: one long-lived process per user, like podman's pause process.

It creates the user namespace every container lives in (so a later network between
containers can be wired inside one namespace), or, when containers a killed holder
started still run, joins theirs and takes them over (``runtime.holder.adoption``).
It is the single-threaded process
containers are forked from: the client may run threads (anyio, watchfiles), and forking
from a threaded process can deadlock the child. It is also a child subreaper, so every
container init and slirp4netns is re-parented to it and reaped.

Start-up handshake with the client that spawned it (two pipes): this process unshares
its user namespace and writes ``U``; the client, still outside, writes the id maps and
answers ``M``; this process binds its socket and writes ``R``.

Control protocol on ``pause.sock``: one JSON request per connection, the client shuts
down its write side, the answer is one JSON object (``runtime.holder.protocol``). What
can take long (a launch, a command, a TCP probe, a restarted slirp4netns) is done by a
forked process that answers the client itself: this loop never waits for it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import gc
import json
import logging
import math
import os
import resource
import secrets
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.fs import Leaf, cgroup_of, v2_mount
from runtime.holder import adoption
from runtime.holder.exec_runner import NAMESPACES, start_runner
from runtime.holder.init import sample_request
from runtime.holder.protocol import (
    HOLDER_PROTOCOL,
    HOLDER_RECORD,
    HOLDER_SOCKET,
    MAX_REQUEST,
    Done,
    ErrorCode,
    Exec,
    Exit,
    Failure,
    Launch,
    Op,
    Ping,
    Pong,
    ProbeResult,
    ProbeTcp,
    Reply,
    Request,
    Restored,
    RestoreNetwork,
    Rewire,
    Rewired,
    Startup,
    decode_request,
    encode,
    marked,
)
from runtime.holder.spare import hand_over, receive_warm, restart_slirp, run_spare
from runtime.holder.views import Views
from runtime.holder.workers import become_child, fork_worker
from runtime.network import bridge
from runtime.procview import intercept
from runtime.sandbox import syscalls as sc
from runtime.sandbox.mounts import RootShape
from runtime.util.files import Landmark, parse_json, write_json_atomic
from runtime.util.jsonsock import decode_object, read_to_eof
from runtime.util.processes import (
    ProcessId,
    parent_pids,
    raise_fd_limit,
    reap_children,
    wait_readable,
)

__all__ = ("REFILL_QUIET", "main", "refill_due")


log = logging.getLogger("pause")
"""The holder's diagnostics, to its stderr (a log file in the state folder)."""


def _log(message: str) -> None:
    log.info(message)


def _reply(conn: socket.socket, reply: Reply) -> None:
    try:
        conn.sendall(encode(reply))
    except OSError as exc:
        _log(f"cannot answer the client: {exc}")


REFILL_QUIET = 0.03
"""Seconds after the last launch ended before a spare is forked while another one of
the last launch's shape is still warm, so the container just started gets the CPU first
(its first answer); with none left, it is forked as soon as no launch is under way.
Starts that follow each other closer than that use up the warm spares first, then each
waits for the one forked when the launch before it ended (as with a single spare)."""


QUICK_DEATHS = 3
"""Spares in a row that ended unused within :data:`QUICK` of their fork, after which the
next one waits :data:`SPARE_BACKOFF`: a spare that cannot start (no fork left, its
namespaces refused) would otherwise be forked again at once, for ever, and the holder's
loop would never find time to see that its state folder is gone."""
QUICK = 1.0
SPARE_BACKOFF = 1.0


def refill_due(
    idle: list[RootShape | None],
    shape: RootShape | None,
    count: int,
    launching: bool,
    since: float,
    deaths: tuple[int, float] = (0, math.inf),
) -> float | None:
    """Seconds until the next spare is to be forked (0.0: now), or None when none is:
    ``idle`` holds the root shapes of the idle spares, ``shape`` is the last launch's,
    ``count`` the spares to keep, ``launching`` whether a launch is under way, ``since``
    the seconds since the last launch ended, ``deaths`` how many spares in a row ended
    unused soon after their fork, and the seconds since the last one did."""
    if launching or len(idle) >= count:
        return None
    quick, since_death = deaths
    if quick >= QUICK_DEATHS:
        return max(0.0, SPARE_BACKOFF - since_death)
    if shape in idle:  # a warm spare fits the next start like the last: let it run first
        return max(0.0, REFILL_QUIET - since)
    return 0.0


@dataclass
class _Spare:
    """One spare launcher forked ahead of a request."""

    pid: int
    ctrl: socket.socket
    leaf: Leaf | None
    """The cgroup leaf it makes for its start: removed here if it dies unused."""
    shape: RootShape | None
    """The shape of the root its init mounts ahead, if any."""
    warm: bool = False
    """Whether it said its init is warm (``receive_warm``)."""
    init: ProcessId | None = None
    """Its warm init, until that init is reaped."""
    forked: float = 0.0
    """When it was forked (``time.monotonic``)."""

    def discard_leaf(self) -> None:
        """Remove the leaf of a spare that ended unused (its init ends with it)."""
        if self.leaf is not None:
            self.leaf.discard()
            self.leaf = None


class _Spares:
    """Up to ``count`` warm spare launchers, forked ahead of the next requests.

    A spare is forked only while no launch is under way, so forking it never competes
    for the CPU with a container that is starting; while another spare is still warm, it
    waits for a quiet spell after the last launch as well (:data:`REFILL_QUIET`).
    """

    def __init__(
        self,
        native: str | None = None,
        staging: str | None = None,
        leaves: Path | None = None,
        count: int = 1,
    ) -> None:
        self.idle: list[_Spare] = []
        """The spares waiting for a request, oldest first."""
        self.count = count
        self.launching: set[int] = set()
        self.ended = -math.inf
        """When the last launch ended (``time.monotonic``; none yet: long ago)."""
        self.native = native
        """The native init and log pump (``runtime.native``), or None: Python ones."""
        self.leaves = leaves
        """The folder each spare makes the next container's cgroup leaf in, or None."""
        self.taken: _Spare | None = None
        """The spare last handed a request."""
        self.leaving: dict[int, _Spare] = {}
        """Spares let go as their warm init died, by pid, until they are reaped."""
        self.intercept: bytes | str | None = None
        """The seccomp filter of the calls the /proc view answers, or why there is none
        (``runtime.procview.intercept``): compiled once, before the first spare."""
        self.staging = staging
        """The empty folder a spare's init mounts a root ahead on, or None: none."""
        self.shape: RootShape | None = None
        """The shape of the last launch's root: the next spare's init mounts one ahead."""
        self.quick_deaths = 0
        """Spares in a row that ended unused within :data:`QUICK` of their fork."""
        self.last_death = -math.inf

    def _ahead(self) -> tuple[str, RootShape] | None:
        """Where and of what shape the next spare's init mounts a root ahead, or None."""
        if self.staging is None or self.shape is None:
            return None
        return self.staging, self.shape

    def launched(self, shape: RootShape | None) -> None:
        """Remember the shape of the root the last launch asked for."""
        self.shape = shape

    def take(self, shape: RootShape | None, fresh: bool = False) -> _Spare:
        """A spare for a launch whose root has ``shape``: one
        whose init mounted a root of that shape ahead, else the oldest; with ``fresh``,
        one forked now (the idle ones may have died with the one lost)."""
        if fresh or not self.idle:
            self._fork()
            spare = self.idle[-1]
        else:
            matching = (s for s in self.idle if shape and s.shape == shape)
            spare = next(matching, self.idle[0])
        self.idle.remove(spare)
        self.taken = spare  # its leaf is the container's now, or removed by the spare
        self.launching.add(spare.pid)
        self.quick_deaths = 0
        return spare

    def lost(self) -> None:
        """The spare last taken died before it took its request: its leaf goes too."""
        if self.taken is not None:
            self.taken.discard_leaf()
            self.taken = None

    def reaped(self, pid: int) -> None:
        for spare in [s for s in self.idle if s.init is not None and s.init.pid == pid]:
            _log(f"the warm init {pid} of the spare launcher {spare.pid} died; forking another")
            spare.init = None  # never killed by pid: its pid may be reused
            self.leave(spare)
        leaving = self.leaving.pop(pid, None)
        if leaving is not None:  # its leaf, if it was killed before it removed it
            self._died(leaving)
            leaving.discard_leaf()
        if pid in self.launching:
            self.launching.discard(pid)
            self.ended = time.monotonic()
        for spare in [s for s in self.idle if s.pid == pid]:
            _log(f"the spare launcher {pid} died; forking another")
            self._died(spare)
            spare.ctrl.close()
            self.idle.remove(spare)
            _end_init(spare.init)
            spare.discard_leaf()

    def let_go(self, inits: set[int]) -> None:
        """Let the idle spares whose warm init is one of ``inits`` go, those inits
        killed: others are forked in their place."""
        for spare in [s for s in self.idle if s.init is not None and s.init.pid in inits]:
            _log(f"letting the spare launcher {spare.pid} go: its init may wait for ever")
            _end_init(spare.init)
            self.leave(spare)

    def leave(self, spare: _Spare) -> None:
        """Let the idle ``spare`` go (its leaf goes when it is reaped, if not before)."""
        spare.ctrl.close()  # the spare removes its leaf and exits on EOF
        self.idle.remove(spare)
        self.leaving[spare.pid] = spare

    @property
    def cold(self) -> dict[int, _Spare]:
        """The idle spares whose init is not known to be warm yet, by control socket."""
        return {spare.ctrl.fileno(): spare for spare in self.idle if not spare.warm}

    def _died(self, spare: _Spare) -> None:
        """Count ``spare``, ended unused, if it ended soon after its fork."""
        self.last_death = time.monotonic()
        quick = self.last_death - spare.forked < QUICK
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        if self.quick_deaths == QUICK_DEATHS:
            _log(f"{QUICK_DEATHS} spares in a row ended at once: the next ones wait")

    def refill(self) -> float | None:
        """Fork a spare if one is due; seconds until the next one is, or None."""
        idle = [spare.shape for spare in self.idle]
        now = time.monotonic()
        since, deaths = now - self.ended, (self.quick_deaths, now - self.last_death)
        due = refill_due(idle, self.shape, self.count, bool(self.launching), since, deaths)
        if due != 0.0:
            return due
        try:
            self._fork()
        except OSError as exc:  # no process or descriptor to spare: the holder lives on
            _log(f"cannot fork a spare launcher ({exc}); trying again in {SPARE_BACKOFF:.0f} s")
            self.quick_deaths, self.last_death = QUICK_DEATHS, now
            return SPARE_BACKOFF
        return None if len(self.idle) >= self.count else 0.0

    def _fork(self) -> None:
        if self.intercept is None:
            self.intercept = intercept.program()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        leaf = None
        if self.leaves is not None:
            leaf = Leaf(self.leaves / f"run.{secrets.token_hex(3)}")
        ahead = self._ahead()
        try:
            child = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if child == 0:
            # Nothing of the holder may reach a container: not the listener, not a
            # client connection being served while this spare is forked.
            become_child((theirs.fileno(),))
            run_spare(
                theirs, self.native, self.intercept, ahead, "" if leaf is None else str(leaf.path)
            )
        theirs.close()
        shape = None if ahead is None else ahead[1]
        self.idle.append(_Spare(child, ours, leaf, shape, forked=time.monotonic()))
        _rehearse()

    def drop(self) -> None:
        """Close every idle spare's control socket (it exits, and its init with it) and
        wait for each."""
        while self.idle:
            spare = self.idle.pop()
            spare.ctrl.close()
            os.waitpid(spare.pid, 0)
            spare.discard_leaf()  # (the spare removed it already, unless it was killed)


def _end_spare(spare: _Spare) -> None:
    """SIGKILL a spare that failed its hand-over, and its warm init (children of this
    holder, not reaped yet). One that is only slow, or whose ``TAKEN`` lost descriptors,
    holds the request and the client's connection: going on, it would launch the
    container a second time, and the client would wait for the end of a connection it
    keeps open."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(spare.pid, signal.SIGKILL)
    _end_init(spare.init)


def _end_init(init: ProcessId | None) -> None:
    """SIGKILL the warm init of a spare that died unused (a child of this holder, not
    reaped yet): it may wait in a bind of its view's files for a server none runs."""
    if init is not None:
        init.send(signal.SIGKILL)  # (not a process that took its pid since)


def _rehearse() -> None:
    """Decode a sample launch request and encode it again, as a launch does, right
    after a spare was forked: the fork left every page of this process shared with the
    spare, and the first write to each copies it (a launch took about 150 such faults
    between its request and its hand-over); made now, while idle, they are off the
    next start's path."""
    request = decode_request(decode_object(encode(Launch.of(sample_request()))))
    if isinstance(request, Launch):
        json.dumps(request.request).encode()


class _Refused(Exception):
    """A request the holder answers with a failure of its own code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.failure = Failure(code, message)


@dataclass
class _Held:
    """What the holder keeps of one container it started."""

    namespaces: dict[str, int]
    """Namespace kind (``net``, ``mnt``...) -> descriptor, opened while the init was
    still dumpable."""
    slirp: ProcessId | None = None
    """The slirp4netns this holder started again for it, if any."""
    slirp_exit: int | None = None
    """The write end of that slirp4netns' exit pipe: held by this holder alone, so the
    helper ends with it (nothing else could end it; see ``restart_slirp``)."""
    restoring: bool = False
    """A worker is starting a slirp4netns for it; it reports the identity when done."""
    watch: int | None = None
    """A pidfd of its init, for a container an earlier holder started (this one never
    reaps that init: the pidfd says when it ends)."""


class _Containers:
    """The namespaces of every container this holder started, by init pid.

    Kept so that a slirp4netns that died can be started again for the same network
    namespace, a port inside the container can be probed, and a command can be run in
    it: the container's init is not dumpable, so nobody else (not even this holder) can
    open its namespaces later. A container an earlier holder started is taken over
    through its command's namespaces instead (:meth:`take_over`). Released when the init
    is reaped (or, taken over, its pidfd says it ended); a slirp4netns started again
    for it is killed then too. The descriptors are moved above ``_FD_FLOOR`` so
    that descriptors opened later stay low.
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.by_pid: dict[int, _Held] = {}
        self.reports: dict[int, tuple[int, _Held]] = {}
        """Read end of a restore worker's report pipe -> (init pid, what it restores)."""
        self.unreachable: dict[int, str] = {}
        """Init pid -> why the running container an earlier holder started cannot be
        taken over."""
        self.views = Views(state)
        """The FUSE connections of the containers' /proc views, and their server."""

    def add(self, init_pid: int, fds: list[int], view: bool) -> None:
        """Keep a new container's namespaces; its view's connection (handed over while
        its init was warm) is the container's if it asked for the ``view``."""
        self._forget(init_pid)
        self.by_pid[init_pid] = _Held(
            {kind: _move_high(fd) for (kind, _), fd in zip(NAMESPACES, fds, strict=True)}
        )
        try:
            self.views.launched(init_pid, view)
        except OSError as exc:  # the launch went on: its view waits for a server
            _log(f"cannot start the view's server: {exc}")

    def warm(self, spare: _Spare) -> bool:
        """Read what ``spare`` hands over once its init is warm, and keep its view's
        connection (served at once if the view's server runs); whether its init lives.
        A spare that died first is reaped as any other child."""
        spare.warm = True
        try:
            init, view = receive_warm(spare.ctrl, _WARM_TIMEOUT)
        except OSError as exc:
            _log(f"the spare launcher {spare.pid} gave no warm init: {exc}")
            return False
        if not init.alive():  # it ended (and was reaped) before its word was read
            for fd in view or ():
                os.close(fd)
            return False
        spare.init = init
        if view is not None:
            self.views.warm(init.pid, _move_high(view[0]), _move_high(view[1]))
        return True

    def reaped(self, pid: int) -> None:
        self.views.released(pid)
        self._forget(pid)

    def _forget(self, pid: int) -> None:
        """Close what is kept of the container of ``pid`` (ended) and end its helper."""
        held = self.by_pid.pop(pid, None)
        if held is not None:
            for fd in (*held.namespaces.values(), held.watch):
                if fd is not None:
                    os.close(fd)
            _drop_exit_pipe(held)
            _kill(held.slirp)

    def leaves(self, folder: Path) -> list[Leaf]:
        """The cgroup leaves in ``folder`` that its containers' inits run in now."""
        mount = v2_mount()  # read once, not once per container
        found = (cgroup_of(pid, mount) for pid in self.by_pid)
        return [Leaf(where) for where in found if where is not None and where.parent == folder]

    def kill_all(self) -> None:
        """SIGKILL every container's init: its own children (not reaped yet, so their
        pids are still theirs) by pid, those taken over through their pidfd."""
        for pid, held in self.by_pid.items():
            with contextlib.suppress(ProcessLookupError):
                if held.watch is not None:
                    signal.pidfd_send_signal(held.watch, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)

    @property
    def watches(self) -> dict[int, int]:
        """pidfd -> init pid, of every container taken over from an earlier holder."""
        return {held.watch: pid for pid, held in self.by_pid.items() if held.watch is not None}

    def take_over(self) -> None:
        """Take over the running containers an earlier holder started (and that are not
        taken over yet); remember why for those that cannot be."""
        self.unreachable.clear()
        parents = parent_pids()
        for container in adoption.running(self.state):
            if container.init.pid in self.by_pid:
                continue
            try:
                self.by_pid[container.init.pid] = _adopt(container, parents)
            except adoption.Unreachable as exc:
                self.unreachable[container.init.pid] = (
                    f"the holder that started {container.name} is gone and its namespaces "
                    f"cannot be reached: {exc}; recreate it"
                )
            else:
                _log(f"took over {container.name} (init {container.init.pid})")

    def _held(self, init_pid: int) -> _Held:
        if init_pid not in self.by_pid:
            self.take_over()  # started by an earlier holder, and not taken over yet
        held = self.by_pid.get(init_pid)
        if held is None:
            raise _Refused(
                ErrorCode.UNKNOWN_CONTAINER,
                self.unreachable.get(init_pid)
                or f"no running container has init {init_pid}: recreate the container",
            )
        return held

    def restore(self, conn: socket.socket, request: RestoreNetwork) -> None:
        """Start slirp4netns again in the container's network namespace; a worker does it,
        answers ``conn`` and reports the new identity on a pipe this loop watches."""
        held = self._held(request.init_pid)
        if held.restoring:
            raise _Refused(ErrorCode.RESTORE_FAILED, "its network is being restored already")
        earlier, netns = held.slirp, held.namespaces["net"]
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        exit_r, exit_w = os.pipe2(os.O_CLOEXEC)

        def work() -> Reply:
            _kill(earlier)  # an earlier heal's slirp4netns still holds tap0: it must go first
            identity = restart_slirp(
                request.container_dir, netns, request.sandbox, request.network, exit_r
            )
            os.write(report_w, json.dumps(identity.to_json()).encode())
            return Restored(identity.to_json())

        try:
            fork_worker(conn, (netns, report_w, exit_r), work, ErrorCode.RESTORE_FAILED)
        except BaseException:
            os.close(report_r)
            os.close(exit_w)
            raise
        finally:
            os.close(report_w)
            os.close(exit_r)
        _drop_exit_pipe(held)  # the earlier helper's, if any: the worker kills it anyway
        held.slirp, held.slirp_exit, held.restoring = None, _move_high(exit_w), True
        self.reports[report_r] = (request.init_pid, held)

    def take_report(self, report_r: int) -> None:
        """Learn which slirp4netns a restore worker started (nothing if it failed)."""
        init_pid, held = self.reports.pop(report_r)
        try:  # one write of a few bytes: readable means all of it, or EOF
            identity = ProcessId.from_json(parse_json(os.read(report_r, 4096)))
        finally:
            os.close(report_r)
        held.restoring = False
        if self.by_pid.get(init_pid) is held:
            held.slirp = identity
        else:
            _kill(identity)  # its container was reaped meanwhile

    def probe_tcp(self, conn: socket.socket, request: ProbeTcp) -> None:
        """Whether something accepts TCP on 127.0.0.1:PORT inside the container; a worker
        joins the namespace (the holder stays where it is) and answers ``conn``."""
        netns = self._held(request.init_pid).namespaces["net"]

        def work() -> Reply:
            sc.setns(netns, sc.CLONE_NEWNET)
            try:
                with socket.create_connection(("127.0.0.1", request.port), timeout=1.0):
                    return ProbeResult(ready=True)
            except OSError:
                return ProbeResult(ready=False)

        fork_worker(conn, (netns,), work, ErrorCode.PROBE_FAILED)

    def rewire(self, conn: socket.socket, request: Rewire) -> None:
        """Connect or disconnect a running bridge container; a worker wires its veth
        pairs through the namespace descriptor this holder keeps, and answers ``conn``."""
        netns = self._held(request.init_pid).namespaces["net"]
        cdir = Path(request.container_dir)

        def work() -> Reply:
            joins = list(request.networks)
            bridge.wire(bridge.state_of(cdir), cdir.name, joins, netns, request.init_pid)
            return Rewired()

        fork_worker(conn, (netns,), work, ErrorCode.REWIRE_FAILED)

    def exec(self, conn: socket.socket, request: Exec) -> None:
        """Run a command in the container; a runner answers on ``conn``. With the
        container's view, the command's calls are answered by it as its own command's."""
        held = self._held(request.init_pid)
        if not ProcessId(request.init_pid, request.init_start_time).alive():
            raise _Refused(ErrorCode.NOT_RUNNING, "the container's init has exited")
        channel, calls = self.views.exec_calls(request.init_pid) or (None, None)
        runner = None
        try:
            runner = start_runner(conn, request, held.namespaces, calls)
        finally:
            if channel is not None:
                self.views.exec_started(channel, runner)


def _adopt(container: adoption.Running, parents: dict[int, int]) -> _Held:
    """What this holder keeps of a running container an earlier holder started: its
    namespaces, and a pidfd that says when its init ends (opened, then checked to be
    that init, so a reused pid is never watched)."""
    try:
        watch = os.pidfd_open(container.init.pid)
    except ProcessLookupError:
        raise adoption.Unreachable("it has exited") from None
    try:
        if not container.init.alive():
            raise adoption.Unreachable("it has exited")
        namespaces = adoption.adopt(container, parents)
    except BaseException:
        os.close(watch)
        raise
    return _Held({kind: _move_high(fd) for kind, fd in namespaces.items()}, watch=_move_high(watch))


_FD_FLOOR = 4096


def _peer_is_the_user(conn: socket.socket) -> bool:
    """Whether the client runs as the user who owns this holder (SO_PEERCRED).

    Seen from the holder's user namespace that user is uid 0; any other host uid is the
    overflow uid or one of the user's subordinate ids (a container's non-root user). A
    container's root is uid 0 as well, but lives in a deeper pid namespace. The socket is
    0600 in a 0700 folder already; this holds even if those modes are loosened or the
    state folder is bind-mounted into a container.
    """
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    # A container's root is uid 0 here too: it is told apart by its own pid namespace.
    if uid == os.getuid() and _pid_depth(pid) == _OWN_DEPTH[0]:
        return True
    _log(f"refused a request from pid {pid}, uid {uid} (in this namespace): not the user")
    _reply(conn, Failure(ErrorCode.REFUSED, "not the holder's user"))
    return False


_OWN_DEPTH = [0]
"""The holder's own pid-namespace depth, read once when it starts serving."""


def _pid_depth(pid: int) -> int:
    """How many pid namespaces ``pid`` is nested in (its NSpid entries); 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return len(line.split()) - 1
    except OSError:
        pass
    return 0


def _move_high(fd: int) -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= _FD_FLOOR:
        return fd
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FD_FLOOR)
    except OSError:
        return fd
    os.close(fd)
    return high


def _drop_exit_pipe(held: _Held) -> None:
    """Close the exit pipe of the helper this holder restarted for ``held``."""
    if held.slirp_exit is not None:
        os.close(held.slirp_exit)
        held.slirp_exit = None


def _kill(identity: ProcessId | None) -> None:
    """SIGKILL a process of ours if it is still the one we started, and wait for it."""
    if identity is not None and identity.send(signal.SIGKILL):
        identity.wait_gone(5.0)


def _serve_one(conn: socket.socket, spares: _Spares, containers: _Containers) -> bool:
    """Handle one connection; return False when asked to exit."""
    conn.settimeout(2.0)  # for the answer too
    try:
        request = decode_request(decode_object(read_to_eof(conn, MAX_REQUEST, within=2.0)))
    except (OSError, ValueError) as exc:
        _reply(conn, Failure(ErrorCode.BAD_REQUEST, str(exc)))
        return True
    try:
        return _dispatch(conn, request, spares, containers)
    except _Refused as exc:
        _reply(conn, exc.failure)
    except Exception as exc:  # one bad request must never end the holder
        _reply(conn, Failure(_FAILURES[request.op], f"{type(exc).__name__}: {exc}"))
    return True


def _serve_guarded(conn: socket.socket, spares: _Spares, containers: _Containers) -> bool:
    """:func:`_serve_one`, and nothing a request does ends the holder: every container's
    namespaces live in it."""
    try:
        return _serve_one(conn, spares, containers)
    except Exception as exc:  # a bug in serving one request: logged, the holder goes on
        _log(f"a request failed unexpectedly: {type(exc).__name__}: {exc}")
        return True


_FAILURES = {
    Op.PING: ErrorCode.BAD_REQUEST,
    Op.EXIT: ErrorCode.BAD_REQUEST,
    Op.LAUNCH: ErrorCode.START_FAILED,
    Op.RESTORE_NETWORK: ErrorCode.RESTORE_FAILED,
    Op.PROBE_TCP: ErrorCode.PROBE_FAILED,
    Op.EXEC: ErrorCode.EXEC_FAILED,
}
"""What an unexpected error while serving a request is reported as."""


def _dispatch(
    conn: socket.socket, request: Request, spares: _Spares, containers: _Containers
) -> bool:
    match request:
        case Ping():
            _reply(conn, Pong(os.getpid()))
        case Exit():
            spares.drop()
            _reply(conn, Done())
            return False
        case Launch():
            _launch(conn, request, spares, containers)
        case RestoreNetwork():
            containers.restore(conn, request)
        case ProbeTcp():
            containers.probe_tcp(conn, request)
        case Exec():
            containers.exec(conn, request)  # a runner answers on its copy of conn
        case Rewire():
            containers.rewire(conn, request)
    return True


def _launch(conn: socket.socket, request: Launch, spares: _Spares, containers: _Containers) -> None:
    raw_request = json.dumps(request.request).encode()
    shape = RootShape.of_json(request.request)
    for attempt in (1, 2):
        spare = spares.take(shape, fresh=attempt == 2)
        try:
            if not spare.warm and not containers.warm(spare):  # forked just now, or unread
                raise ConnectionAbortedError("the spare launcher has no warm init")
            # The spare parses and checks the request: keep this single loop lean.
            init_pid, namespace_fds = hand_over(spare.ctrl, raw_request, conn)
            containers.add(init_pid, namespace_fds, bool(request.request.get("proc_view")))
            spares.launched(shape)
            return
        except OSError as exc:
            _log(f"handing a request to a spare failed ({exc}); attempt {attempt}")
            _end_spare(spare)
            spares.lost()
            if attempt == 2:
                _reply(conn, Failure(ErrorCode.START_FAILED, f"launcher lost: {exc}"))
        finally:
            spare.ctrl.close()


_WARM_TIMEOUT = 10.0
"""How long the holder waits for a spare it takes to say its init is warm (it forks,
mounts its view's connection, and says so: milliseconds)."""

STATE_CHECK = 10.0
"""Seconds of quiet after which the holder checks that its state folder is still there:
a holder whose folder was deleted could never be reached again, nor its containers."""


def _reap(spares: _Spares, containers: _Containers) -> None:
    for pid, status in reap_children():
        spares.reaped(pid)
        containers.reaped(pid)
        if pid == containers.views.server:
            # It died: a lookup of a warm init's bind it had read is never answered (the
            # next server cannot know it), and that init would never take its request.
            spares.let_go(set(containers.views.warm_ones))
        containers.views.reaped(pid, status)


def _end_all(spares: _Spares, containers: _Containers, ahead: Path | None) -> None:
    """End every container and idle spare of a state folder that is gone, and remove the
    cgroup leaves they ran in, and the folder of its leaves once empty: nothing could
    reach them any more (the containers' leaves are found before their inits end)."""
    leaves = containers.leaves(ahead) if ahead is not None else []
    containers.kill_all()
    spares.drop()
    _reap(spares, containers)
    for leaf in leaves:
        leaf.discard()
    if ahead is not None:
        with contextlib.suppress(OSError):  # not empty: what else is in it stays
            ahead.rmdir()


def _take_handed(
    readable: set[int],
    channels: set[int],
    cold: dict[int, _Spare],
    spares: _Spares,
    containers: _Containers,
) -> None:
    """Take what came on the ``readable`` ones of ``channels`` (seccomp listeners) and of
    the control sockets of ``cold`` spares (their warm inits' view connections), unless
    what they were for has gone meanwhile (a launch took the spare, a channel closed)."""
    for channel in readable & channels & set(containers.views.channels):
        containers.views.take_listener(channel)
    for ctrl in readable & set(cold):
        spare = cold[ctrl]
        if not spare.warm and spare in spares.idle and not containers.warm(spare):
            spares.leave(spare)


def serve(
    listener: socket.socket,
    state: Path,
    native: str | None = None,
    ahead: Path | None = None,
    count: int = 1,
) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    gc.freeze()
    raise_fd_limit()  # the namespaces of a few thousand containers
    _OWN_DEPTH[0] = _pid_depth(os.getpid())
    spares = _Spares(native, _staging(state), ahead, count)
    containers = _Containers(state)
    try:
        containers.take_over()
    except Exception as exc:  # a bug here must not end the holder: a miss tries again
        _log(f"taking over running containers failed: {type(exc).__name__}: {exc}")
    running = True
    landmark = Landmark(listener.getsockname())
    while running:
        due = spares.refill()
        watches = containers.watches
        channels = set(containers.views.channels)
        cold = spares.cold
        fds = [listener.fileno(), wake_r, *containers.reports, *watches, *channels, *cold]
        waits = (STATE_CHECK, containers.views.linger(), due)
        readable = wait_readable(fds, min(w for w in waits if w is not None))
        containers.views.let_idle_go()
        if not readable and due != 0.0 and landmark.gone():  # (a wait, not a refill)
            _log(f"{state} is gone (its socket with it): ending its containers, then itself")
            _end_all(spares, containers, ahead)
            return
        if wake_r in readable:
            _drain(wake_r)
            _reap(spares, containers)
        for report in set(readable) & set(containers.reports):
            containers.take_report(report)
        for ended in set(readable) & set(watches):
            containers.reaped(watches[ended])
        _take_handed(set(readable), channels, cold, spares, containers)
        if listener.fileno() in readable:
            conn = _accept(listener)
            if conn is None:
                continue
            with conn:
                if _peer_is_the_user(conn):
                    running = _serve_guarded(conn, spares, containers)
    _reap(spares, containers)
    _log("exiting on request")


def _accept(listener: socket.socket) -> socket.socket | None:
    """The next client's connection, or None when there is none to take now: out of
    descriptors, the holder lives on (after a pause: the listener stays readable)."""
    try:
        return listener.accept()[0]
    except OSError as exc:
        _log(f"cannot accept a client ({exc})")
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            time.sleep(0.1)
        return None


def _sweep_leaves(state: Path, ahead: Path | None) -> None:
    """Remove the empty cgroup leaves in ``ahead`` that no container's record names: a
    spare killed together with its holder never removes the leaf it made ahead. A leaf
    in use holds a process (the kernel refuses to remove it), and an exited container's
    is kept for its OOM and pids counts (its record names it)."""
    if ahead is None:
        return
    named = {
        os.path.normpath(run["cgroup"])
        for _, run in adoption.run_records(state)
        if isinstance(run.get("cgroup"), str)
    }
    with contextlib.suppress(OSError):  # no folder yet: nothing was left in it
        for entry in os.scandir(ahead):
            if entry.is_dir(follow_symlinks=False) and os.path.normpath(entry.path) not in named:
                Leaf(Path(entry.path)).remove()  # refused while a process is in it


def _staging(state: Path) -> str | None:
    """The empty folder (``premount`` in the state folder) on which a spare's init
    mounts a container root ahead, in its own mount namespace; None if it cannot be
    made."""
    folder = state / "premount"
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
        return os.path.realpath(folder)
    except OSError as exc:
        _log(f"no root is mounted ahead: {folder}: {exc.strerror}")
        return None


def _drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _enter_user_namespace(state: Path) -> bytes:
    """Join the user namespace of the containers an earlier holder started, if any runs
    (a sibling namespace could not reach them), else create one; return what to tell
    the client."""
    joinable = adoption.user_namespace_to_join(state)
    if joinable is not None:
        try:
            sc.setns(joinable, sc.CLONE_NEWUSER)
            _log("joined the user namespace of the running containers")
            return marked(Startup.JOINED, os.getpid())
        except OSError as exc:
            _log(f"cannot join the running containers' user namespace: {exc}")
        finally:
            os.close(joinable)
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError as exc:
        _log(f"cannot create a user namespace: {exc}")
        return Startup.NO_USERNS.value
    return marked(Startup.USERNS, os.getpid())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtime.holder.server")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--to-client", required=True, type=int)
    parser.add_argument("--from-client", required=True, type=int)
    parser.add_argument("--native", help="the native init and log pump (runtime.native)")
    parser.add_argument(
        "--cgroup-ahead", type=Path, help="where spares make the next start's cgroup leaf"
    )
    parser.add_argument("--spares", type=int, default=1, help="how many spares to keep warm")
    args = parser.parse_args(argv)
    logging.basicConfig(  # the holder's own program; spares forked from it log the same way
        level=logging.INFO,
        format="%(asctime)s %(name)s[%(process)d]: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    state: Path = args.state_dir
    os.chdir("/")
    if os.fork() != 0:
        os._exit(0)  # the client reaps this first process; the holder is its orphan
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    entered = _enter_user_namespace(state)
    os.write(args.to_client, entered)
    if entered == Startup.NO_USERNS.value:
        sys.exit(1)
    if os.read(args.from_client, 1) != Startup.MAPPED.value:
        _log("the client did not map ids; giving up")
        sys.exit(1)
    os.close(args.from_client)
    sock_path = state / HOLDER_SOCKET
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
    write_json_atomic(state / HOLDER_RECORD, {**me.to_json(), "protocol": HOLDER_PROTOCOL})
    _log(f"holding the user namespace; listening on {sock_path}")
    _sweep_leaves(state, args.cgroup_ahead)  # before it says it is ready: done when it is
    os.write(args.to_client, Startup.READY.value)
    os.close(args.to_client)
    serve(listener, state, args.native, args.cgroup_ahead, args.spares)


if __name__ == "__main__":
    main()
