"""The host set-up (scripts/host-setup.sh) and the checks that tell a user about their
home: the account that runs squish keeps its squishfiles and their [env] values there,
so no other account may read it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.cli import main
from runtime.native import INSTALL_DIR, installed

SETUP = Path(__file__).resolve().parent.parent / "scripts" / "host-setup.sh"


def setup_functions(*names: str) -> str:
    """The shell functions ``names`` as host-setup.sh defines them."""
    text = SETUP.read_text()
    found = [
        re.search(rf"^{name}\(\) {{[^\n]*}}$", text, re.M)  # on one line
        or re.search(rf"^{name}\(\) {{.*?^}}$", text, re.M | re.S)
        for name in names
    ]
    assert all(found), f"host-setup.sh defines {names}"
    return "\n".join(f.group(0) for f in found if f is not None)


def run_setup_function(call: str) -> str:
    script = (
        f"set -euo pipefail\n{setup_functions('say', 'private_home', 'create_account')}\n{call}"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711, 0o700], ids=lambda m: f"{m:04o}")
def test_the_set_up_closes_a_home_others_can_enter(tmp_path: Path, mode: int) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(mode)
    said = run_setup_function(f"private_home '{home}'")
    assert home.stat().st_mode & 0o777 == 0o700
    assert (f"home {home} is mode {mode:o}:" in said) == (mode != 0o700)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root")
def test_the_set_up_creates_the_account_with_a_private_home(tmp_path: Path) -> None:
    """useradd works on a copy of the account files under tmp_path (--prefix), not the host's."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    for name in ("shadow", "gshadow"):
        (etc / name).touch(mode=0o600)
    shutil.copy("/etc/login.defs", etc / "login.defs")
    (tmp_path / "home").mkdir()
    run_setup_function(f"create_account --prefix '{tmp_path}' --uid 3999999 squishprobe")
    home = tmp_path / "home" / "squishprobe"
    assert home.stat().st_mode & 0o777 == 0o700


def test_doctor_warns_when_others_can_read_the_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    main(["doctor"])
    out = capsys.readouterr().out
    what = "a home only you can read (your squishfiles and their [env] values)"
    assert f"limited {what}: {home} is mode 0755: other accounts can read" in out
    assert f"  fix: chmod 0700 {home}\n" in out
    home.chmod(0o700)
    main(["doctor"])
    assert f"ok {what}\n" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (the set-up installs it)")
def test_the_set_up_builds_the_native_binary_the_holder_looks_for(tmp_path: Path) -> None:
    text = SETUP.read_text()
    step = text[text.index("# --- 6.") : text.index('say "done"')]
    installed_here = f"native_dir={INSTALL_DIR}"
    assert installed_here in step
    step = step.replace(installed_here, f"native_dir={tmp_path}")
    script = f"set -euo pipefail\n{setup_functions('say')}\n{step}"
    subprocess.run(["bash", "-c", script, str(SETUP)], check=True, capture_output=True)
    binary = installed(tmp_path, os.getuid())
    assert binary is not None
    assert binary.stat().st_mode & 0o777 == 0o711  # executable, not readable
