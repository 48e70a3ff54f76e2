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
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.control.status import FolderBusy, StatusStore
from runtime.client import binds, folders
from runtime.client.linux import LinuxRuntime
from runtime.sandbox import syscalls as sc
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.support import in_child, processes_mentioning, shell
from tests.test_reconciler_e2e import cli

pytestmark = rootless

PAGE = 4096

Work = Callable[[Path], dict[str, object]]


def _enter_small_disk(disk: Path, empty: Path, options: str) -> None:
    """Make this (single-threaded) process the first of a user and mount namespace where
    ``disk`` is a 1 MiB tmpfs (with the mount ``options`` added)."""
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", str(disk), "tmpfs", 0, f"size=1m,mode=0700,uid={uid},gid={gid}{options}")
    for table in ("/etc/subuid", "/etc/subgid"):
        sc.mount(str(empty), table, None, sc.MS_BIND)


def on_small_disk(tmp_path: Path, work: Work, options: str = "") -> dict[str, object]:
    """Run ``work(disk)`` in a forked child that has ``disk`` on a 1 MiB tmpfs; return
    what it returned. Whatever the child leaves running is killed and fails the test."""
    disk, empty = tmp_path / "d", tmp_path / "empty"
    disk.mkdir()
    empty.write_text("")

    def on_disk() -> dict[str, object]:
        _enter_small_disk(disk, empty, options)
        return work(disk)

    answer = in_child(on_disk)
    leaked = processes_mentioning(str(disk))
    for pid, _ in leaked:
        os.kill(pid, signal.SIGKILL)
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


def _discard_without_inodes(disk: Path) -> dict[str, object]:
    folder = disk / "containers" / "web"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text("{}")
    count = 0
    try:
        while True:  # a disk out of inodes refuses a new folder as one out of blocks does
            (disk / f"f{count}").touch()
            count += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    try:
        folders.discard(folder)
        raised = None
    except OSError as exc:
        raised = exc.errno
    return {"raised": raised, "left": sorted(p.name for p in folder.parent.iterdir())}


def test_a_container_folder_is_removed_from_a_disk_that_cannot_make_a_folder(
    tmp_path: Path,
) -> None:
    """A removal moves the folder aside first, into a fresh hidden folder; when no folder
    can be made, it is moved aside under a hidden name of its own."""
    result = on_small_disk(tmp_path, _discard_without_inodes, ",nr_inodes=64")
    assert result == {"raised": None, "left": []}


def _etc_files_on_full_disk(disk: Path) -> dict[str, object]:
    cdir = disk / "web"
    cdir.mkdir()
    binds.etc_mounts(shell("web", "true"), cdir)
    fill(disk)
    try:
        binds.etc_mounts(shell("web", "true", hostname="renamed"), cdir)
        raised = None
    except OSError as exc:
        raised = exc.errno
    return {
        "raised": raised,
        "hostname": (cdir / "etc" / "hostname").read_text(),
        "files": sorted(p.name for p in (cdir / "etc").iterdir()),
    }


def test_etc_files_that_do_not_fit_keep_the_old_ones_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    result = on_small_disk(tmp_path, _etc_files_on_full_disk)
    assert result == {
        "raised": errno.ENOSPC,
        "hostname": "web\n",
        "files": ["hostname", "hosts", "resolv.conf"],
    }


def _claim_on_full_disk(disk: Path) -> dict[str, object]:
    store = StatusStore(disk, disk / "desired")
    fill(disk)
    store.claim("loop")  # the lock holds; naming its holder in the file does not fit
    try:
        StatusStore(disk, disk / "desired").claim("apply")
        second = None
    except FolderBusy as exc:
        second = str(exc)
    return {"second": second}


def test_a_folder_is_claimed_on_a_full_disk_and_held(tmp_path: Path) -> None:
    result = on_small_disk(tmp_path, _claim_on_full_disk)
    assert "another reconciler" in str(result["second"])


