"""The view's files as pure functions of the host's file and the container's limits, and
the FUSE messages they travel in."""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import NoReturn

import pytest

from runtime.holder.views import Views
from runtime.procview import fuse, intercept, unotify, views
from runtime.procview.views import Limits
from runtime.sandbox import confine
from runtime.security import seccomp
from runtime.util.fdpass import receive_with_fds
from tests.fakes import FakeClock

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         8000000 kB
MemAvailable:   12000000 kB
Buffers:          100000 kB
Cached:          2000000 kB
SwapTotal:       4000000 kB
SwapFree:        4000000 kB
"""

CPUINFO = "".join(f"processor\t: {n}\nmodel name\t: Test CPU\n\n" for n in range(4))

STAT = """\
cpu  40 0 40 400 0 0 0 0 0 0
cpu0 10 0 10 100 0 0 0 0 0 0
cpu1 10 0 10 100 0 0 0 0 0 0
cpu2 10 0 10 100 0 0 0 0 0 0
cpu3 10 0 10 100 0 0 0 0 0 0
intr 5
btime 1700000000
"""

MIB = 1024 * 1024


def _fields(text: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()}


def test_without_limits_every_file_is_the_hosts() -> None:
    none = Limits()
    assert views.meminfo(MEMINFO, none) == MEMINFO
    cpus = views.allowed_cpus((0, 1, 2, 3), none)
    assert cpus == (0, 1, 2, 3)
    assert views.cpuinfo(CPUINFO, cpus) == CPUINFO
    assert views.stat(STAT, cpus) == STAT
    assert views.swaps("Filename\tType\n", none) == "Filename\tType\n"
    assert views.diskstats("   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n", none).startswith("   8")
    assert views.cpu_online(cpus) == "0-3\n"


def test_memory_comes_from_the_limit_and_usage() -> None:
    limits = Limits(memory_max=256 * MIB, memory_current=100 * MIB, memory_stat={"file": 20 * MIB})
    got = _fields(views.meminfo(MEMINFO, limits))
    assert got["MemTotal"] == 256 * 1024
    assert got["MemFree"] == 156 * 1024
    assert got["MemAvailable"] == 176 * 1024
    assert got["Cached"] == 20 * 1024
    assert got["SwapTotal"] == 4000000  # no swap limit: the host's


def test_slab_comes_from_the_limit_so_free_never_counts_the_hosts() -> None:
    """busybox and procps ``free`` count ``SReclaimable`` as cache: ``used`` is total - free
    - buffers - cache, so the host's slab in a limited view makes ``used`` negative."""
    host = (
        MEMINFO
        + "Slab:            3000000 kB\nSReclaimable:    2000000 kB\nSUnreclaim:      1000000 kB\n"
    )
    stat = {
        "file": 20 * MIB,
        "slab": 6 * MIB,
        "slab_reclaimable": 4 * MIB,
        "slab_unreclaimable": 2 * MIB,
    }
    limits = Limits(memory_max=256 * MIB, memory_current=100 * MIB, memory_stat=stat)
    got = _fields(views.meminfo(host, limits))
    assert (got["Slab"], got["SReclaimable"], got["SUnreclaim"]) == (6 * 1024, 4 * 1024, 2 * 1024)
    used = got["MemTotal"] - got["MemFree"] - got["Buffers"] - got["Cached"] - got["SReclaimable"]
    assert used == 76 * 1024


def test_a_limit_above_the_hosts_memory_changes_nothing() -> None:
    assert views.meminfo(MEMINFO, Limits(memory_max=10**15)) == MEMINFO


def test_swap_comes_from_its_limit() -> None:
    limits = Limits(memory_max=256 * MIB, swap_max=64 * MIB, swap_current=16 * MIB)
    got = _fields(views.meminfo(MEMINFO, limits))
    assert (got["SwapTotal"], got["SwapFree"]) == (64 * 1024, 48 * 1024)
    assert views.swaps("Filename\tType\tSize\tUsed\tPriority\n", limits).splitlines()[1] == (
        "none\tvirtual\t65536\t16384\t0"
    )


