"""One interface over the ways a container gets its network, and the choice among them.

- :class:`Slirp4netnsDriver`: one slirp4netns per container, in the host's network
  namespace, serving the container's tap0; host ports forwarded through its API socket;
- :class:`NoNetwork`: only the loopback; no helper, no forwards;
- :class:`~runtime.network.bridge.BridgeDriver`: bridges in one network namespace shared
  by the user's containers, veth pairs, one slirp4netns for the way out and the forwards.

The client and the holder ask the driver of a container (:func:`driver_for` its spec or
launch request) what they need and never which one it is: the addresses written to the
container's /etc files, the sockets it keeps in the container folder, the helper the
launcher starts (and starts again after it died), the forwards of a running container.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from runtime.errors import SlirpError
from runtime.network import slirp
from runtime.network.bridge import BridgeDriver
from runtime.network.porter import HANDLERS
from runtime.network.slirp import LiveForward
from runtime.util.processes import ProcessId
from runtime.wire import Forward

__all__ = (
    "HANDLERS",
    "Forwards",
    "HasNetwork",
    "LiveForward",
    "NetworkDriver",
    "NoNetwork",
    "Slirp4netnsDriver",
    "Starting",
    "driver_for",
)

READY_TIMEOUT = 10.0
"""How long the launcher waits for a network helper to be ready."""


class HasNetwork(Protocol):
    """A container spec or launch request: it names its network mode."""

    @property
    def network(self) -> str: ...


class Forwards(Protocol):
    """The host port forwards of one running container, as its network holds them now."""

    def add(self, forward: Forward) -> int:
        """Add ``forward``; return its id. A taken port raises :class:`PortInUse`, one
        below the host's first unprivileged port :class:`PortPrivileged`."""

    def remove(self, forward_id: int) -> None:
        """Remove the forward with id ``forward_id``."""

    def list(self) -> list[LiveForward]:
        """The forwards in place (the truth: one may have been removed behind our back)."""

    def find(self, forward: Forward) -> LiveForward | None:
        """The forward in place equal to ``forward``, if any."""

    def take(self, forward: Forward, giver: str) -> int | None:
        """Hand ``forward`` of running container ``giver`` over to this container in one
        step, the host port never closed; its new id. None when this network cannot (the
        caller removes it there and adds it here)."""


class Starting(Protocol):
    """A new container's network on its way: calling it waits until the network is
    ready, with the forwards asked for, and returns the helper that serves it (None
    when there is none) and the forwards' ids, in the order asked."""

    def __call__(self) -> tuple[ProcessId | None, list[int]]: ...


class NetworkDriver(Protocol):
    """How a container gets its network."""

    @property
    def name(self) -> str:
        """The network mode it serves (``network`` in the spec)."""

    def container_addr(self, name: str) -> str:
        """The address container ``name``'s hostname resolves to in its /etc/hosts."""

    @property
    def dns_server(self) -> str | None:
        """The nameserver of its /etc/resolv.conf (None: an empty file)."""

    @property
    def sockets(self) -> tuple[str, ...]:
        """Unix sockets it binds in the container folder (their paths must fit)."""

    @property
    def has_helper(self) -> bool:
        """Whether a helper process serves the network: a running container whose
        helper is gone has lost it, and :meth:`restart` brings it back."""

    def check_host(self) -> None:
        """Raise :class:`HostSetupError` when this host cannot give the network."""

    def ensure_port_free(self, forward: Forward) -> None:
        """Raise :class:`PortInUse`, naming the holder when visible, if the host port of
        ``forward`` is taken; :class:`PortPrivileged` if it is privileged on this host."""

    def start(
        self,
        cdir: Path,
        sandbox: bool,
        *,
        target_pid: int,
        netns_fd: int,
        exit_fd: int,
        forwards: Sequence[Forward] = (),
        handler: str = HANDLERS[0],
    ) -> Starting:
        """Begin to give the new container with init ``target_pid`` and network
        namespace ``netns_fd`` (open until the returned :class:`Starting` is awaited; the
        init is not dumpable by then, and its /proc/PID/ns cannot be opened) its network
        and its ``forwards`` (TCP ones through ``handler``, as :meth:`forwards`); the
        returned :class:`Starting` starts or awaits the rest: the caller does other work
        of the launch in between (``exit_fd``: the helper's end of a pipe held by the init
        alone, closed when the container ends; open until then). Both raise
        :class:`SlirpError` (:class:`PortInUse` for a taken port), or
        :class:`TimeoutError` when the helper is not ready in time."""

    def restart(self, cdir: Path, sandbox: bool, netns_fd: int, exit_fd: int) -> ProcessId:
        """Start the helper again for a running container, in the network namespace
        ``netns_fd``; it ends when ``exit_fd`` (its end of a pipe whose other end the
        caller keeps) closes, and the caller kills it when the container ends."""

    def forwards(self, cdir: Path, name: str, handler: str = HANDLERS[0]) -> Forwards:
        """The forwards of running container ``name``, TCP ones added through ``handler``
        where its network has a choice (see :data:`HANDLERS`); raises
        :class:`SlirpError` when its network takes none."""


