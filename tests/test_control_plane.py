"""The control plane is private: another uid can neither read the state nor use the holder.

"Another uid" is a real, different host uid: a child process that moves into a user
namespace where its uid 0 is the user's first subordinate uid (newuidmap, as podman maps
container users), so the kernel checks it exactly as it would check another account.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.client.linux import LinuxRuntime
from runtime.sandbox import syscalls as sc
from tests.conftest import rootless

pytestmark = rootless

Work = Callable[[], dict[str, object]]


def _first_subordinate(table: str) -> int:
    name, uid = pwd.getpwuid(os.getuid()).pw_name, str(os.getuid())
    for line in Path(table).read_text().splitlines():
        owner, start, _ = line.split(":")
        if owner in (name, uid):
            return int(start)
    raise AssertionError(f"{table} has no range for {name}")


def as_another_uid(work: Work) -> dict[str, object]:
    """Run ``work`` in a child whose host uid and gid are the first subordinate ones."""
    uid, gid = _first_subordinate("/etc/subuid"), _first_subordinate("/etc/subgid")
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        result: dict[str, object] = {}
        try:
            os.close(report_r)
            os.close(go_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(report_w, b"U")
            os.read(go_r, 1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            result = {"host_uid_ok": True, **work()}
        except BaseException as exc:
            result = {"crashed": f"{type(exc).__name__}: {exc}"}
        finally:
            os.write(report_w, json.dumps(result).encode())
            os._exit(0)
    os.close(report_w)
    os.close(go_r)
    try:
        assert os.read(report_r, 1) == b"U"
        for tool, first in (("newgidmap", gid), ("newuidmap", uid)):
            subprocess.run([tool, str(child), "0", str(first), "1"], check=True)
        os.write(go_w, b"G")
        chunks = []
        while chunk := os.read(report_r, 65536):
            chunks.append(chunk)
    finally:
        os.close(go_w)
        os.close(report_r)
        os.waitpid(child, 0)
    answer = json.loads(b"".join(chunks))
    assert isinstance(answer, dict)
    assert "crashed" not in answer, answer["crashed"]
    return answer


@pytest.fixture
def private(tmp_path: Path) -> Iterator[LinuxRuntime]:
    """A runtime of its own: its folder's modes are loosened on purpose below."""
    state = Path("/dev/shm") / f"sqcp-{os.getpid()}"
    runtime = LinuxRuntime(state=state, cache=tmp_path / "cache")
    runtime.holder.ensure()
    yield runtime
    state.chmod(0o700)
    runtime.shutdown()
    subprocess.run(["rm", "-rf", str(state)], check=False)


def _try(what: Callable[[], object]) -> str:
    try:
        return f"ok: {what()!r}"
    except OSError as exc:
        return type(exc).__name__


def _ping(path: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        try:
            sock.sendall(b'{"op": "ping"}')
            sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # a refusing holder answers and closes without reading: read its answer
        answer = json.loads(sock.recv(65536))
    assert isinstance(answer, dict)
    return answer


def test_another_uid_cannot_read_the_state_or_reach_the_holder(private: LinuxRuntime) -> None:
    state, sock = private.state, str(private.state / "pause.sock")
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "pause.sock").stat().st_mode & 0o777 == 0o600
    seen = as_another_uid(
        lambda: {
            "uid": os.getuid(),
            "list": _try(lambda: os.listdir(state)),
            "connect": _try(lambda: _ping(sock)),
        }
    )
    assert seen == {
        "host_uid_ok": True,
        "uid": 0,
        "list": "PermissionError",
        "connect": "PermissionError",
    }


def test_the_holder_refuses_another_uid_even_when_the_modes_are_loose(
    private: LinuxRuntime,
) -> None:
    state, sock = private.state, private.state / "pause.sock"
    state.chmod(0o711)  # a mistake: anyone may pass through the folder...
    sock.chmod(0o666)  # ...and connect to the socket
    seen = as_another_uid(lambda: {"answer": _try(lambda: _ping(str(sock)))})
    assert seen["answer"] == "ok: " + repr(
        {"ok": False, "error": "refused", "message": "not the holder's user"}
    )
    assert _ping(str(sock))["ok"] is True  # the user is still served
    assert "refused a request" in (state / "pause.log").read_text()


def test_a_state_folder_that_is_a_symlink_or_not_ours_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PermissionError, match="not a folder"):
        LinuxRuntime(state=link, cache=tmp_path / "cache")
    with pytest.raises(PermissionError, match="belongs to uid 0"):
        LinuxRuntime(state=Path("/"), cache=tmp_path / "cache")


def test_a_client_that_trickles_its_request_does_not_hold_the_holder(rt: LinuxRuntime) -> None:
    """Found in review: the holder read a request with a 2 s timeout per read, so a
    client (the user's own process) sending a byte a second held its only serving loop
    for as long as it liked, every other client waiting. The request now has 2 s in all."""
    rt.holder.ensure()
    sock_path = str(rt.state / "pause.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(sock_path)
        slow.settimeout(0.5)
        answer = b""
        for _ in range(20):  # 10 s of a byte every half second, unless answered first
            try:
                slow.sendall(b" ")
                answer = slow.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                answer = b"closed"
            break
    assert answer, "still reading the trickled request after 10 s"
    assert _ping(sock_path)["ok"] is True
