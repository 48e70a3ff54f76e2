"""``runtime.util.processes.retitle``: what ``ps`` shows of a fork of the holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SHOW = (
    "from runtime.util.processes import retitle\n"
    "from runtime.sandbox import syscalls as sc\n"
    "import sys\n"
    "if sys.argv[1] == 'not-dumpable': sc.prctl(sc.PR_SET_DUMPABLE, 0)\n"
    "ok = retitle('squish-test')\n"
    "shown = open('/proc/self/cmdline', 'rb').read()\n"
    "print(ok, shown.rstrip(b'\\0').replace(b'\\0', b' ').decode())\n"
)


def _shown(*arguments: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", _SHOW, *arguments]
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


def test_a_process_shows_its_title_and_none_of_its_arguments() -> None:
    assert _shown("dumpable", "--state-dir", "/home/someone/state") == "True squish-test\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write its own root-owned /proc/self/mem")
def test_a_process_that_is_not_dumpable_cannot_change_what_it_shows() -> None:
    # Hence a fork of the holder takes its title before it makes itself not dumpable.
    shown = _shown("not-dumpable", "--state-dir", "/home/someone/state")
    assert shown.startswith("False ") and shown.rstrip().endswith("/home/someone/state")
