"""Container logs without a real container: the pump's cap and rotation, reading in
chunks, following across rotations, where logs go, and the squishfile's ``[logs]``."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.desired.types import spec_hash
from reconciler.squishfile import Squishfile
from runtime.api import LogLimits
from runtime.client import logfiles
from runtime.holder import logpump
from runtime.native import installed
from runtime.settings import RuntimeSettings

# -- rotation and the pump -----------------------------------------------------------------


def test_rotate_shifts_every_copy_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    for name, text in (("output.log", "new"), ("output.log.1", "mid"), ("output.log.2", "old")):
        (tmp_path / name).write_text(text)
    logpump.rotate(str(log), 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.log.1", "output.log.2"]
    assert (tmp_path / "output.log.1").read_text() == "new"
    assert (tmp_path / "output.log.2").read_text() == "mid"


def test_rotate_with_one_file_starts_the_log_over(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("full")
    logpump.rotate(str(log), 1)
    assert list(tmp_path.iterdir()) == []


Pump = Callable[[int, int, str, int, int], None]
"""A pump's body: (pipe, log fd, log path, max size, max files), to EOF."""


def _native_pump(source: int, log_fd: int, path: str, max_size: int, max_files: int) -> None:
    binary = installed()  # run with the defaults of every signal (SIGXFSZ included)
    if binary is None:
        pytest.skip("the native binary is not installed (scripts/host-setup.sh)")
    argv = [str(binary), "pump", str(source), str(log_fd), path, str(max_size), str(max_files)]
    try:
        subprocess.run(argv, pass_fds=(source, log_fd), check=True)
    finally:
        os.close(log_fd)


@pytest.fixture(params=["python", "native"])
def pump(request: pytest.FixtureRequest) -> Pump:
    """The Python pump and the native one (runtime.native): they behave the same."""
    return logpump.pump if request.param == "python" else _native_pump


def _pump(tmp_path: Path, data: bytes, max_size: int, max_files: int, pump: Pump) -> Path:
    """``data`` written into a pipe by a thread while the pump moves it to a log."""
    path = tmp_path / "logs" / "output.log"
    read_end, write_end = logpump.log_pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        pump(read_end, logpump.open_log(str(path)), str(path), max_size, max_files)
    finally:
        writer.join()
        os.close(read_end)
    return path


_FDS_OF_PUMP = """#!/usr/bin/python3
# Stands for the native pump: writes the descriptors it holds into its log (argument 3).
import os, sys
os.write(int(sys.argv[3]), " ".join(os.listdir("/proc/self/fd")).encode())
"""


def test_the_native_pump_is_started_holding_its_pipe_its_log_and_stdio_only(
    tmp_path: Path,
) -> None:
    """Started by ``posix_spawn`` (no fork of the launcher), the pump gets none of the
    launcher's other descriptors, not even one that is inheritable (a client's
    connection received with SCM_RIGHTS is)."""
    stand_in = tmp_path / "squish-native"
    stand_in.write_text(_FDS_OF_PUMP)
    stand_in.chmod(0o700)
    path = tmp_path / "output.log"
    read_end, write_end = logpump.log_pipe()
    log_fd = logpump.open_log(str(path))
    strays = (os.dup2(write_end, 200), os.dup2(read_end, 201))  # inheritable, far from the rest
    try:
        pid = logpump.start_pump(read_end, log_fd, str(path), 1 << 20, 1, str(stand_in))
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        for fd in (read_end, write_end, log_fd, *strays):
            os.close(fd)
    held = {int(fd) for fd in path.read_text().split()}
    assert {read_end, log_fd} <= held  # and the one ls lists /proc/self/fd with
    assert held.isdisjoint(strays)


