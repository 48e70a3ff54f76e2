"""The shared namespace's agent on its own (:mod:`runtime.network.agent`), in a user and
network namespace of the test's own: a launcher's connection it fails to accept (out of
descriptors) costs that connection only, never the agent, which holds the namespace and
whose end takes its keeper and every bridge network along."""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path
from typing import Any

from runtime.network import agent
from tests.support import in_own_namespaces


def _lowest_free_fd(pid: int) -> int:
    taken = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(taken) + 1) if fd not in taken)


def _plug_nothing(direct: Path) -> str:
    """A launcher's plug that makes no pair (this namespace's own, nothing to add): "ok"
    when the agent made it, else why not."""
    ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sent = agent.plug(direct, ns_fd, 5.0, left=[], fresh=True, pairs=[], gateway=None)
        return "ok" if sent.answer()["ok"] is True else "no"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.close(ns_fd)


def _accept_out_of_descriptors(direct: Path) -> dict[str, Any]:
    keeper = agent.start(10.0, direct)
    try:
        keeper.call("listening", addresses=[], port=53)  # past its start: serving requests
        limits = resource.prlimit(keeper.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(
            keeper.pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(keeper.pid), limits[1])
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as launcher:
            launcher.connect(str(direct))  # queued: the agent cannot accept it
            try:
                keeper.call("listening", addresses=[], port=53)
                served = "ok"
            except OSError as exc:
                served = f"{type(exc).__name__}: {exc}"
        resource.prlimit(keeper.pid, resource.RLIMIT_NOFILE, limits)
        return {"keeper served": served, "plug": _plug_nothing(direct)}
    finally:
        os.kill(keeper.pid, 9)
        os.waitpid(keeper.pid, 0)


def test_a_failed_accept_costs_that_connection_only(tmp_path: Path) -> None:
    found = in_own_namespaces(lambda: _accept_out_of_descriptors(tmp_path / "agent.sock"))
    assert found == {"keeper served": "ok", "plug": "ok"}
