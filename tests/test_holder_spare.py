"""The spare launcher's parts that need no namespace: restarting a container's network
helper as the request names it, and the words of its failures."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from runtime.cgroups.fs import Leaf
from runtime.errors import SlirpError
from runtime.holder import spare
from runtime.holder.protocol import Launching, marked
from runtime.network import slirp
from runtime.util.processes import ProcessId
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
