"""What the command line says about inputs it cannot use: a folder that is not there,
and entries named like squishfiles that the reconciler does not read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.control.status import status_document
from reconciler.desired.folder import load_desired
from reconciler.planning.plan import plan

ROOT = Path(__file__).resolve().parents[1]
GOOD = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "true"\n'


def cli(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *map(str, arguments)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize("command", ["status", "plan", "apply", "run"])
def test_a_folder_command_on_a_missing_folder_fails_naming_it(tmp_path: Path, command: str) -> None:
    result = cli(command, tmp_path / "desierd")
    assert result.returncode == 1
    assert f"{tmp_path / 'desierd'}: no such folder" in result.stderr


def test_a_folder_command_on_a_file_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(GOOD)
    result = cli("plan", tmp_path / "web.toml")
    assert result.returncode == 1
    assert f"{tmp_path / 'web.toml'}: not a folder" in result.stderr


def layout_with_near_misses(folder: Path) -> None:
    (folder / "web.toml").write_text(GOOD)
    (folder / "UPPER.TOML").write_text(GOOD)
    (folder / "dir.toml").mkdir()
    (folder / "gone.toml").symlink_to(folder / "nowhere.toml")
    (folder / ".hidden.toml").write_text(GOOD)  # hidden on purpose: not mentioned
    (folder / "web.toml.bak").write_text(GOOD)


SKIPPED = [
    ("UPPER.TOML", "only names ending in .toml are read, not .TOML"),
    ("dir.toml", "a directory, not a file"),
    ("gone.toml", "a symbolic link to nothing"),
]


def test_validate_names_the_entries_of_a_folder_it_skips(tmp_path: Path) -> None:
    layout_with_near_misses(tmp_path)
    result = cli("validate", tmp_path)
    assert result.returncode == 1  # a file meant to be applied is not
    assert f"ok {tmp_path / 'web.toml'}" in result.stdout
    for name, reason in SKIPPED:
        assert f"skipped {tmp_path / name}: {reason}" in result.stderr
    assert "hidden" not in result.stderr and ".bak" not in result.stderr


def test_status_lists_the_entries_it_skips_with_the_reason(tmp_path: Path) -> None:
    layout_with_near_misses(tmp_path)
    desired = load_desired(tmp_path)
    assert list(desired.containers) == ["web"]
    document = status_document(desired, [], plan(desired, [], now=0.0), {})
    assert [(s["file"], s["reason"]) for s in document["skipped"]] == SKIPPED[:1]
    # named as squishfiles, no file: each is its file's error (it keeps what it made)
    rows = {row["file"]: row for row in document["containers"]}
    for name, _ in SKIPPED[1:]:
        assert rows[name]["phase"] == "InvalidSpec"
        [condition] = rows[name]["conditions"]
        assert condition["message"].startswith(f"{tmp_path / name}: <file>: cannot read: ")
