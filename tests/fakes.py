"""A fake container runtime and a fake clock for the reconciler's tests.

:class:`FakeRuntime` implements :class:`runtime.api.interface.Runtime` in memory:

- it keeps containers (created, running, exited) with their live forwards, and refuses a
  host port that another running container forwards (``PortInUse``), like the real one;
- it records every call in order (:attr:`FakeRuntime.calls`) and when each call began and
  ended (:attr:`FakeRuntime.journal`), stamped with the injected clock;
- it fails calls on request (:meth:`FakeRuntime.fail`): one method for one name, a
  number of times (or always);
- it holds calls on request (:meth:`FakeRuntime.hold`): a matching call waits in its
  worker thread until the returned :class:`threading.Event` is set, so a test can see
  what runs at the same time (:meth:`FakeRuntime.releasing` opens every hold when the
  test's block fails);
- it counts the calls in flight and remembers the most at once
  (:attr:`FakeRuntime.max_in_flight`).

The reconciler calls the runtime from worker threads (``anyio.to_thread``), so all state
sits behind one lock; :meth:`FakeRuntime.until` waits, from async code, for a condition on
it. Waits give up after :data:`HANG_GUARD` seconds so that a broken converger fails a test
instead of hanging it; no test asserts anything about how long something took.
"""

from __future__ import annotations

import builtins
import ipaddress
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import anyio
import anyio.lowlevel

from runtime.api.interface import CommandResult, ContainerInfo, ContainerState, NetworkInfo
from runtime.api.spec import (
    ContainerSpec,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
    Resources,
)
from runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerPaused,
    ContainerRunning,
    NetworkConflict,
    NetworkInUse,
    NetworkNotFound,
    PortInUse,
    SlirpError,
)
from runtime.util.cancel import Cancel

__all__ = (
    "HANG_GUARD",
    "MUTATING",
    "NETWORK_MUTATING",
    "Call",
    "FakeClock",
    "FakeRuntime",
    "Mark",
    "Method",
)

HANG_GUARD = 10.0
"""Seconds a held call or a waiting test waits before giving up with an error."""

Method = Literal[
    "prepare",
    "create",
    "start",
    "run",
    "stop",
    "remove",
    "list",
    "inspect",
    "logs",
    "stream_logs",
    "wait",
    "add_port",
    "remove_port",
    "restore_network",
    "probe_tcp",
    "rename",
    "move_port",
    "sweep",
    "exec_command",
    "update_resources",
    "pause",
    "resume",
    "ensure_network",
    "remove_network",
    "list_networks",
    "connect",
    "disconnect",
]

MUTATING: tuple[Method, ...] = (
    "create",
    "start",
    "run",
    "stop",
    "remove",
    "add_port",
    "remove_port",
    "restore_network",
    "rename",
    "move_port",
    "sweep",
    "update_resources",
    "pause",
    "resume",
)
"""The methods that change a container (``list``, ``inspect``, ``logs``, ``wait`` only look);
the network methods are :data:`NETWORK_MUTATING`."""

NETWORK_MUTATING: tuple[Method, ...] = ("ensure_network", "remove_network", "connect", "disconnect")
"""The methods that change a network or what joins it (``list_networks`` only looks)."""

T = TypeVar("T")


