"""The nftables rules of the shared network namespace, as one ruleset replaced whole.

- out: each network that is not internal is masqueraded out of slirp4netns' tap;
- in: a host forward arrives from slirp4netns on the tap at ``10.0.2.100:GUEST_PORT`` and
  is sent on to its container's address and port (DNAT); its answers go back through
  connection tracking;
- isolation: the namespace forwards nothing else (but within one bridge): not between
  two bridges, not from an
  internal network out, not from the tap to a container unless a forward says so; a
  container may reach its own network's gateway (the DNS responder) and no other
  address of the namespace.

:func:`ruleset` only writes the text (a pure function, tested as such); :func:`apply` hands
it to ``nft -f -`` in the namespace the process is in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.errors import HostSetupError

__all__ = ("TABLE", "Bridge", "Dnat", "apply", "nft_binary", "ruleset")

TABLE = "squish"
TAP = "tap0"


@dataclass(frozen=True)
class Bridge:
    """One network's bridge as the rules see it."""

    ifname: str
    subnet: str
    gateway: str
    internal: bool


@dataclass(frozen=True)
class Dnat:
    """A host forward: what arrives on the tap at ``guest_port`` goes to ``address:port``."""

    proto: str
    guest_port: int
    address: str
    port: int


def _lines(bridges: Iterable[Bridge], forwards: Iterable[Dnat]) -> list[str]:
    bridges, forwards = list(bridges), list(forwards)
    dnat = [
        f"iifname {TAP} {f.proto} dport {f.guest_port} dnat to {f.address}:{f.port}"
        for f in forwards
    ]
    out = [f"oifname {TAP} ip saddr {b.subnet} masquerade" for b in bridges if not b.internal]
    forward = ["ct state established,related accept", "ct status dnat accept"]
    # Between two ports of one bridge: seen here only if the kernel passes bridged frames
    # through the IP hooks (br_netfilter; the agent turns that off in the namespace).
    forward += [f"iifname {b.ifname} oifname {b.ifname} accept" for b in bridges]
    forward += [f"iifname {b.ifname} oifname {TAP} accept" for b in bridges if not b.internal]
    own = [f"iifname {b.ifname} ip daddr != {b.gateway} drop" for b in bridges]
    # A container's root may write its own IP headers (CAP_NET_RAW): a source address
    # outside its network's would have an answer sent to another network's container.
    forged = [f"iifname {b.ifname} ip saddr != {b.subnet} drop" for b in bridges]
    return [
        f"table ip {TABLE} {{",
        "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {rule}" for rule in dnat),
        "  }",
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;",
        *(f"    {rule}" for rule in out),
        "  }",
        "  chain forward { type filter hook forward priority filter; policy drop;",
        *(f"    {rule}" for rule in (*forged, *forward)),
        "  }",
        "  chain input { type filter hook input priority filter; policy accept;",
        *(f"    {rule}" for rule in forged),
        "    ct state established,related accept",
        f"    iifname {TAP} drop",
        *(f"    {rule}" for rule in own),
        "  }",
        "}",
    ]


def ruleset(bridges: Iterable[Bridge], forwards: Iterable[Dnat]) -> str:
    """The whole ruleset: the table is dropped and made again in one transaction, so a
    reader never sees half of it."""
    head = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}"]
    return "\n".join([*head, *_lines(bridges, forwards)]) + "\n"


def nft_binary() -> str:
    path = shutil.which("nft", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        raise HostSetupError(
            "nft not found; bridge networks need it for NAT and isolation",
            fix="install the 'nftables' package (apt-get install nftables)",
        )
    return path


def apply(text: str) -> None:
    """Load ``text`` with ``nft -f -`` in this process's network namespace."""
    done = subprocess.run(
        [nft_binary(), "-f", "-"], input=text.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise OSError(f"nft refused the ruleset: {done.stderr.decode(errors='replace').strip()}")
