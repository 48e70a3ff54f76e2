"""Loading squishfiles: read, parse and validate files, and report every problem.

:func:`load_squishfile` reads and validates one file; :func:`load_with_lines` also finds
where it writes the fields that may conflict with another file (the conflicts themselves are
decided in :mod:`reconciler.planning.conflicts`). Every problem is reported as a
:class:`reconciler.problems.Problem` with file, line and field path; pydantic's errors are
mapped onto the file's keys here, with :mod:`reconciler.squishfile.tomlpos` finding their lines.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from reconciler.problems import Problem, SquishfileError
from reconciler.squishfile.model import (
    LAYER_SHAPE_TAGS,
    NETWORKS_SHAPE_TAGS,
    DownloadLayer,
    LocalLayer,
    NetworkJoin,
    PortForward,
    RunSection,
    Squishfile,
)
from reconciler.squishfile.networks import NetworkFile, check_network_name, network_file_name
from reconciler.squishfile.placement import PlacementSection
from reconciler.squishfile.sections import (
    CONFINE,
    PROFILE_CHECK,
    HealthSection,
    LogsSection,
    ResourcesSection,
    RestartSection,
    SecuritySection,
    UpdateSection,
)
from reconciler.squishfile.tomlpos import (
    Loc,
    TomlError,
    lines_of,
    parse_toml,
    problems_from_validation,
    syntax_problem,
)
from runtime.security.profile import ProfileCheck

__all__ = (
    "MAX_BYTES",
    "ConflictLines",
    "FileIdentity",
    "ReadFile",
    "file_text",
    "load_network_file",
    "load_squishfile",
    "load_with_lines",
    "read_squishfile",
    "status_key",
)

MAX_BYTES = 1 << 20
"""The largest squishfile, in bytes (1 MiB): a bigger one is refused after reading one
byte more, so a stray file cannot make every pass slow."""


def load_squishfile(
    path: Path, content: bytes | None = None, *, check_profile: ProfileCheck | None = None
) -> Squishfile:
    """Read, parse and validate one squishfile; raise SquishfileError listing all problems.

    ``content``, when given, is the file's bytes already read (so a caller that hashed
    those bytes validates exactly them). ``check_profile`` checks a seccomp profile
    beyond its structure (callers that may load libseccomp pass
    :func:`runtime.security.seccomp.compile_profile`); its error is the
    ``security.seccomp`` line's.
    """
    return _load(path, content, check_profile)[0]


ConflictLines = tuple[tuple[str, int], ...]
"""Where a file writes the fields another file may conflict with: ``("name", 1)``,
``("ports[0].host", 9)``."""


def load_with_lines(
    path: Path,
    content: bytes | None = None,
    *,
    check_profile: ProfileCheck | None = None,
    folder: Path | None = None,
    confine: Path | None = None,
) -> tuple[Squishfile, ConflictLines]:
    """:func:`load_squishfile`, and where the file writes its name and each
    ``[[ports]]`` host (a name taken from the file's name has no line). ``folder``: the
    folder the file stands for when ``path`` is a copy (a git revision's): its networks
    are that folder's; relative paths still start from the copy's own folder.
    ``confine``: a git source's checkout, which its seccomp profile must be in (it is
    refused before it is read)."""
    squishfile, text, data = _load(path, content, check_profile, folder, confine)
    return squishfile, _conflict_lines(squishfile, text, data)


class FileIdentity(NamedTuple):
    """Which file was read: a rename into place, or a file deleted and made anew, reads
    as another one; a rewrite in place (truncated, then written) as the same."""

    device: int
    inode: int
    generation: int | None
    """The inode's generation, where the filesystem keeps one (ext4, xfs, btrfs; not
    tmpfs): it tells a new file from the old one when the new file gets the inode
    number the old one freed, as ext4 gives it to a file git checks out (unlinked, then
    created)."""


_FS_IOC_GETVERSION = 0x80087601
"""``_IOR('v', 1, long)``: the inode's generation number."""


def _generation(fd: int) -> int | None:
    try:
        return int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(8)), sys.byteorder)
    except OSError:  # ENOTTY: the filesystem keeps none
        return None


def _read_up_to(fd: int, limit: int) -> bytes:
    """The file's bytes, ``limit`` at most (no buffered file object: a resync reads
    every squishfile, and this is a third cheaper)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class ReadFile(NamedTuple):
    """A squishfile's bytes, and what they were read from."""

    raw: bytes
    identity: FileIdentity
    status: tuple[int, ...]
    """The file's :func:`status_key` as its bytes were read."""


def status_key(status: os.stat_result) -> tuple[int, ...]:
    """A file's device, inode, size, mtime and ctime (ns): any write changes it."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def read_squishfile(path: Path) -> ReadFile:
    """The bytes of the squishfile at ``path``, which file they were read from, and its
    status then.

    Raises OSError when it cannot be read (a directory or a FIFO cannot), and
    :class:`SquishfileError` when it is larger than :data:`MAX_BYTES`: it is not read
    further.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(status.st_mode) else errno.EINVAL
            message = os.strerror(code) if code == errno.EISDIR else "not a regular file"
            raise OSError(code, message, str(path))
        identity = FileIdentity(status.st_dev, status.st_ino, _generation(fd))
        raw = _read_up_to(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        problem = Problem(str(path), None, "<file>", _TOO_LARGE)
        raise SquishfileError(path, [problem])
    return ReadFile(raw, identity, status_key(status))


_TOO_LARGE = f"larger than {MAX_BYTES >> 20} MiB, the limit for a squishfile"


def file_text(raw: bytes, errors: str = "strict") -> str:
    """A squishfile's text: UTF-8, without the byte order mark some editors write first
    (it is no character of line 1, so lines and columns stay the file's own)."""
    return raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors=errors)


