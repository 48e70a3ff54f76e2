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
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.api.interface import ContainerInfo
from runtime.client.linux import LinuxRuntime
from runtime.network import shared
from runtime.util.files import read_json
from tests.conftest import rootless
from tests.support import descendants_of, free_ports, http_get, start_controller, write_atomically
from tests.test_reconciler_e2e import cli, cli_env, eventually, make_site, web_toml

ROUNDS = int(os.environ.get("SQUISH_KILL_ROUNDS", "12"))
pytestmark = [
    rootless,
    # ROUNDS controllers started and killed, then applies and checks: a few seconds a
    # round where other test runs share the cores, past pytest's 120 s for one scenario
    pytest.mark.timeout(120 + 30 * ROUNDS),
]
SEED = int(os.environ.get("SQUISH_KILL_SEED", "20261128"))
NAMES = [f"k{i}" for i in range(6)]


STARTS_FIRST = {"k0", "k1", "k2"}
"""Replaced start-first, so that kills land in the middle of such replacements too."""


def squishfile(
    port: int, version: int, *, start_first: bool, delay: float = 0.0, drain: float = 0.1
) -> str:
    """httpd serving ./site with $VERSION; replaced start-first (probed on port 80, old one
    drained ``drain`` s) when asked; it listens ``delay`` s after it starts."""
    text = web_toml(port, delay=delay) + f'\n[env]\nVERSION = "{version}"\n'
    if start_first:
        text += (
            f'\n[update]\nstrategy = "start-first"\ndrain = {drain}\n'
            "\n[health]\ntcp = 80\ninterval = 0.02\n"
        )
    return text


def change_the_folder(
    folder: Path, rng: random.Random, ports: dict[str, int], pool: list[int], versions: Counter[str]
) -> None:
    """One random edit: add, remove (at most two at once: the guard), move a port, or
    change the environment (a recreate: start-first for some)."""
    present = sorted(p.stem for p in folder.glob("*.toml"))
    choice = rng.random()
    if choice < 0.3 and len(present) < len(NAMES):
        name = rng.choice([n for n in NAMES if n not in present])
        ports[name] = pool.pop()
    elif choice < 0.5 and present:
        (folder / f"{rng.choice(present)}.toml").unlink()
        return
    elif choice < 0.75 and present:
        name = rng.choice(present)
        ports[name] = pool.pop()
    elif present:
        name = rng.choice(present)
        versions[name] += 1
    else:
        return
    write_atomically(
        folder / f"{name}.toml",
        squishfile(ports[name], versions[name], start_first=name in STARTS_FIRST),
    )


def test_killing_the_controller_at_random_moments_loses_nothing(
    tmp_path: Path, state_path: Path, cache_path: Path, session_runtime: LinuxRuntime
) -> None:
    rng = random.Random(SEED)
    folder = tmp_path / "desired"
    folder.mkdir()
    make_site(folder, "site", "killed and back\n")
    env = cli_env(state_path, cache_path)
    ports: dict[str, int] = {}
    versions: Counter[str] = Counter()
    pool = free_ports(4 + ROUNDS)  # all distinct: no accidental conflict between files
    for name in NAMES[:4]:
        ports[name] = pool.pop()
        (folder / f"{name}.toml").write_text(
            squishfile(ports[name], 0, start_first=name in STARTS_FIRST)
        )
    caught: set[str] = set()  # replacements a kill interrupted (reported, not required)
    try:
        for _ in range(ROUNDS):
            change_the_folder(folder, rng, ports, pool, versions)
            loop = start_controller(folder, env)
            time.sleep(rng.uniform(0.25, 0.8))  # start-up takes ~0.3 s: kill mid-pass
            loop.send_signal(signal.SIGKILL)  # a process this test started
            loop.wait(30)
            caught |= {i.name for i in session_runtime.list() if i.name.endswith((".next", ".old"))}

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
            assert mine[name].spec.env == {"VERSION": str(versions[name])}
            assert http_get(ports[name], "/index.html") == b"killed and back\n"
        containers = state_path / "containers"
        others = {i.name for i in session_runtime.list()} - set(mine)
        assert {p.name for p in containers.iterdir()} == wanted | others  # no leftover folder
        holder = session_runtime.holder.identity()
        assert holder is not None
        # one slirp4netns per isolated container (the holder's), one for the bridge
        # networks (their keeper's)
        keeper = read_json(state_path / shared.BRIDGE_DIR / "keeper.json")
        owners = [holder.pid] + ([keeper["supervisor"]["pid"]] if keeper else [])
        slirps = [c for o in owners for c in descendants_of(o) if "slirp4netns" in c[1]]
        live = {i.slirp_pid for i in session_runtime.list() if i.slirp_pid is not None}
        assert {pid for pid, _ in slirps} == live
        assert cli(env, "plan", str(folder)).returncode == 0  # nothing left to do
        print(f"replacements interrupted by a kill: {sorted(caught) or 'none'}")
    finally:
        down = cli(env, "down", str(folder))
        assert down.returncode == 0, down.stderr


def _until(
    runtime: LinuxRuntime, what: str, seen: Callable[[dict[str, ContainerInfo]], bool]
) -> None:
    for _ in range(20_000):  # polls, no clock: each list() of a few containers takes ~1 ms
        if seen({i.name: i for i in runtime.list()}):
            return
    raise AssertionError(f"never saw {what}")


@pytest.mark.parametrize(
    "moment",
    ["while the replacement gets ready", "after the forwards moved, while the old one drains"],
)
def test_a_kill_in_the_middle_of_a_start_first_replacement_is_repaired(
    tmp_path: Path,
    state_path: Path,
    cache_path: Path,
    session_runtime: LinuxRuntime,
    moment: str,
) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    make_site(folder, "site", "replaced\n")
    env = cli_env(state_path, cache_path)
    (port,) = free_ports(1)
    path = folder / "web.toml"
    path.write_text(squishfile(port, 1, start_first=True))
    assert cli(env, "apply", str(folder)).returncode == 0
    getting_ready = moment.startswith("while")
    if getting_ready:  # slow to listen: the kill lands while it is probed
        write_atomically(path, squishfile(port, 2, start_first=True, delay=3.0))
    else:  # a long drain: the kill lands after the forward moved, before the renames
        write_atomically(path, squishfile(port, 2, start_first=True, drain=30.0))
    loop = start_controller(folder, env)
    try:
        if getting_ready:
            _until(session_runtime, "web.next running", lambda c: "web.next" in c)
        else:
            _until(
                session_runtime,
                "web.next with the forward",
                lambda c: "web.next" in c and bool(c["web.next"].ports),
            )
    finally:
        loop.send_signal(signal.SIGKILL)  # a process this test started
        loop.wait(30)
    try:
        left = {i.name for i in session_runtime.list() if i.name.startswith("web")}
        assert "web.next" in left  # the kill did land in the middle
        path.write_text(
            squishfile(port, 2, start_first=True)
        )  # no need to wait for a slow start again
        assert cli(env, "apply", str(folder)).returncode == 0
        mine = {
            i.name: i
            for i in session_runtime.list()
            if i.spec.labels.get("squish.folder") == str(folder)
        }
        assert set(mine) == {"web"}
        assert mine["web"].spec.env == {"VERSION": "2"}
        assert http_get(port, "/index.html") == b"replaced\n"
        assert {p.name for p in (state_path / "containers").iterdir()} >= {"web"}
        assert not [p for p in (state_path / "containers").iterdir() if p.name.startswith("web.")]
    finally:
        down = cli(env, "down", str(folder))
        assert down.returncode == 0, down.stderr