@pytest.mark.parametrize(
    ("quota", "cpuset", "expected"),
    [
        (1.5, None, (0, 1)),
        (0.5, None, (0,)),
        (None, (2, 3), (2, 3)),
        (1.0, (2, 3), (2,)),
        (64.0, None, (0, 1, 2, 3)),
    ],
)
def test_cpus_are_the_cpuset_cut_to_the_quota_rounded_up(
    quota: float | None, cpuset: tuple[int, ...] | None, expected: tuple[int, ...]
) -> None:
    assert views.allowed_cpus((0, 1, 2, 3), Limits(cpu_quota=quota, cpuset=cpuset)) == expected


def test_cpuinfo_and_stat_keep_the_containers_cpus_numbered_from_zero() -> None:
    cpus = (2, 3)
    info = views.cpuinfo(CPUINFO, cpus)
    assert [line for line in info.splitlines() if line.startswith("processor")] == [
        "processor\t: 0",
        "processor\t: 1",
    ]
    lines = views.stat(STAT, cpus).splitlines()
    assert lines[:3] == ["cpu  20 0 20 200 0 0 0 0 0 0", "cpu0 10 0 10 100 0 0 0 0 0 0",
                         "cpu1 10 0 10 100 0 0 0 0 0 0"]  # fmt: skip
    assert lines[3:] == ["intr 5", "btime 1700000000"]
    assert views.cpu_online(cpus) == "0-1\n"
    assert views.cpu_online((3,)) == "0\n"


def test_cpu_lists_are_read_as_the_kernel_writes_them() -> None:
    assert views.parse_cpu_list("0-3,6,8-9\n") == (0, 1, 2, 3, 6, 8, 9)


def test_diskstats_shows_the_containers_own_io() -> None:
    host = (
        "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11\n"
    )
    limits = Limits(io={"8:0": {"rios": 7, "rbytes": 4096, "wios": 3, "wbytes": 1024}})
    (line,) = views.diskstats(host, limits).splitlines()
    assert line.split()[:10] == ["8", "0", "sda", "7", "0", "8", "0", "3", "0", "2"]


def test_uptime_and_load_are_the_containers() -> None:
    assert views.uptime(12.345, 20.0) == "12.35 20.00\n"
    assert views.loadavg("9.0 9.0 9.0 5/900 4242\n", (0.5, 0.25, 0.125), 1, 3) == (
        "0.50 0.25 0.12 1/3 4242\n"
    )


def _request(opcode: int, nodeid: int, body: bytes) -> bytes:
    header = struct.pack("<IIQQIIIHH", 40 + len(body), opcode, 7, nodeid, 0, 0, 42, 0, 0)
    return header + body


def test_requests_and_replies_keep_the_kernels_layout() -> None:
    init = fuse.parse_request(_request(fuse.Op.INIT, 0, struct.pack("<IIII", 7, 41, 65536, 0)))
    assert (init.opcode, init.unique, init.pid) == (fuse.Op.INIT, 7, 42)
    answer = fuse.init_reply(init.unique, init)
    length, error, unique = struct.unpack_from("<IiQ", answer)
    assert (length, error, unique) == (16 + 64, 0, 7)
    assert struct.unpack_from("<II", answer, 16) == (7, fuse.OUR_MINOR)
    old = fuse.parse_request(_request(fuse.Op.INIT, 0, struct.pack("<IIII", 6, 1, 0, 0)))
    assert struct.unpack_from("<i", fuse.init_reply(1, old), 4) == (-errno.EPROTO,)
    lookup = fuse.parse_request(_request(fuse.Op.LOOKUP, 1, b"meminfo\0"))
    assert lookup.name() == "meminfo"
    assert len(fuse.entry_reply(7, fuse.Attr(ino=2, mode=0o100444), 1)) == 16 + 40 + 88
    assert len(fuse.attr_reply(7, fuse.Attr(ino=2, mode=0o100444), 1)) == 16 + 16 + 88
    assert struct.unpack("<IiQ", fuse.error_reply(9, errno.ENOENT)) == (16, -errno.ENOENT, 9)
    assert len(fuse.dirent_bytes(2, 1, "stat", 8)) % 8 == 0


def test_a_request_cut_short_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than its header"):
        fuse.parse_request(b"\0" * 12)


