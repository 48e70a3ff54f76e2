"""A git repository as the source of desired state (``reconciler run --git URL``).

Everything lives in the source's own folder, ``<state dir>/git/<digest of URL and
path>/``:

- ``mirror/``: a bare repository the fetches fill (:mod:`reconciler.desired.gitrepo`);
- ``revs/<sha>/``: one checkout per revision, written in a hidden folder and renamed
  into place once complete;
- ``current``: a symbolic link to ``revs/<sha>``, swapped by renaming a new link over it,
  so a reader sees one revision or the next, never a half-written one. The revision
  before stays on disk (a reader that resolved the link just before the swap still
  finds its files); older ones are removed;
- ``source.json``: what status shows (:meth:`GitSource.describe`);
- ``suspended``: while this file exists no fetch is made (``reconciler suspend``).

The containers are labelled with ``current/<path>``, the same folder for every
revision, so moving to another commit is an ordinary diff. Each load resolves
``current`` once and reads every file of that revision, labelled as that stable folder.

A revision is applied when it is fetched, resolves, and (with
``--verify-signatures``) carries an ssh signature of an allowed key. A fetch that fails
or a refused commit leaves the applied revision as it is; a file that does not validate
keeps its container's last good spec, as in a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from reconciler.desired.folder import FileCache, load_desired
from reconciler.desired.gitrepo import (
    TARGET,
    Commit,
    GitError,
    Mirror,
    public_url,
    without_secret,
)
from reconciler.desired.source import Changed, Snapshot
from reconciler.desired.types import DesiredState
from reconciler.settings import BadSetting, GitSettings, Settings
from reconciler.squishfile.placement import HostIdentity
from runtime.util.files import read_json, write_json_atomic

__all__ = ("GitSource", "git_home", "resume", "suspend")

log = logging.getLogger(__name__)

_TICK = 0.1
"""Seconds between looks at a poke, ``stop`` and the suspend flag while waiting."""
POKE_GAP = 2.0
"""Seconds at least between a fetch and the next one a poke asks for: pokes that come
sooner (a webhook's delivery replayed in a loop) wait, and are taken as one."""
_PREVIEW = "refs/squish/preview"
"""Where ``plan`` fetches, apart from what the loop follows."""


def _subdir(path: str) -> str:
    """``--path`` as a relative folder of the repository ('' for its top)."""
    clean = posixpath.normpath(path.strip() or ".")
    if clean.startswith(("/", "../")) or clean == "..":
        raise BadSetting("path", path, "expected a folder inside the repository")
    return "" if clean == "." else clean


def git_home(state: Path, settings: GitSettings) -> Path:
    """The source's own folder under ``state`` (the runtime's state folder)."""
    key = f"{settings.url}\0{_subdir(settings.path)}".encode()
    return state / "git" / hashlib.sha256(key).hexdigest()[:16]


def suspend(home: Path) -> bool:
    """Stop fetching (a running loop sees it before its next fetch); False when it
    already was."""
    flag = home / "suspended"
    if flag.exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    flag.write_text(f"{time.time()}\n")
    return True


def resume(home: Path) -> bool:
    """Fetch again; False when it was not suspended."""
    try:
        (home / "suspended").unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass
class GitSource:
    """The squishfiles under ``settings.path`` of the commit ``settings`` follows."""

    settings: Settings
    """The reconciler's settings; their ``git`` (which must be set) says what to follow."""
    state: Path
    """The runtime's state folder; the source keeps its own under ``git/``."""
    _files: FileCache = field(default_factory=dict)
    _read_from: Path | None = None
    _preview: Path | None = None
    _problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while ``current`` is swapped and while a load resolves it."""
    _syncing: threading.Lock = field(default_factory=threading.Lock)
    _poked: threading.Event = field(default_factory=threading.Event)
    _poke_reason: str = "poked"
    _fetched: float = -math.inf
    """When the last fetch began (``time.monotonic``)."""
    in_use: Callable[[], Iterable[str]] = tuple
    """The host paths this source's running containers use (their binds' sources): a
    revision one of them is in stays on disk (a container whose file broke keeps the
    checkout its last good spec binds). One that cannot be listed keeps every revision."""

    def __post_init__(self) -> None:
        if self.settings.git is None:
            raise ValueError("a git source needs settings.git")
        self.git: GitSettings = self.settings.git
        self.path = _subdir(self.git.path)
        self.home = git_home(self.state, self.git)
        self.mirror = Mirror(self.home / "mirror", self.git.timeout)
        self._record: dict[str, Any] = _read_record(self.home / "source.json")

    @property
    def folder(self) -> Path:
        return Path(os.path.abspath(self.home / "current" / self.path))

    @property
    def suspended(self) -> bool:
        return (self.home / "suspended").exists()

    # -- loading ---------------------------------------------------------------------

    def load(self) -> Snapshot:
        with self._lock:
            checkout = self._preview or self._current()
            if checkout is None:
                return Snapshot(DesiredState(self.folder, readable=False), "git:none")
            files_in = checkout / self.path
            if files_in != self._read_from:
                # The same file names, read again from the new checkout: what a file
                # loaded names paths in the revision it was read from (``./site``, a
                # profile), which goes two revisions later. The name each file last had
                # carries over (a broken file still claims it).
                self._files = {files_in / p.name: c.reread() for p, c in self._files.items()}
                self._read_from = files_in
            host = HostIdentity(self.settings.host, self.settings.labels)
            confine = None if self.git.host_paths else checkout
            desired = load_desired(
                self.folder, self._files, files_in=files_in, host=host, confine=confine
            )
        self._problems = [
            str(p) for e in (*desired.errors, *desired.network_errors) for p in e.problems
        ]
        return Snapshot(desired, checkout.name)

    def _current(self) -> Path | None:
        try:
            return self.home / os.readlink(self.home / "current")
        except OSError:
            return None

    # -- following the origin --------------------------------------------------------

    def poke(self, reason: str) -> None:
        """Fetch now (from any thread; it does not wait for the fetch)."""
        self._poke_reason = reason
        self._poked.set()

    async def watch(self, changed: Changed, stop: anyio.Event) -> None:
        """Fetch every ``interval`` and on a poke; tell ``changed`` of a new revision."""
        why = "start"
        while not stop.is_set():
            self._fetched = time.monotonic()
            try:
                if await anyio.to_thread.run_sync(self.sync, abandon_on_cancel=True):
                    changed(f"revision {self._record['applied']['commit'][:12]} ({why})")
            except Exception as exc:  # the loop never dies of its source: tried again
                log.error("following %s failed: %s: %s", self.git.url, type(exc).__name__, exc)
            why = await self._wait(stop)

    async def _wait(self, stop: anyio.Event) -> str:
        """Until the interval has passed, a poke, ``stop``, or a resume; which one."""
        deadline = time.monotonic() + self.git.interval
        suspended = self._record.get("suspended") is True  # as the last sync found it
        while not (stop.is_set() or self._poked.is_set()) and time.monotonic() < deadline:
            await anyio.sleep(min(_TICK, max(deadline - time.monotonic(), 0.0)))
            if suspended and not self.suspended:
                return "resumed"  # look at once
        if self._poked.is_set():
            await self._after_the_gap(stop)
            self._poked.clear()  # the pokes that came meanwhile are this one
            return self._poke_reason
        return "interval"

    async def _after_the_gap(self, stop: anyio.Event) -> None:
        """Wait until :data:`POKE_GAP` has passed since the last fetch (or ``stop``)."""
        with anyio.move_on_after(self._fetched + POKE_GAP - time.monotonic()):
            await stop.wait()

    def sync(self) -> bool:
        """Fetch the followed ref and apply its commit if it is new and acceptable;
        True when the applied revision changed. Never raises for git's failures: they
        go into the record status shows."""
        with self._syncing:
            suspended = self.suspended  # what the record says is what this sync saw
            changed = False if suspended else self._sync()
            self._record.update(suspended=suspended, url=self.git.url, ref=self.git.ref)
            with contextlib.suppress(OSError):  # a full disk: status is stale, no more
                write_json_atomic(self.home / "source.json", self._record)
            return changed

    def _sync(self) -> bool:
        try:
            sha = self._fetch(self.git.rev, TARGET)
        except (GitError, OSError) as exc:  # OSError: the mirror cannot be made
            self._record["fetch_error"] = self._told(exc)
            return False
        self._record.update(fetch_error=None, fetched_at=time.time())
        current = self._current()
        if current is not None and current.name == sha:
            return False
        try:
            commit = self.mirror.commit(sha)
            refused = self._refusal(sha)
            self._record["attempted"] = {**commit.as_json(), "refused": refused, "error": None}
            if refused is None:
                self._apply(commit)
        except (GitError, OSError) as exc:
            self._record["attempted"] = {"commit": sha, "refused": None, "error": self._told(exc)}
            return False
        return refused is None

    def _fetch(self, rev: str | None, target: str) -> str:
        """Fetch what is followed (every branch and tag for a ``rev``) into the mirror;
        the commit it stands for."""
        self.mirror.ensure()
        if rev is not None:
            self.mirror.fetch(  # as the origin names them: main~2 and v1.2 resolve too
                self.git.url,
                ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"),
                prune=True,  # a ref gone from the origin names nothing here either
            )
            return self.mirror.resolve(rev)
        if self.git.branch is not None:
            source = f"refs/heads/{self.git.branch}"
        elif self.git.tag is not None:
            source = f"refs/tags/{self.git.tag}"
        else:
            source = "HEAD"
        self.mirror.fetch(self.git.url, (f"+{source}:{target}",))
        return self.mirror.resolve(target)

    def _refusal(self, sha: str) -> str | None:
        if not self.git.verify_signatures:
            return None
        assert self.git.allowed_signers is not None  # GitSettings checks it
        return self.mirror.refusal(sha, self.git.allowed_signers)

    def _apply(self, commit: Commit) -> None:
        """Check ``commit`` out into ``revs/<sha>`` and point ``current`` at it."""
        revs = self.home / "revs"
        revs.mkdir(parents=True, exist_ok=True)
        if not (revs / commit.sha).is_dir():
            self._check_out(commit.sha, revs)
        link = self.home / f".current.{os.getpid()}"
        link.unlink(missing_ok=True)
        os.symlink(f"revs/{commit.sha}", link)
        before = self._current()
        with self._lock:
            os.replace(link, self.home / "current")
        self._record["applied"] = commit.as_json()
        keep = {commit.sha} | ({before.name} if before else set())
        try:
            real = Path(os.path.realpath(revs))  # bind sources are real paths
            keep |= {_revision_of(Path(path), revs, real) for path in self.in_use()}
        except Exception as exc:  # not known: none is removed, the next commit tries again
            log.warning("keeping every revision: their use is not known: %s", exc)
            return
        for old in revs.iterdir():
            if old.name not in keep:
                _remove(old)

    def _check_out(self, sha: str, revs: Path) -> Path:
        """A complete checkout of ``sha`` renamed into ``revs/<sha>``."""
        partial = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=revs))
        try:
            self.mirror.check_out(sha, partial)
            _refuse_links_out(partial)
            os.rename(partial, revs / sha)
        except BaseException:
            _remove(partial)
            raise
        return revs / sha

    # -- what moving elsewhere would do ------------------------------------------------

    @contextlib.contextmanager
    def previewing(self, rev: str | None) -> Iterator[Commit]:
        """While inside, loads read ``rev`` (default: the followed ref's newest commit),
        fetched and checked out apart from ``current``: what applying it would do."""
        sha = self._fetch(rev, _PREVIEW)
        commit = self.mirror.commit(sha)
        refused = self._refusal(sha)
        if refused is not None:
            raise GitError(f"{sha[:12]} would be refused: {refused}")
        previews = self.home / "previews"
        previews.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=previews))
        try:
            self._preview = self._check_out(sha, folder)
            yield commit
        finally:
            self._preview = None
            _remove(folder)

    # -- status ----------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """What status shows under ``source`` (see docs/reconciler.md, "Git source")."""
        return {
            "kind": "git",
            "url": public_url(self.git.url),  # shown to whoever reads status
            "ref": self._record.get("ref", self.git.ref),  # as the loop follows it
            "path": self.path,
            "applied": self._record.get("applied"),
            "attempted": self._record.get("attempted"),
            "fetch_error": self._record.get("fetch_error"),
            "fetched_at": self._record.get("fetched_at"),
            "suspended": self.suspended,
            "problems": list(self._problems),
        }

    def _told(self, exc: Exception) -> str:
        """What ``exc`` (git's message) says, as status may show it: without the URL's
        password, should git repeat it."""
        return without_secret(str(exc), self.git.url)


def _refuse_links_out(checkout: Path) -> None:
    """GitError naming the first symbolic link of ``checkout`` that leads out of it (to a
    file or folder of the host, which a squishfile, the followed folder or a local layer
    would then be): a repository's files are its own."""
    inside = os.path.realpath(checkout)
    for folder, dirs, files in os.walk(checkout):
        for name in (*dirs, *files):
            entry = os.path.join(folder, name)
            if not os.path.islink(entry):
                continue
            target = os.path.realpath(entry)
            if os.path.commonpath((inside, target)) != inside:
                shown = os.path.relpath(entry, checkout)
                raise GitError(
                    f"{shown}: a symbolic link out of the repository ({os.readlink(entry)})"
                )


def _revision_of(path: Path, revs: Path, real: Path) -> str:
    """The revision (``revs/<sha>``) ``path`` is in, or "" for a path outside them;
    ``revs`` is compared as written and as its real path ``real``."""
    for folder in (revs, real):
        with contextlib.suppress(ValueError, IndexError):
            return path.relative_to(folder).parts[0]
    return ""


def _read_record(path: Path) -> dict[str, Any]:
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