def test_the_pump_keeps_each_file_within_the_cap_and_keeps_the_newest_output(
    tmp_path: Path, pump: Pump
) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20_000))  # ~200 KB
    path = _pump(tmp_path, data, max_size=10_000, max_files=3, pump=pump)
    files = [*logfiles.rotated(path), path]
    assert [p.name for p in files] == ["output.log.2", "output.log.1", "output.log"]
    assert all(p.stat().st_size <= 10_000 for p in files)
    assert files[0].stat().st_size == files[1].stat().st_size == 10_000  # filled, then rotated
    kept = b"".join(p.read_bytes() for p in files)
    assert data.endswith(kept), "the log holds the tail of the output, in order"


def test_the_pump_appends_to_a_log_an_earlier_run_left(tmp_path: Path, pump: Pump) -> None:
    path = _pump(tmp_path, b"first run\n", max_size=4096, max_files=2, pump=pump)
    _pump(tmp_path, b"second run\n", max_size=4096, max_files=2, pump=pump)
    assert path.read_bytes() == b"first run\nsecond run\n"


def test_a_disk_that_refuses_writes_costs_the_output_not_the_command(
    tmp_path: Path, pump: Pump
) -> None:
    """The pump drains the pipe even when the file cannot grow (here: RLIMIT_FSIZE), so
    the writer is never left waiting on it."""
    path = tmp_path / "output.log"
    read_end, write_end = logpump.log_pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(write_end)
            resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
            pump(read_end, logpump.open_log(str(path)), str(path), 1 << 20, 2)
            code = 0
        finally:
            os._exit(code)
    os.close(read_end)
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(b"x" * (4 << 20))  # four times the pipe: only a drained pipe takes it
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.stat().st_size <= 8192


# -- reading and following ------------------------------------------------------------------


def _rotated_log(tmp_path: Path) -> Path:
    path = tmp_path / "output.log"
    (tmp_path / "output.log.2").write_bytes(b"a" * 150_000)
    (tmp_path / "output.log.1").write_bytes(b"b" * 150_000)
    path.write_bytes(b"c" * 10)
    return path


def test_a_log_is_read_in_bounded_chunks_oldest_file_first(tmp_path: Path) -> None:
    chunks = logfiles.read_all(_rotated_log(tmp_path))
    assert isinstance(chunks, Iterator)  # nothing read until asked: no whole file in memory
    seen = list(chunks)
    assert max(len(c) for c in seen) <= logfiles.CHUNK
    assert b"".join(seen) == b"a" * 150_000 + b"b" * 150_000 + b"c" * 10


def test_following_reads_on_from_where_it_was_across_a_rotation(tmp_path: Path) -> None:
    """``tail -F``: after a rotation the end of the old file, then the new one from its
    start; nothing read twice, nothing skipped."""
    path = tmp_path / "output.log"
    path.write_bytes(b"one\n")

    def append(data: bytes) -> None:
        with path.open("ab") as file:
            file.write(data)

    def rotate_to_a_new_file() -> None:
        append(b"three\n")
        logpump.rotate(str(path), 2)
        path.write_bytes(b"four\n")

    steps: Iterator[Callable[[], object]] = iter(
        [
            lambda: append(b"two\n"),
            rotate_to_a_new_file,
            lambda: logpump.rotate(str(path), 1),  # gone for a moment: wait for the next
            lambda: path.write_bytes(b"five\n"),
        ]
    )
    writing = [True]

    def sleep(_: float) -> None:
        step = next(steps, None)
        if step is None:
            writing[0] = False
        else:
            step()

    followed = b"".join(logfiles.follow(path, lambda: writing[0], sleep))
    assert followed == b"one\ntwo\nthree\nfour\nfive\n"


