"""The holder's typed protocol: requests and replies on the wire, the exception each
reported failure becomes, and a holder that keeps serving while a probe hangs."""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from runtime.api.spec import PortMapping
from runtime.client.linux import LinuxRuntime
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
from runtime.holder import protocol
from runtime.holder.client import Holder, failure_error
from runtime.holder.protocol import (
    HOLDER_SOCKET,
    Done,
    ErrorCode,
    Exec,
    ExecResult,
    Exit,
    Failure,
    Launch,
    Launched,
    Launching,
    Ping,
    Pong,
    PortConflict,
    ProbeResult,
    ProbeTcp,
    ProtocolError,
    Reply,
    Request,
    Restored,
    RestoreNetwork,
    Rewire,
    Startup,
    decode_reply,
    decode_request,
    detail_of,
    encode,
    marked,
    to_json,
)
from runtime.util import jsonsock
from runtime.util.processes import ProcessId
from runtime.wire import Forward, LaunchRequest, MountPoint
from tests.conftest import rootless
from tests.support import free_port, kill_slirp, shell

EXEC = Exec(
    init_pid=7,
    init_start_time=99,
    argv=("sh", "-c", "true"),
    env={"PATH": "/bin"},
    container_dir="/state/containers/web",
    timeout=2.5,
    cgroup="/sys/fs/cgroup/x",
)
LAUNCH = LaunchRequest(
    name="web",
    container_dir="/c/web",
    rootfs="/r",
    argv=("httpd",),
    forwards=(Forward("tcp", "127.0.0.1", 8080, 80),),
)


# -- the wire format ------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        Ping(),
        Exit(),
        RestoreNetwork(init_pid=7, container_dir="/c", sandbox=False),
        RestoreNetwork(init_pid=7, container_dir="/c", network="none"),
        ProbeTcp(init_pid=7, port=80),
        EXEC,
    ],
)
def test_every_request_comes_back_as_it_was_sent(request_: Request) -> None:
    assert decode_request(jsonsock.decode_object(jsonsock_bytes(request_))) == request_


@pytest.mark.parametrize(
    "reply",
    [
        Pong(pid=12),
        Done(),
        Launched(run={"init": {"pid": 1, "start_time": 2}}),
        Restored(slirp={"pid": 3, "start_time": 4}),
        ProbeResult(ready=True),
        ExecResult(exit_code=3, output="out\n", timed_out=True),
    ],
)
def test_every_reply_comes_back_as_it_was_sent(reply: Reply) -> None:
    assert decode_reply(to_json(reply), type(reply)) == reply  # type: ignore[type-var]


def test_a_restore_from_a_client_that_names_no_network_is_for_slirp4netns() -> None:
    older = {"op": "restore_network", "init_pid": 7, "container_dir": "/c", "sandbox": True}
    assert decode_request(older) == RestoreNetwork(init_pid=7, container_dir="/c")
    assert RestoreNetwork(init_pid=7, container_dir="/c").network == "slirp4netns"


def test_a_launch_request_survives_the_trip_to_the_spare() -> None:
    sent = decode_request(to_json(Launch.of(LAUNCH)))
    assert isinstance(sent, Launch)
    assert LaunchRequest.from_json(sent.request) == LAUNCH


FULL_LAUNCH = dataclasses.replace(
    LAUNCH,
    mounts=(MountPoint("/srv/site", "/app/site"), MountPoint("/srv/f", "/etc/f", True, False)),
    env={"A": "b"},
    cgroup_limits={"memory.max": "1048576"},
    systemd_scope={"unit": "x.scope", "properties": [["Delegate", True]]},
)


def test_a_launch_request_is_encoded_as_asdict_did_and_shares_nothing_with_it() -> None:
    encoded = FULL_LAUNCH.to_json()
    assert encoded == dataclasses.asdict(FULL_LAUNCH)
    assert json.dumps(encoded, sort_keys=True) == json.dumps(
        dataclasses.asdict(FULL_LAUNCH), sort_keys=True
    )
    encoded["env"]["A"] = "changed"
    encoded["systemd_scope"]["properties"][0][1] = False
    encoded["cgroup_limits"].clear()
    assert FULL_LAUNCH.env == {"A": "b"} and FULL_LAUNCH.cgroup_limits
    assert FULL_LAUNCH.systemd_scope["properties"] == [["Delegate", True]]


