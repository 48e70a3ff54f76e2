"""The state folder in a shared place (/dev/shm, /tmp): a name another account took first
leads to a private folder of the user's own, found again by every later command."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.client.paths import find_state_dir, shared_state_problem, state_dir
from runtime.settings import RuntimeSettings

NO_RUNTIME_DIR = RuntimeSettings()


def squat_with_symlink(usual: Path, elsewhere: Path) -> str:
    usual.symlink_to(elsewhere)
    return "is a symlink"


def squat_with_open_folder(usual: Path, elsewhere: Path) -> str:
    usual.mkdir()
    usual.chmod(0o777)
    return "is mode 0777, not 0700"


def squat_with_file(usual: Path, elsewhere: Path) -> str:
    usual.write_text("")
    return "is not a folder"


def squat_as_another_uid(usual: Path, elsewhere: Path) -> str:
    if os.getuid() != 0:
        pytest.skip("making a folder owned by another uid needs root")
    usual.mkdir(mode=0o700)
    os.chown(usual, 65534, 65534)
    return "belongs to uid 65534"


SQUATS = [squat_with_symlink, squat_with_open_folder, squat_with_file, squat_as_another_uid]


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A sticky, world-writable folder like /dev/shm."""
    base = tmp_path / "shm"
    base.mkdir()
    base.chmod(0o1777)
    return base


@pytest.mark.parametrize("squat", SQUATS)
def test_a_squatted_name_leads_to_a_private_folder_found_again_later(
    tmp_path: Path, shared: Path, squat: Callable[[Path, Path], str]
) -> None:
    usual = shared / f"squish-{os.getuid()}"
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    why = squat(usual, elsewhere)
    pointers = tmp_path / "home" / ".local" / "state" / "squish"
    found = find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers)
    assert found.path != usual and found.path.parent == shared
    assert found.path.name.startswith(f"squish-{os.getuid()}-")
    st = found.path.lstat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o700) and found.path.is_dir()
    assert found.squatted is not None and f"{usual} {why}" in found.squatted
    assert str(found.path) in found.squatted
    (found.path / "pause.json").write_text("{}")  # usable: not a dead end
    again = find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers)
    assert again == found  # the next command finds the same folder
    assert list(elsewhere.iterdir()) == []  # nothing went through the symlink


def test_a_free_name_is_used_and_recorded_nowhere(tmp_path: Path, shared: Path) -> None:
    pointers = tmp_path / "pointers"
    found = find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers)
    assert found.path == shared / f"squish-{os.getuid()}" and found.squatted is None
    assert found.path.lstat().st_mode & 0o777 == 0o700
    assert find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers) == found
    assert not pointers.exists()


def test_a_recorded_folder_that_vanished_is_made_again(tmp_path: Path, shared: Path) -> None:
    (shared / f"squish-{os.getuid()}").symlink_to(tmp_path)
    pointers = tmp_path / "pointers"
    first = find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers)
    first.path.rmdir()  # a reboot emptied /dev/shm
    second = find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers)
    assert second.path != first.path and second.path.is_dir()
    assert find_state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=pointers) == second


def test_the_runtime_folder_is_used_whatever_the_shared_name(tmp_path: Path, shared: Path) -> None:
    (shared / f"squish-{os.getuid()}").symlink_to(tmp_path)
    settings = RuntimeSettings(runtime_dir=tmp_path / "run")
    (tmp_path / "run").mkdir()
    found = find_state_dir(settings, shared=(shared,), pointers=tmp_path / "pointers")
    assert found == find_state_dir(settings) and found.path == tmp_path / "run" / "squish"


def test_the_command_warns_on_stderr_what_happened(
    tmp_path: Path, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (shared / f"squish-{os.getuid()}").symlink_to(tmp_path)
    with caplog.at_level(logging.WARNING, logger="runtime.client.paths"):
        path = state_dir(NO_RUNTIME_DIR, shared=(shared,), pointers=tmp_path / "pointers")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    message = caplog.records[0].getMessage()
    assert f"squish-{os.getuid()} is a symlink" in message and str(path) in message


def test_doctor_says_the_shared_name_is_taken_without_making_anything(
    tmp_path: Path, shared: Path
) -> None:
    assert shared_state_problem(NO_RUNTIME_DIR, shared=(shared,)) is None  # not there yet
    assert list(shared.iterdir()) == []
    (shared / f"squish-{os.getuid()}").symlink_to(tmp_path)
    problem = shared_state_problem(NO_RUNTIME_DIR, shared=(shared,))
    assert problem is not None
    assert f"squish-{os.getuid()} is a symlink, so it may be another account's" in problem
    assert f"squish-{os.getuid()}-XXXXXXXX" in problem
    assert shared_state_problem(RuntimeSettings(state_dir=tmp_path), shared=(shared,)) is None
