"""The holder's control protocol on ``pause.sock``: typed requests and replies.

One JSON object per connection each way (``runtime.util.jsonsock``). A request is
``{"op": OP, ...fields}``; a reply is ``{"ok": true, ...fields}`` or
``{"ok": false, "error": CODE, "message": TEXT}`` (a port conflict adds the port's
fields). Plain dataclasses, no pydantic: the holder forks a process per container and
per request and stays small. The wire strings of ``Op`` and ``ErrorCode`` are stable,
so a client and a holder started by the previous version still understand each other
(measured: run, exec, probe, add a port, restore a network and stop, through a holder
the version before the move to sub-packages started; its lazy import of the systemd
driver finds ``runtime.systemd``).

The one-byte marks of the pipes a new holder, a spare and a container's init talk over
while they start (``Startup``, ``Launching``) are named here too.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from runtime.wire import LaunchRequest, fields_of

__all__ = (
    "CONTAINERS_DIR",
    "HOLDER_LOCK",
    "HOLDER_LOG",
    "HOLDER_PROTOCOL",
    "HOLDER_RECORD",
    "HOLDER_SOCKET",
    "MAX_REPLY",
    "MAX_REQUEST",
    "Done",
    "ErrorCode",
    "Exec",
    "ExecResult",
    "Exit",
    "Failure",
    "Launch",
    "Launched",
    "Launching",
    "Op",
    "Ping",
    "Pong",
    "PortConflict",
    "ProbeResult",
    "ProbeTcp",
    "ProtocolError",
    "Reply",
    "Request",
    "RestoreNetwork",
    "Restored",
    "Rewire",
    "Rewired",
    "Startup",
    "decode_reply",
    "decode_request",
    "detail_of",
    "encode",
    "marked",
    "to_json",
)

HOLDER_SOCKET = "pause.sock"
"""The holder's control socket in the state folder (0600). The file names keep the
holder's first name, podman's "pause process", so that a holder an older squish started
is still found and stopped."""
HOLDER_RECORD = "pause.json"
"""The holder's identity (pid, start time) and ``protocol`` in the state folder."""
HOLDER_PROTOCOL = 1
"""The requests' revision a holder of this version serves, written in its record. Raised
whenever a request gains a field (a holder refuses a field it does not know): a client
that finds a holder of an earlier revision, or of none (every holder before revision 1),
asks it to exit and starts its own, which takes the running containers over
(``runtime.holder.adoption``)."""
HOLDER_LOG = "pause.log"
"""The holder's log (its output and that of what it forks) in the state folder."""
HOLDER_LOCK = "pause.lock"
"""The lock a client holds in the state folder while it starts or stops the holder."""
CONTAINERS_DIR = "containers"
"""The folder of container folders in the state folder (a new holder reads their
``run.json`` to take over the containers an earlier one started)."""

MAX_REQUEST = 4 << 20
"""The largest request the holder (and a spare, for a launch) accepts."""
MAX_REPLY = 1 << 20
"""The largest reply a client reads (an exec's 64 KiB of output, escaped, fits)."""


class ProtocolError(ValueError):
    """A request or reply that is not valid JSON of the expected shape."""


class Op(enum.StrEnum):
    """Every request the holder serves."""

    PING = "ping"
    LAUNCH = "launch"
    EXIT = "exit"
    RESTORE_NETWORK = "restore_network"
    PROBE_TCP = "probe_tcp"
    EXEC = "exec"
    REWIRE = "rewire"


class ErrorCode(enum.StrEnum):
    """Every failure the holder (or a process it forked) reports."""

    BAD_REQUEST = "protocol"
    """The request was malformed or of an unknown op."""
    REFUSED = "refused"
    """The client is not the user who owns the holder."""
    UNKNOWN_CONTAINER = "unknown_container"
    """This holder neither started the container nor could take it over (the message
    says why)."""
    NOT_RUNNING = "not_running"
    """The container's init has exited."""
    START_FAILED = "start"
    CGROUP_MOVE = "cgroup_move"
    """The init could not be moved into its cgroup leaf (a start failure too)."""
    PORT_IN_USE = "port_in_use"
    SLIRP_FAILED = "slirp"
    """slirp4netns did not start or refused a forward while launching."""
    EXEC_FAILED = "exec"
    PROBE_FAILED = "probe"
    RESTORE_FAILED = "restore_network"
    REWIRE_FAILED = "rewire"


# -- one-byte marks on the start-up pipes -------------------------------------------------