def test_the_server_answers_what_a_read_only_view_is_asked() -> None:
    from runtime.procview.server import Connection, Server

    server = Server(None, [])
    conn = Connection(fd=-1, init_pid=os.getpid())
    try:
        interrupt = fuse.parse_request(_request(fuse.Op.INTERRUPT, 0, struct.pack("<Q", 4242)))
        answer = server.answer(conn, interrupt)
        assert answer is not None  # the request a dead server held ends with EINTR
        assert struct.unpack("<IiQ", answer) == (16, -errno.EINTR, 4242)
        forget = fuse.parse_request(_request(fuse.Op.FORGET, 2, struct.pack("<Q", 1)))
        assert server.answer(conn, forget) is None
        missing = fuse.parse_request(_request(fuse.Op.LOOKUP, 1, b"kcore\0"))
        assert struct.unpack_from("<i", server.answer(conn, missing) or b"", 4) == (-errno.ENOENT,)
        write = fuse.parse_request(_request(16, 2, b""))  # WRITE: nothing here takes one
        assert struct.unpack_from("<i", server.answer(conn, write) or b"", 4) == (-errno.ENOSYS,)
    finally:
        server.workers.shutdown()


def test_a_slow_computation_gives_the_kernels_file_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runtime.procview import server as server_module

    release = threading.Event()

    def stuck(name: str, conn: server_module.Connection) -> bytes:
        release.wait()  # a controller that does not answer
        return b"never served\n"

    monkeypatch.setattr(server_module, "render", stuck)
    server = server_module.Server(None, [])
    try:
        node = server_module._NAMES.index("meminfo") + 2
        data = server.content(node, server_module.Connection(fd=-1, init_pid=os.getpid()))
        host = Path("/proc/meminfo").read_text().splitlines()[0]
        assert data.decode().splitlines()[0] == host
    finally:
        release.set()
        server.workers.shutdown()


@pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse")
def test_a_connection_never_mounted_is_dropped_when_its_init_ends() -> None:
    from runtime.procview.server import Connection, Server

    init = subprocess.Popen(["sleep", "60"])  # stands for an init that died before mounting
    fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        server = Server(None, [Connection(fuse_fd, init.pid)])
        init.kill()  # a zombie until waited for: its pidfd is readable already
        server.loop()  # returns once no connection is left
        assert server.connections == {}
        with pytest.raises(OSError):
            os.fstat(fuse_fd)  # closed by the server
    finally:
        init.wait()
        server.workers.shutdown()


def test_a_process_name_that_is_not_utf8_is_read_not_raised(tmp_path: Path) -> None:
    """A container's process may name itself with any bytes (/proc/self/comm); reading
    its stat must not raise in the server, which serves every container."""
    from runtime.procview import limits

    stat = tmp_path / "stat"
    stat.write_bytes(b"42 (ab\xff) R 1 42 42 0 -1\n")
    raw = limits._text(stat)
    assert raw is not None and raw[raw.rindex(")") + 2] == "R"


def test_open_files_kept_per_container_are_bounded() -> None:
    from runtime.procview import server

    handles: dict[int, bytes] = {}
    for fh in range(server.MAX_OPEN + 10):
        server.keep(handles, fh, b"content")
    assert len(handles) == server.MAX_OPEN
    assert min(handles) == 10  # the oldest went first


