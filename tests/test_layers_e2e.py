"""Hostile SDK layers against ``reconciler run`` with the real runtime: a layer whose
download stalls holds up no other container's change, SIGTERM stops it at once, a
refused layer shows in ``status`` and is not downloaded again, and nothing of either is
left in the cache. Uses the loop fixture of :mod:`tests.test_reconciler_e2e`."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests import test_hostile_archives as hostile
from tests import test_reconciler_e2e as e2e
from tests.conftest import rootless
from tests.support import free_ports, http_refused
from tests.test_hostile_archives import HANG_GUARD, Site, files_of, many_entries
from tests.test_reconciler_e2e import Loop, cli_env, eventually, put, serves, stopped, web_toml

pytestmark = rootless

MiB = 1024 * 1024

folder = e2e.folder  # the loop fixture and what it needs, as the e2e tests have them
loop = e2e.loop
loop_options = e2e.loop_options
site = hostile.site  # the stalling HTTP server of the runtime-level tests


@pytest.fixture
def env(state_path: Path, cache_path: Path) -> dict[str, str]:
    return {**cli_env(state_path, cache_path), "SQUISH_UNPACK_MAX_ENTRIES": "1000"}


def sdk_toml(site: tuple[Site, str], name: str, body: bytes) -> str:
    served, url = site
    sha256 = served.add(f"/{name}.tar.gz", body)
    return f"""\
network = "none"

[layers]
busybox = "builtin"
{name} = {{ url = "{url}/{name}.tar.gz", sha256 = "{sha256}" }}

[run]
command = "sleep"
args = ["1000"]
"""


def leftovers(env: dict[str, str]) -> list[str]:
    """Partial downloads and staging trees in the loop's cache."""
    cache = Path(env["XDG_CACHE_HOME"]) / "squish"
    found = []
    for sub in ("downloads", "layers"):
        if (cache / sub).is_dir():
            found += [n for n in os.listdir(cache / sub) if n.endswith((".part", ".extracting"))]
    return found


def test_a_stalled_layer_holds_up_no_port_change_and_sigterm_stops_it(
    loop: Loop, site: tuple[Site, str]
) -> None:
    served, _ = site
    old, new = free_ports(2)
    put(loop.folder, "web.toml", web_toml(old))
    eventually(lambda: serves(old, "<h1>site</h1>\n"), f"web answers on {old}")
    body = files_of(4 * MiB)
    served.stall_path, served.stall_after = "/py.tar.gz", len(body) // 2
    put(loop.folder, "stuck.toml", sdk_toml(site, "py", body))
    assert served.stalled.wait(HANG_GUARD)  # half the layer sent, the rest never comes

    put(loop.folder, "web.toml", web_toml(new))
    eventually(lambda: serves(new, "<h1>site</h1>\n"), f"web answers on the new port {new}")
    eventually(lambda: http_refused(old), f"the old port {old} is refused")
    row = loop.row("stuck")
    assert row is not None and row["phase"] == "Pending"
    assert leftovers(loop.env) != []  # the download in progress

    loop.process.send_signal(signal.SIGTERM)
    assert stopped(loop.process, loop.folder) == 0
    assert not served.resume.is_set()  # the server still stalls: the loop did not wait
    assert leftovers(loop.env) == []


def test_a_refused_layer_shows_in_status_and_is_not_downloaded_again(
    loop: Loop, site: tuple[Site, str]
) -> None:
    served, _ = site
    put(loop.folder, "many.toml", sdk_toml(site, "many", many_entries(3000)))

    def refused_again() -> dict[str, Any] | None:
        row = loop.row("many")
        return row if row and "refused before" in (row["last_error"] or "") else None

    row = eventually(refused_again, "a second attempt refused from the record")
    assert row["phase"] == "Failed"
    assert "more than 1000 entries" in row["last_error"]
    assert served.requests["/many.tar.gz"] == 1
    assert leftovers(loop.env) == []
    assert "many" not in [i.name for i in loop.ours()]
