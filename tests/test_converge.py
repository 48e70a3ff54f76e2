"""Converging a plan: phases, bounded concurrency, failure isolation, back-off, forgetting.

Every case runs :class:`reconciler.control.converge.Converger` against
:class:`tests.fakes.FakeRuntime`, which records each call (with when it began and ended),
can fail or hold a call, and refuses a host port another running container forwards, like
the real runtime. Time is a :class:`tests.fakes.FakeClock`; concurrency is observed by
holding calls on events, never by sleeping, and nothing asserts how long anything took.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from reconciler.control.converge import Backoff, Converger, Outcome
from reconciler.desired.folder import load_desired
from reconciler.desired.types import DesiredContainer, HealthCheck
from reconciler.planning.plan import PHASE, Action, ActionKind, Plan, plan
from runtime.api.interface import ContainerInfo, ContainerState
from runtime.api.spec import ContainerSpec, PortMapping, Resources, RootfsRef
from runtime.errors import (
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRunning,
    ContainerStartError,
    ExecFailed,
    NetworkLost,
    PortInUse,
    PortPrivileged,
    SlirpError,
    StopFailed,
)
from tests.fakes import Call, FakeClock, FakeRuntime, Mark, Method

CREATE, DESTROY, RECREATE = ActionKind.CREATE, ActionKind.DESTROY, ActionKind.RECREATE
UNBIND, BIND, START = ActionKind.UNBIND, ActionKind.BIND, ActionKind.START
RELEASE = ActionKind.RELEASE

FOLDER = Path("/srv/squish")
BUSYBOX = RootfsRef(kind="busybox", version="builtin")

METHOD_PHASE: Mapping[str, int] = {
    "remove": 0,
    "remove_port": 0,
    "run": 1,
    "start": 1,
    "add_port": 1,
}
"""The phase a runtime call belongs to (``remove`` serves destroy and recreate's first half)."""


# -- builders ------------------------------------------------------------------------------


def port(host: int, container: int = 80) -> PortMapping:
    return PortMapping(container=container, host=host)


P8080, P8081, P9000 = port(8080), port(8081), port(9000)


def spec(
    name: str, *, ports: Sequence[PortMapping] = (), env: Mapping[str, str] | None = None
) -> ContainerSpec:
    return ContainerSpec(
        name=name, rootfs=BUSYBOX, argv=("httpd", "-f"), ports=tuple(ports), env=dict(env or {})
    )


def want(
    name: str, *, ports: Sequence[PortMapping] = (), env: Mapping[str, str] | None = None
) -> DesiredContainer:
    return DesiredContainer(FOLDER / f"{name}.toml", spec(name, ports=ports, env=env))


def act(
    kind: ActionKind,
    name: str,
    ports: Sequence[PortMapping] = (),
    *,
    wanted: DesiredContainer | None = None,
) -> Action:
    """An action as the planner makes it (``desired`` is set for all but a destroy)."""
    if wanted is None and kind is not DESTROY:
        wanted = want(name)
    return Action(kind, name, f"test {kind.value}", wanted, tuple(ports))


def exited(name: str, started: float, finished: float, code: int = 1) -> ContainerInfo:
    return ContainerInfo(
        name=name,
        state=ContainerState.EXITED,
        spec=spec(name),
        started_at=started,
        finished_at=finished,
        exit_code=code,
        log_path=f"/fake/{name}/output.log",
        created_at=0.5,
    )


def running(name: str, started: float) -> ContainerInfo:
    return ContainerInfo(
        name=name,
        state=ContainerState.RUNNING,
        spec=spec(name),
        pid=4242,
        slirp_pid=4243,
        started_at=started,
        log_path=f"/fake/{name}/output.log",
        created_at=0.5,
    )


def at(when: float) -> object:
    """Equal to a time computed as ``when`` (up to float rounding, far below 1 ms)."""
    return pytest.approx(when, rel=0, abs=1e-9)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def fake(clock: FakeClock) -> FakeRuntime:
    return FakeRuntime(clock)


@pytest.fixture
def converger(fake: FakeRuntime, clock: FakeClock) -> Converger:
    return Converger(fake, clock=clock, sleep=clock.sleep)


async def apply_into(out: list[Outcome], converger: Converger, todo: Plan) -> None:
    """``converger.apply(todo)`` for a task group, its outcomes appended to ``out``."""
    out.extend(await converger.apply(todo))


def by_name(outcomes: Sequence[Outcome], name: str) -> list[Outcome]:
    return [o for o in outcomes if o.action.name == name]


def show(journal: Sequence[Mark]) -> str:
    return "\n".join(f"{m.event:5} {m.call.method} {m.call.name}" for m in journal)


def assert_phases_ordered(journal: Sequence[Mark]) -> None:
    """Every freeing call ended before any taking call began."""

    def where(event: str, phase: int) -> list[int]:
        return [
            i
            for i, m in enumerate(journal)
            if m.event == event and METHOD_PHASE.get(m.call.method) == phase
        ]

    frees, takes = where("end", 0), where("begin", 1)
    assert frees, show(journal)
    assert takes, show(journal)
    assert max(frees) < min(takes), show(journal)


def reached(fake: FakeRuntime, method: Method, begun: int, held: int) -> Callable[[], bool]:
    """At least ``begun`` calls of ``method`` made and at least ``held`` calls in flight."""

    def check() -> bool:
        return len(fake.history(method)) >= begun and len(fake.in_flight) >= held

    return check


def has_ended(fake: FakeRuntime, call: Call) -> Callable[[], bool]:
    return lambda: all(c.index != call.index for c in fake.in_flight)


# -- phases ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_port_swap_frees_both_ports_before_taking_either(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("a", ports=[P8080]))
    fake.seed(spec("b", ports=[P8081]))
    a_after, b_after = want("a", ports=[P8081]), want("b", ports=[P8080])
    todo = Plan(  # the takes come first here: the order comes from the phases, not the tuple
        (
            act(BIND, "a", [P8081], wanted=a_after),
            act(BIND, "b", [P8080], wanted=b_after),
            act(UNBIND, "a", [P8080], wanted=a_after),
            act(UNBIND, "b", [P8081], wanted=b_after),
        )
    )
    unbinding = fake.hold("remove_port")
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as group:
        group.start_soon(apply_into, outcomes, converger, todo)
        with fake.releasing():
            await fake.until(reached(fake, "remove_port", 2, 2), "both unbinds in flight")
            assert sorted(fake.history()) == [("remove_port", "a"), ("remove_port", "b")]
        unbinding.set()

    assert_phases_ordered(fake.journal)
    assert sorted(fake.history("add_port")) == [("add_port", "a"), ("add_port", "b")]
    assert [o.error for o in outcomes] == [None] * 4
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((P8081,), (P8080,))


@pytest.mark.anyio
async def test_every_freeing_action_ends_before_any_taking_action_begins(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("x", ports=[P9000]))  # destroyed; y takes its port
    fake.seed(spec("a", ports=[P8080]))  # 8080 -> 81 instead of 80, live
    fake.seed(spec("r", env={"V": "1"}))  # recreated
    fake.seed(spec("s"), ContainerState.EXITED)  # started
    r_after = want("r", env={"V": "2"})
    a_after = want("a", ports=[port(8080, 81)])
    todo = Plan(
        (
            act(CREATE, "y", wanted=want("y", ports=[P9000])),
            act(START, "s"),
            act(BIND, "a", [port(8080, 81)], wanted=a_after),
            act(RECREATE, "r", wanted=r_after),
            act(DESTROY, "x"),
            act(UNBIND, "a", [P8080], wanted=a_after),
        )
    )
    removing_r = fake.hold("remove", "r")
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as group:
        group.start_soon(apply_into, outcomes, converger, todo)
        with fake.releasing():
            await fake.until(
                lambda: len(fake.ended()) == 2 and [c.name for c in fake.in_flight] == ["r"],
                "the other frees done while r's removal is held",
            )
            assert sorted(fake.history()) == [
                ("remove", "r"),
                ("remove", "x"),
                ("remove_port", "a"),
            ]
        removing_r.set()

    assert_phases_ordered(fake.journal)
    assert sorted(fake.history()) == [
        ("add_port", "a"),
        ("remove", "r"),
        ("remove", "x"),
        ("remove_port", "a"),
        ("run", "r"),
        ("run", "y"),
        ("start", "s"),
    ]
    assert all(o.ok for o in outcomes), outcomes
    assert sorted(o.action.kind.value for o in outcomes) == sorted(
        ["create", "start", "bind", "recreate", "destroy", "unbind"]  # a recreate: once
    )
    assert {i.name: i.state for i in fake.list()} == dict.fromkeys("arsy", ContainerState.RUNNING)
    assert fake.inspect("y").ports == (P9000,)
    assert fake.inspect("r").spec == r_after.spec


# -- recreate ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_recreate_removes_with_force_then_runs_the_new_spec(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("web", env={"V": "1"}))
    new = want("web", env={"V": "2"})

    outcomes = await converger.apply(Plan((act(RECREATE, "web", wanted=new),)))

    assert [(m.event, m.call.method) for m in fake.journal] == [
        ("begin", "remove"),
        ("end", "remove"),
        ("begin", "run"),
        ("end", "run"),
    ]
    remove, run = fake.calls
    assert (remove.name, remove.args, remove.kwargs) == ("web", (), {"force": True})
    assert run.args == (new.spec,)
    assert [(o.action.kind, o.ok) for o in outcomes] == [(RECREATE, True)]  # reported once
    assert fake.inspect("web").spec.env == {"V": "2"}
    assert fake.inspect("web").state is ContainerState.RUNNING
    assert converger.last_errors() == {}


@pytest.mark.anyio
async def test_recreate_whose_remove_fails_is_not_run(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("p", env={"V": "1"}))
    fake.seed(spec("q", env={"V": "1"}))
    fake.fail("remove", "p", ContainerRunning("p", "it was started again while being removed"))
    todo = Plan(
        (
            act(RECREATE, "p", wanted=want("p", env={"V": "2"})),
            act(RECREATE, "q", wanted=want("q", env={"V": "2"})),
        )
    )

    outcomes = await converger.apply(todo)

    assert sorted(fake.history()) == [("remove", "p"), ("remove", "q"), ("run", "q")]
    [failed] = by_name(outcomes, "p")
    assert failed.error == (
        "ContainerRunning: container 'p' is running; it was started again while being removed"
    )
    assert [o.ok for o in by_name(outcomes, "q")] == [True]
    assert converger.last_errors() == {
        "p": "recreate failed: container 'p' is running; it was started again while being removed"
    }
    assert fake.inspect("p").spec.env == {"V": "1"}  # the old one is still there
    assert fake.inspect("q").spec.env == {"V": "2"}


@pytest.mark.anyio
async def test_recreate_whose_run_fails_reports_it(fake: FakeRuntime, converger: Converger) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    fake.fail("run", "web", PortInUse("127.0.0.1", 8080, "tcp"))

    outcomes = await converger.apply(
        Plan((act(RECREATE, "web", wanted=want("web", ports=[P8080], env={"V": "2"})),))
    )

    text = "host port 127.0.0.1:8080/tcp is already in use; free it or choose another host port"
    assert [o.error for o in outcomes] == [f"PortInUse: {text}"]
    assert converger.last_errors() == {"web": f"recreate failed: {text}"}
    assert fake.history() == [("remove", "web"), ("run", "web")]
    assert fake.list() == []


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("limit", "count"), [(1, 4), (3, 7), (8, 5), (48, 44)])  # 44 > 40 threads
@pytest.mark.parametrize(("kind", "method"), [(CREATE, "run"), (DESTROY, "remove")])
async def test_independent_actions_run_up_to_the_limit_at_once_and_never_more(
    fake: FakeRuntime, clock: FakeClock, limit: int, count: int, kind: ActionKind, method: Method
) -> None:
    names = [f"c{i}" for i in range(count)]
    if kind is DESTROY:
        for name in names:
            fake.seed(spec(name))
    gates = {name: fake.hold(method, name) for name in names}
    converger = Converger(fake, limit=limit, clock=clock)
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as group:
        group.start_soon(apply_into, outcomes, converger, Plan(tuple(act(kind, n) for n in names)))
        with fake.releasing():
            for done in range(count):
                expect = min(limit, count - done)
                await fake.until(
                    reached(fake, method, done + expect, expect),
                    f"{expect} calls in flight after {done} released",
                )
                held = fake.in_flight  # the converger can start no more: all are held
                assert (len(fake.history(method)), len(held)) == (done + expect, expect), held
                gates[held[0].name].set()
                await fake.until(has_ended(fake, held[0]), f"{held[0].name} to end")

    assert fake.max_in_flight == min(limit, count)
    assert sorted(o.action.name for o in outcomes) == sorted(names)
    assert all(o.ok for o in outcomes), outcomes


