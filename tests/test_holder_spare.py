"""The spare launcher's parts that need no namespace: restarting a container's network
helper as the request names it, and the words of its failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

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