class FakeClock:
    """A clock that moves only when told (or slept on): pass it as ``clock=`` wherever
    time is injected."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    async def sleep(self, seconds: float) -> None:
        """An async sleep on this clock: it moves the clock on and lets others run (pass it
        as ``sleep=`` where a sleep is injected)."""
        self.advance(seconds)
        await anyio.lowlevel.checkpoint()


@dataclass(frozen=True)
class Call:
    """One call made to the fake: what was asked, and the clock when it began."""

    method: Method
    name: str
    args: tuple[object, ...] = ()
    kwargs: dict[str, object] = field(default_factory=dict)
    at: float = 0.0
    index: int = 0
    """Its position in :attr:`FakeRuntime.calls`."""


@dataclass(frozen=True)
class Mark:
    """A call beginning or ending; ``error`` is what an ending call raised."""

    event: Literal["begin", "end"]
    call: Call
    at: float
    error: BaseException | None = None


@dataclass
class _Failure:
    method: Method
    name: str
    error: Exception
    remaining: int | None


@dataclass(frozen=True)
class _Hold:
    method: Method
    name: str | None
    gate: threading.Event


def _overlaps(a: PortMapping, b: PortMapping) -> bool:
    if a.protocol != b.protocol or a.host != b.host:
        return False
    wildcard = {"0.0.0.0", "::"}
    return a.host_addr == b.host_addr or a.host_addr in wildcard or b.host_addr in wildcard


class FakeRuntime:
    """An in-memory :class:`runtime.api.interface.Runtime` that records, fails or holds calls."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock if clock is not None else FakeClock()
        self.never_ready: set[str] = set()
        """Containers whose health probe never succeeds."""
        self._cond = threading.Condition(threading.RLock())
        self._containers: dict[str, ContainerInfo] = {}
        self._networks: dict[str, NetworkSpec] = {}
        self._members: dict[str, dict[str, str]] = {}
        """Network name -> container name -> its address there (running or not)."""
        self._subnets: dict[str, ipaddress.IPv4Network] = {}
        self._next_host: dict[str, int] = {}
        self._next_subnet = 0
        self._calls: list[Call] = []
        self._journal: list[Mark] = []
        self._failures: list[_Failure] = []
        self._holds: list[_Hold] = []
        self._in_flight: list[Call] = []
        self._max_in_flight = 0
        self._next_pid = 1000
        self._released = False

    # -- what a test sets up ----------------------------------------------------------------

    def fail(self, method: Method, name: str, error: Exception, *, times: int | None = 1) -> None:
        """Make the next ``times`` calls of ``method`` for ``name`` raise ``error``
        (``times=None``: every call). A failed call has no effect."""
        with self._cond:
            self._failures.append(_Failure(method, name, error, times))

    def hold(self, method: Method, name: str | None = None) -> threading.Event:
        """Make calls of ``method`` (for ``name``, or any name) wait until the event is set.

        A held call is already recorded and in flight; it takes effect (or fails) once
        released.
        """
        gate = threading.Event()
        with self._cond:
            self._holds.append(_Hold(method, name, gate))
            if self._released:
                gate.set()
        return gate

    def release_all(self) -> None:
        """Open every hold, present and future (so nothing stays held behind a failed test)."""
        with self._cond:
            self._released = True
            for hold in self._holds:
                hold.gate.set()

    @contextmanager
    def releasing(self) -> Iterator[None]:
        """Run a block that looks at held calls; if it fails, open every hold.

        Use it inside the task group that runs the converger: a cancelled
        ``anyio.to_thread`` call still waits for its thread, so without this a failed
        assertion would leave the group waiting on held calls until :data:`HANG_GUARD`.
        """
        try:
            yield
        except BaseException:
            self.release_all()
            raise

    def seed(
        self,
        spec: ContainerSpec,
        state: ContainerState = ContainerState.RUNNING,
        *,
        started_at: float | None = None,
        finished_at: float | None = None,
        exit_code: int | None = None,
    ) -> ContainerInfo:
        """Put a container in place without recording a call (a running one forwards its
        spec's ports)."""
        now = self.clock()
        running = state is ContainerState.RUNNING
        exited = state is ContainerState.EXITED
        if running or exited:
            started_at = now if started_at is None else started_at
        if exited:
            finished_at = now if finished_at is None else finished_at
            exit_code = 1 if exit_code is None else exit_code
        with self._cond:
            info = ContainerInfo(
                name=spec.name,
                state=state,
                spec=spec,
                pid=self._pid() if running else None,
                slirp_pid=self._pid()
                if running and spec.network in ("slirp4netns", "bridge")
                else None,
                started_at=started_at,
                finished_at=finished_at,
                exit_code=exit_code,
                ports=spec.ports if running else (),
                log_path=f"/fake/{spec.name}/output.log",
                created_at=now,
                addresses=self._joined(spec),
            )
            self._containers[spec.name] = info
            self._cond.notify_all()
            return info

    def finish(self, name: str, exit_code: int = 1, *, at: float | None = None) -> ContainerInfo:
        """The command of running container ``name`` ends (a crash unless ``exit_code`` is 0)."""
        with self._cond:
            info = self._get(name)
            if info.state is not ContainerState.RUNNING:
                raise AssertionError(f"fake: {name!r} is {info.state.value}, not running")
            done = self._update(
                info,
                state=ContainerState.EXITED,
                pid=None,
                slirp_pid=None,
                paused=False,
                finished_at=self.clock() if at is None else at,
                exit_code=exit_code,
                ports=(),
            )
            self._cond.notify_all()
            return done

    def lose_network(self, name: str) -> ContainerInfo:
        """The slirp4netns of running container ``name`` dies; its forwards stay recorded,
        for :meth:`restore_network` to put back."""
        with self._cond:
            info = self._running(name)
            if info.slirp_pid is None:
                raise AssertionError(f"fake: {name!r} has no network to lose")
            lost = self._update(info, slirp_pid=None)
            self._cond.notify_all()
            return lost

    # -- what a test looks at -----------------------------------------------------------------

    @property
    def calls(self) -> builtins.list[Call]:
        """Every call so far, in the order they began."""
        with self._cond:
            return builtins.list(self._calls)

    @property
    def journal(self) -> builtins.list[Mark]:
        """Every call's beginning and end, in the order they happened."""
        with self._cond:
            return builtins.list(self._journal)

    @property
    def in_flight(self) -> builtins.list[Call]:
        """The calls that have begun and not ended, oldest first."""
        with self._cond:
            return builtins.list(self._in_flight)

    @property
    def max_in_flight(self) -> int:
        with self._cond:
            return self._max_in_flight

    def history(self, *methods: Method) -> builtins.list[tuple[str, str]]:
        """``(method, name)`` of the calls so far, of ``methods`` (default: mutating ones)."""
        wanted = methods or MUTATING
        return [(c.method, c.name) for c in self.calls if c.method in wanted]

    def ended(self, method: Method | None = None, name: str | None = None) -> builtins.list[Mark]:
        """The ``end`` marks so far, optionally only of ``method`` and/or ``name``."""
        return [
            m
            for m in self.journal
            if m.event == "end"
            and (method is None or m.call.method == method)
            and (name is None or m.call.name == name)
        ]

    def wait_until(self, predicate: Callable[[], bool], what: str = "a condition") -> None:
        """Block until ``predicate()`` holds (it is checked under the fake's lock)."""
        with self._cond:
            if not self._cond.wait_for(predicate, HANG_GUARD):
                raise AssertionError(f"fake runtime: gave up waiting for {what}")

    async def until(self, predicate: Callable[[], bool], what: str = "a condition") -> None:
        """Wait, without blocking the event loop, until ``predicate()`` holds."""
        await anyio.to_thread.run_sync(self.wait_until, predicate, what)

    # -- the Runtime protocol -----------------------------------------------------------------

    def prepare(self, spec: ContainerSpec, cancel: Cancel | None = None) -> None:
        """Held (:meth:`hold`) until released or ``cancel`` is cancelled (which releases
        the hold's gate for every call it holds), then raises ``Cancelled``."""
        token = cancel or Cancel()
        with self._cond:
            gates = [
                h.gate for h in self._holds if h.method == "prepare" and h.name in (None, spec.name)
            ]

        def release() -> None:
            for gate in gates:
                gate.set()

        with token.unblocking(release):
            self._invoke("prepare", spec.name, (spec,), {}, token.check)

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        return self._invoke("create", spec.name, (spec,), {}, lambda: self._create(spec))

    def start(self, name: str) -> ContainerInfo:
        return self._invoke("start", name, (), {}, lambda: self._start(name))

    def run(self, spec: ContainerSpec) -> ContainerInfo:
        def effect() -> ContainerInfo:
            self._create(spec)
            try:
                return self._start(spec.name)
            except Exception:
                del self._containers[spec.name]
                self._leave_all(spec.name)
                raise

        return self._invoke("run", spec.name, (spec,), {}, effect)

    def stop(self, name: str, timeout: float | None = None) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._get(name)
            if info.state is not ContainerState.RUNNING:
                return info
            return self._update(
                info,
                state=ContainerState.EXITED,
                pid=None,
                slirp_pid=None,
                paused=False,
                finished_at=self.clock(),
                exit_code=137,
                ports=(),
            )

        return self._invoke("stop", name, (), {"timeout": timeout}, effect)

    def remove(self, name: str, *, force: bool = False) -> None:
        def effect() -> None:
            info = self._get(name)
            if info.state is ContainerState.RUNNING and not force:
                raise ContainerRunning(name, "stop it or remove with force")
            del self._containers[name]
            self._leave_all(name)

        self._invoke("remove", name, (), {"force": force}, effect)

    def sweep(self) -> builtins.list[str]:
        return self._invoke("sweep", "", (), {}, builtins.list)

    def list(self) -> builtins.list[ContainerInfo]:
        def effect() -> builtins.list[ContainerInfo]:
            return [self._containers[n] for n in sorted(self._containers)]

        return self._invoke("list", "", (), {}, effect)

    def inspect(self, name: str) -> ContainerInfo:
        return self._invoke("inspect", name, (), {}, lambda: self._get(name))

    def logs(self, name: str) -> bytes:
        def effect() -> bytes:
            self._get(name)
            return b""

        return self._invoke("logs", name, (), {}, effect)

    def stream_logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        def effect() -> Iterator[bytes]:
            self._get(name)
            return iter(())

        return self._invoke("stream_logs", name, (), {"follow": follow}, effect)

    def wait(self, name: str, timeout: float | None = None) -> int:
        def effect() -> int:
            info = self._get(name)
            if info.started_at is None:
                raise ContainerNotRunning(name, "it was never started")
            done = self._cond.wait_for(
                lambda: self._get(name).state is not ContainerState.RUNNING,
                HANG_GUARD if timeout is None else min(timeout, HANG_GUARD),
            )
            if not done:
                raise TimeoutError(f"container {name!r} still running after {timeout} s")
            code = self._get(name).exit_code
            return 137 if code is None else code

        return self._invoke("wait", name, (), {"timeout": timeout}, effect)

    def add_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._networked(name)
            if mapping in info.ports:
                return info
            if self._port_holder(mapping, besides=name) is not None:
                raise PortInUse(mapping.host_addr, mapping.host, mapping.protocol)
            return self._update(info, ports=(*info.ports, mapping))

        return self._invoke("add_port", name, (mapping,), {}, effect)

    def remove_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._networked(name)
            return self._update(info, ports=tuple(p for p in info.ports if p != mapping))

        return self._invoke("remove_port", name, (mapping,), {}, effect)

    def move_port(self, name: str, to: str, mapping: PortMapping) -> None:
        def effect() -> None:
            if name == to:
                raise ValueError("a forward cannot move to the container it is on")
            source, target = self._networked(name), self._networked(to)
            self._update(source, ports=tuple(p for p in source.ports if p != mapping))
            self._update(target, ports=(*(p for p in target.ports if p != mapping), mapping))

        self._invoke("move_port", name, (to, mapping), {}, effect)

    def probe_tcp(self, name: str, port: int) -> bool:
        """Ready while it runs, unless the test listed the container in ``never_ready``."""

        def effect() -> bool:
            running = self._get(name).state is ContainerState.RUNNING
            return running and name not in self.never_ready

        return self._invoke("probe_tcp", name, (port,), {}, effect)

    def exec_command(
        self, name: str, argv: Sequence[str], *, timeout: float = 10.0
    ) -> CommandResult:
        """Exit code 0 unless the test listed the container in ``never_ready``."""

        def effect() -> CommandResult:
            if self._running(name).paused:
                raise ContainerPaused(name)
            return CommandResult(exit_code=int(name in self.never_ready), output="")

        return self._invoke("exec_command", name, (tuple(argv),), {"timeout": timeout}, effect)

    def update_resources(self, name: str, resources: Resources | None) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._get(name)
            return self._update(info, spec=info.spec.model_copy(update={"resources": resources}))

        return self._invoke("update_resources", name, (resources,), {}, effect)

    def pause(self, name: str) -> ContainerInfo:
        return self._invoke(
            "pause", name, (), {}, lambda: self._update(self._running(name), paused=True)
        )

    def resume(self, name: str) -> ContainerInfo:
        return self._invoke(
            "resume", name, (), {}, lambda: self._update(self._running(name), paused=False)
        )

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._get(name)
            spec = ContainerSpec.model_validate({**info.spec.model_dump(), "name": new_name})
            if new_name in self._containers:
                raise ContainerExists(new_name)
            renamed = info.model_copy(update={"name": new_name, "spec": spec})
            for members in self._members.values():
                if name in members:
                    members[new_name] = members.pop(name)
            del self._containers[name]
            self._containers[new_name] = renamed
            return renamed

        return self._invoke("rename", name, (new_name,), {}, effect)

    def restore_network(self, name: str) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._running(name)
            if info.spec.network not in ("slirp4netns", "bridge") or info.slirp_pid is not None:
                return info  # nothing to restore
            return self._update(info, slirp_pid=self._pid())

        return self._invoke("restore_network", name, (), {}, effect)

    def ensure_network(self, spec: NetworkSpec) -> NetworkInfo:
        return self._invoke("ensure_network", spec.name, (spec,), {}, lambda: self._ensure(spec))

    def remove_network(self, name: str) -> None:
        def effect() -> None:
            users = tuple(sorted(self._members.get(name, {})))
            if users:
                raise NetworkInUse(name, builtins.list(users))
            self._networks.pop(name, None)
            self._members.pop(name, None)

        self._invoke("remove_network", name, (), {}, effect)

    def list_networks(self) -> builtins.list[NetworkInfo]:
        def effect() -> builtins.list[NetworkInfo]:
            return [self._network_info(n) for n in sorted(self._networks)]

        return self._invoke("list_networks", "", (), {}, effect)

    def connect(self, name: str, attachment: NetworkAttachment) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._get(name)
            if attachment.network not in self._networks:
                raise NetworkNotFound(attachment.network)
            if info.spec.network != "bridge":
                raise ValueError(f"{name!r} is not on bridge networks: recreate it")
            if any(a.network == attachment.network for a in info.spec.networks):
                raise ValueError(f"{name!r} is already on {attachment.network!r}")
            self._join(name, attachment.network)
            networks = (*info.spec.networks, attachment)
            return self._rejoined(info, networks)

        return self._invoke("connect", name, (attachment,), {}, effect)

    def disconnect(self, name: str, network: str) -> ContainerInfo:
        def effect() -> ContainerInfo:
            info = self._get(name)
            networks = tuple(a for a in info.spec.networks if a.network != network)
            if not networks:
                raise ValueError(f"{network!r} is the last network of {name!r}")
            self._members.get(network, {}).pop(name, None)
            return self._rejoined(info, networks)

        return self._invoke("disconnect", name, (network,), {}, effect)

    def seed_network(self, spec: NetworkSpec) -> NetworkInfo:
        """Put a network in place without recording a call."""
        with self._cond:
            return self._ensure(spec)

    # -- machinery ----------------------------------------------------------------------------

    def _ensure(self, spec: NetworkSpec) -> NetworkInfo:
        known = self._networks.get(spec.name)
        if known is None:
            self._networks[spec.name] = spec
            self._members[spec.name] = {}
            self._next_subnet += 1
            subnet = spec.subnet or f"10.89.{self._next_subnet}.0/24"
            self._subnets[spec.name] = ipaddress.IPv4Network(subnet)
            self._next_host[spec.name] = 2
            return self._network_info(spec.name)
        info = self._network_info(spec.name)
        wanted = (spec.subnet or info.subnet, spec.internal, spec.dns)
        if wanted != (info.subnet, info.internal, info.dns):
            raise NetworkConflict(
                spec.name, [f"{wanted} is not {info.subnet, info.internal, info.dns}"]
            )
        return info

    def _network_info(self, name: str) -> NetworkInfo:
        spec, subnet = self._networks[name], self._subnets[name]
        return NetworkInfo(
            name=name,
            subnet=str(subnet),
            gateway=str(subnet.network_address + 1),
            internal=spec.internal,
            dns=spec.dns,
            labels=dict(spec.labels),
            containers=dict(self._members[name]),
        )

    def _join(self, name: str, network: str) -> None:
        """Hand ``name`` an address on ``network`` (never one handed out before)."""
        host = self._next_host[network]
        self._next_host[network] = host + 1
        self._members[network][name] = str(self._subnets[network].network_address + host)

    def _leave_all(self, name: str) -> None:
        for members in self._members.values():
            members.pop(name, None)

    def _joined(self, spec: ContainerSpec) -> dict[str, str]:
        """Join every network of ``spec`` (made with default settings when missing, as the
        runtime does); its addresses."""
        for attachment in spec.networks:
            if attachment.network not in self._networks:
                self._ensure(NetworkSpec(name=attachment.network))
            self._join(spec.name, attachment.network)
        return self._addresses(spec)

    def _addresses(self, spec: ContainerSpec) -> dict[str, str]:
        joined = (a.network for a in spec.networks)
        return {n: self._members[n][spec.name] for n in joined if spec.name in self._members[n]}

    def _rejoined(
        self, info: ContainerInfo, networks: tuple[NetworkAttachment, ...]
    ) -> ContainerInfo:
        spec = info.spec.model_copy(update={"networks": networks})
        return self._update(info, spec=spec, addresses=self._addresses(spec))

    def _invoke(
        self,
        method: Method,
        name: str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        effect: Callable[[], T],
    ) -> T:
        with self._cond:
            call = Call(method, name, args, kwargs, self.clock(), len(self._calls))
            self._calls.append(call)
            self._journal.append(Mark("begin", call, call.at))
            self._in_flight.append(call)
            self._max_in_flight = max(self._max_in_flight, len(self._in_flight))
            gates = [h.gate for h in self._holds if h.method == method and h.name in (None, name)]
            self._cond.notify_all()
        error: BaseException | None = None
        try:
            for gate in gates:
                if not gate.wait(HANG_GUARD):
                    raise TimeoutError(f"fake runtime: {method}({name!r}) was never released")
            with self._cond:
                injected = self._take_failure(method, name)
                if injected is not None:
                    raise injected.with_traceback(None)
                return effect()
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._cond:
                self._in_flight.remove(call)
                self._journal.append(Mark("end", call, self.clock(), error))
                self._cond.notify_all()

    def _take_failure(self, method: Method, name: str) -> Exception | None:
        for failure in self._failures:
            if failure.method == method and failure.name == name:
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                return failure.error
        return None

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _get(self, name: str) -> ContainerInfo:
        info = self._containers.get(name)
        if info is None:
            raise ContainerNotFound(name)
        return info

    def _running(self, name: str) -> ContainerInfo:
        info = self._get(name)
        if info.state is not ContainerState.RUNNING:
            raise ContainerNotRunning(name)
        return info

    def _networked(self, name: str) -> ContainerInfo:
        """A running container whose forwards can change (on bridge networks, or with a
        slirp4netns of its own)."""
        info = self._running(name)
        if info.spec.network == "bridge":
            return info
        if info.spec.network != "slirp4netns" or info.slirp_pid is None:
            raise SlirpError(f"container {name!r} has no slirp4netns network")
        return info

    def _update(self, info: ContainerInfo, **changes: object) -> ContainerInfo:
        new = info.model_copy(update=changes)
        self._containers[info.name] = new
        return new

    def _port_holder(self, mapping: PortMapping, *, besides: str) -> str | None:
        for other in self._containers.values():
            live = other.name != besides and other.state is ContainerState.RUNNING
            if live and any(_overlaps(mapping, held) for held in other.ports):
                return other.name
        return None

    def _create(self, spec: ContainerSpec) -> ContainerInfo:
        if spec.name in self._containers:
            raise ContainerExists(spec.name)
        info = ContainerInfo(
            name=spec.name,
            state=ContainerState.CREATED,
            spec=spec,
            log_path=f"/fake/{spec.name}/output.log",
            created_at=self.clock(),
            addresses=self._joined(spec),
        )
        self._containers[spec.name] = info
        return info

    def _start(self, name: str) -> ContainerInfo:
        info = self._get(name)
        if info.state is ContainerState.RUNNING:
            return info
        for mapping in info.spec.ports:
            if self._port_holder(mapping, besides=name) is not None:
                raise PortInUse(mapping.host_addr, mapping.host, mapping.protocol)
        return self._update(
            info,
            state=ContainerState.RUNNING,
            pid=self._pid(),
            slirp_pid=self._pid() if info.spec.network in ("slirp4netns", "bridge") else None,
            started_at=self.clock(),
            finished_at=None,
            exit_code=None,
            ports=info.spec.ports,
            restarts=info.restarts + (info.started_at is not None),
        )