# -- failure isolation -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_failing_action_does_not_stop_the_others(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.fail("run", "b", ContainerStartError("b", "exec: httpd: not found"))
    slow_a = fake.hold("run", "a")
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as group:
        group.start_soon(
            apply_into, outcomes, converger, Plan(tuple(act(CREATE, n) for n in "abc"))
        )
        with fake.releasing():
            await fake.until(
                lambda: len(fake.ended("run", "b")) == 1 and len(fake.ended("run", "c")) == 1,
                "b to fail and c to succeed while a is held",
            )
        slow_a.set()

    assert {o.action.name: o.error for o in outcomes} == {
        "a": None,
        "b": "ContainerStartError: container 'b' failed to start: exec: httpd: not found",
        "c": None,
    }
    assert [o.ok for o in sorted(outcomes, key=lambda o: o.action.name)] == [True, False, True]
    assert converger.last_errors() == {
        "b": "create failed: container 'b' failed to start: exec: httpd: not found"
    }
    assert [i.name for i in fake.list()] == ["a", "c"]


@pytest.mark.anyio
async def test_a_failed_free_skips_only_that_containers_take(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("a", ports=[P8080]))
    fake.seed(spec("b", ports=[P8081]))
    fake.seed(spec("x"))
    fake.fail("remove_port", "a", ContainerNotRunning("a"))
    fake.fail("remove", "x", StopFailed("x", "init 77 survived SIGKILL"))
    todo = Plan(
        (
            act(UNBIND, "a", [P8080]),
            act(BIND, "a", [port(8080, 81)]),
            act(UNBIND, "b", [P8081]),
            act(BIND, "b", [port(8081, 81)]),
            act(DESTROY, "x"),
            act(CREATE, "y"),
        )
    )

    outcomes = await converger.apply(todo)

    assert sorted(fake.history()) == [
        ("add_port", "b"),
        ("remove", "x"),
        ("remove_port", "a"),
        ("remove_port", "b"),
        ("run", "y"),
    ]
    assert sorted((o.action.kind.value, o.action.name, o.ok) for o in outcomes) == [
        ("bind", "b", True),
        ("create", "y", True),
        ("destroy", "x", False),
        ("unbind", "a", False),
        ("unbind", "b", True),
    ]
    assert converger.last_errors() == {
        "a": "unbind failed: container 'a' is not running",
        "x": "destroy failed: container 'x' cannot be stopped: init 77 survived SIGKILL",
    }
    assert fake.inspect("b").ports == (port(8081, 81),)


