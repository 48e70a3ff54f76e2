"""The spare launcher's parts that need no namespace: restarting a container's network
helper as the request names it, and the words of its failures."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.cgroups.fs import Leaf
from runtime.errors import SlirpError
from runtime.holder import server, spare
from runtime.holder.protocol import ErrorCode, Failure, Launching, marked
from runtime.network import driver, slirp
from runtime.util.processes import ProcessId, proc_start_time
from runtime.wire import LaunchRequest


def test_a_restore_starts_the_helper_of_the_network_it_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = ProcessId.of(1)
    assert me is not None
    started: list[tuple[Path, bool, dict[str, int]]] = []

    def spawn(cdir: Path, sandbox: bool, timeout: float, **where: int) -> ProcessId:
        started.append((cdir, sandbox, where))
        return me

    monkeypatch.setattr(slirp, "spawn", spawn)
    # No launch.json in the folder: the request alone says which driver restarts.
    assert spare.restart_slirp(str(tmp_path), 9, True, "slirp4netns", 5) is me
    assert started == [(tmp_path, True, {"netns_fd": 9, "exit_fd": 5})]  # ends with the pipe
    with pytest.raises(SlirpError, match="no network helper"):
        spare.restart_slirp(str(tmp_path), 9, True, "none", 5)


@pytest.mark.parametrize(
    "failure", [TimeoutError("timed out waiting for slirp4netns"), SlirpError("no tap0")]
)
def test_a_restore_that_fails_says_why_in_its_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def spawn(cdir: Path, sandbox: bool, timeout: float, **where: int) -> ProcessId:
        raise failure

    monkeypatch.setattr(slirp, "spawn", spawn)
    with pytest.raises(type(failure)) as raised:
        spare.restart_slirp(str(tmp_path), 9, False, "slirp4netns", 5)
    assert raised.value is failure


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (marked(Launching.FAILED, "unshare: Operation not permitted"), "not permitted"),
        (b"", "exited without a word"),
    ],
)
def test_a_namespace_failure_says_what_went_wrong(answer: bytes, words: str) -> None:
    message = spare._namespaces_failure(answer)
    assert message.startswith("cannot create the container namespaces: ")
    assert words in message
    assert "None" not in message


@pytest.mark.parametrize(
    ("proc_view", "detail", "state"),
    [
        (False, "", "off"),
        (True, "", "on"),
        (
            True,
            "/dev/fuse cannot be opened: EACCES",
            "unavailable: /dev/fuse cannot be opened: EACCES",
        ),
        (True, "\nno listener", "on (files only: no listener)"),
    ],
)
def test_the_view_state_says_whether_the_calls_are_answered_too(
    proc_view: bool, detail: str, state: str
) -> None:
    request = LaunchRequest(name="c", container_dir="/c", rootfs="/r", argv=("true",))
    request = dataclasses.replace(request, proc_view=proc_view)
    assert spare._view_state(request, detail) == state


def _mover() -> int:
    """A child standing for the intermediate child that moves a warm init ahead."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


@pytest.mark.parametrize("scope", [False, True])
def test_the_mover_ahead_is_done_before_the_init_goes_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scope: bool
) -> None:
    """A launch placed outside the leaf made ahead (another folder, a systemd scope)
    waits for the mover first: a move ahead done after it would put the init back in
    that leaf, which is then killed and removed with the container in it."""
    ahead = spare._Ahead(Leaf(tmp_path / "ahead" / "run.1"), procs=-1, mover=_mover())
    settled_at_scope: list[bool] = []

    def into_scope(init: spare._Init, req: LaunchRequest, raw: bytes) -> tuple[str, bytes]:
        settled_at_scope.append(ahead.mover is None)
        return str(tmp_path / "scope"), raw

    monkeypatch.setattr(spare, "_into_scope", into_scope)
    init = spare._Init(1, -1, -1, -1, -1, -1, None, "off", None)
    request = LaunchRequest(name="c", container_dir="/c", rootfs="/r", argv=("true",))
    if scope:
        request = dataclasses.replace(request, systemd_scope={"unit": "c.scope"})
    else:
        (tmp_path / "other").mkdir()
        request = dataclasses.replace(request, cgroup_parent=str(tmp_path / "other"))
    leaf, _ = spare._cgroup(init, request, b"{}", ahead)
    assert leaf is not None and leaf != ahead.leaf
    assert ahead.mover is None
    assert settled_at_scope == ([True] if scope else [])


