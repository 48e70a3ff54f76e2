"""The controller killed with SIGKILL at random moments, many times, while the folder
changes: afterwards one `apply` converges and exactly the desired containers run, each
answering on its port, with no process, state folder or forward left over.

The suite runs 12 rounds; ``SQUISH_KILL_ROUNDS=60`` runs the long version (see
docs/benchmarks.md) and ``SQUISH_KILL_SEED`` picks another sequence of edits and kill times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.linux import LinuxRuntime
from tests.conftest import rootless
from tests.support import children_of, free_ports, http_get, write_atomically
from tests.test_reconciler_e2e import ROOT, cli, cli_env, eventually, make_site, web_toml

pytestmark = rootless

ROUNDS = int(os.environ.get("SQUISH_KILL_ROUNDS", "12"))
SEED = int(os.environ.get("SQUISH_KILL_SEED", "20261128"))
NAMES = [f"k{i}" for i in range(6)]


def change_the_folder(
    folder: Path, rng: random.Random, ports: dict[str, int], pool: list[int]
) -> None:
    """One random edit: add, remove (at most two at once: the guard), or move a port."""
    present = sorted(p.stem for p in folder.glob("*.toml"))
    choice = rng.random()
    if choice < 0.35 and len(present) < len(NAMES):
        name = rng.choice([n for n in NAMES if n not in present])
        ports[name] = pool.pop()
        (folder / f"{name}.toml").write_text(web_toml(ports[name]))
    elif choice < 0.6 and present:
        (folder / f"{rng.choice(present)}.toml").unlink()
    elif present:
        name = rng.choice(present)
        ports[name] = pool.pop()
        write_atomically(folder / f"{name}.toml", web_toml(ports[name]))


def test_killing_the_controller_at_random_moments_loses_nothing(
    tmp_path: Path, state_path: Path, cache_path: Path, session_runtime: LinuxRuntime
) -> None:
    rng = random.Random(SEED)
    folder = tmp_path / "desired"
    folder.mkdir()
    make_site(folder, "site", "killed and back\n")
    env = cli_env(state_path, cache_path)
    ports: dict[str, int] = {}
    pool = free_ports(4 + ROUNDS)  # all distinct: no accidental conflict between files
    for name in NAMES[:4]:
        ports[name] = pool.pop()
        (folder / f"{name}.toml").write_text(web_toml(ports[name]))
    try:
        for _ in range(ROUNDS):
            change_the_folder(folder, rng, ports, pool)
            loop = subprocess.Popen(
                [sys.executable, "-m", "reconciler.cli", "run", str(folder)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.25, 0.8))  # start-up takes ~0.3 s: kill mid-pass
            loop.send_signal(signal.SIGKILL)  # a process this test started
            loop.wait(30)

        eventually(
            lambda: cli(env, "apply", str(folder)).returncode == 0,
            "one apply to converge after the kills",
        )
        wanted = {p.stem for p in folder.glob("*.toml")}
        mine = {
            i.name: i
            for i in session_runtime.list()
            if i.spec.labels.get("squish.folder") == str(folder)
        }
        assert set(mine) == wanted
        for name in wanted:
            assert mine[name].state.value == "running", mine[name]
            assert mine[name].slirp_pid is not None
            assert http_get(ports[name], "/index.html") == b"killed and back\n"
        containers = state_path / "containers"
        others = {i.name for i in session_runtime.list()} - set(mine)
        assert {p.name for p in containers.iterdir()} == wanted | others  # no leftover folder
        holder = session_runtime.holder.identity()
        assert holder is not None
        slirps = [c for c in children_of(holder.pid) if "slirp4netns" in c[1]]
        live = {i.slirp_pid for i in session_runtime.list() if i.slirp_pid is not None}
        assert {pid for pid, _ in slirps} == live  # one slirp4netns per running container
        assert cli(env, "plan", str(folder)).returncode == 0  # nothing left to do
    finally:
        down = cli(env, "down", str(folder))
        assert down.returncode == 0, down.stderr
