"""The host's prerequisites (reconciler/prereqs.py): ``make check``'s list, also checked
at the first use of an installed ``reconciler``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reconciler import prereqs
from tests.conftest import rootless

ROOT = Path(__file__).resolve().parents[1]


def test_the_report_says_each_problem_its_fix_and_the_verdict() -> None:
    found = [
        prereqs.Problem("slirp4netns is missing (rootless networking)", "sudo apt-get install x"),
        prereqs.Problem("your home /h is mode 755: ...", "chmod 0700 /h", warning=True),
    ]
    assert prereqs.report(found, "make check", make=True) == [
        "make check: slirp4netns is missing (rootless networking)",
        "  fix: sudo apt-get install x",
        "make check: warning: your home /h is mode 755: ...",
        "  fix: chmod 0700 /h",
        "make check: the host is not ready for squish (running make as root sets it up)",
    ]


def test_a_warning_alone_is_no_verdict() -> None:
    found = [prereqs.Problem("home", "chmod 0700 /h", warning=True)]
    assert prereqs.report(found, "reconciler") == [
        "reconciler: warning: home",
        "  fix: chmod 0700 /h",
    ]


def test_a_range_is_found_by_name_or_by_uid(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("other:1:2\nme:100000:65536\n")
    (tmp_path / "subgid").write_text("1234:100000:65536\n")
    files = (str(tmp_path / "subuid"), str(tmp_path / "subgid"))
    assert list(prereqs._id_ranges("me", 1234, files)) == []
    missing = list(prereqs._id_ranges("someone", 99, (*files, str(tmp_path / "none"))))
    assert [p.message.split()[0] for p in missing] == [*files, str(tmp_path / "none")]


def test_a_tun_device_that_is_not_there_says_modprobe(tmp_path: Path) -> None:
    (tmp_path / "tun").write_text("")  # a file, not a character device
    found = list(prereqs._tun(str(tmp_path / "tun")))
    assert [p.fix for p in found] == ["sudo modprobe tun"]


def test_a_home_others_can_read_is_a_warning(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    found = list(prereqs._private_home(str(tmp_path)))
    assert [(p.warning, p.fix) for p in found] == [(True, f"chmod 0700 {tmp_path}")]
    tmp_path.chmod(0o700)
    assert list(prereqs._private_home(str(tmp_path))) == []


def test_make_check_runs_this_list() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\ncheck:", 1)[1].split("\n\n", 1)[0]
    assert "-m reconciler.prereqs --make" in recipe


@rootless
def test_the_first_use_checks_then_remembers(tmp_path: Path) -> None:
    environ = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    prereqs.check_once(environ)  # this host runs the rootless tests: nothing is missing
    stamp = tmp_path / "squish" / "prereqs-ok"
    assert stamp.exists()

    def first_use_without_helpers() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from reconciler import prereqs; prereqs.check_once()"],
            env={**environ, "PATH": str(tmp_path)},
            cwd=ROOT,
            capture_output=True,
            text=True,
        )

    done = first_use_without_helpers()  # no helper on PATH: the stamp says it was checked
    assert done.returncode == 0 and done.stderr == ""
    stamp.unlink()
    done = first_use_without_helpers()
    assert done.returncode != 0
    assert "reconciler: slirp4netns is missing (rootless networking)" in done.stderr
    assert not stamp.exists()