class Startup(bytes, enum.Enum):
    """The handshake between a new holder and the client that spawns it (two pipes)."""

    USERNS = b"U"
    """Holder: my user namespace exists (followed by my pid)."""
    MAPPED = b"M"
    """Client: your id maps are written."""
    READY = b"R"
    """Holder: I am listening on ``pause.sock``."""
    NO_USERNS = b"X"
    """Holder: I could not create a user namespace."""
    JOINED = b"J"
    """Holder: I joined the user namespace of the containers an earlier holder started
    (followed by my pid); its id maps exist already."""


class Launching(bytes, enum.Enum):
    """What a spare, the container's init it forked and the holder tell each other."""

    WARM = b"W"
    """Init to spare: ready for a request (the /proc view's connection mounted, if any);
    then spare to holder, with the init's pid and the view's connection."""
    TAKEN = b"A"
    """Spare to holder: the launch request is mine (followed by the init's pid)."""
    PLACED = b"P"
    """Spare to init: you are in your cgroup (start your cgroup namespace)."""
    MOUNTED = b"M"
    """Init to spare: the filesystem is in place (and the cgroup namespace started)."""
    GO = b"G"
    """Spare to init: start the command."""
    STARTED = b"S"
    """Init to spare: the command runs."""
    FAILED = b"E"
    """Either way: a failure, which the rest of the message describes."""


def marked(mark: Startup | Launching, detail: str | int = "") -> bytes:
    """``mark`` followed by ``detail`` (a pid, or what failed)."""
    return bytes(mark) + str(detail).encode()


def detail_of(message: bytes, mark: Startup | Launching) -> str | None:
    """What follows ``mark`` in ``message``, or None if ``message`` has another mark."""
    if not message.startswith(mark):
        return None
    return message[len(mark) :].decode(errors="replace")


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    op: typing.ClassVar[Op] = Op.PING


@dataclass(frozen=True)
class Exit:
    op: typing.ClassVar[Op] = Op.EXIT


@dataclass(frozen=True)
class Launch:
    """Start a container. The holder passes ``request`` on as it came (a spare decodes
    it with ``LaunchRequest.from_json``): its single loop stays lean."""

    op: typing.ClassVar[Op] = Op.LAUNCH
    request: dict[str, Any]

    @classmethod
    def of(cls, request: LaunchRequest) -> Launch:
        return cls(request.to_json())


@dataclass(frozen=True)
class RestoreNetwork:
    """Start a running container's network helper again. ``network`` is the container's
    network mode (a client that names none means slirp4netns, the only mode it had)."""

    op: typing.ClassVar[Op] = Op.RESTORE_NETWORK
    init_pid: int
    container_dir: str
    sandbox: bool = True
    network: str = "slirp4netns"


@dataclass(frozen=True)
class ProbeTcp:
    op: typing.ClassVar[Op] = Op.PROBE_TCP
    init_pid: int
    port: int


@dataclass(frozen=True)
class Exec:
    """Run ``argv`` in a running container (see ``runtime.holder.exec_runner``)."""

    op: typing.ClassVar[Op] = Op.EXEC
    init_pid: int
    init_start_time: int
    argv: tuple[str, ...]
    env: dict[str, str]
    container_dir: str
    workdir: str = "/"
    timeout: float = 10.0
    seccomp: bool = True
    cgroup: str = ""


@dataclass(frozen=True)
class Rewire:
    """Make a running bridge container's interfaces match ``networks`` (live connect and
    disconnect: veth pairs added or deleted, the same init)."""

    op: typing.ClassVar[Op] = Op.REWIRE
    init_pid: int
    container_dir: str
    networks: tuple[str, ...]


Request = Ping | Exit | Launch | RestoreNetwork | ProbeTcp | Exec | Rewire
_REQUESTS: dict[str, type[Request]] = {
    kind.op.value: kind for kind in (Ping, Exit, Launch, RestoreNetwork, ProbeTcp, Exec, Rewire)
}


# -- replies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pong:
    pid: int


@dataclass(frozen=True)
class Done:
    """The holder will exit."""


@dataclass(frozen=True)
class Launched:
    run: dict[str, Any]
    """What the launcher wrote to ``run.json``."""


@dataclass(frozen=True)
class Restored:
    slirp: dict[str, Any]
    """The identity of the new slirp4netns (``ProcessId.to_json``)."""


@dataclass(frozen=True)
class Rewired:
    """The container's interfaces match the networks asked for."""


@dataclass(frozen=True)
class ProbeResult:
    ready: bool


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str
    timed_out: bool = False


