"""How a new holder finds the running containers an earlier one started, on this test's
own processes: the records it trusts, the processes it takes namespaces from."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.holder import adoption
from runtime.holder.protocol import CONTAINERS_DIR
from runtime.util.files import write_json_atomic
from runtime.util.processes import ProcessId, descendants, parent_pids


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A child of this process (killed by its pid afterwards): the "command" below the
    "init" that this test process plays."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def me() -> ProcessId:
    identity = ProcessId.of(os.getpid())
    assert identity is not None
    return identity


def record(state: Path, name: str, run: dict[str, object]) -> None:
    folder = state / CONTAINERS_DIR / name
    folder.mkdir(parents=True)
    write_json_atomic(folder / "run.json", run)


def test_only_containers_whose_init_is_the_recorded_one_run(tmp_path: Path) -> None:
    ids = adoption.namespace_ids(os.getpid())
    record(tmp_path, "web", {"init": me().to_json(), "namespaces": ids})
    record(tmp_path, "old", {"init": me().to_json()})  # a record of an older squish
    record(tmp_path, "broken", {"init": me().to_json(), "namespaces": {"net": "x"}})
    reused = {"pid": os.getpid(), "start_time": me().start_time + 1}
    record(tmp_path, "gone", {"init": reused, "namespaces": ids})
    (tmp_path / CONTAINERS_DIR / "damaged").mkdir()
    (tmp_path / CONTAINERS_DIR / "damaged" / "run.json").write_text("{")
    found = {c.name: c.namespaces for c in adoption.running(tmp_path)}
    assert found == {"broken": None, "old": None, "web": ids}


def test_namespaces_are_taken_from_a_process_below_the_init(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    ids = adoption.namespace_ids(child.pid)
    container = adoption.Running("web", me(), ids)
    fds = adoption.adopt(container, parent_pids())
    try:
        assert {kind: os.fstat(fd).st_ino for kind, fd in fds.items()} == {
            kind: ids[kind] for kind in fds
        }
        assert "user" not in fds and len(fds) == len(adoption.NAMESPACE_KINDS) - 1
    finally:
        for fd in fds.values():
            os.close(fd)


def test_a_process_in_other_namespaces_is_never_taken(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    ids = {**adoption.namespace_ids(child.pid), "net": 1}  # no process is in that one
    with pytest.raises(adoption.Unreachable, match="no process of it can be opened"):
        adoption.adopt(adoption.Running("web", me(), ids), parent_pids())


def test_a_container_of_another_user_namespace_or_without_ids_says_why(
    child: subprocess.Popen[bytes],
) -> None:
    other = {**adoption.namespace_ids(child.pid), "user": 1}
    with pytest.raises(adoption.Unreachable, match="another user namespace"):
        adoption.adopt(adoption.Running("web", me(), other), parent_pids())
    with pytest.raises(adoption.Unreachable, match="names no namespaces"):
        adoption.adopt(adoption.Running("web", me(), None), parent_pids())


def test_no_user_namespace_is_joined_when_none_is_a_child_of_ours(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    assert adoption.user_namespace_to_join(tmp_path) is None  # nothing runs
    ids = adoption.namespace_ids(child.pid)  # this process's own user namespace
    record(tmp_path, "web", {"init": me().to_json(), "namespaces": ids})
    assert adoption.user_namespace_to_join(tmp_path) is None  # not a child of ours


def test_descendants_come_breadth_first_and_a_loop_ends() -> None:
    parent_of = {2: 1, 3: 1, 4: 2, 5: 4, 6: 9, 7: 7, 8: 9, 9: 8}
    assert descendants(1, parent_of) == [2, 3, 4, 5]
    assert sorted(descendants(9, parent_of)) == [6, 8, 9]  # 8 and 9 name each other
    assert descendants(7, parent_of) == [7]
