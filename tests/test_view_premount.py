"""The /proc view's connection mounted ahead by a warm init
(``runtime.sandbox.mounts.premount_view``), in a user and mount namespace of the test's own.

A container's init mounts its view's FUSE connection before its request comes, so that
the view's server, handed the connection with the request, finds it mounted and answers
at once (one not mounted yet is tried again only after the server's next wait, which was
milliseconds on every start). The mount made ahead must be the mount a start makes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.procview.server import Connection, Server
from runtime.sandbox import mounts
from runtime.sandbox import syscalls as sc
from tests.conftest import rootless
from tests.support import in_child

pytestmark = [
    rootless,
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse"),
]


def _in_namespace(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``work`` in a forked child that is root of a new user and mount namespace;
    return what it returned."""
    uid, gid = os.getuid(), os.getgid()

    def inside() -> dict[str, object]:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        return work()

    answer = in_child(inside)
    assert "crashed" not in answer, answer["crashed"]
    return answer


def _mount_line(target: str) -> str:
    """The mount at ``target`` as /proc/self/mountinfo shows it, without its ids (mount
    id, parent id, device number) and its mount point."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == target:
            return " ".join(fields[5:])
    raise AssertionError(f"nothing is mounted at {target}")


def test_the_view_mounted_ahead_is_the_mount_a_start_makes(tmp_path: Path) -> None:
    cold, warm = tmp_path / "cold", tmp_path / "warm"

    def both() -> dict[str, object]:
        sc.mount("tmpfs", str(tmp_path), "tmpfs", 0, "mode=755")
        cold.mkdir()
        warm.mkdir()
        cold_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        warm_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        mounts._attach_view(str(cold), cold_fd, None)
        mounts._attach_view(str(warm), warm_fd, mounts.premount_view(warm_fd))
        return {"cold": _mount_line(str(cold)), "warm": _mount_line(str(warm))}

    seen = _in_namespace(both)
    assert " - fuse.squish squish-procview " in str(seen["cold"])
    assert seen["warm"] == seen["cold"]


def test_the_server_answers_a_connection_mounted_ahead_when_it_is_handed_over() -> None:
    def served() -> dict[str, object]:
        fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        mounted = mounts.premount_view(fuse_fd)  # the kernel queues its INIT at once
        conn = Connection(fuse_fd, os.getpid())
        server = Server(None, [conn])
        try:
            return {"live": conn.live, "mounted": mounted >= 0}
        finally:
            server.workers.shutdown()

    assert _in_namespace(served) == {"live": True, "mounted": True}