class _SlirpForwards:
    """Forwards through one slirp4netns' API socket."""

    def __init__(self, api_socket: Path) -> None:
        self.api_socket = api_socket

    def add(self, forward: Forward) -> int:
        return slirp.add_forward(self.api_socket, forward)

    def remove(self, forward_id: int) -> None:
        slirp.remove_forward(self.api_socket, forward_id)

    def list(self) -> list[LiveForward]:
        return slirp.list_forwards(self.api_socket)

    def find(self, forward: Forward) -> LiveForward | None:
        return slirp.find_forward(self.api_socket, forward)

    def take(self, forward: Forward, giver: str) -> int | None:
        return None  # each container has a slirp4netns of its own


class Slirp4netnsDriver:
    """One slirp4netns per container (``network = "slirp4netns"``)."""

    name = "slirp4netns"
    dns_server: str | None = slirp.DNS_ADDR
    sockets = (slirp.API_SOCKET,)
    has_helper = True

    def container_addr(self, name: str) -> str:
        return slirp.CONTAINER_ADDR  # each container has a network of its own

    def check_host(self) -> None:
        slirp.slirp_binary()
        slirp.check_tun()

    def ensure_port_free(self, forward: Forward) -> None:
        slirp.ensure_port_free(forward)

    def start(
        self,
        cdir: Path,
        sandbox: bool,
        *,
        target_pid: int,
        netns_fd: int,
        exit_fd: int,
        forwards: Sequence[Forward] = (),
        handler: str = HANDLERS[0],
    ) -> Starting:
        def started() -> tuple[ProcessId | None, list[int]]:  # all of it when awaited
            helper = _with_sandbox_fallback(
                sandbox,
                lambda sandboxed: slirp.spawn(
                    cdir, sandboxed, READY_TIMEOUT, netns_fd=netns_fd, exit_fd=exit_fd
                ),
            )
            return helper, _added(self, cdir, forwards)

        return started

    def restart(self, cdir: Path, sandbox: bool, netns_fd: int, exit_fd: int) -> ProcessId:
        return _with_sandbox_fallback(
            sandbox,
            lambda sandboxed: slirp.spawn(
                cdir, sandboxed, READY_TIMEOUT, netns_fd=netns_fd, exit_fd=exit_fd
            ),
        )

    def forwards(self, cdir: Path, name: str, handler: str = HANDLERS[0]) -> Forwards:
        return _SlirpForwards(cdir / slirp.API_SOCKET)  # its own slirp4netns serves them all


def _added(driver: NetworkDriver, cdir: Path, forwards: Sequence[Forward]) -> list[int]:
    """Add ``forwards`` to the new container of ``cdir`` one by one; their ids."""
    if not forwards:
        return []
    table = driver.forwards(cdir, cdir.name)
    return [table.add(forward) for forward in forwards]


class _Start(Protocol):
    def __call__(self, sandboxed: bool) -> ProcessId: ...


def _with_sandbox_fallback(sandbox: bool, start: _Start) -> ProcessId:
    """Start sandboxed when asked; where that fails, once more without the sandbox."""
    try:
        return start(sandbox)
    except (SlirpError, TimeoutError):
        if not sandbox:
            raise
        return start(False)


class NoNetwork:
    """Only the loopback (``network = "none"``): no helper, and forwards are refused."""

    name = "none"
    dns_server: str | None = None
    sockets: tuple[str, ...] = ()
    has_helper = False

    def container_addr(self, name: str) -> str:
        return "127.0.1.1"  # the loopback, as Debian names its own host

    def check_host(self) -> None:
        pass

    def ensure_port_free(self, forward: Forward) -> None:
        raise _no_forwards(f"port {forward.host_port}")

    def start(
        self,
        cdir: Path,
        sandbox: bool,
        *,
        target_pid: int,
        netns_fd: int,
        exit_fd: int,
        forwards: Sequence[Forward] = (),
        handler: str = HANDLERS[0],
    ) -> Starting:
        return lambda: (None, _added(self, cdir, forwards))

    def restart(self, cdir: Path, sandbox: bool, netns_fd: int, exit_fd: int) -> ProcessId:
        raise SlirpError(f"{cdir.name!r} has no network helper to start again")

    def forwards(self, cdir: Path, name: str, handler: str = HANDLERS[0]) -> Forwards:
        raise _no_forwards(f"container {name!r}")


def _no_forwards(what: str) -> SlirpError:
    return SlirpError(f'{what}: network = "none" has no network to forward ports into')


_DRIVERS: dict[str, NetworkDriver] = {
    driver.name: driver for driver in (Slirp4netnsDriver(), NoNetwork(), BridgeDriver())
}


def driver_for(container: HasNetwork | str) -> NetworkDriver:
    """The driver of a container's network mode (its spec, its launch request, or the
    mode itself); ValueError for a mode no driver serves."""
    mode = container if isinstance(container, str) else container.network
    driver = _DRIVERS.get(mode)
    if driver is None:
        known = ", ".join(sorted(_DRIVERS))
        raise ValueError(f"no network driver for {mode!r} (known: {known})")
    return driver
