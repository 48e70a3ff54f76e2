"""``reconciler doctor``: every host prerequisite, each missing one with its fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.cli import main
from runtime.client.host import HostCheck, host_checks
from runtime.settings import RuntimeSettings
from tests.support import host_without_tun


def test_doctor_names_what_is_missing_and_its_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no slirp4netns, newuidmap or newgidmap
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "missing an unprivileged account (squish refuses uid 0): running as root\n" in out
    assert "  fix: run reconciler as a normal user\n" in out
    slirp = "missing slirp4netns and /dev/net/tun, used as you (the network of containers"
    assert f"{slirp} that have one): slirp4netns not found" in out
    assert "  fix: install the 'slirp4netns' package (apt-get install slirp4netns)\n" in out


def test_doctor_names_a_tun_device_slirp4netns_cannot_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tun = host_without_tun(tmp_path, monkeypatch)
    main(["doctor"])
    out = capsys.readouterr().out
    assert f"{tun} cannot be opened by uid {os.getuid()}" in out
    assert "  fix: as root: chmod 0666 /dev/net/tun (the mode distributions ship)\n" in out


@pytest.mark.parametrize(
    ("checks", "code"),
    [
        ([HostCheck("user namespaces"), HostCheck("cgroups", "none here", "see docs", False)], 0),
        ([HostCheck("user namespaces", "refused", "sysctl"), HostCheck("cgroups")], 1),
    ],
)
def test_doctor_fails_only_for_what_containers_cannot_do_without(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    checks: list[HostCheck],
    code: int,
) -> None:
    monkeypatch.setattr(cli, "host_checks", lambda settings: checks)
    assert main(["doctor"]) == code
    out = capsys.readouterr().out
    for check in checks:
        assert reported(check) in out


def reported(check: HostCheck) -> str:
    """What ``doctor`` prints for ``check``: ok, or what is missing or limited and its fix."""
    if check.problem is None:
        return f"ok {check.what}\n"
    mark = "missing" if check.required else "limited"
    return f"{mark} {check.what}: {check.problem}\n  fix: {check.fix}\n"


def test_doctor_reports_every_check_of_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    checks = host_checks(RuntimeSettings.from_environ())
    main(["doctor"])
    out = capsys.readouterr().out
    for check in checks:
        assert reported(check) in out
        assert (check.problem is None) == (f"ok {check.what}\n" in out)
