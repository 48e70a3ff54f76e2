"""Conflicts between files: two files asking for one container name or one host port.

One rule, used by ``reconciler validate``, by loading a folder and by the planner:

1. The file that holds the name or port now keeps it: the running container of that name
   was made from it, or its container's live forwards already hold the port. Containers
   kept running without a valid file (a broken file, a removal in back-off), or whose own
   file is refused, keep their ports too, and a broken file keeps the name of the
   container running from it (:func:`yield_to_broken`).
2. Else the file that sorts first by file name (then by full path) keeps it.
3. Every other file is refused with a :class:`Problem` at its own line (``name`` or
   ``ports[N].host``) that names the file keeping it. A file refused its name claims no
   port.

Pure: no I/O, so the rule is tested as a table and gives the same answer everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.desired.types import LABEL_FILE, DesiredContainer, FileError
from reconciler.problems import Problem, toml_quote
from runtime.api import ContainerInfo, PortMapping

__all__ = (
    "Claim",
    "Holding",
    "claim_of",
    "holders_of",
    "overlaps",
    "refuse",
    "refuse_names",
    "refuse_ports",
    "settle_names",
    "yield_to_broken",
)


@dataclass(frozen=True)
class Claim:
    """One valid file: the container name and host ports it asks for."""

    path: Path
    name: str
    ports: tuple[PortMapping, ...] = ()
    """In the file's own order: ``ports[N]`` in ``lines`` and in problems counts them."""
    lines: Mapping[str, int] = field(default_factory=dict)
    """Line of each field in the file: ``name``, ``ports[0].host``, ..."""


def claim_of(entry: DesiredContainer) -> Claim:
    ports = entry.spec.ports if entry.file_ports is None else entry.file_ports
    return Claim(entry.file, entry.name, ports, dict(entry.lines))


@dataclass(frozen=True)
class Holding:
    """A running container of the folder: the file it was made from, its live forwards."""

    file: str
    ports: tuple[PortMapping, ...] = ()


def holders_of(ours: Mapping[str, ContainerInfo]) -> dict[str, Holding]:
    """The folder's containers by name, as holders of their names and live forwards."""
    return {
        name: Holding(info.spec.labels.get(LABEL_FILE, ""), info.ports)
        for name, info in ours.items()
    }


Refusals = dict[int, Problem]
"""Index into the claims → why that claim is refused."""


def overlaps(a: PortMapping, b: PortMapping) -> bool:
    """Whether two forwards need the same host socket (a wildcard address takes all)."""
    return a.shares_socket_with(b)


def _order(claim: Claim) -> tuple[str, str]:
    return claim.path.name, str(claim.path)


def _named(other: Claim, me: Claim) -> str:
    """``other``'s file as ``me``'s reader knows it: its name when in the same folder."""
    return other.path.name if other.path.parent == me.path.parent else str(other.path)


def _refusal(claim: Claim, where: str, message: str) -> Problem:
    return Problem(str(claim.path), claim.lines.get(where), where, message)


def refuse(
    claims: Sequence[Claim],
    holders: Mapping[str, Holding] | None = None,
    reserved: Mapping[str, tuple[PortMapping, ...]] | None = None,
) -> Refusals:
    """Names first, then host ports among the files that keep their names.

    ``holders`` maps a container name to its running container; ``reserved`` maps the
    name of a container kept running without a valid file to its live forwards.
    """
    refused = refuse_names(claims, holders or {})
    rest = [i for i in range(len(claims)) if i not in refused]
    ports = refuse_ports([claims[i] for i in rest], holders or {}, reserved or {})
    return refused | {rest[i]: problem for i, problem in ports.items()}


def refuse_names(claims: Sequence[Claim], holders: Mapping[str, Holding]) -> Refusals:
    """The claims refused their container name: one file per name keeps it."""
    by_name: dict[str, list[int]] = {}
    for index, claim in enumerate(claims):
        by_name.setdefault(claim.name, []).append(index)
    refused: Refusals = {}
    for name, indexes in by_name.items():
        holding = holders.get(name)

        def runs(claim: Claim, holding: Holding | None = holding) -> bool:
            return holding is not None and holding.file == claim.path.name

        ranked = sorted(indexes, key=lambda i: (not runs(claims[i]), _order(claims[i])))
        keeper = claims[ranked[0]]
        why = "runs it now" if runs(keeper) else "sorts first"
        for index in ranked[1:]:
            claim = claims[index]
            message = (
                f"container name {toml_quote(name)} is also declared by "
                f"{_named(keeper, claim)}, which {why}"
            )
            refused[index] = _refusal(claim, "name", message)
    return refused


def settle_names(
    entries: Sequence[DesiredContainer], holders: Mapping[str, Holding]
) -> tuple[dict[str, DesiredContainer], list[FileError]]:
    """The containers that keep their names, and a ``DuplicateName`` error for each other
    file (it carries its container, so a later decision with ``holders`` can swap)."""
    refused = refuse_names([claim_of(entry) for entry in entries], holders)
    kept = {entry.name: entry for i, entry in enumerate(entries) if i not in refused}
    errors = [
        FileError(entries[i].file, entries[i].name, (problem,), "DuplicateName", refused=entries[i])
        for i, problem in refused.items()
    ]
    return kept, errors