def test_a_server_not_forked_leaves_no_socket_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder outlives a fork it was refused: the pair meant for the server is closed."""
    from runtime.holder.views import Views

    def refused() -> int:
        raise BlockingIOError(errno.EAGAIN, "fork refused")

    keeper = Views(tmp_path)
    fuse_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    channel = os.dup(fuse_fd)
    keeper.warm(os.getpid(), fuse_fd, channel)
    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", refused)
    try:
        with pytest.raises(BlockingIOError):
            keeper.launched(os.getpid(), wanted=True)
        assert set(os.listdir("/proc/self/fd")) == before
        assert keeper.server is None
    finally:
        keeper.released(os.getpid())


def test_sysinfo_is_the_views_meminfo_uptime_and_load_in_bytes() -> None:
    limited = views.meminfo(MEMINFO, Limits(memory_max=256 * MIB, memory_current=56 * MIB))
    raw = views.sysinfo(limited, 61.7, (0.5, 1.0, 0.0), 3)
    assert len(raw) == 112  # sizeof(struct sysinfo) on x86_64
    uptime, *loads = struct.unpack_from("<q3Q", raw)
    ram = struct.unpack_from("<6Q", raw, 32)
    procs, mem_unit = struct.unpack_from("<H", raw, 80)[0], struct.unpack_from("<I", raw, 104)[0]
    assert (uptime, loads, procs, mem_unit) == (61, [32768, 65536, 0], 3, 1)
    # total, free, shared, buffers, swap total, swap free
    assert ram == (256 * MIB, 200 * MIB, 0, 0, 4000000 * 1024, 4000000 * 1024)
    host = struct.unpack_from("<6Q", views.sysinfo(MEMINFO, 0, (0, 0, 0), 0), 32)
    assert host == (16000000 * 1024, 8000000 * 1024, 0, 100000 * 1024, *(4000000 * 1024,) * 2)


@pytest.mark.parametrize(
    ("mask", "count", "kept"),
    [
        (b"\x0f\x00", 2, b"\x03\x00"),
        (b"\x0c\x01", 2, b"\x0c\x00"),  # the first allowed ones, not CPUs 0 and 1
        (b"\x00\x81", 2, b"\x00\x81"),
        (b"\x03\x00", 8, b"\x03\x00"),  # fewer allowed than counted: all of them
    ],
)
def test_an_affinity_mask_keeps_its_first_cpus(mask: bytes, count: int, kept: bytes) -> None:
    assert views.first_cpus(mask, count) == kept


def _affinity_call(pid_arg: int, size: int) -> unotify.Call:
    """A ``sched_getaffinity(pid_arg, size, 0x1000)`` call of this very thread."""
    number = seccomp.syscall_number("sched_getaffinity")
    return unotify.Call(
        id=1, pid=threading.get_native_id(), nr=number, args=(pid_arg, size, 0x1000, 0, 0, 0)
    )


def test_an_affinity_call_gets_the_kernels_mask_cut_to_the_views_cpus() -> None:
    own = os.sched_getaffinity(0)
    for pid_arg in (0, threading.get_native_id()):  # itself: 0, or its own (thread) id
        reply = intercept.reply(_affinity_call(pid_arg, 128), lambda: None, lambda: 1)
        assert reply is not None and reply.address == 0x1000
        assert reply.value == len(reply.data) and reply.value % 8 == 0  # the kernel's length
        kept = {cpu for cpu in range(len(reply.data) * 8) if reply.data[cpu // 8] >> cpu % 8 & 1}
        assert kept == {min(own)}


@pytest.mark.parametrize(
    ("pid_arg", "size"),
    [
        (1, 128),  # another process: the kernel answers
        (0, 12),  # not a multiple of 8: the kernel's EINVAL
        (0, 8192 + 4),  # the same, beyond what is asked of the kernel
    ],
)
def test_an_odd_affinity_call_is_left_to_the_kernel(pid_arg: int, size: int) -> None:
    assert intercept.reply(_affinity_call(pid_arg, size), lambda: None, lambda: 1) is None


def test_a_sysinfo_call_gets_the_struct_at_its_pointer_or_the_kernels_answer() -> None:
    call = unotify.Call(
        id=1, pid=os.getpid(), nr=seccomp.syscall_number("sysinfo"), args=(0x2000, 0, 0, 0, 0, 0)
    )
    assert intercept.reply(call, lambda: b"struct", lambda: 1) == intercept.Reply(
        0, 0x2000, b"struct"
    )
    assert intercept.reply(call, lambda: None, lambda: 1) is None  # the container is gone


def _caller_of_sysinfo(program: bytes, channel: socket.socket) -> NoReturn:
    """Body of a child: hand its calls to a listener (sent on ``channel``), then call
    sysinfo; exit 0 once the call returned 0."""
    code = 1
    try:
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: unprivileged, it needs it
        confine.hand_calls(program, os.dup(channel.fileno()))
        buf = ctypes.create_string_buffer(112)
        code = ctypes.CDLL(None).sysinfo(buf)
    finally:
        os._exit(code)


def test_a_call_a_dead_server_had_read_is_left_to_the_kernel_by_the_next() -> None:
    from runtime.procview.server import IN_FLIGHT, Connection, Server

    program = intercept.program()
    assert isinstance(program, bytes), program
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        _caller_of_sysinfo(program, theirs)
    theirs.close()
    _, (listener,) = receive_with_fds(ours, 1, 1)
    select.select([listener], [], [])  # the call waits
    call = unotify.receive(listener)  # read by a server that dies before it answers
    assert call is not None
    in_flight = mmap.mmap(-1, IN_FLIGHT.size)
    IN_FLIGHT.pack_into(in_flight, 0, call.id)
    dummy_r, dummy_w = os.pipe()
    server = Server(None, [Connection(dummy_r, child, listeners=[listener])], in_flight)
    try:
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0  # the kernel answered
        assert IN_FLIGHT.unpack_from(in_flight) == (0,)
    finally:
        for conn in list(server.connections.values()):
            server.drop(conn, None)
        server.workers.shutdown()
        os.close(dummy_w)
        ours.close()


def test_listeners_that_always_have_a_call_take_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    # one call at a time while its answer is written: the listener read first each time
    # must not always be the same one
    from runtime.procview import server as server_module

    pipes = [os.pipe() for _ in range(2)]
    listeners = [read for read, _ in pipes]
    dummy_r, dummy_w = os.pipe()
    conn = server_module.Connection(dummy_r, os.getpid(), listeners=list(listeners))
    server = server_module.Server(None, [conn])
    read: list[int] = []

    def writing(_: server_module.Connection, listener: int, __: int) -> None:
        read.append(listener)
        server.writing = server_module._Writing(concurrent.futures.Future(), listener)

    monkeypatch.setattr(server, "answer_call", writing)
    try:
        for _ in range(4):
            server._answer_calls(
                dict.fromkeys(listeners, select.POLLIN), dict.fromkeys(listeners, conn)
            )
            server.writing = None  # written
        assert read == [*listeners, *listeners]
    finally:
        server.drop(conn, None)
        server.workers.shutdown()
        for fd in (dummy_w, *(write for _, write in pipes)):
            os.close(fd)


def test_a_request_waiting_as_the_server_starts_is_answered() -> None:
    # a server started again while a container's read waits reads that request as it
    # takes the connection, before its loop runs
    from runtime.procview.server import _NAMES, Connection, Server

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    node = _NAMES.index("meminfo") + 2
    ours.send(_request(fuse.Op.OPEN, node, struct.pack("<II", os.O_RDONLY, 0)))
    server = Server(None, [Connection(theirs.detach(), os.getpid())])
    try:
        replies = [ours.recv(1 << 16) for _ in range(2)]  # the content's store, then the open
        assert struct.unpack_from("<iQ", replies[-1], 4) == (0, 7)  # no error, for unique 7
    finally:
        for conn in list(server.connections.values()):
            server.drop(conn, None)
        server.workers.shutdown()
        ours.close()


def test_the_server_lingers_after_its_last_connection_and_serves_the_next(
    tmp_path: Path, started_here: list[subprocess.Popen[bytes]]
) -> None:
    """A start soon after the last container ended finds the server serving (forking one
    put milliseconds on every start); it goes ``LINGER`` seconds after it fell idle."""
    from runtime.holder.views import LINGER

    clock = FakeClock()
    keeper, stand_in, theirs = _keeper_serving(tmp_path, clock, started_here)
    fuse_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _launched(keeper, 1001, fuse_fd)
        keeper.released(1001)
        assert (keeper.server, keeper.linger()) == (stand_in.pid, LINGER)
        clock.advance(LINGER / 2)
        keeper.let_idle_go()
        _launched(keeper, 1002, fuse_fd)  # handed to the same server
        assert keeper.server == stand_in.pid and keeper.linger() is None
        handed = [receive_with_fds(theirs, 64, 1)[1] for _ in range(2)]
        for fds in handed:
            for fd in fds:
                os.close(fd)
        assert [len(fds) for fds in handed] == [1, 1]
        keeper.released(1002)
        clock.advance(LINGER)
        assert keeper.linger() == 0.0
        keeper.let_idle_go()
        assert _serving(keeper) == (None, None, None)
        assert stand_in.wait(timeout=60) == -signal.SIGTERM
        assert theirs.recv(1) == b""  # its control socket closed: a real server exits
    finally:
        os.close(fuse_fd)
        theirs.close()


def _keeper_serving(
    tmp_path: Path, clock: FakeClock, started_here: list[subprocess.Popen[bytes]]
) -> tuple[Views, subprocess.Popen[bytes], socket.socket]:
    """Views whose server is a stand-in process (to let go), and the server's end of
    its control socket."""
    keeper = Views(tmp_path, clock=clock)
    stand_in = subprocess.Popen(["sleep", "600"])
    started_here.append(stand_in)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    keeper.server, keeper.control = stand_in.pid, ours
    return keeper, stand_in, theirs


def _launched(keeper: Views, init_pid: int, fuse_fd: int) -> None:
    """A container's connection (a copy of ``fuse_fd``) as the holder gets it: handed
    over while its init was warm, then taken by a launch that asked for the view."""
    keeper.warm(init_pid, os.dup(fuse_fd), os.dup(fuse_fd))
    assert keeper.launched(init_pid, wanted=True)


def _serving(keeper: Views) -> tuple[int | None, socket.socket | None, float | None]:
    """The views' server, its control socket and how long it lingers still."""
    return keeper.server, keeper.control, keeper.linger()


