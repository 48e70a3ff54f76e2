"""Webhooks from GitHub and Gitea: is a delivery signed with our secret, and what is it.

Both sign the raw body with HMAC-SHA256 and the webhook's secret: GitHub in
``X-Hub-Signature-256: sha256=<hex>``, Gitea in ``X-Gitea-Signature: <hex>``. The
signature is checked (in constant time) before the body is parsed at all. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ("FORGES", "Delivery", "Forge", "Headers", "Verdict", "judge")


class Headers(Protocol):
    """A request's headers, looked up case-insensitively (``http.client.HTTPMessage``)."""

    def get(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class Forge:
    """How one kind of git server signs and names its deliveries."""

    signature: str
    """The header holding the signature."""
    prefix: str
    """What precedes the hex digest in it."""
    event: str
    """The header naming the event (``push``, ``ping``...)."""


FORGES = {
    "github": Forge("X-Hub-Signature-256", "sha256=", "X-GitHub-Event"),
    "gitea": Forge("X-Gitea-Signature", "", "X-Gitea-Event"),
}
"""By the last part of the hook's path: ``/hooks/github``, ``/hooks/gitea``."""


class Verdict(Enum):
    """What a delivery gets, with its HTTP status."""

    PUSH = 202
    """Signed, a push (or another event that may move a branch): look at the origin."""
    IGNORED = 200
    """Signed, an event that changes nothing here (``ping``...)."""
    UNSIGNED = 401
    FORGED = 403
    MALFORMED = 400


@dataclass(frozen=True)
class Delivery:
    verdict: Verdict
    event: str | None = None


PUSH_EVENTS = frozenset({"push", "create", "delete"})
"""Events after which a branch or tag may point elsewhere."""


def judge(forge: Forge, headers: Headers, body: bytes, secret: bytes) -> Delivery:
    """The verdict on one delivery."""
    given = headers.get(forge.signature)
    if not given:
        return Delivery(Verdict.UNSIGNED)
    expected = forge.prefix + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
        return Delivery(Verdict.FORGED)
    event = headers.get(forge.event)
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return Delivery(Verdict.MALFORMED, event)
    if not event or not isinstance(payload, dict):
        return Delivery(Verdict.MALFORMED, event)
    return Delivery(Verdict.PUSH if event in PUSH_EVENTS else Verdict.IGNORED, event)
