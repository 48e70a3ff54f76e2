"""Checking a set of squishfiles the way the reconciler will: each file, then conflicts.

``reconciler validate`` uses :func:`validate_files`; the conflict rule is the planner's
(:mod:`reconciler.planning.conflicts`), so a file refused here is refused by ``plan``
and ``status`` too. :func:`privileged_ports` gives warnings, not errors: what the host
refuses today (it may allow it tomorrow) leaves a file valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.desired.folder import network_errors
from reconciler.planning.conflicts import Claim, Holding, refuse
from reconciler.problems import Problem, SquishfileError
from reconciler.squishfile import load_network_file, load_with_lines
from reconciler.squishfile.networks import is_network_file
from reconciler.squishfile.placement import PlacementSection, may_share_a_host
from runtime.security.profile import ProfileCheck

__all__ = ("privileged_ports", "validate_files")


def _claim(path: Path, check_profile: ProfileCheck | None) -> Claim:
    return _placed_claim(path, check_profile)[0]


def _placed_claim(
    path: Path, check_profile: ProfileCheck | None
) -> tuple[Claim, PlacementSection | None]:
    squishfile, lines = load_with_lines(path, check_profile=check_profile)
    claim = Claim(path, squishfile.name, squishfile.forwards(), dict(lines))
    return claim, squishfile.placement


def _refusals(
    claims: Sequence[Claim],
    placements: Sequence[PlacementSection | None],
    holders: Mapping[str, Holding] | None,
) -> dict[int, Problem]:
    """The conflict rule, among the files that may run on one host: each file is checked
    against those whose ``[placement]`` does not rule out sharing a host with it."""
    if all(p is None for p in placements):
        return refuse(claims, holders)
    refused: dict[int, Problem] = {}
    for index, placement in enumerate(placements):
        near = [j for j, other in enumerate(placements) if may_share_a_host(placement, other)]
        problem = refuse([claims[j] for j in near], holders).get(near.index(index))
        if problem is not None:
            refused[index] = problem
    return refused


def validate_files(
    paths: Sequence[Path],
    holders: Mapping[str, Holding] | None = None,
    *,
    check_profile: ProfileCheck | None = None,
) -> list[tuple[Path, SquishfileError | None]]:
    """Validate each file, then refuse the files that lose a name or host port (a network
    file, ``NAME.network.toml``, is validated as one and claims neither). Two files
    whose ``[placement]`` rules out any host running both never conflict.

    ``holders`` are the running containers of the files' folders by name (the file each
    was made from and its live forwards): they keep what they hold. Results come in the
    order of ``paths``. ``check_profile`` is :func:`load_with_lines`'s.
    """
    errors: dict[int, SquishfileError] = {}
    claims: list[Claim] = []
    placements: list[PlacementSection | None] = []
    valid: list[int] = []
    for index, path in enumerate(paths):
        try:
            if is_network_file(path):
                load_network_file(path)
                continue
            claim, placement = _placed_claim(path, check_profile)
        except SquishfileError as exc:
            errors[index] = exc
            continue
        claims.append(claim)
        placements.append(placement)
        valid.append(index)
    for claim_index, problem in _refusals(claims, placements, holders).items():
        index = valid[claim_index]
        errors[index] = SquishfileError(paths[index], [problem])
    errors.update(_overlapping_networks(paths, errors))
    return [(path, errors.get(index)) for index, path in enumerate(paths)]


def _overlapping_networks(
    paths: Sequence[Path], errors: Mapping[int, SquishfileError]
) -> dict[int, SquishfileError]:
    """The valid network files refused as a load of their folder refuses them: a subnet
    overlapping an earlier file's (by index into ``paths``)."""
    by_folder: dict[Path, dict[Path, int]] = {}
    for index, path in enumerate(paths):
        if is_network_file(path) and index not in errors:
            by_folder.setdefault(path.parent, {})[path] = index
    refused: dict[int, SquishfileError] = {}
    for folder, indexes in by_folder.items():
        for error in network_errors(folder, sorted(indexes)):
            refused[indexes[error.file]] = SquishfileError(error.file, list(error.problems))
    return refused


def privileged_ports(paths: Sequence[Path], unprivileged_start: int) -> dict[Path, list[Problem]]:
    """Per valid file, a warning at each ``ports[N].host`` below ``unprivileged_start``
    (the host's ``net.ipv4.ip_unprivileged_port_start``): no rootless container can bind
    it until the host allows it. Invalid files are left to :func:`validate_files`."""
    warnings: dict[Path, list[Problem]] = {}
    for path in paths:
        if is_network_file(path):
            continue
        try:
            claim = _claim(path, None)
        except SquishfileError:
            continue
        for index, port in enumerate(claim.ports):
            if port.host < unprivileged_start:
                where = f"ports[{index}].host"
                message = (
                    f"host port {port.host} is privileged on this host "
                    f"(net.ipv4.ip_unprivileged_port_start is {unprivileged_start}): a rootless "
                    "container cannot bind it until the host allows it (as root: sysctl "
                    f"net.ipv4.ip_unprivileged_port_start={port.host}) or another port is chosen"
                )
                problem = Problem(str(path), claim.lines.get(where), where, message)
                warnings.setdefault(path, []).append(problem)
    return warnings
