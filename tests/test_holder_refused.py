"""The holder lives on when the kernel refuses it a process: every container's namespaces
live in it. Its account's processes are counted together (``RLIMIT_NPROC``), and a
container with no pids limit can use them up; here the limit is lowered on the holder
alone, so the test's own processes and the containers' are not refused."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from contextlib import contextmanager

from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerStartError
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.support import shell
from tests.test_reconciler_e2e import eventually

pytestmark = rootless


@contextmanager
def no_forks_for(holder: ProcessId) -> Iterator[None]:
    """The holder refused every fork (its account has more processes than one)."""
    before = resource.prlimit(holder.pid, resource.RLIMIT_NPROC)
    resource.prlimit(holder.pid, resource.RLIMIT_NPROC, (1, before[1]))
    try:
        yield
    finally:
        resource.prlimit(holder.pid, resource.RLIMIT_NPROC, before)


def _said(rt: LinuxRuntime, words: str, since: int) -> bool:
    """Whether the holder's log says ``words`` after its first ``since`` bytes."""
    with open(rt.state / "pause.log", "rb") as log:
        log.seek(since)
        return words.encode() in log.read()


def test_a_spare_the_kernel_refuses_leaves_the_holder_serving(rt: LinuxRuntime) -> None:
    rt.run(shell("first", "exec sleep 1000", stop_timeout=0))
    holder = rt.holder.identity()
    assert holder is not None
    before = (rt.state / "pause.log").stat().st_size  # what earlier tests' holders said
    with no_forks_for(holder):
        # a warm spare starts it and its refill is refused; or none is warm yet (the
        # holder forks spares in quiet spells), and this start is refused with why
        with contextlib.suppress(ContainerStartError):
            rt.run(shell("second", "true"))
        eventually(
            lambda: not holder.alive() or _said(rt, "cannot fork a spare launcher", before),
            "the refill tried",
        )
        assert holder.alive()
    assert rt.exec_command("first", ["true"]).exit_code == 0  # the same holder serves
    assert rt.run(shell("third", "exec sleep 1000", stop_timeout=0)).pid is not None
    after = rt.holder.identity()
    assert after is not None and (after.pid, after.start_time) == (holder.pid, holder.start_time)
