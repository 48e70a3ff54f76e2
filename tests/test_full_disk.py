"""A full state filesystem locks nothing: reading state writes nothing that must succeed,
a pass still plans and destroys, ``status`` says the disk is full, and a failed atomic
write leaves no temporary file.

The state folder sits on a 1 MiB tmpfs that the test mounts in a user and mount namespace
of its own (the account's uid mapped to itself), so it can fill a real filesystem without
root. Containers started there map only their root (``/etc/subuid`` is hidden by an empty
file in that namespace: the setuid ``newuidmap`` does not work in it).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.sandbox import syscalls as sc
from runtime.util.files import read_json, write_json_atomic
from tests.conftest import rootless
from tests.support import processes_mentioning

pytestmark = rootless

PAGE = 4096

Work = Callable[[Path], dict[str, object]]


def _enter_small_disk(disk: Path, empty: Path) -> None:
    """Make this (single-threaded) process the first of a user and mount namespace where
    ``disk`` is a 1 MiB tmpfs."""
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", str(disk), "tmpfs", 0, f"size=1m,mode=0700,uid={uid},gid={gid}")
    for table in ("/etc/subuid", "/etc/subgid"):
        sc.mount(str(empty), table, None, sc.MS_BIND)


def on_small_disk(tmp_path: Path, work: Work) -> dict[str, object]:
    """Run ``work(disk)`` in a forked child that has ``disk`` on a 1 MiB tmpfs; return
    what it returned. Whatever the child leaves running is killed and fails the test."""
    disk, empty = tmp_path / "d", tmp_path / "empty"
    disk.mkdir()
    empty.write_text("")
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        result: dict[str, object] = {}
        try:
            os.close(report_r)
            _enter_small_disk(disk, empty)
            result = work(disk)
        except BaseException as exc:
            result = {"crashed": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
        finally:
            os.write(report_w, json.dumps(result).encode())
            os._exit(0)
    os.close(report_w)
    chunks = []
    try:
        while chunk := os.read(report_r, 65536):
            chunks.append(chunk)
    finally:
        os.close(report_r)
        os.waitpid(child, 0)
    leaked = processes_mentioning(str(disk))
    for pid, _ in leaked:
        os.kill(pid, signal.SIGKILL)
    answer = json.loads(b"".join(chunks))
    assert isinstance(answer, dict)
    assert "crashed" not in answer, answer["crashed"]
    assert not leaked, f"processes outlived the test: {leaked}"
    return answer


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` until a write fails for lack of space, then free ``leave`` pages."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"x" * PAGE)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave * PAGE, 0))


def _atomic_write_on_full_disk(leave: int) -> Work:
    def work(disk: Path) -> dict[str, object]:
        target = disk / "record.json"
        write_json_atomic(target, {"old": True})
        fill(disk, leave)
        try:
            write_json_atomic(target, {"new": "x" * (3 * PAGE)})
            raised = None
        except OSError as exc:
            raised = exc.errno
        return {
            "raised": raised,
            "record": read_json(target),
            "files": sorted(p.name for p in disk.iterdir()),
        }

    return work


@pytest.mark.parametrize("leave", [0, 1], ids=["no-page-left", "one-page-left"])
def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary_one(
    tmp_path: Path, leave: int
) -> None:
    """Nothing free: the write itself fails. One page free: the first write is short
    (it writes what fits and returns the count), the next one fails."""
    result = on_small_disk(tmp_path, _atomic_write_on_full_disk(leave))
    assert result["raised"] == errno.ENOSPC
    assert result["record"] == {"old": True}
    assert result["files"] == ["filler", "record.json"]
