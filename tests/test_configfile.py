"""The reconciler's settings file: [git], [host] and [network], what the command line and
the environment override, and errors at file:line before anything is done."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from reconciler import cli, configfile
from reconciler.configfile import ConfigError, apply_file, config_path
from reconciler.settings import Settings
from runtime.settings import PORT_HANDLERS

GOOD = """\
[git]
url = "https://git.example.com/ops.git"
branch = "main"
path = "prod"
interval = "2m"

[host]
name = "web-1"
labels = { zone = "a" }
"""


def settings_for(*argv: str) -> Settings:
    return cli._settings(cli.build_parser().parse_args(list(argv)))


def test_the_file_gives_the_git_source_and_the_host(tmp_path: Path) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text(GOOD)
    settings = settings_for("--config", str(config), "status")
    assert settings.git is not None
    assert (settings.git.url, settings.git.ref, settings.git.path) == (
        "https://git.example.com/ops.git",
        "branch main",
        "prod",
    )
    assert settings.git.interval == 120.0
    assert (settings.host, dict(settings.labels)) == ("web-1", {"zone": "a"})


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text(GOOD)
    other = settings_for("--config", str(config), "status", "--git", "file:///srv/x.git")
    assert other.git is not None and (other.git.url, other.git.ref) == ("file:///srv/x.git", "HEAD")
    assert settings_for("--config", str(config), "status", str(tmp_path)).git is None
    assert settings_for("--config", str(config), "status", "--host", "db-2").host == "db-2"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[git]\nurll = "x"\n', ":2: git.urll"),
        ('[git]\nurl = "x"\ninterval = "soon"\n', ":3: git.interval"),
        ("[host]\nlabels = { zone = 1 }\n", ":2: host.labels.zone"),
        ("[git\nurl = 1\n", ":1: <syntax>"),
        ('[git]\nurl = "x"\nbranch = "a"\ntag = "b"\n', ":1: git: git ref"),
        ('[network]\nport_handler = "passt"\n', ":2: network.port_handler"),
    ],
)
def test_a_bad_file_is_an_error_at_its_line_and_nothing_is_done(
    tmp_path: Path, text: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=rf"{config}{where}".replace("[", r"\[")):
        settings_for("--config", str(config), "plan")
    assert cli.main(["--config", str(config), "plan", str(tmp_path)]) == 1
    assert str(config) in capsys.readouterr().err


def test_which_file_is_read(tmp_path: Path) -> None:
    default = tmp_path / "xdg" / "squish" / "reconciler.toml"
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert config_path(None, env) is None  # no file: no settings file
    default.parent.mkdir(parents=True)
    default.write_text(GOOD)
    assert config_path(None, env) == default
    named = tmp_path / "other.toml"
    named.write_text(GOOD)
    assert config_path(None, {**env, "SQUISH_CONFIG": str(named)}) == named
    assert config_path(str(named), env) == named
    with pytest.raises(ConfigError, match="no such settings file"):
        config_path(str(tmp_path / "missing.toml"), env)


def test_the_file_picks_the_port_handler_unless_the_environment_does(tmp_path: Path) -> None:
    config = tmp_path / "reconciler.toml"
    config.write_text('[network]\nport_handler = "slirp4netns"\n')
    assert apply_file(Settings(), config, {}).runtime.port_handler == "slirp4netns"
    chosen = {"SQUISH_PORT_HANDLER": "splice"}
    assert apply_file(Settings(), config, chosen).runtime.port_handler == "splice"


def test_the_file_knows_every_port_handler() -> None:
    field = configfile._Network.model_fields["port_handler"].annotation
    assert set(typing.get_args(typing.get_args(field)[0])) == set(PORT_HANDLERS)


def test_host_paths_are_allowed_from_the_command_line_or_the_file(tmp_path: Path) -> None:
    url = "https://git.example.com/ops.git"
    default = settings_for("status", "--git", url).git
    flagged = settings_for("status", "--git", url, "--allow-host-paths").git
    config = tmp_path / "reconciler.toml"
    config.write_text(f'[git]\nurl = "{url}"\nhost_paths = true\n')
    filed = settings_for("--config", str(config), "status").git
    assert default is not None and flagged is not None and filed is not None
    assert (default.host_paths, flagged.host_paths, filed.host_paths) == (False, True, True)
