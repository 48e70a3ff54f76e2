"""The short load run: 10 containers, 100 edits as fast as files can be written; the long
one (100 containers, 1,000 edits) is ``bench/load.py``."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from runtime.client.linux import LinuxRuntime
from tests.conftest import rootless
from tests.loadgen import run_load

pytestmark = rootless


def test_a_burst_of_edits_ends_in_exactly_the_desired_state(tmp_path: Path) -> None:
    state = Path("/dev/shm") / f"sqt-load-{secrets.token_hex(3)}"
    try:
        result = run_load(tmp_path / "desired", state, containers=10, edits=100)
        assert result.problems == ()
        # Memory: the loop may not keep what each pass saw (a generous bound, not a timing).
        assert result.rss_after_kib < result.rss_before_kib + 20_000
    finally:
        LinuxRuntime(state=state).shutdown()
        shutil.rmtree(state, ignore_errors=True)
