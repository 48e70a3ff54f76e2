"""Settings: read from a given environment, overridden by options, refused when wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import _settings, build_parser, main
from reconciler.settings import Backoff, BadSetting, Settings
from runtime.client.paths import cache_dir, state_dir
from runtime.settings import DEFAULT_ALPINE_MIRROR, RuntimeSettings

EVERYTHING = {
    "SQUISH_STATE_DIR": "/run/sq",
    "XDG_RUNTIME_DIR": "/run/user/1000",
    "XDG_CACHE_HOME": "/home/u/.cache",
    "SQUISH_CGROUP_DRIVER": "cgroupfs",
    "SQUISH_CGROUP_ROOT": "/sys/fs/cgroup/user.slice/u.service",
    "SQUISH_ALPINE_MIRROR": "http://127.0.0.1:8000/alpine",
    "SQUISH_LAYER_INDEX": "https://layers.example.org/squish",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus",
    "SQUISH_SETTLE_MS": "50",
    "SQUISH_PORT_HANDLER": "slirp4netns",
    "SQUISH_SPARES": "1",
    "UNRELATED": "ignored",
}


def test_every_variable_lands_in_its_field() -> None:
    assert Settings.from_env(EVERYTHING).runtime == RuntimeSettings(
        state_dir=Path("/run/sq"),
        runtime_dir=Path("/run/user/1000"),
        cache_dir=Path("/home/u/.cache/squish"),
        cgroup_driver="cgroupfs",
        cgroup_root=Path("/sys/fs/cgroup/user.slice/u.service"),
        alpine_mirror="http://127.0.0.1:8000/alpine",
        layer_index="https://layers.example.org/squish",
        session_bus="unix:path=/run/user/1000/bus",
        port_handler="slirp4netns",
        spares=1,
    )


def test_the_settle_time_comes_from_its_variable() -> None:
    assert Settings.from_env(EVERYTHING).settle_ms == 50


@pytest.mark.parametrize("environ", [{}, dict.fromkeys(EVERYTHING, "")])
def test_an_empty_environment_means_the_defaults(environ: dict[str, str]) -> None:
    settings = Settings.from_env(environ)
    assert settings == Settings()
    assert settings.runtime.alpine_mirror == DEFAULT_ALPINE_MIRROR
    assert (settings.runtime.cgroup_driver, settings.runtime.layer_index) == ("auto", None)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SQUISH_CGROUP_DRIVER", "sideways", "use auto, cgroupfs or systemd"),
        ("SQUISH_ALPINE_MIRROR", "dl-cdn.alpinelinux.org", "expected an http:// or https:// URL"),
        ("SQUISH_LAYER_INDEX", "file:///srv/layers", "expected an http:// or https:// URL"),
        ("SQUISH_SETTLE_MS", "soon", "expected a whole number of milliseconds"),
        ("SQUISH_SETTLE_MS", "-1", "expected a number, 0 or more"),
        ("SQUISH_PORT_HANDLER", "passt", "use splice or slirp4netns"),
        ("SQUISH_SPARES", "two", "expected a whole number"),
        ("SQUISH_SPARES", "0", "use 1 to 8"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(BadSetting) as caught:
        Settings.from_env({**EVERYTHING, variable: value})
    assert caught.value.variable == variable
    assert str(caught.value) == f"{variable}={value!r}: {expected}"


@pytest.mark.parametrize(
    "change",
    [{"parallel": 0}, {"resync": -1.0}, {"step_ms": -5}, {"debounce_ms": float("nan")}],
)
def test_a_bad_tunable_names_its_field(change: dict[str, Any]) -> None:
    [(name, _)] = change.items()
    with pytest.raises(BadSetting, match=f"^{name}="):
        dataclasses.replace(Settings(), **change)


def test_a_bad_backoff_names_its_field() -> None:
    with pytest.raises(BadSetting, match=r"^crash_max="):
        Backoff(crash_max=-1.0)


def test_options_override_only_what_they_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUISH_LAYER_INDEX", "http://127.0.0.1:9/index")
    args = build_parser().parse_args(
        ["run", "somewhere", "--parallel", "3", "--resync", "2.5", "--crash-backoff-max", "7"]
    )
    settings = _settings(args)
    defaults = Settings()
    assert (settings.parallel, settings.resync) == (3, 2.5)
    assert settings.backoff == dataclasses.replace(defaults.backoff, crash_max=7.0)
    assert (settings.step_ms, settings.debounce_ms) == (defaults.step_ms, defaults.debounce_ms)
    assert settings.allow_mass_delete is False
    assert settings.runtime.layer_index == "http://127.0.0.1:9/index"


def test_the_cli_reports_a_bad_variable_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SQUISH_CGROUP_DRIVER", "sideways")
    assert main(["ps"]) == 1
    assert "SQUISH_CGROUP_DRIVER='sideways'" in capsys.readouterr().err


def test_the_state_and_cache_folders_come_from_the_settings(tmp_path: Path) -> None:
    explicit = RuntimeSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    assert state_dir(explicit) == tmp_path / "state"
    assert cache_dir(explicit) == tmp_path / "cache"
    from_runtime_dir = RuntimeSettings(runtime_dir=tmp_path)
    assert state_dir(from_runtime_dir) == tmp_path / "squish"
    assert (tmp_path / "squish").stat().st_mode & 0o777 == 0o700


def test_the_settle_option_overrides_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUISH_SETTLE_MS", "900")
    assert _settings(build_parser().parse_args(["run", "x"])).settle_ms == 900
    args = build_parser().parse_args(["run", "x", "--settle-ms", "40"])
    assert _settings(args).settle_ms == 40
