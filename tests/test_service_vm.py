"""``reconciler service`` under a real ``systemd --user``: the unit starts the loop, a
stop ends the loop only (the holder and the container keep running, as after Ctrl-C), a
crash is restarted, and ``remove`` undoes ``install``.

Only the VM tier has a user instance of systemd to talk to (scripts/vm-guest.sh starts
one for the account, with the systemd cgroup driver); elsewhere this file skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.cgroups.fs import cgroup_of
from runtime.holder.protocol import HOLDER_RECORD
from tests.conftest import rootless

SQUISHFILE = """\
network = "none"
[layers]
busybox = "builtin"
[run]
command = "sleep"
args = ["1000"]
"""


def _user_systemd() -> bool:
    try:
        done = subprocess.run(
            ["systemctl", "--user", "is-system-running"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() in (b"running", b"degraded")


pytestmark = [
    rootless,
    pytest.mark.skipif(
        not (os.environ.get("SQUISH_VM_TIER") and _user_systemd()),
        reason="needs a systemd --user instance (make test-vm starts one in the VM)",
    ),
    pytest.mark.timeout(900),  # TCG: the first start builds the busybox rootfs
]


def systemctl(*words: str) -> str:
    done = subprocess.run(["systemctl", "--user", *words], capture_output=True, text=True)
    return done.stdout.strip()


def until(what: str, check: Callable[[], bool], limit: float = 400) -> None:
    """Poll ``check`` until it is true (a guard against a hang, not a speed bound)."""
    ends = time.monotonic() + limit
    while not check():
        if time.monotonic() > ends:
            pytest.fail(f"{what}: not within {limit} s")
        time.sleep(0.5)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    state = Path(f"/tmp/sq-svc-{os.getpid()}")
    state.mkdir(mode=0o700)
    made = {**os.environ, "SQUISH_STATE_DIR": str(state), "XDG_CACHE_HOME": str(tmp_path / "c")}
    yield made
    cli(made, "down", str(tmp_path / "f %h $x"))


def cli(env: dict[str, str], *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *words],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def running(env: dict[str, str]) -> dict[str, int]:
    """Running containers of the state folder: name -> init pid."""
    done = cli(env, "ps", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    return {i["name"]: i["pid"] for i in listed if i["state"] == "running"}


def loop_pid(env: dict[str, str], folder: Path) -> str:
    """The pid of the loop the folder's status names as running ("" when none)."""
    done = cli(env, "status", "--json", str(folder))
    loop = json.loads(done.stdout)["loop"] if done.returncode == 0 else {}
    return str(loop.get("pid")) if loop.get("running") else ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_unit_runs_the_loop_and_a_stop_leaves_the_containers(
    tmp_path: Path, env: dict[str, str]
) -> None:
    folder = tmp_path / "f %h $x"  # specifiers and variables must reach run unexpanded
    folder.mkdir()
    (folder / "web.toml").write_text(SQUISHFILE)
    installed = cli(env, "service", "install", str(folder))
    assert installed.returncode == 0, installed.stderr
    name = next(w for w in installed.stdout.split() if w.endswith(".service")).rsplit("/", 1)[-1]
    main = systemctl("show", "-p", "MainPID", "--value", name)
    argv = Path(f"/proc/{main}/cmdline").read_bytes().split(b"\0")
    assert argv[-3:] == [b"run", os.fsencode(folder), b""]  # one word, as written
    assert systemctl("is-enabled", name) == "enabled"
    until("the container runs", lambda: "web" in running(env))
    init = running(env)["web"]
    holder = json.loads((Path(env["SQUISH_STATE_DIR"]) / HOLDER_RECORD).read_text())["pid"]
    scope = cgroup_of(holder)
    assert scope is not None and scope.name.startswith("squish-holder-"), scope

    assert subprocess.run(["systemctl", "--user", "stop", name]).returncode == 0
    assert systemctl("is-active", name) == "inactive"
    assert alive(init) and alive(holder)
    assert running(env) == {"web": init}

    systemctl("start", name)
    until("started again", lambda: systemctl("is-active", name) == "active")
    main = systemctl("show", "-p", "MainPID", "--value", name)
    subprocess.run(["systemctl", "--user", "kill", "--kill-who=main", "-s", "KILL", name])
    until(
        "restarted", lambda: systemctl("show", "-p", "MainPID", "--value", name) not in (main, "0")
    )
    assert running(env) == {"web": init}  # the new loop adopts it: same process
    until(
        "the new loop runs",
        lambda: loop_pid(env, folder) == systemctl("show", "-p", "MainPID", "--value", name),
    )
    assert f"{name}: active, enabled;" in cli(env, "service", "status").stdout

    removed = cli(env, "service", "remove", str(folder))
    assert removed.returncode == 0, removed.stderr
    assert not (Path.home() / ".config/systemd/user" / name).exists()
    assert systemctl("is-active", name) != "active"
    assert running(env) == {"web": init}
