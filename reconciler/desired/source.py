"""Where desired state comes from: the loop reads a :class:`Source`, not a path.

A source gives snapshots of the desired state (each with a revision that says what was
loaded), says when the desired state may have changed, and names the folder its
containers are labelled with (status is kept per folder too). :class:`FolderSource`
is a folder of squishfiles watched with inotify; another source (a git checkout at a
given commit, say) plugs in without touching the loop or the planner.

A folder's watch tells a batch of events as soon as its first event comes, so that a
pass loads and plans while the batch gathers; a snapshot loaded amid a batch says so
(:attr:`Snapshot.current`), and the pass acts on it only once the batch has ended.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio

from reconciler.desired.folder import FileCache, load_desired, settles_in
from reconciler.desired.inotify import Inotify, batches
from reconciler.desired.links import linked_from
from reconciler.desired.types import DesiredState, is_squishfile
from reconciler.settings import Settings
from reconciler.squishfile.placement import HostIdentity

__all__ = ("Changed", "FolderSource", "Snapshot", "Source")

Changed = Callable[[str], None]
"""Told, without blocking, that the desired state may have changed, and why."""


@dataclass(frozen=True)
class Snapshot:
    """The desired state as loaded once, and what it was loaded from."""

    desired: DesiredState
    revision: str
    """What was loaded, for status and logs (a folder: a digest of its files' bytes; a
    git source would give its commit)."""
    settle_in: float | None = None
    """Seconds after which loading again may give more (a file written in place becomes
    quiet enough to apply); None: only when the source says it changed."""
    current: Callable[[], Awaitable[bool]] | None = None
    """None: the snapshot may be acted on at once. Else it was loaded while a batch of
    changes was still coming in: awaiting this waits until the batch has ended and says
    whether the snapshot still holds (False: something changed after its load began,
    load again). The source told that batch once, as it began, and tells nothing at its
    end: act on such a snapshot only once this said True."""


class Source(Protocol):
    """What the loop needs from where desired state comes from."""

    @property
    def folder(self) -> Path:
        """The absolute folder the containers are labelled with and status is kept for."""
        ...

    def load(self) -> Snapshot:
        """The desired state now. It may block (it runs in a worker thread) and it
        never raises for a bad file: a bad file becomes a ``FileError``. Its
        ``settle_in`` asks for another load that soon."""
        ...

    async def watch(self, changed: Changed, stop: anyio.Event) -> None:
        """Call ``changed(reason)`` whenever the desired state may have changed (it need
        not have), until ``stop`` is set. A missed change costs a resync's delay only:
        each pass loads everything again."""
        ...


@dataclass
class FolderSource:
    """The squishfiles of one folder, watched with inotify."""

    path: Path
    settings: Settings = field(default_factory=Settings)
    """Its debounce, step, settle time and re-arm delay."""
    clock: Callable[[], float] = time.monotonic
    """What the settle time of files written in place is measured with."""
    _files: FileCache = field(default_factory=dict)
    recall_names: bool = True
    """A file that no longer parses claims the name it had when it last did (False:
    the name a load without :attr:`_files` would give it; see
    :func:`~reconciler.desired.folder.load_desired`)."""
    _armed: bool = False
    """The watch is armed (:meth:`watch` runs and watches the folder as it is)."""
    _events: int = 0
    """Reads of events by the watch (each makes the next load read everything)."""
    _vouched_at: int | None = None
    """:attr:`_events` when the last load began with the watch armed (None: it was not).
    While it is still the count, the watch has seen no event since: a file whose status
    is unchanged is unchanged (see :meth:`load`)."""
    _batch: anyio.Event | None = None
    """Set when the batch of events the watch is gathering ends (None: no event is
    waiting for its batch to end)."""

    @property
    def folder(self) -> Path:
        return Path(os.path.abspath(self.path))

    def load(self) -> Snapshot:
        """The folder's squishfiles; each is read again and its bytes hashed, except
        while the watch vouches that nothing changed since the last load: then a file
        whose device, inode, size, mtime and ctime are those it was read with is taken
        as it was. Timestamps alone could miss a same-size edit within one tick; here
        any write, rename or removal in the folder (or in one its links lead into) is an
        event, which makes the next load read everything (an event that comes while a
        load runs, too: it joins the batch the load was amid, and the pass loads again
        once the batch has ended, or it begins a batch, which the watch tells). The
        status check remains for
        what no event reports (a file system shared over the network, changed from
        another host, still moves a file's times and size)."""
        now, settle = self.clock(), self.settings.settle_ms / 1000
        host = HostIdentity(self.settings.host, self.settings.labels)
        seen = self._events  # read once: an event told from here on is told after it
        pending = self._batch is not None
        trusted = self._armed and self._vouched_at == seen
        self._vouched_at = seen if self._armed else None
        desired = load_desired(
            self.folder,
            self._files,
            now=now,
            settle=settle,
            host=host,
            trusted=trusted,
            recall_names=self.recall_names,
        )
        current = functools.partial(self._held, seen) if pending else None
        return Snapshot(
            desired, self._revision(desired), settles_in(self._files, now, settle), current
        )

    async def _held(self, seen: int) -> bool:
        """Once the batch gathering now (if any) has ended, whether no event came since
        the load that read :attr:`_events` as ``seen`` began."""
        await self.batch_ended()
        return self._events == seen

    async def batch_ended(self) -> None:
        """Until the batch of events the watch is gathering now (if any) has ended."""
        batch = self._batch
        if batch is not None:
            await batch.wait()

    def _revision(self, desired: DesiredState) -> str:
        """``files:<digest>`` of the squishfiles' names and bytes as loaded."""
        if not desired.readable:
            return "unreadable"
        digest = hashlib.blake2b(digest_size=6)
        for path in sorted(self._files):
            digest.update(path.name.encode() + b"\0" + self._files[path].key)
        for path, key in desired.network_files:
            digest.update(path.name.encode() + b"\0" + key)
        return f"files:{digest.hexdigest()}"

    def _noticed(self, changed: Changed) -> None:
        """Events came: the next load reads every file. The first of a batch tells a
        change at once, so that a pass loads and plans while the batch gathers; it acts
        once the batch has ended (:attr:`Snapshot.current`).

        The batch's end is not told: the pass this tell asks for loads after the tell,
        and either after the batch's end too, or amid it and then waits for its end
        (loading again if an event came after its load began). Telling the end as well
        made a second pass whenever the pass looked at the batch only after its end."""
        self.note_event()
        if self._batch is None:
            self._batch = anyio.Event()
            changed("files changed")

    def _ended(self) -> None:
        """The batch ended: a pass waiting for it may act."""
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.set()

    def note_event(self) -> None:
        """An event came: the next load reads every file. Called on the watch's side
        while a load may run in a worker thread: a count, not a flag a load resets,
        so an event told between a load's check and its reset is never lost."""
        self._events += 1

    async def watch(self, changed: Changed, stop: anyio.Event) -> None:
        """Tell each batch of squishfile events as it begins (a load amid it waits for
        its end: :attr:`Snapshot.current`); re-arm when the folder returns or is
        replaced by another directory (inotify would keep following the old one), and
        at once when its symbolic links lead elsewhere."""
        watch = _Watch()

        def noted(reason: str) -> None:
            self.note_event()
            changed(reason)

        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on, stop, group.cancel_scope)
            while True:
                try:
                    relinked = await self._watch_once(changed, watch)
                finally:
                    self._armed = False
                    self._ended()  # a pass waiting for it loads again: the event below
                noted("links changed" if relinked else "folder changed")
                if not relinked:
                    await anyio.sleep(self.settings.rearm_delay)

    async def _watch_once(self, changed: Changed, watch: _Watch) -> bool:
        """Watch the folder as it is now, and what its links lead to, until it vanishes,
        is replaced, its links lead elsewhere or a folder they lead into appears or goes
        (then True)."""
        try:
            st = await anyio.Path(self.folder).stat()
            real = Path(await anyio.Path(self.folder).resolve())
        except OSError:
            watch.identity = None
            return False
        watch.identity = (st.st_dev, st.st_ino)
        linked = linked_from(real)
        folders = linked.folders | {real}  # as they are now: one that appears later is watched then
        counts = functools.partial(_counts, real, linked.paths, folders)
        quiet, longest = self.settings.step_ms / 1000, self.settings.debounce_ms / 1000
        noticed = functools.partial(self._noticed, changed)
        try:
            with Inotify() as notify:
                for folder in sorted(folders):
                    notify.add(folder)
                self._armed = True
                # a tick once a second: is it still the same folder?
                events = batches(
                    notify, counts, quiet=quiet, longest=longest, tick=1.0, noticed=noticed
                )
                async with contextlib.aclosing(events):
                    async for batch in events:
                        if batch:
                            self._ended()
                        if watch.stale(self.folder):
                            return False
                        now = linked_from(real)
                        if now != linked or now.folders | {real} != folders:
                            return True
        except OSError:
            pass  # the folder vanished: the periodic resync notices, the caller re-arms
        return False


def _counts(folder: Path, linked: frozenset[Path], watched: frozenset[Path], event: Path) -> bool:
    """Whether an event may change a squishfile of ``folder``: it is on one, or on a
    link on the way to one, or on a file a link leads to, or on a watched folder itself
    (it went, or events were lost)."""
    return (event.parent == folder and is_squishfile(event)) or event in linked or event in watched


class _Watch:
    """The identity (device, inode) of the folder the watch is armed on."""

    def __init__(self) -> None:
        self.identity: tuple[int, int] | None = None

    def stale(self, folder: Path) -> bool:
        """True when the folder was replaced (renamed over) since the watch was armed."""
        try:
            st = folder.stat()
        except OSError:
            return self.identity is not None
        return self.identity is not None and self.identity != (st.st_dev, st.st_ino)


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