def yield_to_broken(
    kept: Mapping[str, DesiredContainer], holders: Mapping[str, Holding], broken: frozenset[str]
) -> tuple[dict[str, DesiredContainer], list[FileError]]:
    """``kept`` without the containers whose running namesake was made from a file of
    ``broken`` (those that do not validate now), and a ``DuplicateName`` error for each:
    a typo in the file a container runs from must not hand its name to another file
    declaring it. The last valid spec keeps running until the file is fixed or removed."""
    out = dict(kept)
    errors: list[FileError] = []
    for name, entry in kept.items():
        holding = holders.get(name)
        if holding is None or holding.file not in broken or holding.file == entry.file.name:
            continue
        message = (
            f"container name {toml_quote(name)} is also declared by {holding.file}, which "
            "runs it now and does not validate: its last valid spec keeps running"
        )
        problem = _refusal(claim_of(entry), "name", message)
        errors.append(FileError(entry.file, name, (problem,), "DuplicateName", refused=entry))
        del out[name]
    return out, errors


def refuse_ports(
    claims: Sequence[Claim],
    holders: Mapping[str, Holding],
    reserved: Mapping[str, tuple[PortMapping, ...]],
) -> Refusals:
    """The claims that may not take their host ports now (names already unique)."""

    def holds(claim: Claim, port: PortMapping) -> bool:
        holding = holders.get(claim.name)
        return holding is not None and any(overlaps(port, live) for live in holding.ports)

    demoted: Refusals = {}
    while True:
        refused, newly = _rank_ports(claims, holds, reserved, demoted)
        if not newly:
            return refused
        demoted.update(newly)  # a winner pushed out late: rank the rest again without it


_Holds = Callable[[Claim, PortMapping], bool]
_Clash = tuple[int, int, int]
"""(index of my port, index of the other's port, index of the other claim)."""


def _rank_ports(
    claims: Sequence[Claim],
    holds: _Holds,
    reserved: Mapping[str, tuple[PortMapping, ...]],
    demoted: Refusals,
) -> tuple[Refusals, Refusals]:
    """One ranking; returns (refused, winners demoted during it that were not known yet)."""
    refused: Refusals = dict(demoted)
    newly: Refusals = {}
    winners: list[int] = []
    by_port: dict[tuple[str, int], set[int]] = {}
    for index in sorted(range(len(claims)), key=lambda i: _order(claims[i])):
        if index in demoted:
            continue
        kept = _reserved_clash(claims[index], reserved)
        if kept is not None:
            refused[index] = kept
            continue
        clashes = _clashes_with(claims, index, winners, by_port)
        if clashes and all(_mine_now(claims, index, c, holds) for c in clashes):
            for _, theirs, other in clashes:  # it holds these ports now: it keeps them
                if other in winners:
                    winners.remove(other)
                refused[other] = newly[other] = _port_refusal(
                    claims[other], theirs, claims[index], "holds it now"
                )
            clashes = []
        if not clashes:
            winners.append(index)
            for port in claims[index].ports:
                by_port.setdefault((port.protocol, port.host), set()).add(index)
            continue
        mine, theirs, other = next(c for c in clashes if not _mine_now(claims, index, c, holds))
        why = "holds it now" if holds(claims[other], claims[other].ports[theirs]) else "sorts first"
        refused[index] = _port_refusal(claims[index], mine, claims[other], why)
    return refused, newly


def _clashes_with(
    claims: Sequence[Claim],
    index: int,
    winners: Sequence[int],
    by_port: Mapping[tuple[str, int], set[int]],
) -> list[_Clash]:
    """The clashes of claim ``index`` with the winners so far, in their order. Only the
    claims ``by_port`` lists with one of its host ports can clash (a superset of the
    winners'): looking them up keeps a ranking linear in the number of claims."""
    near: set[int] = set()
    for port in claims[index].ports:
        near |= by_port.get((port.protocol, port.host), set())
    if not near:
        return []
    return [c for other in winners if other in near for c in _clashes(claims, index, other)]


def _clashes(claims: Sequence[Claim], index: int, other: int) -> list[_Clash]:
    """Linear in the two claims' ports (a file may hold thousands): only the other's
    ports of the same protocol and host port can overlap one of mine."""
    theirs: dict[tuple[str, int], list[int]] = {}
    for t, port in enumerate(claims[other].ports):
        theirs.setdefault((port.protocol, port.host), []).append(t)
    return [
        (m, t, other)
        for m, port in enumerate(claims[index].ports)
        for t in theirs.get((port.protocol, port.host), ())
        if overlaps(port, claims[other].ports[t])
    ]


def _mine_now(claims: Sequence[Claim], index: int, clash: _Clash, holds: _Holds) -> bool:
    """Whether the claim holds its side of ``clash`` now and the other does not."""
    mine, theirs, other = clash
    return holds(claims[index], claims[index].ports[mine]) and not holds(
        claims[other], claims[other].ports[theirs]
    )


def _reserved_clash(
    claim: Claim, reserved: Mapping[str, tuple[PortMapping, ...]]
) -> Problem | None:
    for owner, ports in reserved.items():
        if owner == claim.name:
            continue  # its own old forwards: the claim decides what becomes of them
        for index, mine in enumerate(claim.ports):
            if any(overlaps(mine, port) for port in ports):
                message = (
                    f"host port {mine} is held by {owner}, which is kept running "
                    "until its own file is fixed or its removal succeeds"
                )
                return _refusal(claim, f"ports[{index}].host", message)
    return None


def _port_refusal(claim: Claim, index: int, keeper: Claim, why: str) -> Problem:
    port, named = claim.ports[index], _named(keeper, claim)
    message = f"host port {port} is also claimed by {named}, which {why}"
    return _refusal(claim, f"ports[{index}].host", message)