def test_following_ends_after_the_last_output_once_nothing_writes(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(b"all\n")
    assert b"".join(logfiles.follow(path, lambda: False, lambda _: None)) == b"all\n"


def test_discarding_a_log_deletes_its_copies_and_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "0123456789abcdef"
    folder.mkdir()
    path = _rotated_log(folder)
    logfiles.discard(path)
    assert not folder.exists()


def test_finding_orphan_logs_reads_the_records_twice_whatever_their_number(
    tmp_path: Path,
) -> None:
    """Every record is read once per listing: once for every log folder made each sweep
    (a resync pass) quadratic in the containers."""
    state = tmp_path / "state"
    folders = [tmp_path / "logs" / f"{n:016x}" for n in range(50)]
    for folder in folders:
        logfiles.claim(folder, state)
    asked: list[int] = []

    def named() -> set[Path]:
        asked.append(1)
        return set(folders[1:])

    owned = logfiles.Owners().owned(tmp_path / "logs", state)
    assert logfiles.orphans([tmp_path / "logs" / n for n in owned], named) == [folders[0]]
    assert len(asked) == 2


# -- where logs go ---------------------------------------------------------------------------


def test_logs_go_under_the_state_home_unless_a_folder_is_named() -> None:
    assert RuntimeSettings.from_environ({}).log_dir is None  # ~/.local/state/squish/logs
    home = RuntimeSettings.from_environ({"XDG_STATE_HOME": "/st"})
    assert home.log_dir == Path("/st/squish/logs")
    named = RuntimeSettings.from_environ({"XDG_STATE_HOME": "/st", "SQUISH_LOG_DIR": "/lg"})
    assert named.log_dir == Path("/lg")


# -- the squishfile's [logs] -------------------------------------------------------------------


def _squishfile(extra: dict[str, object]) -> Squishfile:
    base = {"name": "web", "layers": {"busybox": "builtin"}, "run": {"command": "yes"}}
    return Squishfile.model_validate({**base, **extra}, context={"source": Path("/d/web.toml")})


def test_logs_table_sets_the_cap_and_the_files_kept() -> None:
    spec = _squishfile({"logs": {"max_size": "10M", "max_files": 2}}).to_spec()
    assert spec.logs == LogLimits(max_size=10 << 20, max_files=2)


def test_a_file_without_logs_table_gets_the_default_cap_and_its_former_hash() -> None:
    plain = _squishfile({}).to_spec()
    written = _squishfile({"logs": {"max_size": "20M", "max_files": 5}}).to_spec()
    assert plain.logs is None and written.logs is None  # the defaults, spelled out or not
    assert "logs" not in plain.model_dump(exclude_none=True)
    assert spec_hash(plain) == spec_hash(written)
    smaller = _squishfile({"logs": {"max_size": "1M"}}).to_spec()
    assert spec_hash(smaller) != spec_hash(plain), "a changed cap recreates the container"


@pytest.mark.parametrize(
    "table",
    [{"max_files": 0}, {"max_size": "1k"}, {"max_size": "lots"}, {"rotate": True}],
    ids=["no-files", "tiny", "not-a-size", "unknown-key"],
)
def test_logs_table_refuses_what_cannot_work(table: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="logs"):
        _squishfile({"logs": table})


def test_the_owners_of_log_folders_are_read_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass asks which logs a state folder owns; other state folders' logs share
    the log folder, so each owner is read once, not once per pass."""
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    logs = tmp_path / "logs"
    logfiles.claim(logs / "a", mine)
    logfiles.claim(logs / "b", theirs)
    (logs / "c").mkdir()  # made, its owner not written yet
    read: list[Path] = []
    owner = logfiles._owner

    def counted(folder: Path) -> str | None:
        read.append(folder)
        return owner(folder)

    monkeypatch.setattr(logfiles, "_owner", counted)
    owners = logfiles.Owners()
    assert owners.owned(logs, mine) == {"a"}
    logfiles.claim(logs / "c", mine)
    assert owners.owned(logs, mine) == {"a", "c"}
    assert sorted(f.name for f in read) == ["a", "b", "c", "c"]
    logfiles.discard(logs / "a" / "output.log")
    assert owners.owned(logs, mine) == {"c"}
    assert len(read) == 4