@pytest.mark.parametrize(
    "message",
    [
        Launch.of(FULL_LAUNCH),
        EXEC,
        Rewire(init_pid=7, container_dir="/c", networks=("a", "b")),
        Launched(run={"init": {"pid": 1, "start_time": 2}, "forwards": [{"id": 1}]}),
        ExecResult(exit_code=3, output="out\n", timed_out=True),
    ],
)
def test_a_message_is_sent_as_asdict_wrote_it(message: Request | Reply) -> None:
    replied = isinstance(message, Launched | ExecResult)
    head: dict[str, Any] = {"ok": True} if replied else {"op": message.op.value}  # type: ignore[union-attr]
    expected = json.dumps({**head, **dataclasses.asdict(message)})
    assert json.dumps(to_json(message)) == expected


def test_a_recorded_launch_whose_mount_covers_proc_is_refused_when_read() -> None:
    mount = {"source": "/srv", "target": "//proc", "rw": True, "is_dir": True}
    with pytest.raises(ValueError, match="may not cover /proc"):
        LaunchRequest.from_json({**LAUNCH.to_json(), "mounts": [mount]})


def test_a_failure_carries_its_code_and_a_port_conflict_its_port() -> None:
    port = PortConflict("127.0.0.1", 8080, "tcp")
    wire = to_json(Failure(ErrorCode.PORT_IN_USE, "taken", port))
    fields = {"host_addr": "127.0.0.1", "host_port": 8080, "protocol": "tcp", "holder": None}
    assert wire == {"ok": False, "error": "port_in_use", "message": "taken", **fields}
    assert decode_reply(wire, Launched) == Failure(ErrorCode.PORT_IN_USE, "taken", port)
    held = {**wire, "holder": "nginx"}
    assert decode_reply(held, Launched) == Failure(
        ErrorCode.PORT_IN_USE, "taken", PortConflict("127.0.0.1", 8080, "tcp", "nginx")
    )
    exec_failed = {"ok": False, "error": "exec", "message": "no filter"}
    assert decode_reply(exec_failed, ExecResult) == Failure(ErrorCode.EXEC_FAILED, "no filter")


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({}, "unknown op"),
        ({"op": "reboot"}, "unknown op"),
        ({"op": "probe_tcp", "init_pid": 7}, "port"),
        ({"op": "probe_tcp", "init_pid": 7, "port": "80"}, "'port'"),
        ({"op": "probe_tcp", "init_pid": True, "port": 80}, "'init_pid'"),
        ({"op": "probe_tcp", "init_pid": 7, "port": 80, "extra": 1}, "unknown fields"),
        ({**to_json(EXEC), "argv": ["sh", 3]}, "'argv'"),
        ({**to_json(EXEC), "env": {"A": 1}}, "'env'"),
        ({**to_json(EXEC), "timeout": "10"}, "'timeout'"),
        ({"op": "launch", "request": []}, "'request'"),
    ],
)
def test_a_malformed_request_is_refused_with_what_is_wrong(
    data: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        decode_request(data)


def test_a_malformed_reply_is_refused() -> None:
    with pytest.raises(ProtocolError, match="'ok'"):
        decode_reply({"pid": 3}, Pong)
    with pytest.raises(ProtocolError, match="'ready'"):
        decode_reply({"ok": True, "ready": "yes"}, ProbeResult)


@pytest.mark.parametrize(
    "port",
    [
        {"host_addr": "127.0.0.1", "host_port": "http", "protocol": "tcp"},
        {"host_addr": "127.0.0.1", "host_port": None, "protocol": "tcp"},
        {"host_addr": "127.0.0.1", "host_port": [8080], "protocol": "tcp"},
        {"host_addr": "127.0.0.1", "host_port": 8080, "protocol": "tcp", "holder": 3},
        {"host_addr": "127.0.0.1", "protocol": "tcp"},
        {"host_addr": "127.0.0.1", "host_port": 8080, "protocol": "tcp", "extra": 1},
    ],
)
def test_a_port_conflict_with_a_bad_port_is_a_malformed_reply(
    port: dict[str, Any], tmp_path: Path
) -> None:
    hostile = {"ok": False, "error": "port_in_use", "message": "taken", **port}
    with pytest.raises(ProtocolError):
        decode_reply(hostile, Launched)
    with _holder_answering(tmp_path, hostile) as holder, pytest.raises(HolderProtocolError):
        reply = holder._send(Ping(), Pong, 5.0)
        assert isinstance(reply, Failure)
        raise failure_error("web", reply)


def test_an_unknown_error_code_is_a_start_failure_of_a_launch_only() -> None:
    odd = {"ok": False, "error": "mystery", "message": "?"}
    assert decode_reply(odd, Launched) == Failure(ErrorCode.START_FAILED, "?")
    assert decode_reply(odd, ExecResult) == Failure(ErrorCode.BAD_REQUEST, "?")


def test_a_holder_that_closes_without_answering_is_a_host_problem(tmp_path: Path) -> None:
    """Not a protocol mismatch: the process serving the request went away (a killed exec
    runner, say), and its log says why."""
    with (
        _holder_answering(tmp_path, None) as holder,
        pytest.raises(HostSetupError, match="closed the connection without answering"),
    ):
        holder._send(Ping(), Pong, 5.0)


@contextmanager
def _holder_answering(state: Path, answer: dict[str, Any] | None) -> Iterator[Holder]:
    """A holder's socket in ``state`` that reads one request and sends ``answer`` (None:
    closes without answering)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(state / HOLDER_SOCKET))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                jsonsock.read_to_eof(conn, 1 << 20)
                if answer is not None:
                    conn.sendall(json.dumps(answer).encode())

        server = threading.Thread(target=serve)
        server.start()
        try:
            yield Holder(state)
        finally:
            server.join()


def test_a_mark_carries_its_detail_and_is_told_apart_from_the_others() -> None:
    assert marked(Startup.USERNS, 4242) == b"U4242"
    assert detail_of(b"U4242", Startup.USERNS) == "4242"
    assert detail_of(b"Enot mounted", Launching.FAILED) == "not mounted"
    assert detail_of(b"S", Launching.FAILED) is None
    for marks in (Startup, Launching):
        assert all(len(mark) == 1 for mark in marks)
        assert len({bytes(mark) for mark in marks}) == len(marks)


# -- one framing helper -------------------------------------------------------------------


def jsonsock_bytes(message: Request | Reply) -> bytes:
    """The bytes a message is sent as (through a socket pair and ``read_to_eof``)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(encode(message))
        ours.shutdown(socket.SHUT_WR)
        return jsonsock.read_to_eof(theirs, 1 << 20)


@pytest.fixture
def answering(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A unix socket that records each request and answers with the next canned reply."""
    path, answers, seen = tmp_path / "api.sock", [b'{"return": {"id": 1}}'], []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            seen.append(jsonsock.read_to_eof(conn, 1 << 20))
            conn.sendall(answers.pop())

    thread = threading.Thread(target=serve)
    thread.start()
    yield path, seen
    thread.join()
    server.close()


def test_exchange_sends_one_object_and_reads_the_answer_to_its_end(
    answering: tuple[Path, list[bytes]],
) -> None:
    path, seen = answering
    answer = jsonsock.exchange(path, {"execute": "list_hostfwd"}, timeout=5.0, limit=1024)
    assert answer == {"return": {"id": 1}}
    assert seen == [b'{"execute": "list_hostfwd"}']


def test_exchange_refuses_an_answer_past_its_bound(answering: tuple[Path, list[bytes]]) -> None:
    path, _ = answering
    with pytest.raises(ValueError, match="larger than 8 bytes"):
        jsonsock.exchange(path, {}, timeout=5.0, limit=8)


@pytest.mark.parametrize("raw", [b"", b"[1]", b"{nope"])
def test_only_a_json_object_is_a_message(raw: bytes) -> None:
    with pytest.raises(ValueError):
        jsonsock.decode_object(raw)


# -- the exception each failure becomes -------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (ErrorCode.EXEC_FAILED, ExecFailed),
        (ErrorCode.PROBE_FAILED, ProbeFailed),
        (ErrorCode.RESTORE_FAILED, NetworkRestoreFailed),
        (ErrorCode.NOT_RUNNING, ContainerNotRunning),
        (ErrorCode.UNKNOWN_CONTAINER, ContainerUnreachable),
        (ErrorCode.SLIRP_FAILED, SlirpError),
        (ErrorCode.BAD_REQUEST, HolderProtocolError),
        (ErrorCode.REFUSED, HolderProtocolError),
        (ErrorCode.START_FAILED, ContainerStartError),
        (ErrorCode.CGROUP_MOVE, ContainerStartError),
    ],
)
def test_each_failure_code_has_its_own_exception(code: ErrorCode, error: type[Exception]) -> None:
    raised = failure_error("web", Failure(code, "why"), program="httpd", port=80)
    assert type(raised) is error
    assert "why" in str(raised)
    if error is not ContainerStartError:
        assert "failed to start" not in str(raised)


def test_a_port_conflict_names_the_port() -> None:
    port = PortConflict("127.0.0.1", 8080, "tcp", "nginx")
    raised = failure_error("web", Failure(ErrorCode.PORT_IN_USE, "taken", port))
    assert isinstance(raised, PortInUse)
    assert (raised.host_port, raised.holder) == (8080, "nginx")


def test_an_exec_failure_names_the_program_and_the_container() -> None:
    raised = failure_error("web", Failure(ErrorCode.EXEC_FAILED, "no filter"), program="curl")
    assert str(raised) == "cannot run 'curl' in container 'web': no filter"
    assert isinstance(raised, OSError) and isinstance(raised, SquishError)


# -- against a real holder ------------------------------------------------------------


@rootless
def test_adding_a_port_to_a_stopped_container_says_it_is_not_running(rt: LinuxRuntime) -> None:
    rt.run(shell("quiet", "true", network="slirp4netns"))
    rt.wait("quiet", timeout=60)
    with pytest.raises(OSError) as caught:
        rt.add_port("quiet", PortMapping(container=80, host=free_port()))
    assert str(caught.value) == "container 'quiet' is not running"
    assert type(caught.value).__name__ == "ContainerNotRunning"


@rootless
def test_a_command_that_cannot_run_is_an_exec_failure_not_a_start_failure(
    rt: LinuxRuntime, state_path: Path
) -> None:
    rt.run(shell("nofilter", "exec sleep 600", stop_timeout=0))
    (state_path / "containers" / "nofilter" / "seccomp.bpf").unlink()  # the runner needs it
    with pytest.raises(OSError) as caught:
        rt.exec_command("nofilter", ["true"])
    assert type(caught.value).__name__ == "ExecFailed"
    assert "failed to start" not in str(caught.value)
    assert "cannot run 'true' in container 'nofilter'" in str(caught.value)


@rootless
def test_a_malformed_probe_or_exec_is_a_bad_request_not_a_slirp_failure(
    rt: LinuxRuntime, state_path: Path
) -> None:
    info = rt.run(shell("target", "exec sleep 600", stop_timeout=0))
    sock = state_path / "pause.sock"
    no_port = {"op": "probe_tcp", "init_pid": info.pid}
    bad_time = {**to_json(EXEC), "init_pid": info.pid, "init_start_time": "soon"}
    for request in (no_port, bad_time):
        reply = jsonsock.exchange(sock, request, timeout=30.0, limit=1 << 20)
        assert (reply["ok"], reply["error"]) == (False, "protocol"), reply


def _raw_exchange(sock: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30.0)
        conn.connect(str(sock))
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        return jsonsock.decode_object(jsonsock.read_to_eof(conn, 1 << 20))


@rootless
def test_hostile_requests_are_refused_and_the_holder_lives_on(
    rt: LinuxRuntime, state_path: Path
) -> None:
    """Any process of the user may write to the socket: a request whose op is not a
    string, or JSON nested deeper than the parser's recursion, is a bad request."""
    rt.holder.ensure()
    before = rt.holder.identity()
    assert before is not None
    sock = state_path / "pause.sock"
    hostile = (
        b'{"op": [1]}',
        b'{"op": {"x": 1}}',
        b'{"op": "ping", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    )
    for payload in hostile:
        reply = _raw_exchange(sock, payload)
        assert (reply["ok"], reply["error"]) == (False, "protocol"), reply
    assert jsonsock.exchange(sock, to_json(Ping()), timeout=30.0, limit=1024)["ok"]
    after = rt.holder.identity()
    assert after is not None and (after.pid, after.start_time) == (before.pid, before.start_time)


STUCK = (  # a listener that never accepts, its queue full: a new SYN gets no answer
    "httpd -f -p 127.0.0.1:7000 & pid=$!; usleep 200000; kill -STOP $pid;"
    "for i in $(seq 30); do nc 127.0.0.1 7000 </dev/null >/dev/null 2>&1 & done;"
    "exec sleep 600"
)


def queue_is_full(rt: LinuxRuntime, name: str) -> bool:
    return "SYN_SENT" in rt.exec_command(name, ["netstat", "-tn"]).output


@rootless
def test_the_holder_answers_others_while_a_probe_hangs(rt: LinuxRuntime, state_path: Path) -> None:
    info = rt.run(shell("stuck", STUCK, stop_timeout=0))
    for _ in range(2000):
        if queue_is_full(rt, "stuck"):
            break
        time.sleep(0.005)
    else:
        pytest.fail("the listener's queue never filled: the probe would not hang")
    sock = state_path / "pause.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(sock))
        probe.sendall(encode(ProbeTcp(init_pid=info.pid or 0, port=7000)))
        probe.shutdown(socket.SHUT_WR)
        pong = jsonsock.exchange(sock, to_json(Ping()), timeout=30.0, limit=1024)
        probe_done, _, _ = select.select([probe], [], [], 0)
        assert pong["ok"] and not probe_done  # answered while the probe is still pending
        probe.settimeout(30.0)
        answer = jsonsock.decode_object(jsonsock.read_to_eof(probe, 1024))
    assert answer == {"ok": True, "ready": False}


@rootless
def test_a_restored_slirp4netns_goes_when_its_container_exits(rt: LinuxRuntime) -> None:
    script = "while [ ! -f /tmp/stop ]; do usleep 10000; done"
    rt.run(shell("healed", script, network="slirp4netns"))
    kill_slirp(rt, "healed")
    healed = rt.restore_network("healed")
    assert healed.slirp_pid is not None
    slirp_id = ProcessId.of(healed.slirp_pid)
    assert slirp_id is not None
    rt.exec_command("healed", ["touch", "/tmp/stop"])
    assert rt.wait("healed", timeout=60) == 0
    assert slirp_id.wait_gone(30.0)  # the holder killed it when it reaped the init


REVISION_1 = {
    "exec": "init_pid init_start_time argv env container_dir workdir timeout seccomp cgroup",
    "exit": "",
    "launch": "request",
    "ping": "",
    "probe_tcp": "init_pid port",
    "restore_network": "init_pid container_dir sandbox network",
    "rewire": "init_pid container_dir networks",
    "LaunchRequest": "name container_dir rootfs argv mounts env workdir hostname network forwards "
    "sandbox_slirp port_handler seccomp cgroup cgroup_parent cgroup_limits systemd_scope "
    "log_path log_max_size log_max_files proc_view",
    "MountPoint": "source target rw is_dir",
    "Forward": "proto host_addr host_port guest_port",
}
"""The fields of every request the holder serves at ``HOLDER_PROTOCOL`` 1."""


def test_a_request_that_gains_a_field_raises_the_protocol_revision() -> None:
    """A holder refuses fields it does not know, and a client replaces a running holder
    only when its recorded revision is older: a field added without raising
    ``HOLDER_PROTOCOL`` would strand every start on the holder of the version before."""
    kinds: dict[str, type[Any]] = {**protocol._REQUESTS}
    kinds.update(LaunchRequest=LaunchRequest, MountPoint=MountPoint, Forward=Forward)
    fields = {name: " ".join(f.name for f in dataclasses.fields(k)) for name, k in kinds.items()}
    assert protocol.HOLDER_PROTOCOL == 1 and fields == REVISION_1, (
        "a request's fields changed: raise HOLDER_PROTOCOL and record its fields here"
    )
