"""The squishfile's ``[placement]`` table: which hosts a container runs on.

A host is known by its name and its labels (:class:`HostIdentity`, from
``reconciler --host NAME --label k=v``). ``hosts`` are shell-style globs matched against
the name (one must match); every one of ``labels`` must be a label of the host, with
the same value. A file without ``[placement]`` runs on every host. Matching is pure:
:meth:`PlacementSection.misses` says why a host is not one the file runs on.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, field_validator

from reconciler.problems import toml_quote as _q
from reconciler.squishfile.fields import STRICT, as_tuple, not_empty

__all__ = ("HostIdentity", "PlacementSection", "may_share_a_host")


@dataclass(frozen=True)
class HostIdentity:
    """This host as placement sees it: its name and its labels."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """The ``host`` object of ``status --json``."""
        return {"name": self.name, "labels": dict(sorted(self.labels.items()))}


def _check_glob(value: str) -> str:
    if not value or value != value.strip() or "\0" in value:
        raise ValueError(f"{_q(value)} is not a host name pattern")
    return value


_Pattern = Annotated[str, AfterValidator(_check_glob)]


class PlacementSection(BaseModel):
    """The ``[placement]`` table: the hosts a container runs on (default: every host)."""

    model_config = STRICT

    hosts: tuple[_Pattern, ...] | None = Field(
        default=None,
        description='host name patterns ("web-*", "db-1"; shell-style globs); the host\'s '
        "name must match one",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description='labels the host must have, each with this value (zone = "a")',
    )

    _hosts_from_array = field_validator("hosts", mode="before")(as_tuple)

    _hosts_not_empty = field_validator("hosts")(
        not_empty("may not be empty: leave hosts out to run on every host")
    )

    def misses(self, host: HostIdentity) -> str | None:
        """Why ``host`` is not one this container runs on; None when it is."""
        if self.hosts is not None and not any(
            fnmatch.fnmatchcase(host.name, pattern) for pattern in self.hosts
        ):
            patterns = ", ".join(_q(p) for p in self.hosts)
            return f"host {_q(host.name)} matches none of hosts [{patterns}]"
        for key, wanted in sorted(self.labels.items()):
            have = host.labels.get(key)
            if have is None:
                return f"host {_q(host.name)} has no label {key} (wanted {key}={_q(wanted)})"
            if have != wanted:
                return f"host {_q(host.name)} has label {key}={_q(have)}, wanted {_q(wanted)}"
        return None


def may_share_a_host(a: PlacementSection | None, b: PlacementSection | None) -> bool:
    """Whether some host could run both files: False only when their placements rule
    it out for certain (a label wanted with two values; a list of plain host names
    that the other's patterns match none of). Two patterns are assumed to meet."""
    if a is None or b is None:
        return True
    if any(a.labels[key] != b.labels[key] for key in a.labels.keys() & b.labels.keys()):
        return False
    return _names_may_meet(a.hosts, b.hosts) and _names_may_meet(b.hosts, a.hosts)


def _names_may_meet(names: tuple[str, ...] | None, patterns: tuple[str, ...] | None) -> bool:
    """False when ``names`` are all plain names and none matches ``patterns``."""
    if names is None or patterns is None or any(_is_pattern(n) for n in names):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def _is_pattern(value: str) -> bool:
    return any(c in value for c in "*?[")
