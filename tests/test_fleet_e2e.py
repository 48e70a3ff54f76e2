"""Two hosts following one folder, with the real runtime: each runs only its share.

The two "hosts" are two ``reconciler apply`` runs on the same folder with different
``--host`` and separate state folders (so separate runtimes, as on two machines). A
file placed on one host runs there only; a file without ``[placement]`` runs on both;
moving a file's placement stops it on one and starts it on the other.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless, short_folder
from tests.support import processes_mentioning
from tests.test_reconciler_e2e import cli, cli_env, put

pytestmark = rootless


def job(placement: str = "") -> str:
    """A container that sleeps, on no network (two runtimes share no network here)."""
    return f"""\
network = "none"

[layers]
busybox = "builtin"

[run]
command = "sleep"
args = ["3600"]
{placement}"""


@pytest.fixture
def other_state() -> Iterator[Path]:
    """The second host's state folder."""
    with short_folder("sqf") as path:
        yield path


@pytest.fixture
def other_rt(other_state: Path, cache_path: Path) -> Iterator[LinuxRuntime]:
    """The second host's runtime: what it runs is removed, its holder stopped."""
    runtime = LinuxRuntime(state=other_state, cache=cache_path)
    yield runtime
    for info in runtime.list():
        runtime.remove(info.name, force=True)
    runtime.shutdown()
    leaked = processes_mentioning(str(other_state))
    assert not leaked, f"processes outlived the test: {leaked}"


def running(rt: LinuxRuntime, folder: Path) -> list[str]:
    return sorted(i.name for i in rt.list() if i.spec.labels.get("squish.folder") == str(folder))


def test_two_hosts_each_run_only_their_share(
    rt: LinuxRuntime,
    other_rt: LinuxRuntime,
    state_path: Path,
    other_state: Path,
    cache_path: Path,
    tmp_path: Path,
) -> None:
    folder = tmp_path.resolve() / "desired"
    folder.mkdir()
    tag = secrets.token_hex(3)
    alone_a, alone_b, both = f"fa-{tag}", f"fb-{tag}", f"fboth-{tag}"
    put(folder, f"{alone_a}.toml", job('[placement]\nhosts = ["host-a*"]\n'))
    put(folder, f"{alone_b}.toml", job('[placement]\nlabels = { zone = "b" }\n'))
    put(folder, f"{both}.toml", job())
    env_a = cli_env(state_path, cache_path)
    env_b = cli_env(other_state, cache_path)
    host_a = ("--host", "host-a1", "--label", "zone=a")
    host_b = ("--host", "host-b1", "--label", "zone=b")

    def apply(env: dict[str, str], host: tuple[str, ...]) -> None:
        done = cli(env, "apply", str(folder), *host)
        assert done.returncode == 0, done.stdout + done.stderr

    def status(env: dict[str, str], host: tuple[str, ...]) -> dict[str, Any]:
        done = cli(env, "status", str(folder), "--json", *host)
        assert done.returncode == 0, done.stderr
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    apply(env_a, host_a)
    apply(env_b, host_b)
    assert running(rt, folder) == [alone_a, both]
    assert running(other_rt, folder) == [alone_b, both]
    seen = status(env_a, host_a)
    assert seen["host"] == {"name": "host-a1", "labels": {"zone": "a"}}
    assert [(p["name"], p["reason"]) for p in seen["placed_elsewhere"]] == [
        (alone_b, 'host "host-a1" has label zone="a", wanted "b"')
    ]

    put(folder, f"{alone_a}.toml", job('[placement]\nhosts = ["host-b*"]\n'))
    apply(env_a, host_a)
    assert running(rt, folder) == [both]
    apply(env_b, host_b)
    assert running(other_rt, folder) == [alone_a, alone_b, both]
    assert [p["name"] for p in status(env_a, host_a)["placed_elsewhere"]] == [alone_a, alone_b]
    assert status(env_b, host_b)["placed_elsewhere"] == []
    saved = []
    for env, host in ((env_a, host_a), (env_b, host_b)):
        path = tmp_path / f"{host[1]}.json"
        path.write_text(json.dumps(status(env, host)))
        saved.append(path.as_uri())
    done = cli(env_a, "fleet", "status", "--json", *saved)
    assert done.returncode == 0, done.stdout + done.stderr  # both applied the same files
    fleet = json.loads(done.stdout)
    assert fleet["newest"].startswith("files:")
    assert {h["host"]: sorted(c["name"] for c in h["containers"]) for h in fleet["hosts"]} == {
        "host-a1": [both],
        "host-b1": [alone_a, alone_b, both],
    }
    for env in (env_a, env_b):
        assert cli(env, "down", str(folder)).returncode == 0