@dataclass(frozen=True)
class PortConflict:
    """The host port a ``PORT_IN_USE`` failure is about (``runtime.errors.PortInUse``)."""

    host_addr: str
    host_port: int
    protocol: str
    holder: str | None = None


@dataclass(frozen=True)
class Failure:
    code: ErrorCode
    message: str
    port: PortConflict | None = None
    """For ``PORT_IN_USE``: the port taken (its fields are sent beside the message)."""


Reply = Pong | Done | Launched | Restored | Rewired | ProbeResult | ExecResult | Failure
R = TypeVar("R", Pong, Done, Launched, Restored, Rewired, ProbeResult, ExecResult)


# -- encoding ----------------------------------------------------------------------------


def to_json(message: Request | Reply) -> dict[str, Any]:
    """The JSON object of a request or a reply."""
    if isinstance(message, Failure):
        head: dict[str, Any] = {"ok": False, "error": message.code.value}
        port = dataclasses.asdict(message.port) if message.port is not None else {}
        return {**head, "message": message.message, **port}
    # Each field is a JSON value already (no message holds a dataclass but Failure):
    # no copy of them, which asdict would make (50 µs for a launch request, a start's
    # encoding on the client's side, and as much for its run record in the spare).
    body = fields_of(message)
    if isinstance(message, Pong | Done | Launched | Restored | Rewired | ProbeResult | ExecResult):
        return {"ok": True, **body}
    return {"op": message.op.value, **body}


def encode(message: Request | Reply) -> bytes:
    """The wire form of a request or a reply."""
    return json.dumps(to_json(message)).encode()


def decode_request(data: dict[str, Any]) -> Request:
    """A request from its JSON object; ProtocolError says what is wrong with it."""
    data = dict(data)
    op = data.pop("op", None)
    kind = _REQUESTS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise ProtocolError(f"unknown op in request: {list(_REQUESTS)} expected")
    return _build(kind, data)


def decode_reply(data: dict[str, Any], expected: type[R]) -> R | Failure:
    """The reply to a request that answers ``expected``, or the failure it reports."""
    data = dict(data)
    ok = data.pop("ok", None)
    if ok is True:
        return _build(expected, data)
    if ok is not False:
        raise ProtocolError("reply has no boolean 'ok'")
    try:
        code = ErrorCode(data.pop("error", None))
    except ValueError:
        code = ErrorCode.START_FAILED if expected is Launched else ErrorCode.BAD_REQUEST
    message = data.pop("message", "")
    port = _build(PortConflict, data) if code is ErrorCode.PORT_IN_USE else None
    return Failure(code, str(message), port)


T = TypeVar("T")


def _build(kind: type[T], data: dict[str, Any]) -> T:
    """``kind`` from JSON fields, each checked against its annotation."""
    hints = _hints(kind)
    unknown = set(data) - set(hints)
    if unknown:
        raise ProtocolError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
    try:
        return kind(**{name: _check(hints[name], value, name) for name, value in data.items()})
    except TypeError as exc:  # a required field is missing
        raise ProtocolError(f"{kind.__name__}: {exc}") from None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(kind: type) -> dict[str, Any]:
    """The annotations of ``kind``'s dataclass fields (worked out once per class)."""
    if kind not in _HINTS:
        names = {f.name for f in dataclasses.fields(kind)}
        hints = typing.get_type_hints(kind)
        _HINTS[kind] = {k: v for k, v in hints.items() if k in names}
    return _HINTS[kind]


def _check(hint: Any, value: Any, name: str) -> Any:
    """``value`` as a field of type ``hint`` (a JSON list becomes a tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if type(None) in args and len(args) == 2:  # optional: None or the other type
        other = args[1] if args[0] is type(None) else args[0]
        return None if value is None else _check(other, value, name)
    is_sequence = origin is tuple and isinstance(value, list | tuple)
    if is_sequence and all(isinstance(v, str) for v in value):
        return tuple(value)
    if origin is dict and isinstance(value, dict) and _all_of(value, str, args[1]):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:  # True is no int here
        return value
    raise ProtocolError(f"field {name!r}: {value!r:.100} is not a {hint}")


def _all_of(mapping: dict[Any, Any], key: type, value: Any) -> bool:
    """Whether every key is a ``key`` and every value a ``value`` (``Any``: anything)."""
    keys_ok = all(isinstance(k, key) for k in mapping)
    return keys_ok and (value is Any or all(isinstance(v, value) for v in mapping.values()))