def test_a_warm_connection_is_handed_to_a_running_server_and_never_keeps_it(
    tmp_path: Path, started_here: list[subprocess.Popen[bytes]]
) -> None:
    """A warm init's connection goes to the server that runs (its binds ahead wait for
    it), but only containers' connections keep it: it goes ``LINGER`` seconds after the
    last container's, with warm ones still kept by the holder."""
    from runtime.holder.views import LINGER

    clock = FakeClock()
    keeper, stand_in, theirs = _keeper_serving(tmp_path, clock, started_here)
    fuse_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _launched(keeper, 1001, fuse_fd)
        keeper.warm(1002, os.dup(fuse_fd), os.dup(fuse_fd))
        handed = [receive_with_fds(theirs, 64, 1) for _ in range(2)]
        for _, fds in handed:
            for fd in fds:
                os.close(fd)
        assert [len(fds) for _, fds in handed] == [1, 1]
        keeper.released(1001)
        assert keeper.linger() == LINGER  # the warm one does not count
        clock.advance(LINGER)
        keeper.let_idle_go()
        assert _serving(keeper) == (None, None, None)
        assert stand_in.wait(timeout=60) == -signal.SIGTERM
        assert list(keeper.warm_ones) == [1002]  # kept for the next server
    finally:
        keeper.released(1002)
        os.close(fuse_fd)
        theirs.close()


