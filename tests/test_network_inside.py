"""A container's side of its bridge networks (:mod:`runtime.network.inside`), in a user
and network namespace of the test's own: what :func:`inside.configure` sets reaches the
namespace it was lent, and only that one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from runtime.network import inside
from runtime.sandbox import syscalls as sc
from tests.support import in_own_namespaces

TCP_WMEM = Path("/proc/sys/net/ipv4/tcp_wmem")


def _new_namespace() -> int:
    """A new network namespace, held by the descriptor returned; the caller stays where
    it was."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWNET)
        held = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)
    return held


def _send_buffers_configured() -> dict[str, Any]:
    before = TCP_WMEM.read_text().split()
    container = _new_namespace()
    try:
        with inside.entered(container):
            fresh = TCP_WMEM.read_text().split()
            inside.configure([], None)
            configured = TCP_WMEM.read_text().split()
    finally:
        os.close(container)
    return {
        "before": before,
        "fresh": fresh,
        "configured": configured,
        "caller's after": TCP_WMEM.read_text().split(),
    }


def test_a_containers_tcp_send_buffers_are_capped_in_its_namespace_only() -> None:
    found = in_own_namespaces(_send_buffers_configured)
    least, first, most = (int(figure) for figure in found["before"])
    assert found["fresh"] == found["before"]  # a new namespace copies the host's
    if most <= inside.SEND_BUFFER_MAX:
        pytest.skip(f"this host caps TCP send buffers at {most} bytes already")
    capped = [str(least), str(min(first, inside.SEND_BUFFER_MAX)), str(inside.SEND_BUFFER_MAX)]
    assert found["configured"] == capped
    assert found["caller's after"] == found["before"]


def _configured_without_the_setting() -> dict[str, Any]:
    container = _new_namespace()
    try:
        with inside.entered(container):
            inside.configure([], None)
            return {"lo": "lo" in inside.names()}
    finally:
        os.close(container)


def test_a_namespace_whose_send_buffers_cannot_be_set_is_configured_all_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The cap is a speed-up: a setting that cannot be read never fails a join."""
    monkeypatch.setattr(inside, "_TCP_WMEM", tmp_path / "no-such-setting")
    assert in_own_namespaces(_configured_without_the_setting) == {"lo": True}
