"""The systemd cgroup driver's D-Bus side: transient scopes started and changed.

As runc's and crun's systemd managers do, the container's init is handed to the user's
systemd instance over D-Bus (``StartTransientUnit`` with ``Delegate=yes``): systemd creates
``<unit>.scope`` under ``user@UID.service``, moves the init there and applies the limits it
has properties for (``MemoryMax``, ``MemorySwapMax``, ``CPUQuotaPerSecUSec``,
``CPUWeight``, ``TasksMax``). With ``Delegate=yes`` the scope's folder belongs to the user,
so kill, freeze and events are then plain cgroupfs writes there (limits change through
systemd, which must know them).

The call is made by the holder's launcher, from inside the containers' user namespace:
its effective uid there is 0, so the D-Bus ``EXTERNAL`` authentication names the user's
uid outside (``host_uid``), which is what the bus sees on the socket. jeepney builds and
parses the messages; the handshake is written here for that reason. What a scope holds
is decided by the client (:mod:`runtime.cgroups.scopes`): this module is the launcher's
light path and loads no pydantic.
"""

from __future__ import annotations

import binascii
import os
import socket
import time
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, new_method_call
from jeepney.low_level import HeaderFields, Message, MessageType, Parser

from runtime.cgroups.fs import cgroup_of

__all__ = ("ScopeError", "set_properties", "start_scope")

_MANAGER = DBusAddress(
    "/org/freedesktop/systemd1",
    bus_name="org.freedesktop.systemd1",
    interface="org.freedesktop.systemd1.Manager",
)
_BUS = DBusAddress(
    "/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus"
)
_TIMEOUT = 10.0


class ScopeError(OSError):
    """The user's systemd did not give the container its scope."""


class _Connection:
    """One blocking D-Bus connection, authenticated as ``host_uid``."""

    def __init__(self, path: str, host_uid: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(_TIMEOUT)
        self.parser = Parser()
        self.serial = 0
        try:
            self.sock.connect(path)
            uid = binascii.hexlify(str(host_uid).encode())
            self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
            answer = self._line()
            if not answer.startswith(b"OK "):
                raise ScopeError(f"the user's bus refused us: {answer!r}")
            self.sock.sendall(b"BEGIN\r\n")
            self.call(new_method_call(_BUS, "Hello"))
        except BaseException:
            self.sock.close()
            raise

    def _line(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            if not chunk or len(data) > 4096:
                raise ScopeError("the user's bus answered the handshake with nonsense")
            data += chunk
        return data

    def call(self, message: Message) -> Message:
        """Send ``message``; return its reply (an error reply raises :class:`ScopeError`)."""
        self.serial += 1
        self.sock.sendall(message.serialise(serial=self.serial))
        while True:
            reply = self.parser.get_next_message()
            if reply is None:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ScopeError("the user's bus closed the connection")
                self.parser.add_data(chunk)
                continue
            if reply.header.fields.get(HeaderFields.reply_serial) != self.serial:
                continue  # a signal, or NameAcquired after Hello
            if reply.header.message_type is MessageType.error:
                name = reply.header.fields.get(HeaderFields.error_name)
                raise ScopeError(f"systemd: {name}: {reply.body}")
            return reply

    def close(self) -> None:
        self.sock.close()


def start_scope(scope: dict[str, Any], pid: int) -> Path:
    """Put ``pid`` into a new delegated transient scope as ``scope`` describes it (``bus``,
    ``host_uid``, ``unit``, ``properties`` from
    :func:`runtime.cgroups.scopes.scope_properties`); return the scope's cgroup folder
    once the process is in it."""
    unit = str(scope["unit"])
    props = [
        ("Description", ("s", str(scope.get("description", f"squish container {unit}")))),
        ("PIDs", ("au", [pid])),
        ("Delegate", ("b", True)),
        ("CollectMode", ("s", "inactive-or-failed")),
        *((str(name), (str(sig), value)) for name, (sig, value) in scope["properties"]),
    ]
    connection = _Connection(str(scope["bus"]), int(scope["host_uid"]))
    try:
        connection.call(
            new_method_call(
                _MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", (unit, "fail", props, [])
            )
        )
    finally:
        connection.close()
    ends = time.monotonic() + _TIMEOUT
    while time.monotonic() < ends:  # the job moves the process, then sets the limits
        folder = cgroup_of(pid)
        if folder is not None and folder.name == unit and _realized(folder, props):
            return folder
        time.sleep(0.002)
    raise ScopeError(f"systemd did not put process {pid} into {unit} with its limits in time")


def _expected_files(props: list[tuple[str, tuple[str, Any]]]) -> dict[str, str]:
    """What the scope's cgroup files say once systemd has applied ``props``."""
    wanted = {}
    for name, (_, value) in props:
        if name == "MemoryMax":
            wanted["memory.max"] = str(value)
        elif name == "MemorySwapMax":
            wanted["memory.swap.max"] = str(value)
        elif name == "TasksMax":
            wanted["pids.max"] = str(value)
        elif name == "CPUWeight":
            wanted["cpu.weight"] = str(value)
        elif name == "CPUQuotaPerSecUSec":
            wanted["cpu.max"] = f"{int(value) // 10} 100000"  # systemd's 100 ms period
    return wanted


def _realized(folder: Path, props: list[tuple[str, tuple[str, Any]]]) -> bool:
    """Whether the limits are in place (a controller systemd could not enable never is:
    the caller then stops waiting at the timeout)."""
    offered = (folder.parent / "cgroup.controllers").read_text().split()
    for file, value in _expected_files(props).items():
        try:
            if (folder / file).read_text().strip() != value:
                return False
        except FileNotFoundError:
            if file == "memory.swap.max" or file.split(".")[0] not in offered:
                continue  # no swap accounting, or not delegated: nothing will come
            return False
    return True


def set_properties(bus: str, unit: str, props: list[tuple[str, tuple[str, Any]]]) -> None:
    """Change a running scope's properties through systemd (``SetUnitProperties``, runtime
    only), so that systemd's own view stays right and a reload does not undo them."""
    connection = _Connection(bus, os.getuid())
    try:
        connection.call(
            new_method_call(_MANAGER, "SetUnitProperties", "sba(sv)", (unit, True, props))
        )
    finally:
        connection.close()