@pytest.mark.anyio
async def test_bind_and_release_handle_every_port_of_their_action(
    fake: FakeRuntime, converger: Converger
) -> None:
    old, new = (port(8080), port(8081, 81)), (port(9000), port(9001, 91))
    fake.seed(spec("web", ports=old))
    after = want("web", ports=new)

    outcomes = await converger.apply(
        Plan((act(RELEASE, "web", old, wanted=after), act(BIND, "web", new, wanted=after)))
    )

    assert all(o.ok for o in outcomes), outcomes
    assert [(c.method, c.args) for c in fake.calls] == [
        ("add_port", (new[0],)),
        ("add_port", (new[1],)),
        ("remove_port", (old[0],)),
        ("remove_port", (old[1],)),
    ]
    assert fake.inspect("web").ports == new


def test_outcome_is_ok_without_an_error() -> None:
    action = act(CREATE, "web")
    assert Outcome(action).ok
    assert not Outcome(action, "ContainerStartError: boom").ok


# -- failure back-off --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.005), (1, 0.005), (2, 0.01), (3, 0.02), (4, 0.04), (14, 30.0)]
)
def test_failure_delay_starts_at_5_ms_and_doubles_to_30_s(failures: int, delay: float) -> None:
    assert Backoff().failure_delay(failures) == at(delay)


@pytest.mark.parametrize(
    ("crashes", "delay"), [(0, 0.1), (1, 0.1), (2, 0.2), (3, 0.4), (10, 51.2), (11, 60.0)]
)
def test_crash_delay_starts_at_100_ms_and_doubles_to_60_s(crashes: int, delay: float) -> None:
    assert Backoff().crash_delay(crashes) == at(delay)


def all_holds(converger: Converger, actual: Sequence[ContainerInfo]) -> dict[str, float]:
    """The failure and crash holds, merged as the loop merges them (every policy restarts)."""
    return converger.not_before(converger.restart_holds(actual))


@pytest.mark.anyio
async def test_failure_backoff_doubles_per_failure_and_a_success_resets_it(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    fake.fail("run", "web", ContainerStartError("web", "no rootfs"), times=3)
    todo = Plan((act(CREATE, "web"),))
    tried_at: list[float] = []
    for delay in (0.005, 0.010, 0.020):
        tried_at.append(clock.advance(7.0))
        [outcome] = await converger.apply(todo)
        assert outcome.error == "ContainerStartError: container 'web' failed to start: no rootfs"
        holds = all_holds(converger, fake.list())
        assert holds.keys() == {"web"}
        assert holds["web"] == at(clock.now + delay)
        assert converger.last_errors() == {
            "web": "create failed: container 'web' failed to start: no rootfs"
        }

    tried_at.append(clock.advance(7.0))
    [outcome] = await converger.apply(todo)
    assert outcome.ok
    assert all_holds(converger, fake.list()) == {}
    assert converger.last_errors() == {}
    assert [c.at for c in fake.calls if c.method == "run"] == tried_at

    fake.fail("start", "web", ContainerStartError("web", "slirp4netns died"))
    clock.advance(7.0)
    [outcome] = await converger.apply(Plan((act(START, "web"),)))
    assert not outcome.ok
    assert all_holds(converger, fake.list())["web"] == at(clock.now + 0.005)


@pytest.mark.anyio
async def test_failure_backoff_is_capped(fake: FakeRuntime, clock: FakeClock) -> None:
    converger = Converger(fake, clock=clock, backoff=Backoff(failure_initial=1.0, failure_max=3.0))
    fake.fail("run", "web", ContainerStartError("web", "no"), times=None)
    for delay in (1.0, 2.0, 3.0, 3.0):
        clock.advance(10.0)
        await converger.apply(Plan((act(CREATE, "web"),)))
        assert all_holds(converger, [])["web"] == at(clock.now + delay)


@pytest.mark.anyio
async def test_failure_backoff_is_per_container(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    fake.fail("run", "a", ContainerStartError("a", "no"), times=None)
    fake.fail("run", "b", ContainerStartError("b", "no"), times=None)
    await converger.apply(Plan((act(CREATE, "a"), act(CREATE, "b"), act(CREATE, "c"))))
    await converger.apply(Plan((act(CREATE, "a"),)))

    holds = all_holds(converger, fake.list())
    assert holds.keys() == {"a", "b"}
    assert (holds["a"], holds["b"]) == (at(clock.now + 0.01), at(clock.now + 0.005))


@pytest.mark.anyio
async def test_a_successful_destroy_forgets_the_container(
    fake: FakeRuntime, converger: Converger
) -> None:
    converger.observe([exited("old", 900.0, 901.0)])
    converger.observe([exited("old", 910.0, 911.0)])
    assert converger.crash_looping("old")
    fake.seed(spec("old"))
    fake.fail("remove", "old", ContainerStartError("old", "busy"))
    await converger.apply(Plan((act(DESTROY, "old"),)))
    assert all_holds(converger, []).keys() == {"old"}
    assert converger.last_errors().keys() == {"old"}

    [outcome] = await converger.apply(Plan((act(DESTROY, "old"),)))

    assert outcome.ok
    assert all_holds(converger, []) == {}
    assert converger.last_errors() == {}
    assert not converger.crash_looping("old")
    assert fake.list() == []


# -- crash back-off ----------------------------------------------------------------------------


def crash(converger: Converger, clock: FakeClock, name: str, started: float, ran: float) -> float:
    """``name`` ran ``ran`` seconds from ``started`` and exited; observed just after.

    Returns the time its crash hold ends.
    """
    seen = [exited(name, started, started + ran)]
    clock.now = started + ran + 0.001
    converger.observe(seen)
    return all_holds(converger, seen)[name]


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        (Backoff(), (0.1, 0.2, 0.4, 0.8, 1.6)),
        (Backoff(crash_max=0.3), (0.1, 0.2, 0.3, 0.3)),
    ],
)
def test_crash_backoff_doubles_with_each_new_exit(
    fake: FakeRuntime, clock: FakeClock, backoff: Backoff, delays: tuple[float, ...]
) -> None:
    converger = Converger(fake, clock=clock, backoff=backoff)
    started = clock.now
    for crashes, delay in enumerate(delays, start=1):
        hold = crash(converger, clock, "web", started, ran=2.0)
        assert hold == at(started + 2.0 + delay), crashes
        assert converger.crash_looping("web") is (crashes >= 2), crashes
        started = hold + 0.5  # restarted once its hold ended


def test_the_same_exit_seen_again_counts_once(converger: Converger, clock: FakeClock) -> None:
    seen = [exited("web", 1000.0, 1001.0)]
    clock.now = 1001.5
    for _ in range(3):
        converger.observe(seen)
        clock.advance(1.0)
    assert all_holds(converger, seen) == {"web": at(1001.1)}
    assert not converger.crash_looping("web")


@pytest.mark.parametrize(("ran", "delay", "looping"), [(60.0, 0.1, False), (59.5, 0.8, True)])
def test_an_exit_after_running_for_crash_reset_starts_the_backoff_afresh(
    converger: Converger, clock: FakeClock, ran: float, delay: float, looping: bool
) -> None:
    started = clock.now
    for _ in range(3):
        started = crash(converger, clock, "web", started, ran=1.0) + 0.5
    assert converger.crash_looping("web")

    hold = crash(converger, clock, "web", started, ran=ran)

    assert hold == at(started + ran + delay)
    assert converger.crash_looping("web") is looping