def _parse(path: Path, content: bytes | None) -> tuple[str, dict[str, Any]]:
    """The text of a TOML file and what it holds; SquishfileError when it cannot be read
    or parsed."""
    label = str(path)
    try:
        raw = read_squishfile(path)[0] if content is None else content
    except OSError as exc:
        problem = Problem(label, None, "<file>", f"cannot read: {exc.strerror or exc}")
        raise SquishfileError(path, [problem]) from exc
    try:
        text = file_text(raw)
    except UnicodeDecodeError as exc:
        line = raw.removeprefix(codecs.BOM_UTF8)[: exc.start].count(b"\n") + 1
        problem = Problem(label, line, "<syntax>", "the file is not valid UTF-8")
        raise SquishfileError(path, [problem]) from None
    try:
        return text, parse_toml(text)
    except TomlError as exc:
        raise SquishfileError(path, [syntax_problem(label, text, exc)]) from None
    except RecursionError:
        problem = Problem(label, None, "<syntax>", "nested too deeply to read")
        raise SquishfileError(path, [problem]) from None


def _load(
    path: Path,
    content: bytes | None = None,
    check_profile: ProfileCheck | None = None,
    folder: Path | None = None,
    confine: Path | None = None,
) -> tuple[Squishfile, str, dict[str, Any]]:
    """The squishfile, its text, and the TOML it holds."""
    text, data = _parse(path, content)
    try:
        context = {
            "source": path,
            "folder": folder,
            PROFILE_CHECK: check_profile,
            CONFINE: confine,
        }
        squishfile = Squishfile.model_validate(data, context=context)
    except ValidationError as exc:
        raise SquishfileError(path, _problems(str(path), text, data, exc)) from None
    return squishfile, text, data


def load_network_file(path: Path, content: bytes | None = None) -> NetworkFile:
    """Read, parse and validate one ``NAME.network.toml``; raise SquishfileError listing
    all problems (a NAME that is no network name is one, at ``<file>``)."""
    text, data = _parse(path, content)
    problems: list[Problem] = []
    try:
        check_network_name(network_file_name(path))
    except ValueError as exc:
        problems.append(Problem(str(path), None, "<file>", f"the file's name: {exc}"))
    try:
        settings = NetworkFile.model_validate(data)
    except ValidationError as exc:
        problems += problems_from_validation(
            str(path), text, exc, clean_loc=_clean_loc, allowed_keys=_network_keys
        )
    if problems:
        raise SquishfileError(path, problems)
    return settings


def _network_keys(loc: Loc) -> tuple[str, ...]:
    return tuple(NetworkFile.model_fields) if loc == () else ()


def _problems(file: str, text: str, data: dict[str, Any], error: ValidationError) -> list[Problem]:
    problems = problems_from_validation(
        file, text, error, clean_loc=_clean_loc, allowed_keys=_keys_allowed_at
    )
    if "name" in data:
        return problems
    hint = " (taken from the file name; rename the file or set name = ...)"
    return [replace(p, message=p.message + hint) if p.field == "name" else p for p in problems]


def _clean_loc(loc: Loc) -> Loc:
    """Drop pydantic's ``[key]`` markers and the layer shape tags from a location."""
    loc = tuple(part for part in loc if part != "[key]")
    if len(loc) > 2 and loc[0] == "layers" and loc[2] in LAYER_SHAPE_TAGS:
        loc = loc[:2] + loc[3:]
    if len(loc) > 1 and loc[0] == "networks" and loc[1] in NETWORKS_SHAPE_TAGS:
        loc = loc[:1] + loc[2:]
    return loc


_SECTIONS: dict[str, type[BaseModel]] = {
    "run": RunSection,
    "restart": RestartSection,
    "update": UpdateSection,
    "health": HealthSection,
    "security": SecuritySection,
    "resources": ResourcesSection,
    "logs": LogsSection,
    "placement": PlacementSection,
}
"""The top-level tables, by key."""


def _keys_allowed_at(loc: Loc) -> tuple[str, ...]:
    """The keys a table accepts, given the raw pydantic location of that table."""
    match loc:
        case ():
            return tuple(Squishfile.model_fields)
        case (str() as key,) if key in _SECTIONS:
            return tuple(_SECTIONS[key].model_fields)
        case ("ports", int()):
            return tuple(PortForward.model_fields)
        case ("networks", "table", str()):
            return tuple(NetworkJoin.model_fields)
        case ("layers", str(), "local"):
            return tuple(LocalLayer.model_fields)
        case ("layers", str(), "download"):
            return tuple(DownloadLayer.model_fields)
    return ()


def _conflict_lines(squishfile: Squishfile, text: str, data: dict[str, Any]) -> ConflictLines:
    wanted: list[tuple[str, Loc]] = [("name", ("name",))] if "name" in data else []
    wanted += [(f"ports[{i}].host", ("ports", i, "host")) for i in range(len(squishfile.ports))]
    if not wanted:  # a name from the file's name and no port: no line to find
        return ()
    lines = lines_of(text, [loc for _, loc in wanted])
    return tuple((field, line) for (field, _), line in zip(wanted, lines, strict=True) if line)
