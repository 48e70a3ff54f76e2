"""``reconciler service``: the unit it writes, checked without a running systemd (names
against ``systemd-escape``, the file against ``systemd-analyze verify``, the command line
read back by the parser). The unit running under a real ``systemd --user`` is
tests/test_service_vm.py's."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import service
from reconciler.cli import build_parser

ESCAPED = ["/home/me/desired", "/srv//web/", "/a-b/c.d/ é", "/.dot/x", "/", "/x/%h $HOME\\q"]


def install_parser() -> argparse.ArgumentParser:
    """``service install``'s own parser (whose options the unit replays)."""
    parser = build_parser()
    for name in ("service", "install"):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def unit(folder: Path, *options: str, environ: dict[str, str] | None = None) -> service.Unit:
    args = build_parser().parse_args(["service", "install", str(folder), *options])
    return service.unit_for(install_parser(), args, environ or {})


needs_escape = pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="no systemd")


@needs_escape
@pytest.mark.parametrize("path", ESCAPED)
def test_a_folder_is_escaped_as_systemd_escape_path_does(path: str) -> None:
    done = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True)
    assert service.escape_path(path) == done.stdout.strip()


@needs_escape
@pytest.mark.parametrize("text", ["https://example.org/a-b.git", ".x", "a b\\c"])
def test_a_git_url_is_escaped_as_systemd_escape_does(text: str) -> None:
    done = subprocess.run(["systemd-escape", text], capture_output=True, text=True)
    assert service.escape_text(text) == done.stdout.strip()


def test_the_unit_is_named_after_the_absolute_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "desired").mkdir()
    made = unit(Path("desired"))
    assert made.name == f"reconciler-{service.escape_path(str(tmp_path / 'desired'))}.service"
    assert made.argv[-2:] == ("run", str(tmp_path / "desired"))


def test_two_folders_get_two_units(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a-b").mkdir()
    (tmp_path / "a" / "b").mkdir()
    names = {unit(tmp_path / p).name for p in ("a", "a-b", "a/b")}
    assert len(names) == 3


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(service.ServiceError, match="no such folder"):
        unit(tmp_path / "nope")


OPTIONS = [
    "--label",
    "zone=a",
    "--label",
    "disk=ssd",
    "--host",
    "h1",
    "--resync",
    "30",
    "--settle-ms",
    "250",
    "--parallel",
    "3",
    "--crash-backoff",
    "2",
    "--allow-mass-delete",
    "--listen",
    "127.0.0.1:9000",
    "--webhook-secret-file",
    "secret",
]


def test_the_options_of_run_reach_the_units_run_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["--config", "c.toml", "service", "install", ".", *OPTIONS])
    made = service.unit_for(install_parser(), args, {})
    again = build_parser().parse_args(list(made.argv[1:]))
    assert again.command == "run"
    assert again.config == str(tmp_path / "c.toml")
    assert again.webhook_secret_file == str(tmp_path / "secret")
    for name in ("label", "host", "resync", "settle_ms", "parallel", "crash_backoff", "listen"):
        assert getattr(again, name) == getattr(args, name), name
    assert again.allow_mass_delete is True
    assert again.step_ms is None and again.debounce_ms is None  # not given: the defaults hold


def test_a_git_source_gets_a_unit_of_its_own_without_a_folder(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["service", "install", "--git", "https://example.org/x.git", "--interval", "2m"]
    )
    made = service.unit_for(install_parser(), args, {})
    assert made.name == "reconciler-https:--example.org-x.git.service"
    again = build_parser().parse_args(list(made.argv[1:]))
    assert (again.git, again.dir, again.interval) == ("https://example.org/x.git", None, 120.0)


def test_the_unit_keeps_path_and_squish_variables_and_nothing_else(tmp_path: Path) -> None:
    environ = {
        "PATH": "/opt/bin:/usr/bin",
        "SQUISH_STATE_DIR": "/s",
        "XDG_CACHE_HOME": "/c",
        "GITHUB_TOKEN": "secret",
        "SQUISH_EMPTY": "",
    }
    text = unit(tmp_path, environ=environ).text()
    assert 'Environment="PATH=/opt/bin:/usr/bin"' in text
    assert 'Environment="SQUISH_STATE_DIR=/s"' in text
    assert 'Environment="XDG_CACHE_HOME=/c"' in text
    assert "GITHUB_TOKEN" not in text and "SQUISH_EMPTY" not in text


def test_a_stop_ends_the_loop_only(tmp_path: Path) -> None:
    text = unit(tmp_path).text()
    assert "KillMode=process" in text.splitlines()
    assert "Restart=on-failure" in text.splitlines()


def test_specifiers_and_variables_in_a_folder_name_are_not_expanded(tmp_path: Path) -> None:
    folder = tmp_path / 'a %h $HOME "q" \\b'
    folder.mkdir()
    line = next(x for x in unit(folder).text().splitlines() if x.startswith("ExecStart="))
    assert '"' + str(tmp_path) + '/a %%h $$HOME \\"q\\" \\\\b"' in line


def test_a_carriage_return_in_a_value_cannot_start_a_directive(tmp_path: Path) -> None:
    environ = {"PATH": "/usr/bin", "SQUISH_X": "v\rExecStartPre=/usr/bin/touch /tmp/x"}
    text = unit(tmp_path, environ=environ).text()
    assert "\r" not in text  # systemd ends a line at a carriage return too
    assert 'Environment="SQUISH_X=v\\x0dExecStartPre=/usr/bin/touch /tmp/x"' in text


def test_environment_values_keep_their_dollars(tmp_path: Path) -> None:
    text = unit(tmp_path, environ={"PATH": "/usr/bin", "SQUISH_X": "p$w"}).text()
    assert 'Environment="SQUISH_X=p$w"' in text  # Environment= expands no variable


def test_a_folder_name_with_a_control_character_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "a\rb"
    folder.mkdir()
    with pytest.raises(service.ServiceError, match="control character"):
        unit(folder)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    folder = tmp_path / "my folder %i"
    folder.mkdir()
    made = unit(folder, *OPTIONS, environ={"PATH": "/usr/bin:/bin", "SQUISH_X": 'a "b"'})
    path = tmp_path / made.name
    path.write_text(made.text())
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    mode = [] if os.geteuid() == 0 else ["--user"]
    done = subprocess.run(
        ["systemd-analyze", *mode, "verify", str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    path.write_text(made.text().replace('ExecStart="', 'ExecStart="x"'))  # the check can fail
    done = subprocess.run(
        ["systemd-analyze", *mode, "verify", str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode != 0


def test_a_unit_file_not_written_by_install_is_left_alone(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    made = unit(tmp_path)
    theirs = tmp_path / "config" / "systemd" / "user" / made.name
    theirs.parent.mkdir(parents=True)
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    args = build_parser().parse_args(["service", "install", str(tmp_path)])
    with pytest.raises(service.ServiceError, match="not written by service install"):
        service.cmd_install(install_parser(), args, environ)
    with pytest.raises(service.ServiceError, match="not written by service install"):
        service.cmd_remove(install_parser(), args, environ)
    assert theirs.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_the_unit_of_a_folder_that_is_gone_is_still_found_for_remove(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    made = unit(tmp_path / "a")
    (tmp_path / "a").rmdir()
    args = build_parser().parse_args(["service", "remove", str(tmp_path / "a")])
    assert service.unit_for(install_parser(), args, {}, existing=False).name == made.name