class _InitStandIn:
    """A child standing for a container init that fails as it mounts: it reads its
    request to the end, reports why it failed, and exits (as ``run_init`` does)."""

    def __init__(self, reason: str) -> None:
        request_r, self.request_w = os.pipe2(os.O_CLOEXEC)
        self.report_r, report_w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.request_w)
            while os.read(request_r, 65536):
                pass
            os.write(report_w, marked(Launching.FAILED, reason))
            os._exit(126)
        os.close(request_r)
        os.close(report_w)
        self.pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]  # go, exit, log

    def init(self) -> spare._Init:
        (_, go_w), (exit_r, _), (log_r, _) = self.pipes
        return spare._Init(
            self.pid, self.request_w, go_w, self.report_r, exit_r, log_r, None, "off", None
        )

    def close(self) -> None:
        for fd in (self.report_r, *(fd for pipe in self.pipes for fd in pipe)):
            os.close(fd)


def test_a_network_that_fails_as_the_init_died_says_why_the_init_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The init reads its request before the network is asked for, and may fail (a bind
    refused) before the network's start looks for its namespace: the start then fails
    too, and the client is told the init's reason, not the network's "no such file
    /proc/PID/ns/net"."""
    reason = "setting up the container filesystem failed: bind /data: a symlink"
    stand_in = _InitStandIn(reason)
    bridge_start = driver.driver_for("bridge").start

    def start_once_the_init_ended(cdir: Path, sandbox: bool, **rest: Any) -> driver.Starting:
        os.waitpid(stand_in.pid, 0)  # the race lost: the init ended first
        return bridge_start(cdir, sandbox, **rest)

    bridge = SimpleNamespace(start=start_once_the_init_ended)
    monkeypatch.setattr(spare, "driver_for", lambda _: bridge)
    cdir = tmp_path / "containers" / "c"
    cdir.mkdir(parents=True)
    request = LaunchRequest(
        name="c", container_dir=str(cdir), rootfs="/r", argv=("true",), network="bridge"
    )
    try:
        reply = spare._answer(stand_in.init(), json.dumps(request.to_json()).encode(), None)
    finally:
        stand_in.close()
    assert isinstance(reply, Failure)
    assert reply.code is ErrorCode.START_FAILED
    assert reply.message == reason


def test_the_warm_up_runs_a_launch_s_own_steps_and_touches_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spare._prewarm()  # a failure here would fail every spare before its request
    assert list(tmp_path.iterdir()) == []


def test_a_holder_gone_before_it_read_the_warm_word_is_gone_for_the_spare() -> None:
    """A holder that ends with the spare's warm word unread resets the socket: the spare
    sees the holder gone (and lets its init and leaf go) instead of failing on it."""
    holder, ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ctrl:
        ctrl.send(spare._WARM.pack(Launching.WARM.value, 4242, 1))
        holder.close()  # unread
        assert spare._receive(ctrl) is None


def test_a_warm_word_naming_a_process_that_took_the_init_s_pid_is_not_taken(
    tmp_path: Path,
) -> None:
    """The warm init ended and was reaped before the holder read its word, and another
    process took its pid: the holder neither keeps that process as the init nor, later,
    kills it as one."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        start = proc_start_time(other.pid)
        assert start is not None
        holder_end, spare_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with holder_end, spare_end:
            spare_end.send(spare._WARM.pack(Launching.WARM.value, other.pid, start + 1))
            taken = server._Spare(pid=1, ctrl=holder_end, leaf=None, shape=None)
            assert not server._Containers(tmp_path).warm(taken)
            assert taken.init is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
