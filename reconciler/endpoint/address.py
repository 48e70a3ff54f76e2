"""Where the endpoint listens: ``127.0.0.1:PORT`` or ``[::1]:PORT``, loopback unless told."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from reconciler.settings import BadSetting

__all__ = ("Listen", "parse_listen")


@dataclass(frozen=True)
class Listen:
    host: str
    """An IP address, without brackets."""
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str, *, any_address: bool = False) -> Listen:
    """``HOST:PORT`` (an IPv6 host in brackets). A host that is not a loopback address is
    refused unless ``any_address``: the endpoint has no TLS and serves status to anyone
    who can reach it."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise BadSetting("--listen", text, "expected ADDRESS:PORT, e.g. 127.0.0.1:9090") from None
    if not sep or not 0 < number < 65536:
        raise BadSetting("--listen", text, "expected a port from 1 to 65535")
    if not address.is_loopback and not any_address:
        raise BadSetting(
            "--listen",
            text,
            "not a loopback address: the endpoint has no TLS and no access control "
            "besides the webhook signature; use 127.0.0.1 or [::1] behind a proxy, "
            "or add --listen-any to listen there anyway",
        )
    return Listen(str(address), number)