def test_a_warm_connection_starts_no_server_and_is_closed_when_its_init_ends(
    tmp_path: Path,
) -> None:
    """No server is forked for a warm init (a launch starts one with every connection);
    the holder's copies of an init's connection and channel close when it is reaped."""
    keeper = Views(tmp_path)
    before = set(os.listdir("/proc/self/fd"))
    fuse_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    channel = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    keeper.warm(1003, fuse_fd, channel)
    assert _serving(keeper) == (None, None, None)
    keeper.released(1003)  # reaped unused
    assert (keeper.warm_ones, keeper.channels, keeper.idle_since) == ({}, {}, None)
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_launch_without_the_view_lets_the_warm_connection_go(tmp_path: Path) -> None:
    keeper = Views(tmp_path)
    before = set(os.listdir("/proc/self/fd"))
    fuse_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    channel = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    keeper.warm(1004, fuse_fd, channel)
    assert keeper.launched(1004, wanted=False)
    assert (keeper.connections, keeper.warm_ones, keeper.channels) == ({}, {}, {})
    assert _serving(keeper) == (None, None, None)
    assert set(os.listdir("/proc/self/fd")) == before
    assert not keeper.launched(1005, wanted=True)  # no connection: nothing to start


def test_an_open_the_storer_answers_is_not_ended_by_its_interrupt() -> None:
    """Found in review: with the store notices written by a thread, an OPEN is no longer
    answered before the next request is read, and an INTERRUPT of it (any signal to the
    opener) was taken for one a dead server held: the open failed with EINTR and its
    handle was never let go."""
    import threading

    from runtime.procview.server import _NAMES, Connection, Server

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = Server(None, [])
    conn = Connection(theirs.fileno(), os.getpid())
    busy = threading.Event()
    try:
        server.storer.submit(busy.wait)  # the storer still at an earlier OPEN
        node = _NAMES.index("meminfo") + 2
        opened = fuse.parse_request(_request(fuse.Op.OPEN, node, struct.pack("<II", 0, 0)))
        assert server.answer(conn, opened) is None  # the storer's to answer
        interrupt = fuse.parse_request(_request(fuse.Op.INTERRUPT, 0, struct.pack("<Q", 7)))
        assert server.answer(conn, interrupt) is None
        busy.set()
        server.storer.shutdown(wait=True)
        ours.settimeout(10)
        replies = [ours.recv(1 << 16) for _ in range(2)]  # the store, then the open
        assert struct.unpack_from("<iQ", replies[-1], 4) == (0, 7)
        assert not server.storing
    finally:
        busy.set()
        server.workers.shutdown()
        ours.close()
        theirs.close()