@pytest.mark.parametrize(("running_for", "looping"), [(60.0, False), (59.5, True)])
def test_running_for_crash_reset_clears_the_crashes(
    converger: Converger, clock: FakeClock, running_for: float, looping: bool
) -> None:
    for started in (1000.0, 1010.0):
        crash(converger, clock, "web", started, ran=1.0)
    started = 2000.0  # round numbers: the boundary is compared exactly
    clock.now = started + running_for

    converger.observe([running("web", started)])

    assert converger.crash_looping("web") is looping
    assert all_holds(converger, [running("web", started)]) == {}


async def crash_loop(fake: FakeRuntime, converger: Converger, clock: FakeClock, times: int) -> None:
    """``web`` (running in ``fake``) exits ``times`` times, restarted once its hold ends."""
    for n in range(times):
        clock.advance(1.0)
        fake.finish("web")
        converger.observe(fake.list())
        if n < times - 1:
            clock.now = all_holds(converger, fake.list())["web"]
            [outcome] = await converger.apply(Plan((act(START, "web"),)))
            assert outcome.ok


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [CREATE, RECREATE])
async def test_a_successful_create_or_recreate_resets_the_crashes(
    fake: FakeRuntime, converger: Converger, clock: FakeClock, kind: ActionKind
) -> None:
    fake.seed(spec("web"))
    await crash_loop(fake, converger, clock, times=3)
    assert converger.crash_looping("web")
    if kind is CREATE:
        fake.remove("web")  # removed behind the reconciler's back

    await converger.apply(Plan((act(kind, "web", wanted=want("web", env={"V": "2"})),)))

    assert not converger.crash_looping("web")
    assert all_holds(converger, fake.list()) == {}
    clock.advance(1.0)
    fake.finish("web")
    converger.observe(fake.list())
    assert all_holds(converger, fake.list()) == {"web": at(clock.now + 0.1)}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [CREATE, RECREATE])
async def test_after_a_create_or_recreate_an_exit_with_the_old_time_counts(
    fake: FakeRuntime, converger: Converger, clock: FakeClock, kind: ActionKind
) -> None:
    seen = [exited("web", 990.0, 991.0)]
    converger.observe(seen)
    if kind is RECREATE:
        fake.seed(spec("web"), ContainerState.EXITED)

    [*_, outcome] = await converger.apply(Plan((act(kind, "web"),)))
    assert outcome.ok
    assert all_holds(converger, seen) == {}
    converger.observe(seen)  # its first exit happens to carry the same time

    assert all_holds(converger, seen) == {"web": at(991.1)}


