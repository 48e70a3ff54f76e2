"""Who holds a host port: read from /proc/net and the holder's /proc/PID/fd; and which
ports no rootless process may bind (``net.ipv4.ip_unprivileged_port_start``).

Only the listening socket's inode is public; the process behind it is found only when it
belongs to the same user (or the caller may read its descriptors). Used to say *who* or
*what* is in the way when a forward cannot be added.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

__all__ = ("UNPRIVILEGED_PORT_START", "port_holder", "unprivileged_port_start")

UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
"""The sysctl: ports below it need CAP_NET_BIND_SERVICE (in the host's network namespace)."""

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


def _hex_addr(raw: str) -> tuple[str, int]:
    addr_hex, port_hex = raw.split(":")
    data = bytes.fromhex(addr_hex)
    # /proc/net prints the address as host-order 32-bit words.
    words = b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))
    return str(ipaddress.ip_address(words)), int(port_hex, 16)


def _socket_inodes(protocol: str, host_addr: str, port: int) -> set[str]:
    state = _TCP_LISTEN if protocol == "tcp" else _UDP_UNCONNECTED
    wildcard = {"0.0.0.0", "::"}
    inodes = set()
    for table in (f"/proc/net/{protocol}", f"/proc/net/{protocol}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != state:
                continue
            addr, local_port = _hex_addr(fields[1])
            if local_port == port and (
                addr == host_addr or addr in wildcard or host_addr in wildcard
            ):
                inodes.add(fields[9])
    return inodes


def port_holder(protocol: str, host_addr: str, port: int) -> str | None:
    """``"pid N (name)"`` of a process of ours that holds the port, else None."""
    inodes = {f"socket:[{inode}]" for inode in _socket_inodes(protocol, host_addr, port)}
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.listdir(entry / "fd"):
                if os.readlink(entry / "fd" / fd) in inodes:
                    name = (entry / "comm").read_text().strip()
                    return f"pid {entry.name} ({name})"
        except OSError:
            continue
    return None


def unprivileged_port_start(sysctl: Path = UNPRIVILEGED_PORT_START) -> int:
    """The first port an unprivileged process may bind on this host (1024, the kernel's
    default, when the sysctl cannot be read)."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return 1024
