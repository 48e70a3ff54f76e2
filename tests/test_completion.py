"""Shell completion: the scripts ``reconciler completion SHELL`` prints, and the real
completer answering through argcomplete's protocol (the environment a shell's script
sets, the answer written to file descriptor 8), as bash, zsh and fish ask it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import main
from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless
from tests.support import REPO, shell


def _complete(
    line: str, *, shell_name: str = "bash", env: dict[str, str] | None = None
) -> list[str]:
    """What ``reconciler``'s completer offers for the command line ``line`` (the cursor
    at its end)."""
    environment = {
        **os.environ,
        **(env or {}),
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_SHELL": shell_name,
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
    }
    # The answer goes to descriptor 8, as the shell scripts have it: here, our stdout.
    process = subprocess.run(
        ["bash", "-c", 'exec "$@" 8>&1 >/dev/null', "-", sys.executable, "-m", "reconciler.cli"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    offered = process.stdout
    return [word.split(":")[0].rstrip() for word in offered.split("\n") if word]


@pytest.mark.parametrize("shell_name", ["bash", "zsh", "fish"])
def test_commands(shell_name: str) -> None:
    offered = _complete("reconciler st", shell_name=shell_name)
    assert sorted(offered) == ["status", "stop"]


def test_options() -> None:
    offered = _complete("reconciler status --")
    assert {"--json", "--output", "--git", "--host"} <= set(offered)
    assert "--follow" not in offered  # logs' option, not status'


def test_choices() -> None:
    offered = _complete("reconciler completion ")
    assert sorted(w for w in offered if not w.startswith("-")) == ["bash", "fish", "zsh"]


def test_folders(tmp_path: Path) -> None:
    (tmp_path / "desired").mkdir()
    (tmp_path / "web.toml").write_text("")
    offered = _complete(f"reconciler apply {tmp_path}/")
    assert offered == [f"{tmp_path}/desired/"]


def test_squishfiles_and_folders(tmp_path: Path) -> None:
    (tmp_path / "desired").mkdir()
    (tmp_path / "web.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    offered = _complete(f"reconciler validate {tmp_path}/")
    assert sorted(offered) == [f"{tmp_path}/desired/", f"{tmp_path}/web.toml"]


@rootless
def test_container_names(rt: LinuxRuntime, state_path: Path) -> None:
    rt.run(shell("web-complete", "sleep 60"))
    rt.run(shell("db-complete", "sleep 60"))
    env = {"SQUISH_STATE_DIR": str(state_path)}
    assert _complete("reconciler logs we", env=env) == ["web-complete"]
    offered = _complete("reconciler stop ", env=env)
    assert sorted(w for w in offered if not w.startswith("-")) == ["db-complete", "web-complete"]


@pytest.mark.parametrize("shell_name", ["bash", "zsh", "fish"])
def test_the_scripts(shell_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell_name]) == 0
    script = capsys.readouterr().out
    assert "reconciler" in script and "_ARGCOMPLETE" in script


def test_bash_loads_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["completion", "bash"])
    (tmp_path / "completion.bash").write_text(capsys.readouterr().out)
    checked = subprocess.run(
        ["bash", "-c", f"source {tmp_path}/completion.bash && complete -p reconciler"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "reconciler" in checked.stdout