@pytest.mark.anyio
async def test_a_start_keeps_the_crash_count_and_holds_only_while_exited(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    fake.seed(spec("web"))
    await crash_loop(fake, converger, clock, times=2)
    clock.now = all_holds(converger, fake.list())["web"]

    [outcome] = await converger.apply(Plan((act(START, "web"),)))

    assert outcome.ok
    assert converger.crash_looping("web")
    assert all_holds(converger, fake.list()) == {}  # running: nothing to hold
    clock.advance(1.0)
    fake.finish("web")
    converger.observe(fake.list())
    assert all_holds(converger, fake.list()) == {"web": at(clock.now + 0.4)}  # the third


@pytest.mark.anyio
async def test_a_failed_recreate_keeps_the_crash_count(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    fake.seed(spec("web"))
    await crash_loop(fake, converger, clock, times=2)
    fake.fail("run", "web", ContainerStartError("web", "no"))

    await converger.apply(Plan((act(RECREATE, "web", wanted=want("web", env={"V": "2"})),)))

    assert converger.crash_looping("web")


@pytest.mark.anyio
@pytest.mark.parametrize(("crash_initial", "wins"), [(0.1, "failure"), (10.0, "crash")])
async def test_not_before_is_the_later_of_the_failure_and_crash_holds(
    fake: FakeRuntime, clock: FakeClock, crash_initial: float, wins: str
) -> None:
    converger = Converger(fake, clock=clock, backoff=Backoff(crash_initial=crash_initial))
    fake.seed(spec("web"))
    await crash_loop(fake, converger, clock, times=1)
    finished = clock.now
    clock.advance(1.0)
    fake.fail("start", "web", ContainerStartError("web", "no"))
    await converger.apply(Plan((act(START, "web"),)))

    expected = clock.now + 0.005 if wins == "failure" else finished + crash_initial
    assert all_holds(converger, fake.list()) == {"web": at(expected)}


def test_an_exit_without_a_finish_time_counts_as_a_crash(
    converger: Converger, clock: FakeClock
) -> None:
    seen = [exited("web", 1000.0, 1001.0).model_copy(update={"finished_at": None})]
    clock.now = 1002.0
    converger.observe(seen)
    assert all_holds(converger, seen) == {"web": at(1002.0 + 0.1)}


@pytest.mark.anyio
async def test_an_exit_seen_again_counts_again_only_after_a_start(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    fake.seed(spec("web"), ContainerState.EXITED)
    seen = [exited("web", 990.0, 991.0)]
    for _ in range(2):
        clock.advance(1.0)
        converger.observe(seen)
    assert not converger.crash_looping("web")  # one exit, seen twice

    [outcome] = await converger.apply(Plan((act(START, "web"),)))
    assert outcome.ok
    clock.advance(1.0)
    converger.observe(seen)  # an exit reported with the same time (a coarse clock)

    assert converger.crash_looping("web")


# -- forgetting --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_forget_drops_the_state_of_names_not_given(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    for name in ("a", "b"):
        fake.fail("run", name, ContainerStartError(name, "no"), times=None)
    await converger.apply(Plan((act(CREATE, "a"), act(CREATE, "b"))))
    converger.observe([exited("c", 900.0, 901.0), exited("d", 900.0, 901.0)])
    seen = [exited("c", 950.0, 951.0), exited("d", 950.0, 951.0)]
    converger.observe(seen)  # two crashes each
    assert all_holds(converger, seen).keys() == {"a", "b", "c", "d"}

    converger.forget({"a", "c", "not-there"})

    assert converger.last_errors().keys() == {"a"}
    assert all_holds(converger, seen).keys() == {"a", "c"}
    assert converger.crash_looping("c")
    assert not converger.crash_looping("d")

    converger.forget(set())

    assert converger.last_errors() == {}
    assert all_holds(converger, seen) == {}
    assert not converger.crash_looping("c")
    converger.observe(seen)  # the same exit again is, after forgetting, a first crash
    assert all_holds(converger, seen) == {"c": at(951.1), "d": at(951.1)}


# -- the fake runtime itself (the phase tests lean on its port checks) -----------------------


def test_the_fake_refuses_a_host_port_another_running_container_forwards(
    fake: FakeRuntime,
) -> None:
    fake.seed(spec("a", ports=[P8080]))
    fake.seed(spec("b"))
    wildcard = PortMapping(container=80, host=8080, host_addr="0.0.0.0")
    for mapping in (P8080, wildcard):
        with pytest.raises(PortInUse):
            fake.add_port("b", mapping)
    fake.add_port("b", PortMapping(container=80, host=8080, protocol="udp"))
    with pytest.raises(PortInUse):
        fake.run(spec("c", ports=[P8080]))
    assert [i.name for i in fake.list()] == ["a", "b"]  # a failed run leaves nothing behind

    fake.stop("a")
    fake.add_port("b", P8080)
    assert fake.inspect("b").ports[-1] == P8080


def test_the_fake_fails_and_records_calls_as_told(fake: FakeRuntime, clock: FakeClock) -> None:
    fake.seed(spec("web"))
    fake.fail("remove", "web", StopFailed("web", "busy"), times=2)
    for _ in range(2):
        with pytest.raises(StopFailed):
            fake.remove("web", force=True)
    with pytest.raises(ContainerRunning):
        fake.remove("web")  # running, and no force
    clock.advance(1.0)
    fake.finish("web", 3)
    assert fake.wait("web") == 3
    fake.remove("web")
    with pytest.raises(ContainerNotFound):
        fake.inspect("web")

    assert fake.history() == [("remove", "web")] * 4
    assert [m.error is None for m in fake.ended("remove")] == [False, False, False, True]
    assert [c.at for c in fake.calls] == [1000.0] * 3 + [1001.0] * 3
    assert (fake.in_flight, fake.max_in_flight) == ([], 1)


@pytest.mark.anyio
async def test_the_fake_opens_its_holds_when_a_block_fails(fake: FakeRuntime) -> None:
    fake.hold("run", "web")
    with pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, fake.run, spec("web"))
            with fake.releasing():
                await fake.until(lambda: len(fake.in_flight) == 1, "run to be held")
                raise LookupError("the test failed here")
    assert caught.group_contains(LookupError)
    assert [i.name for i in fake.list()] == ["web"]  # released, so it ran


# -- with the planner ----------------------------------------------------------------------------


def squishfile(
    folder: Path, name: str, *, host: int | None = None, env: str = "1", container: int = 80
) -> None:
    ports = f"[[ports]]\ncontainer = {container}\nhost = {host}\n" if host else ""
    (folder / f"{name}.toml").write_text(
        '[layers]\nbusybox = "builtin"\n'
        f'[run]\ncommand = "httpd"\nargs = ["-f"]\n[env]\nV = "{env}"\n{ports}'
    )


def planning(
    folder: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> Callable[[], Plan]:
    """Plan ``folder`` against what the fake runs now, with the converger's holds."""

    def plan_now() -> Plan:
        actual = fake.list()
        converger.observe(actual)
        holds = all_holds(converger, actual)
        desired = load_desired(folder)
        networks = fake.list_networks()
        return plan(desired, actual, now=clock.now, not_before=holds, networks=networks)

    return plan_now


@pytest.mark.anyio
async def test_planned_swap_handover_and_recreate_converge_in_one_pass(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    plan_now = planning(tmp_path, fake, converger, clock)
    squishfile(tmp_path, "a", host=18080)
    squishfile(tmp_path, "b", host=18081)
    squishfile(tmp_path, "x", host=19000)
    squishfile(tmp_path, "r")
    assert all(o.ok for o in await converger.apply(plan_now()))
    assert plan_now().actions == ()

    squishfile(tmp_path, "a", host=18081)
    squishfile(tmp_path, "b", host=18080)
    (tmp_path / "x.toml").unlink()
    squishfile(tmp_path, "y", host=19000)
    squishfile(tmp_path, "r", env="2")
    todo = plan_now()
    assert sorted((PHASE[a.kind], a.kind.value, a.name) for a in todo.actions) == [
        (0, "destroy", "x"),
        (0, "recreate", "r"),
        (1, "create", "y"),
        (1, "move", "a"),
        (1, "move", "b"),
    ]
    first = len(fake.journal)

    outcomes = await converger.apply(todo)

    assert all(o.ok for o in outcomes), outcomes
    assert_phases_ordered(fake.journal[first:])
    assert plan_now().actions == ()
    live = {i.name: (i.ports, i.spec.env) for i in fake.list()}
    assert live == {
        "a": ((port(18081),), {"V": "1"}),
        "b": ((port(18080),), {"V": "1"}),
        "r": ((), {"V": "2"}),
        "y": ((port(19000),), {"V": "1"}),
    }


def start_first_squishfile(folder: Path, name: str, host: int, env: str) -> None:
    squishfile(folder, name, host=host, env=env)
    with (folder / f"{name}.toml").open("a") as file:
        file.write('[update]\nstrategy = "start-first"\n')


@pytest.mark.anyio
async def test_start_first_recreates_that_swap_host_ports_converge_in_two_passes(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    """Each replacement waited for a port the other's old container kept until its own
    hand-over: both failed with PortInUse, pass after pass, forever."""
    plan_now = planning(tmp_path, fake, converger, clock)
    start_first_squishfile(tmp_path, "a", 18080, "1")
    start_first_squishfile(tmp_path, "b", 18081, "1")
    assert all(o.ok for o in await converger.apply(plan_now()))
    start_first_squishfile(tmp_path, "a", 18081, "2")
    start_first_squishfile(tmp_path, "b", 18080, "2")

    first = plan_now()
    assert [(a.kind.value, a.name, a.moves) for a in first.actions] == [
        ("recreate", "a", (("b", port(18081)),))
    ]
    assert [(c.name, c.kind.value) for c in first.conditions] == [("b", "PortSwap")]
    assert all(o.ok for o in await converger.apply(first))
    second = plan_now()
    assert [(a.kind.value, a.name) for a in second.actions] == [("recreate", "b")]
    assert all(o.ok for o in await converger.apply(second))
    assert plan_now().actions == ()
    live = {i.name: (i.ports, i.spec.env) for i in fake.list()}
    assert live == {"a": ((port(18081),), {"V": "2"}), "b": ((port(18080),), {"V": "2"})}


# -- make before break: a take that fails costs no forward ------------------------------------

PUT_BACK = "put back: what was to take its host port did not get it"


async def applied(
    folder: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock, **hosts: int | None
) -> Callable[[], Plan]:
    """A squishfile per name (forwarding the host port given, if any), applied; the
    planner of the next passes."""
    for name, host in hosts.items():
        squishfile(folder, name, host=host)
    plan_now = planning(folder, fake, converger, clock)
    assert all(o.ok for o in await converger.apply(plan_now()))
    return plan_now


def texts(outcomes: Sequence[Outcome]) -> list[tuple[str, bool]]:
    return [(str(o.action), o.ok) for o in outcomes]


@pytest.mark.anyio
async def test_a_rebind_whose_new_port_fails_keeps_the_old_one(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    plan_now = await applied(tmp_path, fake, converger, clock, web=18080)
    squishfile(tmp_path, "web", host=80)
    refused = PortPrivileged("127.0.0.1", 80, "tcp", 1024)
    fake.fail("add_port", "web", refused)

    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [("bind web 127.0.0.1:80->80/tcp: ports changed", False)]
    assert fake.history("remove_port") == []  # its release is skipped
    assert fake.inspect("web").ports == (port(18080),)
    assert converger.last_errors() == {"web": f"bind failed: {refused}"}
    assert "sysctl net.ipv4.ip_unprivileged_port_start=80" in converger.last_errors()["web"]
    assert plan_now().actions == ()  # backing off: nothing is touched meanwhile

    clock.advance(1.0)  # the host allows it now (the fake fails only once)
    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [
        ("bind web 127.0.0.1:80->80/tcp: ports changed", True),
        ("release web 127.0.0.1:18080->80/tcp: ports changed", True),
    ]
    assert fake.inspect("web").ports == (port(80),)
    assert converger.last_errors() == {}


@pytest.mark.anyio
async def test_a_port_taken_by_a_new_container_that_fails_goes_back_and_stays(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    plan_now = await applied(tmp_path, fake, converger, clock, a=18080)
    squishfile(tmp_path, "a")
    squishfile(tmp_path, "b", host=18080, container=81)  # not as it is: unbind, then create
    fake.fail("run", "b", ContainerStartError("b", "exec: httpd: not found"))

    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [
        ("unbind a 127.0.0.1:18080->80/tcp: ports changed", True),
        ("create b: new in b.toml", False),
        (f"bind a 127.0.0.1:18080->80/tcp: {PUT_BACK}", True),
    ]
    assert fake.inspect("a").ports == (port(18080),)
    assert [i.name for i in fake.list()] == ["a"]
    assert converger.last_errors() == {
        "b": "create failed: container 'b' failed to start: exec: httpd: not found"
    }
    held = plan_now()  # b backs off: a keeps serving the port meanwhile
    assert held.actions == ()
    assert [(c.kind.value, c.name) for c in held.conditions] == [("BackOff", "b")]

    clock.advance(1.0)
    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [
        ("unbind a 127.0.0.1:18080->80/tcp: ports changed", True),
        ("create b: new in b.toml", True),
    ]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (port(18080, 81),))


@pytest.mark.anyio
async def test_a_new_container_takes_a_moved_port_only_once_it_runs(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    plan_now = await applied(tmp_path, fake, converger, clock, a=18080)
    squishfile(tmp_path, "a")
    squishfile(tmp_path, "b", host=18080)
    fake.fail("run", "b", ContainerStartError("b", "exec: httpd: not found"))
    create = "create b: new in b.toml; moving 127.0.0.1:18080->80/tcp from a"

    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [(create, False)]
    assert fake.history("remove_port", "move_port") == []  # a was never touched
    assert (fake.inspect("a").ports, [i.name for i in fake.list()]) == ((port(18080),), ["a"])
    assert plan_now().actions == ()  # b backs off: a keeps serving the port meanwhile

    clock.advance(1.0)
    taken = PortInUse("127.0.0.1", 18080, "tcp", "pid 77 (nc)")  # grabbed in the gap
    fake.fail("move_port", "a", taken)
    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [(create, False)]
    (run,) = [c.args[0] for c in fake.calls if c.method == "run" and c.name == "b"][1:]
    assert isinstance(run, ContainerSpec)
    assert run.ports == ()  # started without it; then the move failed
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((port(18080),), ())
    assert converger.last_errors() == {"b": f"create failed: {taken}"}

    clock.advance(1.0)
    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [("move b 127.0.0.1:18080->80/tcp: ports changed; from a", True)]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (port(18080),))


@pytest.mark.anyio
async def test_a_port_moved_between_running_containers_moves_back_to_back_or_stays(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    plan_now = await applied(tmp_path, fake, converger, clock, a=18080, b=None)
    squishfile(tmp_path, "a")
    squishfile(tmp_path, "b", host=18080)
    taken = PortInUse("127.0.0.1", 18080, "tcp", "pid 77 (nc)")  # grabbed in the gap
    fake.fail("move_port", "a", taken)

    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [("move b 127.0.0.1:18080->80/tcp: ports changed; from a", False)]
    assert fake.history("remove_port", "add_port") == []
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((port(18080),), ())
    assert converger.last_errors() == {"b": f"move failed: {taken}"}
    assert plan_now().actions == ()  # b backs off: a keeps the port meanwhile

    clock.advance(1.0)
    outcomes = await converger.apply(plan_now())

    assert texts(outcomes) == [("move b 127.0.0.1:18080->80/tcp: ports changed; from a", True)]
    assert [(c.method, c.name, c.args) for c in fake.calls if c.method == "move_port"] == [
        ("move_port", "a", ("b", port(18080))),
        ("move_port", "a", ("b", port(18080))),
    ]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (port(18080),))


@pytest.mark.anyio
async def test_a_port_freed_by_a_container_that_keeps_failing_still_reaches_its_taker(
    tmp_path: Path, fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    plan_now = await applied(tmp_path, fake, converger, clock, a=18080)
    squishfile(tmp_path, "a", host=80)
    fake.fail("add_port", "a", PortPrivileged("127.0.0.1", 80, "tcp", 1024), times=None)
    assert texts(await converger.apply(plan_now())) == [
        ("bind a 127.0.0.1:80->80/tcp: ports changed", False)
    ]
    squishfile(tmp_path, "b", host=18080)  # a backs off and still forwards 18080
    clock.advance(0.001)

    waiting = plan_now()  # b does not try (and fail, and back off out of step with a)

    assert waiting.actions == ()
    assert sorted((c.kind.value, c.name) for c in waiting.conditions) == [
        ("BackOff", "a"),
        ("BackOff", "b"),
    ]

    clock.advance(1.0)
    outcomes = await converger.apply(plan_now())

    assert sorted(texts(outcomes)) == [
        ("bind a 127.0.0.1:80->80/tcp: ports changed", False),
        ("create b: new in b.toml; moving 127.0.0.1:18080->80/tcp from a", True),
    ]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (port(18080),))


@pytest.mark.anyio
async def test_a_live_move_whose_bind_fails_puts_the_forward_back(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("a", ports=[P8080]))
    fake.seed(spec("b"))
    fake.fail("add_port", "b", SlirpError("slirp4netns API at b/slirp.sock unreachable"))
    todo = Plan(
        (
            act(UNBIND, "a", [P8080], wanted=want("a")),
            act(BIND, "b", [P8080], wanted=want("b", ports=[P8080])),
        )
    )

    outcomes = await converger.apply(todo)

    assert [(o.action.kind, o.action.name, o.ok) for o in outcomes] == [
        (UNBIND, "a", True),
        (BIND, "b", False),
        (BIND, "a", True),
    ]
    assert fake.history("remove_port", "add_port") == [
        ("remove_port", "a"),
        ("add_port", "b"),
        ("add_port", "a"),
    ]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((P8080,), ())


@pytest.mark.anyio
async def test_a_forward_that_cannot_be_put_back_is_reported_and_stops_the_release(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("a", ports=[P8080, P9000]))
    fake.fail("run", "b", ContainerStartError("b", "no rootfs"))
    taken = PortInUse("127.0.0.1", 8080, "tcp", "pid 77 (nc)")
    fake.fail("add_port", "a", taken)
    todo = Plan(
        (
            act(UNBIND, "a", [P8080], wanted=want("a")),
            act(RELEASE, "a", [P9000], wanted=want("a")),
            act(CREATE, "b", wanted=want("b", ports=[P8080])),
        )
    )

    outcomes = await converger.apply(todo)

    assert [(o.action.kind, o.action.name, o.ok) for o in outcomes] == [
        (UNBIND, "a", True),
        (CREATE, "b", False),
        (BIND, "a", False),
    ]
    assert fake.inspect("a").ports == (P9000,)  # what could stay, stays
    assert converger.last_errors()["a"] == f"putting back {P8080} failed: {taken}"


def a_port_for_b(fake: FakeRuntime, **changes: Any) -> tuple[DesiredContainer, Action]:
    """a forwards 8080, b runs without: b's start-first replacement (with ``changes``)
    that asks for it, and the unbind that frees it."""
    fake.seed(spec("a", ports=[P8080]))
    fake.seed(spec("b", env={"V": "1"}))
    new = dataclasses.replace(start_first("b", env={"V": "2"}, ports=[P8080]), **changes)
    return new, act(UNBIND, "a", [P8080], wanted=want("a"))


@pytest.mark.anyio
async def test_a_pass_cancelled_before_the_take_puts_the_freed_forward_back(
    fake: FakeRuntime, clock: FakeClock
) -> None:
    fake.never_ready.add("b.next")
    check = HealthCheck(tcp=80, interval=60.0, retries=1000)
    # b's replacement waits for its health check: Ctrl-C
    await cancel_at_first_sleep(fake, clock, *a_port_for_b(fake, health=check))

    assert fake.history("remove", "add_port") == [("remove", "b.next"), ("add_port", "a")]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((P8080,), ())


@pytest.mark.anyio
async def test_a_pass_cancelled_in_the_drain_leaves_the_port_with_the_replacement(
    fake: FakeRuntime, clock: FakeClock
) -> None:
    # the replacement serves the port: Ctrl-C during the drain
    _, _, converger = await cancel_at_first_sleep(fake, clock, *a_port_for_b(fake, drain=3600.0))

    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (P8080,))
    assert fake.inspect("b").spec.env == {"V": "2"}  # the hand-over was finished
    assert fake.history("add_port") == [("add_port", "b.next")]  # nothing put back on a
    assert "a" not in converger.last_errors()


@pytest.mark.anyio
async def test_a_replacement_takes_a_port_from_a_running_container_only_once_ready(
    tmp_path: Path, fake: FakeRuntime, clock: FakeClock
) -> None:
    served: list[tuple[PortMapping, ...]] = []

    async def sleep(seconds: float) -> None:  # while the replacement gets ready
        served.append(fake.inspect("a").ports)

    converger = Converger(fake, clock=clock, sleep=sleep)
    plan_now = await applied(tmp_path, fake, converger, clock, a=18080, b=None)
    squishfile(tmp_path, "a")
    squishfile(tmp_path, "b", host=18080, env="2")
    with (tmp_path / "b.toml").open("a") as file:
        file.write('[update]\nstrategy = "start-first"\n[health]\ntcp = 80\nretries = 3\n')
    fake.never_ready.add("b.next")

    outcomes = await converger.apply(plan_now())

    assert [o.ok for o in outcomes] == [False]  # the replacement never got ready
    assert len(served) == 3 and set(served) == {(port(18080),)}  # a served it all along
    assert fake.history("remove_port", "add_port") == []
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((port(18080),), ())

    fake.never_ready.clear()
    clock.advance(1.0)
    outcomes = await converger.apply(plan_now())

    assert [o.ok for o in outcomes] == [True]
    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (port(18080),))
    assert fake.inspect("b").spec.env == {"V": "2"}


@pytest.mark.anyio
async def test_a_pass_cancelled_while_a_take_runs_counts_that_take(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("a", ports=[P8080]))
    gate = fake.hold("run", "b")
    todo = Plan(
        (
            act(UNBIND, "a", [P8080], wanted=want("a")),
            act(CREATE, "b", wanted=want("b", ports=[P8080])),
        )
    )

    async with anyio.create_task_group() as group:
        group.start_soon(apply_into, [], converger, todo)
        with fake.releasing():
            await fake.until(reached(fake, "run", 1, 1), "b's run in flight")
        group.cancel_scope.cancel()  # the run in its thread still finishes
        gate.set()

    assert (fake.inspect("a").ports, fake.inspect("b").ports) == ((), (P8080,))
    assert fake.history("add_port") == []  # b has it: nothing to put back
    assert converger.last_errors() == {}


# -- surviving a controller restart ------------------------------------------------------------


def test_failures_and_crashes_survive_a_controller_restart(
    fake: FakeRuntime, converger: Converger, clock: FakeClock
) -> None:
    converger._failed("broken", "create failed: no such layer")
    for finished in (1001.0, 1003.0, 1007.0):
        converger.observe([exited("flappy", finished - 0.5, finished)])
    seen = [exited("flappy", 1006.5, 1007.0)]
    before = (
        all_holds(converger, seen),
        converger.last_errors(),
        converger.crash_looping("flappy"),
    )

    saved = json.loads(json.dumps(converger.export()))  # through the status file's JSON
    successor = Converger(fake, clock=clock)
    successor.restore(saved)
    successor.observe(seen)  # the same exit seen again by the new controller: not a new crash

    after = (all_holds(successor, seen), successor.last_errors(), successor.crash_looping("flappy"))
    assert after == before
    assert before[0]["flappy"] == 1007.0 + 0.4  # third crash: 100 ms doubled twice


def test_a_damaged_saved_state_is_ignored(fake: FakeRuntime, clock: FakeClock) -> None:
    converger = Converger(fake, clock=clock)
    converger.restore({"a": "nonsense", "b": {"failures": "many"}, "c": {"crashes": 2}})
    assert converger.crash_looping("c")
    assert converger.failure_holds() == {}


# -- start-first replacement ---------------------------------------------------------------------


def start_first(
    name: str, *, env: Mapping[str, str], ports: Sequence[PortMapping]
) -> DesiredContainer:
    base = want(name, ports=ports, env=env)
    return dataclasses.replace(
        base, update="start-first", health=HealthCheck(tcp=80, interval=0.001, retries=3)
    )


@pytest.mark.anyio
async def test_start_first_readies_the_replacement_before_touching_the_old_one(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("web", ports=[P8080, P8081], env={"V": "1"}))
    new = start_first("web", env={"V": "2"}, ports=[P8080, P8081])

    outcomes = await converger.apply(Plan((act(RECREATE, "web", wanted=new),)))

    assert [o.ok for o in outcomes] == [True]
    assert fake.history() == [
        ("run", "web.next"),
        ("move_port", "web"),
        ("move_port", "web"),
        ("rename", "web"),  # to web.old: the name is never missing
        ("rename", "web.next"),
        ("remove", "web.old"),
    ]
    assert fake.history("probe_tcp") == [("probe_tcp", "web.next")]  # ready at once
    [started] = [c for c in fake.calls if c.method == "run"]
    assert isinstance(started.args[0], ContainerSpec)
    assert started.args[0].ports == ()  # no forward until it is ready
    after = fake.inspect("web")
    assert (after.spec.env, after.ports) == ({"V": "2"}, (P8080, P8081))


@pytest.mark.anyio
async def test_a_replacement_takes_over_a_host_port_the_old_one_forwards_elsewhere(
    fake: FakeRuntime, converger: Converger
) -> None:
    """The same host port to another container port: the old forward goes just before
    the new one is added (one gap, as a move's), and comes back if that fails."""
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    new = start_first("web", env={"V": "2"}, ports=[port(8080, 81)])
    refused = SlirpError("slirp4netns API at web.next/slirp.sock unreachable")
    fake.fail("add_port", "web.next", refused)
    recreate = Plan((act(RECREATE, "web", wanted=new),))

    assert [o.ok for o in await converger.apply(recreate)] == [False]
    before = fake.inspect("web")
    assert (before.spec.env, before.ports) == ({"V": "1"}, (P8080,))  # put back

    assert [o.ok for o in await converger.apply(recreate)] == [True]
    after = fake.inspect("web")
    assert (after.spec.env, after.ports) == ({"V": "2"}, (port(8080, 81),))


@pytest.mark.anyio
async def test_a_replacement_that_never_gets_ready_leaves_the_old_one(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    fake.never_ready.add("web.next")
    new = start_first("web", env={"V": "2"}, ports=[P8080])

    [outcome] = await converger.apply(Plan((act(RECREATE, "web", wanted=new),)))

    assert outcome.error is not None and "never accepted TCP on port 80" in outcome.error
    assert fake.history() == [("run", "web.next"), ("remove", "web.next")]
    assert len(fake.history("probe_tcp")) == 3
    old = fake.inspect("web")
    assert (old.spec.env, old.ports, old.state) == ({"V": "1"}, (P8080,), ContainerState.RUNNING)


@pytest.mark.anyio
@pytest.mark.parametrize("ready", [True, False])
async def test_a_health_command_decides_when_the_replacement_is_ready(
    fake: FakeRuntime, converger: Converger, ready: bool
) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    if not ready:
        fake.never_ready.add("web.next")
    check = HealthCheck(command=("/bin/check", "--quick"), timeout=0.5, interval=0.001, retries=4)
    new = dataclasses.replace(start_first("web", env={"V": "2"}, ports=[P8080]), health=check)

    [outcome] = await converger.apply(Plan((act(RECREATE, "web", wanted=new),)))

    probes = [c for c in fake.calls if c.method == "exec_command"]
    assert {(c.name, c.args, c.kwargs["timeout"]) for c in probes} == {
        ("web.next", (("/bin/check", "--quick"),), 0.5)
    }
    assert fake.history("probe_tcp") == []
    if ready:
        assert outcome.ok and len(probes) == 1
        assert fake.inspect("web").spec.env == {"V": "2"}
    else:
        assert outcome.error is not None
        assert "the health command '/bin/check --quick' never exited 0" in outcome.error
        assert len(probes) == 4
        assert fake.inspect("web").spec.env == {"V": "1"}


@pytest.mark.anyio
@pytest.mark.parametrize("exits", [True, False])
async def test_a_health_command_that_cannot_run_says_why_unless_the_replacement_exited(
    fake: FakeRuntime, converger: Converger, exits: bool
) -> None:
    """A check that cannot run is reported as such, not as "never exited 0"; a
    replacement that exited meanwhile is reported as having exited."""
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    fake.fail("exec_command", "web.next", ExecFailed("web.next", "/bin/check", "no such file"))
    held = fake.hold("exec_command", "web.next")
    check = HealthCheck(command=("/bin/check",), timeout=0.5, interval=0.001, retries=1)
    new = dataclasses.replace(start_first("web", env={"V": "2"}, ports=[P8080]), health=check)
    outcomes: list[Outcome] = []
    async with anyio.create_task_group() as group:
        group.start_soon(apply_into, outcomes, converger, Plan((act(RECREATE, "web", wanted=new),)))
        with fake.releasing():
            await fake.until(lambda: bool(fake.in_flight), "the health command to be in flight")
            if exits:
                fake.finish("web.next")
            held.set()

    [outcome] = outcomes
    assert outcome.error is not None
    if exits:
        assert "the replacement exited before it was ready" in outcome.error
    else:
        assert outcome.error.startswith("ExecFailed: cannot run '/bin/check'")
    assert fake.inspect("web").spec.env == {"V": "1"}  # the old one keeps serving
    assert "web.next" not in {i.name for i in fake.list()}


@pytest.mark.anyio
async def test_a_foreign_container_with_the_replacement_name_is_never_removed(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    fake.seed(spec("web.next"))  # somebody else's, without this folder's labels
    new = start_first("web", env={"V": "2"}, ports=[P8080])
    labels = {"squish.folder": str(FOLDER), "squish.file": "web.toml"}
    new = dataclasses.replace(new, spec=new.spec.model_copy(update={"labels": labels}))

    [outcome] = await converger.apply(Plan((act(RECREATE, "web", wanted=new),)))

    assert outcome.error is not None and "this folder did not make" in outcome.error
    assert fake.history() == []
    assert {i.name for i in fake.list()} == {"web", "web.next"}


@pytest.mark.anyio
async def test_a_network_that_cannot_be_restored_is_recreated(
    fake: FakeRuntime, converger: Converger
) -> None:
    fake.seed(spec("web", ports=[P8080]))
    fake.fail("restore_network", "web", NetworkLost("web", "the holder was restarted"))

    [outcome] = await converger.apply(Plan((act(ActionKind.HEAL, "web"),)))

    assert outcome.ok
    assert fake.history() == [("restore_network", "web"), ("remove", "web"), ("run", "web")]


@pytest.mark.anyio
async def test_a_resize_changes_the_limits_of_the_same_container(
    fake: FakeRuntime, converger: Converger
) -> None:
    before = fake.seed(spec("web", ports=[P8080]))
    limits = Resources(memory=128 * 1024**2, cpus=0.5)
    wanted = DesiredContainer(
        FOLDER / "web.toml", spec("web", ports=[P8080]).model_copy(update={"resources": limits})
    )
    [outcome] = await converger.apply(Plan((act(ActionKind.RESIZE, "web", wanted=wanted),)))
    assert outcome.ok
    assert fake.history() == [("update_resources", "web")]  # no stop, no run
    after = fake.inspect("web")
    assert after.spec.resources == limits and after.pid == before.pid


async def stuck(began: anyio.Event, waited: list[float], seconds: float) -> None:
    """A sleep that never ends by itself: only cancelling the pass stops it."""
    waited.append(seconds)
    began.set()
    await anyio.sleep_forever()


async def cancel_at_first_sleep(
    fake: FakeRuntime, clock: FakeClock, new: DesiredContainer, *first: Action
) -> tuple[list[float], list[Outcome], Converger]:
    """Apply ``first`` and a recreate of ``new``, and cancel the pass once it waits: the
    sleeps it began, the outcomes it reported, and its converger."""
    began, waited, out = anyio.Event(), list[float](), list[Outcome]()
    converger = Converger(fake, clock=clock, sleep=functools.partial(stuck, began, waited))
    todo = Plan((*first, act(RECREATE, new.name, wanted=new)))
    async with anyio.create_task_group() as group:
        group.start_soon(apply_into, out, converger, todo)
        await began.wait()
        group.cancel_scope.cancel()
    return waited, out, converger


@pytest.mark.anyio
async def test_a_cancelled_pass_stops_the_drain_and_finishes_the_hand_over(
    fake: FakeRuntime, clock: FakeClock
) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    new = dataclasses.replace(start_first("web", env={"V": "2"}, ports=[P8080]), drain=3600.0)
    waited, out, _ = await cancel_at_first_sleep(fake, clock, new)

    assert waited == [3600.0] and out == []
    assert fake.history() == [
        ("run", "web.next"),
        ("move_port", "web"),
        ("rename", "web"),
        ("rename", "web.next"),
        ("remove", "web.old"),
    ]
    assert fake.inspect("web").spec.env == {"V": "2"}


@pytest.mark.anyio
async def test_a_cancelled_pass_stops_the_health_checks_and_keeps_the_old_container(
    fake: FakeRuntime, clock: FakeClock
) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    fake.never_ready.add("web.next")
    check = HealthCheck(tcp=80, interval=60.0, retries=1000)
    new = dataclasses.replace(start_first("web", env={"V": "2"}, ports=[P8080]), health=check)
    waited, out, _ = await cancel_at_first_sleep(fake, clock, new)

    assert waited == [60.0] and out == []
    assert fake.history("probe_tcp") == [("probe_tcp", "web.next")]
    assert fake.history() == [("run", "web.next"), ("remove", "web.next")]
    old = fake.inspect("web")
    assert (old.spec.env, old.ports, old.state) == ({"V": "1"}, (P8080,), ContainerState.RUNNING)


@pytest.mark.anyio
async def test_the_clock_drives_the_health_check_retries(
    fake: FakeRuntime, clock: FakeClock
) -> None:
    fake.seed(spec("web", ports=[P8080], env={"V": "1"}))
    fake.never_ready.add("web.next")
    check = HealthCheck(tcp=80, interval=30.0, retries=5)
    new = dataclasses.replace(start_first("web", env={"V": "2"}, ports=[P8080]), health=check)

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if clock() >= 1060.0:  # ready from the third probe on
            fake.never_ready.discard("web.next")

    converger = Converger(fake, clock=clock, sleep=sleep)
    [outcome] = await converger.apply(Plan((act(RECREATE, "web", wanted=new),)))

    assert outcome.ok
    probes = [c.at for c in fake.calls if c.method == "probe_tcp"]
    assert probes == [at(1000.0), at(1030.0), at(1060.0)]
    assert fake.inspect("web").spec.env == {"V": "2"}
