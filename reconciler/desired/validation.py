"""Checking a set of squishfiles the way the reconciler will: each file, then conflicts.

``reconciler validate`` uses :func:`validate_files`; the conflict rule is the planner's
(:mod:`reconciler.planning.conflicts`), so a file refused here is refused by ``plan``
and ``status`` too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.planning.conflicts import Claim, Holding, refuse
from reconciler.problems import SquishfileError
from reconciler.squishfile import load_with_lines
from runtime.security.profile import ProfileCheck

__all__ = ("validate_files",)


def _claim(path: Path, check_profile: ProfileCheck | None) -> Claim:
    squishfile, lines = load_with_lines(path, check_profile=check_profile)
    return Claim(path, squishfile.name, squishfile.forwards(), dict(lines))


def validate_files(
    paths: Sequence[Path],
    holders: Mapping[str, Holding] | None = None,
    *,
    check_profile: ProfileCheck | None = None,
) -> list[tuple[Path, SquishfileError | None]]:
    """Validate each file, then refuse the files that lose a name or host port.

    ``holders`` are the running containers of the files' folders by name (the file each
    was made from and its live forwards): they keep what they hold. Results come in the
    order of ``paths``. ``check_profile`` is :func:`load_with_lines`'s.
    """
    errors: dict[int, SquishfileError] = {}
    claims: list[Claim] = []
    valid: list[int] = []
    for index, path in enumerate(paths):
        try:
            claims.append(_claim(path, check_profile))
        except SquishfileError as exc:
            errors[index] = exc
            continue
        valid.append(index)
    for claim_index, problem in refuse(claims, holders).items():
        index = valid[claim_index]
        errors[index] = SquishfileError(paths[index], [problem])
    return [(path, errors.get(index)) for index, path in enumerate(paths)]
