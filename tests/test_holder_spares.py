"""When the holder forks its next warm spare (``runtime.holder.server.refill_due``): a
table, no process forked; then spares that end at once, forked for real."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from runtime.holder import server
from runtime.holder.server import QUICK_DEATHS, REFILL_QUIET, SPARE_BACKOFF, refill_due
from runtime.sandbox.mounts import RootShape

LAST = RootShape("/rootfs", (("/data", True),))
OTHER = RootShape("/rootfs", ())


@pytest.mark.parametrize(
    ("idle", "launching", "since", "due"),
    [
        ([], True, 1.0, None),  # a launch under way: never compete with it
        ([LAST, LAST], False, 1.0, None),  # as many as asked for
        ([], False, 0.0, 0.0),  # none left: at once, right after the launch
        ([OTHER], False, 0.0, 0.0),  # none fits the last launch's root: at once
        ([None], False, 0.0, 0.0),  # (one forked before any launch fits none)
        ([LAST], False, 0.01, REFILL_QUIET - 0.01),  # one warm: the started one first
        ([LAST], False, REFILL_QUIET, 0.0),  # ...until the quiet has passed
        ([LAST], False, 5.0, 0.0),
    ],
)
def test_a_spare_is_forked_at_once_only_when_none_fits(
    idle: list[RootShape | None], launching: bool, since: float, due: float | None
) -> None:
    assert refill_due(idle, LAST, 2, launching, since) == pytest.approx(due)


def test_one_spare_is_forked_at_once_after_each_launch_as_before() -> None:
    assert refill_due([], LAST, 1, False, 0.0) == 0.0
    assert refill_due([LAST], LAST, 1, False, 0.0) is None


def test_before_any_launch_the_spares_are_forked_at_once() -> None:
    assert refill_due([None], None, 2, False, math.inf) == 0.0  # no launch ended yet


def test_after_spares_that_ended_at_once_the_next_one_waits() -> None:
    assert refill_due([], LAST, 2, False, 5.0, (QUICK_DEATHS - 1, 0.0)) == 0.0
    assert refill_due([], LAST, 2, False, 5.0, (QUICK_DEATHS, 0.25)) == SPARE_BACKOFF - 0.25
    assert refill_due([], LAST, 2, False, 5.0, (QUICK_DEATHS, SPARE_BACKOFF)) == 0.0
    assert refill_due([LAST, LAST], LAST, 2, False, 5.0, (QUICK_DEATHS, 0.0)) is None


@pytest.mark.parametrize("closed_first", [False, True])
def test_a_spare_that_cannot_start_is_not_forked_again_and_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closed_first: bool
) -> None:
    """Each ends as soon as it is forked (as one with no fork left would): after a few,
    the holder's loop gets a pause, in which it can see that its state folder is gone.
    The loop may see the spare's socket close (the spare let go) before it reaps it."""
    monkeypatch.setattr(server, "run_spare", lambda *_, **__: os._exit(1))
    spares, containers = server._Spares(count=1), server._Containers(tmp_path)
    forked = 0
    for _ in range(3 * QUICK_DEATHS):
        due = spares.refill()
        if not spares.idle:
            break
        spare = spares.idle[-1]
        os.waitpid(spare.pid, 0)
        if closed_first:
            ctrl = spare.ctrl.fileno()
            server._take_handed({ctrl}, set(), spares.cold, spares, containers)
            assert spare not in spares.idle
        spares.reaped(spare.pid)
        forked += 1
    assert forked == QUICK_DEATHS
    assert due is not None and 0.0 < due <= SPARE_BACKOFF
