"""``reconciler fleet status URL...``: several hosts' status side by side.

Each URL is a host's status document: ``http://HOST:PORT`` (``/status`` is added when
the URL has no path), the ``GET /status`` that ``reconciler run --listen`` serves, which
is exactly ``reconciler status --json``'s document; or ``file:///path/status.json``,
such a document saved. Every host is asked at once, each within its own timeout.

A host's revision is what its source last applied: ``source.applied.commit`` (a git
source), else the ``last_revision`` of its latest pass, the loop's or ``apply``'s (a
folder: a digest of its files, the same on hosts whose files are the same). The newest
revision is the one committed last (``source.applied.time``); when no host says when,
the one most hosts have. A host is *behind* when its revision is not the newest,
*unreachable* when its document could not be read; either makes the command exit 1.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import anyio
import httpx
from rich.markup import escape
from rich.table import Table

__all__ = ("FleetReport", "HostReport", "fleet_table", "gather", "status_url")

State = Literal["current", "behind", "unreachable"]


@dataclass(frozen=True)
class HostReport:
    """One host's status document, or why it could not be read."""

    url: str
    document: dict[str, Any] | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        """The host's name, as it reports it; else its URL's host part."""
        host = (self.document or {}).get("host")
        if isinstance(host, dict) and isinstance(host.get("name"), str):
            return str(host["name"])
        return urlsplit(self.url).netloc or self.url

    @property
    def revision(self) -> str | None:
        applied = _get(self.document, "source", "applied")
        commit = applied.get("commit") if isinstance(applied, dict) else None
        if isinstance(commit, str):
            return commit
        passes = [
            record
            for record in (_get(self.document, "loop"), _get(self.document, "apply"))
            if isinstance(record, dict) and isinstance(record.get("last_revision"), str)
        ]
        latest = max(passes, key=lambda r: _number(r.get("last_pass_at")), default=None)
        return None if latest is None else str(latest["last_revision"])

    @property
    def applied_at(self) -> float | None:
        """When the applied commit was made (seconds since the epoch), if the host says."""
        at = _get(self.document, "source", "applied", "time")
        return _number(at) if isinstance(at, int | float) and not isinstance(at, bool) else None

    def containers(self) -> list[tuple[str, str]]:
        """(name, phase) of each container the host reports."""
        rows = (self.document or {}).get("containers")
        if not isinstance(rows, list):
            return []
        return [(str(r.get("name")), str(r.get("phase"))) for r in rows if isinstance(r, dict)]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _get(document: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


@dataclass(frozen=True)
class FleetReport:
    """Every host asked, in the order given, and the newest revision among them."""

    hosts: tuple[HostReport, ...]
    newest: str | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "newest", _newest(self.hosts))

    def state(self, host: HostReport) -> State:
        if host.document is None:
            return "unreachable"
        return "current" if host.revision == self.newest else "behind"

    def problems(self) -> list[str]:
        """One line per host that is unreachable or behind."""
        lines = []
        for host in self.hosts:
            state = self.state(host)
            if state == "unreachable":
                lines.append(f"{host.name}: unreachable: {host.error}")
            elif state == "behind":
                lines.append(
                    f"{host.name}: behind: at {_short(host.revision)}, newest {_short(self.newest)}"
                )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "newest": self.newest,
            "hosts": [
                {
                    "url": h.url,
                    "host": h.name,
                    "state": self.state(h),
                    "revision": h.revision,
                    "error": h.error,
                    "containers": [{"name": n, "phase": p} for n, p in h.containers()],
                }
                for h in self.hosts
            ],
        }


def _newest(hosts: Sequence[HostReport]) -> str | None:
    """The revision committed last, else the one most hosts have (the first given of
    equally common ones)."""
    known = [h for h in hosts if h.document is not None and h.revision is not None]
    dated = [h for h in known if h.applied_at is not None]
    if dated:
        return max(dated, key=lambda h: h.applied_at or 0.0).revision
    counts = Counter(h.revision for h in known)
    return max(counts, key=lambda r: counts[r]) if counts else None


def _short(revision: str | None) -> str:
    if revision is None:
        return "none"
    return revision[:12] if all(c in "0123456789abcdef" for c in revision) else revision


def status_url(url: str) -> str:
    """``url`` with ``/status`` as its path when it names none (http and https)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/status"))
    return url


async def _fetch(client: httpx.AsyncClient, url: str, per_host: float) -> HostReport:
    try:
        if urlsplit(url).scheme == "file":
            text = await anyio.Path(url2pathname(urlsplit(url).path)).read_text(encoding="utf-8")
        else:
            with anyio.fail_after(per_host):  # the whole answer, not each read alone
                response = await client.get(status_url(url), timeout=per_host)
            response.raise_for_status()
            text = response.text
        document = json.loads(text)
    except TimeoutError:
        return HostReport(url, error=f"no answer within {per_host:g} s")
    except (httpx.HTTPError, OSError, UnicodeDecodeError) as exc:
        return HostReport(url, error=str(exc) or type(exc).__name__)
    except ValueError as exc:
        return HostReport(url, error=f"not a status document: {exc}")
    if not isinstance(document, dict):
        return HostReport(url, error="not a status document: not a JSON object")
    return HostReport(url, document)


async def gather(urls: Sequence[str], *, per_host: float) -> FleetReport:
    """Every host's status, asked at once, each within ``per_host`` seconds."""
    found: dict[int, HostReport] = {}

    async def one(index: int, client: httpx.AsyncClient) -> None:
        found[index] = await _fetch(client, urls[index], per_host)

    client = httpx.AsyncClient(follow_redirects=False)
    async with client, anyio.create_task_group() as group:
        for index in range(len(urls)):
            group.start_soon(one, index, client)
    return FleetReport(tuple(found[i] for i in range(len(urls))))


def fleet_table(report: FleetReport) -> Table:
    """HOST, CONTAINER, PHASE, REVISION, STATE: a row per container of each host (one
    row for a host with none, or unreachable)."""
    table = Table("HOST", "CONTAINER", "PHASE", "REVISION", "STATE")
    for host in report.hosts:
        state = report.state(host)
        revision = "-" if host.revision is None else _short(host.revision)
        for name, phase in host.containers() or [("-", "-")]:
            table.add_row(escape(host.name), escape(name), escape(phase), escape(revision), state)
    return table