# -- the control plane on a full state disk -----------------------------------------------


def _toml(script: str) -> str:
    return f"""\
network = "none"

[layers]
busybox = "builtin"

[run]
command = "sh"
args = ["-c", "{script}"]

[restart]
policy = "never"
"""


def _cli(env: dict[str, str], *args: str) -> dict[str, object]:
    done = cli(env, *args)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr[-2000:]}


def _control_plane_on_full_disk(folder: Path, cache: Path) -> Work:
    def work(disk: Path) -> dict[str, object]:
        env = {
            **os.environ,
            "SQUISH_STATE_DIR": str(disk / "s"),
            "SQUISH_LOG_DIR": str(disk / "logs"),
            "XDG_CACHE_HOME": str(cache),
        }
        steps: dict[str, object] = {"apply": _cli(env, "apply", str(folder))}
        rt = LinuxRuntime(state=disk / "s", cache=cache / "squish")
        try:
            loud_log = Path(rt.inspect("loud").log_path)
            while not loud_log.exists() or loud_log.stat().st_size < 300_000:
                time.sleep(0.02)
            fill(disk)
            dying = rt.inspect("dies").pid
            assert dying is not None
            os.kill(dying, signal.SIGKILL)
            gone = ProcessId.of(dying)
            assert gone is None or gone.wait_gone(10.0)
            steps["finished"] = [rt.inspect("dies").finished_at for _ in range(2)]
            (folder / "gone.toml").unlink()
            steps["status"] = _cli(env, "status", str(folder), "--json")
            steps["ps"] = _cli(env, "ps", "--json")
            steps["pass"] = _cli(env, "apply", str(folder))
            for step, args in (
                ("stop", ("stop", "keep")),
                ("rm", ("rm", "dies")),
                ("down", ("down", str(folder))),
            ):
                fill(disk)
                steps[step] = _cli(env, *args)
            steps["left"] = [info.name for info in rt.list()]
        finally:
            (disk / "filler").unlink(missing_ok=True)
            rt.shutdown()
        return steps

    return work


def test_a_full_state_disk_locks_nothing(tmp_path: Path, cache_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    (folder / "keep.toml").write_text(_toml("exec sleep 1000"))
    (folder / "gone.toml").write_text(_toml("exec sleep 1000"))
    (folder / "dies.toml").write_text(_toml("exec sleep 1000"))
    (folder / "loud.toml").write_text(_toml("yes loud | head -c 300000; exec sleep 1000"))
    steps = on_small_disk(tmp_path, _control_plane_on_full_disk(folder, cache_path / "xdg"))

    def ok(step: str) -> dict[str, object]:
        done = steps[step]
        assert isinstance(done, dict) and done["rc"] == 0, (step, done)
        return done

    ok("apply")
    status = json.loads(str(ok("status")["out"]))
    rows = {row["name"]: row for row in status["containers"]}
    assert rows["dies"]["phase"] == "Exited"
    assert rows["keep"]["phase"] == "Running"
    full = [c for c in status["conditions"] if c["kind"] == "StateDiskFull"]
    assert len(full) == 1, status["conditions"]
    assert str(tmp_path / "d" / "s") in full[0]["message"]
    assert "loud" in full[0]["message"]  # its log shares the full disk
    listed = {info["name"]: info["state"] for info in json.loads(str(ok("ps")["out"]))}
    assert listed == {"dies": "exited", "gone": "running", "keep": "running", "loud": "running"}
    applied = steps["pass"]
    assert isinstance(applied, dict) and "Traceback" not in str(applied["err"]), applied
    assert "destroy gone" in str(applied["out"]) and "done" in str(applied["out"]), applied
    finished = steps["finished"]
    assert isinstance(finished, list) and finished[0] is not None
    assert finished[0] == finished[1], "an unrecorded exit keeps the time first seen"
    for step in ("stop", "rm", "down"):
        ok(step)
    assert steps["left"] == []
