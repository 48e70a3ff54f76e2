"""``reconciler validate``: files or folders, every problem with its file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.network.ports import unprivileged_port_start

ROOT = Path(__file__).resolve().parents[1]
GOOD = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "true"\n'


def validate(*arguments: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "validate", *map(str, arguments)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_folder_stands_for_its_squishfiles(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD + "[health]\ninterval = 1\n")
    (tmp_path / ".b.toml.swp").write_text("editor junk")
    (tmp_path / "notes.txt").write_text("not a squishfile")
    result = validate(tmp_path)
    assert result.returncode == 1
    assert f"ok {tmp_path / 'a.toml'}" in result.stdout
    assert f'{tmp_path / "b.toml"}:5: health: needs exactly one of "tcp"' in result.stderr
    assert "swp" not in result.stdout + result.stderr


def test_a_folder_stands_for_its_network_files_too(tmp_path: Path) -> None:
    (tmp_path / "db.toml").write_text('networks = ["back"]\n' + GOOD)
    (tmp_path / "back.network.toml").write_text('subnet = "10.89.40.0/24"\n')
    (tmp_path / "front.network.toml").write_text("internal = true\ncommand = 1\n")
    result = validate(tmp_path)
    assert result.returncode == 1
    assert f"ok {tmp_path / 'db.toml'}" in result.stdout
    assert f"ok {tmp_path / 'back.network.toml'}" in result.stdout
    where = tmp_path / "front.network.toml"
    assert f'{where}:2: command: unknown key "command"; expected one of: subnet' in result.stderr


def test_valid_files_pass_and_an_empty_folder_does_not(tmp_path: Path) -> None:
    (tmp_path / "one.toml").write_text(GOOD)
    assert validate(tmp_path / "one.toml").returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = validate(empty)
    assert result.returncode == 1
    assert "no squishfile" in result.stderr


def test_the_examples_in_desired_are_valid() -> None:
    result = validate(ROOT / "desired")
    assert result.returncode == 0, result.stderr


def test_a_profile_is_compiled_when_validating(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", '
        '"syscalls": [{"names": ["frobnicate"], "action": "SCMP_ACT_ERRNO"}]}'
    )
    (tmp_path / "web.toml").write_text(GOOD + '[security]\nseccomp = "./p.json"\n')
    result = validate(tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path / 'web.toml'}:6: security.seccomp:" in result.stderr
    assert "unknown syscall 'frobnicate'" in result.stderr


def test_a_privileged_host_port_is_a_warning_at_its_line(tmp_path: Path) -> None:
    start = unprivileged_port_start()
    if start <= 80:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start is {start}: port 80 is not privileged")
    ports = "[[ports]]\ncontainer = 80\nhost = 8080\n[[ports]]\ncontainer = 80\nhost = 80\n"
    (tmp_path / "web.toml").write_text(GOOD + ports)
    result = validate(tmp_path)
    assert result.returncode == 0, result.stderr  # valid: the host may allow it later
    assert f"ok {tmp_path / 'web.toml'}" in result.stdout
    assert result.stderr.splitlines() == [
        f"warning {tmp_path / 'web.toml'}:10: ports[1].host: host port 80 is privileged on this "
        f"host (net.ipv4.ip_unprivileged_port_start is {start}): a rootless container cannot "
        "bind it until the host allows it (as root: sysctl "
        "net.ipv4.ip_unprivileged_port_start=80) or another port is chosen"
    ]
