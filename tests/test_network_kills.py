"""The controller and the holder killed with SIGKILL at random moments while a folder's
containers change networks (attached and detached live, created onto networks, removed
from them) and move their forwards: afterwards one `apply` converges, and nothing is
leaked or handed out twice: every container holds exactly one address per network it
is on, no address is held by two, the shared namespace has exactly one veth pair per
membership, every container finds each peer of a network by name, and `down` leaves
neither the keeper nor its namespace behind.

``SQUISH_KILL_ROUNDS`` and ``SQUISH_KILL_SEED`` as in test_controller_kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from reconciler.squishfile.networks import network_prefix
from runtime.api.interface import ContainerInfo
from runtime.client.linux import LinuxRuntime
from runtime.network import shared
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.support import free_ports, http_get, processes_mentioning, start_controller
from tests.test_bridge_networks import fetch
from tests.test_reconciler_e2e import cli, cli_env, eventually, make_site, web_toml

ROUNDS = int(os.environ.get("SQUISH_KILL_ROUNDS", "10"))
pytestmark = [
    rootless,
    # ROUNDS controllers started and killed, then applies and checks: a few seconds a
    # round where other test runs share the cores, past pytest's 120 s for one scenario
    pytest.mark.timeout(120 + 30 * ROUNDS),
]
SEED = int(os.environ.get("SQUISH_KILL_SEED", "20261201"))
NAMES = [f"n{i}" for i in range(5)]
CHOICES: list[list[str] | None] = [
    None,
    ["front"],
    ["back"],
    ["front", "back"],
    ["back", "default"],
]
"""What a file says of its networks; None: no line (the folder's network)."""
BODY = "over any network\n"


def squishfile(port: int, networks: list[str] | None) -> str:
    line = "" if networks is None else f"networks = {json.dumps(networks)}\n"
    return line + web_toml(port)


def change(folder: Path, rng: random.Random, ports: dict[str, int], pool: list[int]) -> None:
    """One random edit: networks changed (live), a file added or removed, a port moved."""
    present = sorted(p.stem for p in folder.glob("*.toml"))
    choice = rng.random()
    if choice < 0.2 and len(present) < len(NAMES):
        name = rng.choice([n for n in NAMES if n not in present])
        ports[name] = pool.pop()
    elif choice < 0.35 and len(present) > 2:
        (folder / f"{rng.choice(present)}.toml").unlink()
        return
    elif choice < 0.5:
        name = rng.choice(present)
        ports[name] = pool.pop()
    else:
        name = rng.choice(present)
    networks = rng.choice(CHOICES)
    text = squishfile(ports[name], networks)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(folder / f"{name}.toml")


def _one_round(folder: Path, env: dict[str, str], rt: LinuxRuntime, rng: random.Random) -> None:
    loop = start_controller(folder, env)
    time.sleep(rng.uniform(0.2, 0.7))  # start-up takes ~0.3 s: mid-pass
    if rng.random() < 0.5:  # the holder too, while the controller works
        holder = rt.holder.identity()
        if holder is not None:  # a pass that only reads starts none
            holder.send(signal.SIGKILL)  # a process this test's runtime started
        time.sleep(rng.uniform(0.0, 0.4))
    loop.send_signal(signal.SIGKILL)  # a process this test started
    loop.wait(30)


def _agent(state: Path) -> ProcessId:
    keeper = json.loads((state / shared.BRIDGE_DIR / "keeper.json").read_text())
    agent = ProcessId.from_json(keeper["agent"])
    assert agent is not None and agent.alive()
    return agent


def _pairs(agent: ProcessId) -> int:
    """veth pairs in the shared namespace (its ends there are named ``sqv...``)."""
    lines = Path(f"/proc/{agent.pid}/net/dev").read_text().splitlines()
    return sum(1 for line in lines if line.strip().startswith("sqv"))


def _check_addresses(rt: LinuxRuntime, mine: dict[str, ContainerInfo]) -> None:
    networks = {n.name: n for n in rt.list_networks()}
    for record in networks.values():
        held = list(record.containers.values())
        assert len(held) == len(set(held)), record  # nothing handed out twice
        assert set(record.containers) <= {i.name for i in rt.list()}  # no orphan lease
    for name, info in mine.items():
        for network, address in info.addresses.items():
            assert networks[network].containers[name] == address
        wanted = info.spec.networks
        assert sorted(info.addresses) == sorted(a.network for a in wanted), info


def _check_names(rt: LinuxRuntime, mine: dict[str, ContainerInfo]) -> None:
    """Each container reaches each peer of a network they share, by its name."""
    for name, info in mine.items():
        for peer, other in mine.items():
            if peer > name and set(info.addresses) & set(other.addresses):
                got = fetch(rt, name, peer)
                assert got == BODY.strip(), (name, info.addresses, peer, other.addresses)


def test_killing_controller_and_holder_during_network_changes_leaks_nothing(
    tmp_path: Path, state_path: Path, cache_path: Path, session_runtime: LinuxRuntime
) -> None:
    rng = random.Random(SEED)
    folder = tmp_path / "desired"
    folder.mkdir()
    make_site(folder, "site", BODY)
    env = cli_env(state_path, cache_path)
    pool = free_ports(3 + ROUNDS)
    ports = {name: pool.pop() for name in NAMES[:3]}
    for name in NAMES[:3]:
        (folder / f"{name}.toml").write_text(squishfile(ports[name], rng.choice(CHOICES)))
    try:
        for _ in range(ROUNDS):
            change(folder, rng, ports, pool)
            _one_round(folder, env, session_runtime, rng)
        eventually(lambda: cli(env, "apply", str(folder)).returncode == 0, "apply to converge")
        assert cli(env, "plan", str(folder)).returncode == 0  # nothing left to do
        mine = {
            i.name: i
            for i in session_runtime.list()
            if i.spec.labels.get("squish.folder") == str(folder)
        }
        assert set(mine) == {p.stem for p in folder.glob("*.toml")}
        for name, info in mine.items():
            assert info.state.value == "running" and info.slirp_pid is not None, info
            assert http_get(ports[name], "/index.html") == BODY.encode()
        _check_addresses(session_runtime, mine)
        members = sum(len(info.addresses) for info in mine.values())
        agent = _agent(state_path)  # pairs of ended namespaces go in the kernel's time
        eventually(lambda: _pairs(agent) == members, f"{members} veth pairs, one per membership")
        _check_names(session_runtime, mine)
    finally:
        down = cli(env, "down", str(folder))
        assert down.returncode == 0, down.stderr
    networks = [n.name for n in session_runtime.list_networks()]
    assert not [n for n in networks if n.startswith(network_prefix(folder))]
    if not networks:  # no other test's either: the keeper and its namespace went
        assert not processes_mentioning(str(state_path / shared.BRIDGE_DIR))
