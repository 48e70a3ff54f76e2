"""Desired state: every squishfile of a folder, loaded, validated and labelled.

One ``*.toml`` file is one container. Hidden files and editors' swap, backup and temp
files are ignored. A file that does not validate becomes a :class:`FileError`; the
planner then keeps whatever container that file produced before. Of two files declaring
the same name, the one that sorts first keeps it here and the other becomes a
``DuplicateName`` error carrying its container; the planner decides again when the
refused file's container is the one running (:mod:`reconciler.planning.conflicts`). The types,
labels and ``spec_hash`` live in :mod:`reconciler.desired.types` (import them from there), so
the planner can use them without I/O.

A file is read at most 1 MiB deep (:func:`reconciler.squishfile.read_squishfile`). With
a cache (the loop's), a file rewritten in place counts once its new bytes stay unchanged
for the settle time, so a save that pauses mid-file is never applied half-written.

A seccomp profile is compiled here (:func:`runtime.security.seccomp.compile_profile`),
not in the squishfile model, which loads no FFI: a syscall libseccomp does not know is
then the file's problem at ``security.seccomp``, as the model's own checks are.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    LABEL_HASH,
    LABEL_MANAGED,
    MANAGER,
    DesiredContainer,
    DesiredNetwork,
    DesiredState,
    FileError,
    HealthCheck,
    PlacedElsewhere,
    Skipped,
    is_squishfile,
    network_files_in,
    network_labels,
    skipped_in,
    spec_hash,
    squishfiles_in,
)
from reconciler.planning.conflicts import settle_names
from reconciler.problems import Problem, SquishfileError, toml_quote
from reconciler.squishfile import (
    FileIdentity,
    Squishfile,
    file_text,
    load_network_file,
    load_with_lines,
    read_squishfile,
    status_key,
)
from reconciler.squishfile.fields import outside_of
from reconciler.squishfile.networks import (
    is_network_file,
    network_file_name,
    runtime_network_name,
)
from reconciler.squishfile.placement import HostIdentity
from reconciler.squishfile.tomlpos import TomlError, lines_of, parse_toml
from runtime.api import ContainerSpec, NetworkSpec
from runtime.security.profile import ProfileError, read_profile_bytes
from runtime.security.seccomp import compile_profile

__all__ = ("Cached", "FileCache", "load_desired", "network_errors", "settles_in")


def _claimed_name(path: Path, raw: bytes | None, known: str | None) -> tuple[str, bool]:
    """The container name a broken file asks for, and whether that is certain.

    Read as leniently as possible; else ``known``, the name the same file had when it
    last parsed (a broken edit of ``site.toml`` that said ``name = "web"`` still claims
    ``web``); else the file's stem, which is only a guess when the TOML did not parse.
    """
    parsed = False
    if raw is not None:
        try:
            name = parse_toml(file_text(raw, errors="replace")).get("name")
            parsed = True
        except (TomlError, RecursionError, ValueError):
            name = None
        if isinstance(name, str) and name:
            return name, True
    if known is not None:
        return known, True
    return path.stem, parsed


def _labelled(spec: ContainerSpec, folder: Path, file: Path) -> ContainerSpec:
    labels = {
        **spec.labels,
        LABEL_MANAGED: MANAGER,
        LABEL_FOLDER: str(folder),
        LABEL_FILE: file.name,
        LABEL_HASH: spec_hash(spec),
    }
    return spec.model_copy(update={"labels": labels})


@dataclass
class Cached:
    """What one file loaded to, and from what."""

    key: bytes
    """The digest of the bytes (and the files they use) ``loaded`` came from; empty for
    a file that could not be read."""
    loaded: DesiredContainer | FileError
    identity: FileIdentity | None = None
    """Which file was read: a rename into place (or a file made anew) changes it, a
    rewrite in place does not."""
    pending: bytes | None = None
    """The key of other bytes written in place, not applied until they are quiet."""
    pending_since: float = 0.0
    """When those bytes were first read (the loader's clock)."""
    seen: tuple[int, ...] | None = None
    """The file's device, inode, size, mtime and ctime (ns) when ``loaded`` was read."""
    gone_since: float | None = None
    """When the file was first found missing (the loader's clock); None: it is there."""

    def reread(self) -> Cached:
        """This file's entry for a copy of it elsewhere (a new revision's checkout): what
        it loaded stays known (its name), but the copy is read and loaded anew."""
        return Cached(_UNREAD, self.loaded)

    def unchanged(self, path: Path) -> bool:
        """Whether the file at ``path`` still has the status it was read with, uses no
        other file and has no bytes waiting to settle: a load the watch vouches for
        (``trusted``) takes it as it was without reading it."""
        if self.seen is None or self.pending is not None or _inputs(self.loaded):
            return False
        if isinstance(self.loaded, FileError) and self.loaded.waits_on:
            return False  # the host's paths it waits on are looked at again
        try:
            return status_key(os.stat(path)) == self.seen
        except OSError:
            return False


FileCache = dict[Path, Cached]
"""Parsed files by path."""


def _load_one(
    path: Path, raw: bytes, folder: Path, known: str | None, quiet: _Quiet | None = None
) -> DesiredContainer | FileError:
    try:
        confine = quiet.confine if quiet else None
        squishfile, lines = load_with_lines(
            path, raw, check_profile=compile_profile, folder=folder, confine=confine
        )
        spec = squishfile.to_spec()
    except SquishfileError as exc:
        name, certain = _claimed_name(path, raw, known)
        return FileError(path, name, exc.problems, name_known=certain)
    except Exception as exc:  # nothing a file holds may stop the loop
        problem = Problem(str(path), None, "<file>", f"{type(exc).__name__}: {exc}")
        name, certain = _claimed_name(path, raw, known)
        return FileError(path, name, (problem,), name_known=certain)
    refused = _refused_paths(path, raw, squishfile, quiet)
    if refused is not None:
        return refused
    health = squishfile.health
    return DesiredContainer(
        path,
        _labelled(spec, folder, path),
        squishfile.restart.policy,
        squishfile.update.strategy,
        HealthCheck(health.tcp, health.command, health.timeout, health.interval, health.retries)
        if health
        else None,
        squishfile.update.drain,
        squishfile.security.inputs,
        lines,
        squishfile.forwards(),
        squishfile.placement,
    )


def _refused_paths(
    path: Path, raw: bytes, squishfile: Squishfile, quiet: _Quiet | None
) -> FileError | None:
    """The error of a file whose paths reach outside a git source's checkout, or whose
    local layers a start here would refuse (not checked for a file placed elsewhere:
    its paths are another host's); None when neither."""
    sources = squishfile.local_sources()
    confine = quiet.confine if quiet else None
    if confine is not None:  # (its seccomp profile was refused as it was validated)
        outside = {name: why for name, s in sources.items() if (why := outside_of(confine, s))}
        if outside:
            return FileError(path, squishfile.name, _layer_problems(path, raw, outside))
    host, placement = quiet.host if quiet else None, squishfile.placement
    if host is not None and placement is not None and placement.misses(host) is not None:
        return None
    unusable = {
        name: f"{why}, which a start refuses"
        for name, s in sources.items()
        if (why := _unusable(s))
    }
    if not unusable:
        return None
    problems = _layer_problems(path, raw, unusable)
    waits_on = tuple(sources[name] for name in unusable)
    return FileError(path, squishfile.name, problems, waits_on=waits_on)


def _usable_again(loaded: DesiredContainer | FileError) -> bool:
    """Whether a file refused for a host path now has one it waited on usable: loaded
    again, though its bytes are the same."""
    waits_on = loaded.waits_on if isinstance(loaded, FileError) else ()
    return any(_unusable(source) is None for source in waits_on)


def _unusable(source: str) -> str | None:
    """Why a start would refuse the bind source ``source`` (missing, or through a
    symbolic link), or None. Refused when the file loads, the running container keeps
    its last valid spec; a stop-first recreate would remove it, then fail to create."""
    if not os.path.lexists(source):
        return f"{toml_quote(source)} does not exist"
    if os.path.realpath(source) != os.path.normpath(source):
        return f"{toml_quote(source)} goes through a symbolic link"
    return None


def _layer_problems(path: Path, raw: bytes, why: Mapping[str, str]) -> tuple[Problem, ...]:
    """A problem at each ``[layers]`` entry named in ``why``, at its line."""
    text = file_text(raw, errors="replace")
    lines = lines_of(text, [("layers", name) for name in why])
    return tuple(
        Problem(str(path), line, f"layers.{name}", message)
        for (name, message), line in zip(why.items(), lines, strict=True)
    )


def _unreadable(path: Path, exc: OSError | SquishfileError, known: str | None) -> FileError:
    """A file not read (or not all of it): it keeps the container it made."""
    if isinstance(exc, SquishfileError):
        problems = exc.problems
    else:
        problems = (Problem(str(path), None, "<file>", f"cannot read: {exc.strerror or exc}"),)
    name, certain = _claimed_name(path, None, known)
    # no file to name a container: the one made from this file name is kept all the same
    certain = certain or not path.is_file()
    return FileError(path, name, tuple(problems), name_known=certain)


def _not_files(skipped: Sequence[Skipped]) -> set[Path]:
    """The entries named as squishfiles that are no regular file (a directory, a FIFO, a
    symbolic link to nothing): read like the others, each is a file that cannot be read,
    and keeps the container it made, as an unreadable file does (a link whose target is
    moved for a moment must not remove its container)."""
    return {s.file for s in skipped if is_squishfile(s.file) and not is_network_file(s.file)}


def _dangling(exc: OSError) -> OSError:
    return OSError(exc.errno, "a symbolic link to nothing", exc.filename)


def _inputs(loaded: DesiredContainer | FileError) -> tuple[tuple[Path, bytes], ...]:
    return loaded.inputs if isinstance(loaded, DesiredContainer) else ()


def _digest(raw: bytes, inputs: tuple[bytes, ...]) -> bytes:
    """The cache key of a squishfile: its bytes and the digests of the files it uses."""
    digest = hashlib.blake2b(raw, digest_size=16)
    for extra in inputs:
        digest.update(extra)
    return digest.digest()


def _current(inputs: tuple[tuple[Path, bytes], ...]) -> tuple[bytes, ...]:
    """The digests of those files as they are now."""
    found = []
    for path, _ in inputs:
        try:  # bounded as the first read was: a regular file of at most 1 MiB
            found.append(hashlib.blake2b(read_profile_bytes(path), digest_size=16).digest())
        except (OSError, ProfileError) as exc:
            found.append(f"unreadable: {exc}".encode())
    return tuple(found)


def load_desired(
    folder: Path,
    cache: FileCache | None = None,
    *,
    now: float = 0.0,
    settle: float = 0.0,
    files_in: Path | None = None,
    host: HostIdentity | None = None,
    trusted: bool = False,
    recall_names: bool = True,
    confine: Path | None = None,
) -> DesiredState:
    """Read every squishfile of ``folder``; never raises for a bad file.

    With a ``cache``, a file whose bytes are unchanged is not parsed again: an idle
    resync reads each file but validates none. Timestamps alone are not trusted (a
    same-size edit within one timestamp tick would look unchanged), except when the
    caller says no event came since the last load (``trusted``: the folder's watch was
    armed all along and saw nothing, see :class:`reconciler.desired.source.FolderSource`):
    then a file whose device, inode, size, mtime and ctime are those it was read with
    is not read again. A file that no longer parses claims the name it had when it last
    did (the loop's view); ``recall_names=False`` gives the claim a load without the
    cache would (``status`` answered from a cache: the same document either way). A
    file rewritten in place (the
    same inode, other bytes) may be half-written: its new bytes count once they have
    been read unchanged for ``settle`` seconds (``now`` on the same clock); until then
    the file stands for what it loaded before (:func:`settles_in` says when to look
    again). A file renamed into place, or new, counts at once.

    ``files_in``: read the files from there (one revision of a git source, say) and
    label what they ask for with ``folder`` all the same.

    With ``confine`` (a git source's checkout), a file whose local layers or seccomp
    profile are outside it is refused (at that field): a repository's files reach only
    the repository.

    With a ``host``, a valid file whose ``[placement]`` leaves that host out is not
    desired: it is listed in ``placed_elsewhere`` instead of ``containers`` (and claims
    no name or port here). Without one, every file is desired.
    """
    folder = Path(os.path.abspath(folder))
    where = folder if files_in is None else Path(os.path.abspath(files_in))
    try:
        listed = skipped_in(where)
        not_files = _not_files(listed)
        skipped = tuple(s for s in listed if s.file not in not_files)
        paths = sorted([*squishfiles_in(where), *not_files])
        networks = _Networks.load(folder, network_files_in(where))
    except OSError:
        return DesiredState(folder=folder, readable=False)
    quiet = _Quiet(now, settle, trusted, recall_names, confine, host)
    read = {path: _read(path, folder, cache, quiet) for path in paths}
    loads = [loaded for loaded in read.values() if loaded is not None]
    if cache is not None:
        found = {path for path, loaded in read.items() if loaded is not None}
        loads += _vanished(cache, found, {loaded.name for loaded in loads}, quiet)
    loads.sort(key=lambda loaded: loaded.file)  # the folder's order, files gone included
    valid = [loaded for loaded in loads if not isinstance(loaded, FileError)]
    errors = [loaded for loaded in loads if isinstance(loaded, FileError)]
    valid, elsewhere = _placed(valid, host)
    containers, duplicates = settle_names(valid, {})  # the planner knows what runs
    return DesiredState(
        folder=folder,
        containers=containers,
        errors=(*errors, *duplicates),
        skipped=skipped,
        networks=networks.valid,
        network_errors=tuple(networks.errors),
        network_files=tuple(networks.digests),
        host=host,
        placed_elsewhere=elsewhere,
    )


def _placed(
    valid: list[DesiredContainer], host: HostIdentity | None
) -> tuple[list[DesiredContainer], tuple[PlacedElsewhere, ...]]:
    """The containers that run on ``host``, and the files placed elsewhere."""
    here: list[DesiredContainer] = []
    elsewhere: list[PlacedElsewhere] = []
    for container in valid:
        placement = container.placement
        reason = None if host is None or placement is None else placement.misses(host)
        if reason is None:
            here.append(container)
        else:
            elsewhere.append(PlacedElsewhere(container.file, container.name, reason))
    return here, tuple(elsewhere)


def network_errors(folder: Path, paths: Sequence[Path]) -> list[FileError]:
    """What a load of ``folder`` refuses of its network files ``paths`` (in name order):
    each that does not load, or whose subnet overlaps an earlier one's."""
    return _Networks.load(folder, list(paths)).errors


@dataclass
class _Networks:
    """The network files of a folder, loaded (they are small: read on every pass)."""

    valid: dict[str, DesiredNetwork]
    errors: list[FileError]
    digests: list[tuple[Path, bytes]]

    @classmethod
    def load(cls, folder: Path, paths: list[Path]) -> _Networks:
        loaded = cls({}, [], [])
        for path in paths:
            name = network_file_name(path)
            try:
                raw = read_squishfile(path)[0]
                loaded.digests.append((path, _digest(raw, ())))
                settings = load_network_file(path, raw)
            except FileNotFoundError:
                continue  # deleted between the listing and now
            except (OSError, SquishfileError) as exc:
                loaded.errors.append(_unreadable(path, exc, name))
                continue
            spec = NetworkSpec(
                name=runtime_network_name(folder, name),
                subnet=settings.subnet,
                internal=settings.internal,
                dns=settings.dns,
                labels=network_labels(folder, name),
            )
            overlap = loaded.overlap(path, raw, spec)
            if overlap is not None:
                loaded.errors.append(FileError(path, name, (overlap,)))
                continue
            loaded.valid[spec.name] = DesiredNetwork(path, name, spec)
        return loaded

    def overlap(self, path: Path, raw: bytes, spec: NetworkSpec) -> Problem | None:
        """A problem at ``subnet`` when it overlaps the subnet of a network file loaded
        before (in name order): two networks cannot route the same addresses."""
        if spec.subnet is None:
            return None
        mine = ipaddress.IPv4Network(spec.subnet)
        for other in self.valid.values():
            if other.spec.subnet and mine.overlaps(ipaddress.IPv4Network(other.spec.subnet)):
                (line,) = lines_of(file_text(raw), [("subnet",)])
                message = f"{spec.subnet} overlaps {other.spec.subnet} of {other.file.name}"
                return Problem(str(path), line, "subnet", message)
        return None


def _vanished(
    cache: FileCache, found: set[Path], names: set[str | None], quiet: _Quiet
) -> list[DesiredContainer | FileError]:
    """What the files of ``cache`` that a load did not find (``found``: those it read,
    ``names``: the names they claim) still stand for: each what it loaded, until it has
    been gone for the settle time or a file found claims its name (renamed: ``git mv``),
    then it is forgotten. git checks a file out by unlink, then create; a pause between
    the two (a loaded machine) must not read as a deletion, or an edit would remove a
    container and make it anew."""
    kept: list[DesiredContainer | FileError] = []
    for path in sorted(set(cache) - found):
        known = cache[path]
        if known.gone_since is None:
            known.gone_since = quiet.now
        if quiet.now < known.gone_since + quiet.settle and known.loaded.name not in names:
            kept.append(known.loaded)
        else:
            del cache[path]
    return kept


def settles_in(cache: FileCache, now: float, settle: float) -> float | None:
    """Seconds until the earliest file rewritten in place has been quiet for ``settle``,
    or the earliest file deleted has been gone for as long (then a load applies it);
    None when no file waits."""
    due = [c.pending_since + settle for c in cache.values() if c.pending is not None]
    due += [c.gone_since + settle for c in cache.values() if c.gone_since is not None]
    return max(min(due) - now, 0.0) if due else None


_UNREAD = b""
"""The cache key of a file that could not be read: no digest is empty."""


@dataclass(frozen=True)
class _Quiet:
    """The clock's time now, and how long new bytes written in place must stay unchanged."""

    now: float
    settle: float
    trusted: bool = False
    """No event came since the last load: a file's unchanged status is enough."""
    recall_names: bool = True
    """A file that no longer parses claims the name it had when it last did."""
    confine: Path | None = None
    """Where every path a file uses must be (a git source's checkout), or None."""
    host: HostIdentity | None = None
    """The host the folder is read for: a file placed elsewhere is not checked against
    this host's files."""

    def keeps(self, known: Cached, key: bytes, identity: FileIdentity) -> bool:
        """Whether a file whose bytes are keyed ``key``, read from ``identity``, still
        stands for what it loaded before (noting new bytes written in place in ``known``)."""
        if key == known.key or identity != known.identity or self.settle <= 0:
            known.pending = None  # the same bytes again, or a file renamed into place
            return key == known.key
        if known.pending != key:
            known.pending, known.pending_since = key, self.now
        return self.now < known.pending_since + self.settle


def _read(
    path: Path, folder: Path, cache: FileCache | None, quiet: _Quiet
) -> DesiredContainer | FileError | None:
    """One file, from ``cache`` when its bytes (and the files it uses) are unchanged or
    were written in place and are not quiet yet; None when it was deleted meanwhile. The
    cache holds what was loaded now (even nothing, or an unreadable file), so its keys
    tell what changed."""
    known = cache.get(path) if cache is not None else None
    if known is not None and quiet.trusted and known.unchanged(path):
        return known.loaded
    known_name = known.loaded.name if known is not None and quiet.recall_names else None
    try:
        raw, identity, seen = read_squishfile(path)
    except FileNotFoundError as exc:
        if not path.is_symlink():
            return None  # deleted between the listing and now: gone (:func:`_vanished`)
        return _keep(cache, path, Cached(_UNREAD, _unreadable(path, _dangling(exc), known_name)))
    except (OSError, SquishfileError) as exc:  # unreadable is not deleted: keep what it made
        return _keep(cache, path, Cached(_UNREAD, _unreadable(path, exc, known_name)))
    if known is not None:
        key = _digest(raw, _current(_inputs(known.loaded)))
        if quiet.keeps(known, key, identity) and not _usable_again(known.loaded):
            known.identity, known.seen, known.gone_since = identity, seen, None
            return known.loaded
    # keyed by what was read, so an edit made meanwhile is seen next time
    loaded = _load_one(path, raw, folder, known_name, quiet)
    key = _digest(raw, tuple(digest for _, digest in _inputs(loaded)))
    return _keep(cache, path, Cached(key, loaded, identity, seen=seen))


def _keep(cache: FileCache | None, path: Path, entry: Cached) -> DesiredContainer | FileError:
    """What ``entry`` loaded, kept in ``cache`` (if any) as ``path``'s."""
    if cache is not None:
        cache[path] = entry
    return entry.loaded
