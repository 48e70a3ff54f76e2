"""When the holder forks its next warm spare (``runtime.holder.server.refill_due``): a
table, no process forked."""

from __future__ import annotations

import math

import pytest

from runtime.holder.server import REFILL_QUIET, refill_due
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
