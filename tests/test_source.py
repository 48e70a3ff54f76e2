"""The source seam: the loop applies whatever a :class:`Source` gives and passes when it
says so; :class:`FolderSource` is a folder's squishfiles.

The loop is driven here by an in-memory source, without any file, against the fake
runtime; nothing waits on the wall clock (the resync is an hour, so every pass after the
first is one the source asked for).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from reconciler.control.converge import Converger
from reconciler.control.loop import PassResult, Reconciler, run_loop
from reconciler.desired import folder
from reconciler.desired.folder import _labelled
from reconciler.desired.links import linked_from
from reconciler.desired.source import Changed, FolderSource, Snapshot, Source
from reconciler.desired.types import DesiredContainer, DesiredState, squishfiles_in
from reconciler.planning.plan import ActionKind
from reconciler.settings import Settings
from reconciler.squishfile import read_squishfile
from reconciler.squishfile.loading import ReadFile
from runtime.api import ContainerInfo
from runtime.api.spec import ContainerSpec, RootfsRef
from tests.fakes import HANG_GUARD, FakeClock, FakeRuntime

FOLDER = Path("/in-memory/desired")


def wanted(name: str) -> DesiredContainer:
    """A container as a loaded file would ask for it, labelled for :data:`FOLDER`."""
    spec = ContainerSpec(
        name=name, rootfs=RootfsRef(kind="busybox", version="builtin"), argv=("sleep", "1d")
    )
    file = FOLDER / f"{name}.toml"
    return DesiredContainer(file, _labelled(spec, FOLDER, file))


class MemorySource:
    """Desired state held in memory; :meth:`put` replaces it and says so."""

    def __init__(self, *names: str) -> None:
        self.revision = 0
        self.state = DesiredState(FOLDER)
        self.watching = anyio.Event()
        self._changed: Changed | None = None
        self.put(*names)

    @property
    def folder(self) -> Path:
        return FOLDER

    def put(self, *names: str) -> None:
        self.revision += 1
        self.state = DesiredState(FOLDER, {n: wanted(n) for n in names})
        if self._changed is not None:
            self._changed(f"revision {self.revision}")

    def load(self) -> Snapshot:
        return Snapshot(self.state, f"memory:{self.revision}")

    async def watch(self, changed: Changed, stop: anyio.Event) -> None:
        self._changed = changed
        self.watching.set()
        await stop.wait()


class WatchesNoExits(Reconciler):
    """The fake's pids are not real processes: no pidfd watches, no passes from them."""

    def running_pids(self) -> set[int]:
        return set()


def loop_over(source: Source, fake: FakeRuntime, clock: FakeClock) -> WatchesNoExits:
    """The loop that applies ``source`` to ``fake``, on ``clock``."""
    return WatchesNoExits(source, fake, Converger(fake, clock=clock), clock=clock)


def kinds(result: PassResult) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.name) for a in result.plan.actions]


async def next_pass(passes: MemoryObjectReceiveStream[PassResult]) -> PassResult:
    with anyio.fail_after(HANG_GUARD):  # a broken loop fails the test instead of hanging it
        return await passes.receive()


async def passes_until_quiet(passes: MemoryObjectReceiveStream[PassResult]) -> list[PassResult]:
    """The passes up to and with the first that had nothing to do."""
    seen = [await next_pass(passes)]
    while seen[-1].plan.actions:
        seen.append(await next_pass(passes))
    return seen


@pytest.mark.anyio
async def test_the_loop_applies_what_a_source_gives_when_it_says_so() -> None:
    clock = FakeClock()
    fake = FakeRuntime(clock)
    source = MemorySource("web")
    loop = loop_over(source, fake, clock)
    send, passes = anyio.create_memory_object_stream[PassResult](16)
    stop = anyio.Event()
    run = functools.partial(
        run_loop, loop, settings=Settings(resync=3600.0), on_pass=send.send_nowait, stop=stop
    )

    async with anyio.create_task_group() as group, send, passes:
        group.start_soon(run)
        first = await passes_until_quiet(passes)
        await source.watching.wait()
        source.put("web", "api")
        second = await passes_until_quiet(passes)
        stop.set()

    assert [(r.trigger, r.revision, kinds(r)) for r in first] == [
        ("start", "memory:1", [(ActionKind.CREATE, "web")]),
        ("resync", "memory:1", []),  # the look again after changes
    ]
    assert [(r.trigger, r.revision, kinds(r)) for r in second] == [
        ("revision 2", "memory:2", [(ActionKind.CREATE, "api")]),
        ("resync", "memory:2", []),
    ]
    assert [info.name for info in fake.list()] == ["api", "web"]
    assert loop.record.last_revision == "memory:2"


def write(folder: Path, files: Sequence[tuple[str, str]]) -> None:
    for name, name_inside in files:
        (folder / name).write_text(
            f'name = "{name_inside}"\n[layers]\nbusybox = "builtin"\n[run]\ncommand = "true"\n'
        )


def test_a_folder_source_revision_follows_the_files_bytes(tmp_path: Path) -> None:
    source = FolderSource(tmp_path, Settings(settle_ms=0))  # each write applies at once
    write(tmp_path, [("web.toml", "web")])
    first = source.load()
    assert first.desired.folder == tmp_path and set(first.desired.containers) == {"web"}
    assert first.revision.startswith("files:")
    assert source.load().revision == first.revision  # nothing changed
    write(tmp_path, [("web.toml", "site")])
    assert source.load().revision != first.revision
    write(tmp_path, [("web.toml", "web")])
    assert source.load().revision == first.revision  # the same bytes again


def test_a_file_deleted_while_the_folder_is_read_changes_the_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    source = FolderSource(tmp_path, clock=clock)
    write(tmp_path, [("api.toml", "api"), ("web.toml", "web")])
    listed = squishfiles_in(tmp_path)
    both = source.load()
    (tmp_path / "web.toml").unlink()
    monkeypatch.setattr(folder, "squishfiles_in", lambda path: listed)  # listed, then deleted
    assert set(source.load().desired.containers) == {"api", "web"}  # gone, not for long yet
    clock.advance(source.settings.settle_ms / 1000)
    gone = source.load()
    assert set(gone.desired.containers) == {"api"}
    assert gone.revision != both.revision
    assert gone.revision == FolderSource(tmp_path).load().revision


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_that_turns_unreadable_changes_the_revision(tmp_path: Path) -> None:
    source = FolderSource(tmp_path)
    write(tmp_path, [("web.toml", "web")])
    first = source.load()
    (tmp_path / "web.toml").chmod(0)
    try:
        unreadable = source.load()
    finally:
        (tmp_path / "web.toml").chmod(0o644)
    assert [e.name for e in unreadable.desired.errors] == ["web"]
    assert unreadable.revision != first.revision
    assert source.load().revision == first.revision  # readable again, the same bytes


def test_a_missing_folder_is_an_unreadable_revision(tmp_path: Path) -> None:
    snapshot = FolderSource(tmp_path / "gone").load()
    assert (snapshot.revision, snapshot.desired.readable) == ("unreadable", False)


def test_a_folder_source_names_its_absolute_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert FolderSource(Path("desired")).folder == tmp_path / "desired"


# -- saves that are not atomic: the real watcher, the fake runtime and the fake clock -------

APP = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
"""The first half of every version of web.toml below: valid TOML, a valid squishfile."""


def with_port(port: int) -> bytes:
    return f"{APP}\n[[ports]]\ncontainer = 80\nhost = {port}\n".encode()


class FolderLoop:
    """A loop on a real folder, watched for real; the loop and the folder's settle time
    share a fake clock, which only the test moves on."""

    def __init__(self, folder: Path, passes: MemoryObjectReceiveStream[PassResult]) -> None:
        self.folder = folder
        self.clock = FakeClock()
        self.fake = FakeRuntime(self.clock)
        settings = Settings(resync=3600.0, settle_ms=50)  # 50 ms of the fake clock
        source = FolderSource(folder, settings, clock=self.clock)
        self.loop = WatchesNoExits(
            source, self.fake, Converger(self.fake, clock=self.clock), clock=self.clock
        )
        self.settings = settings
        self.passes = passes

    async def until(self, seen: Callable[[PassResult], bool]) -> list[PassResult]:
        """The passes up to and with the first for which ``seen`` holds."""
        results = [await next_pass(self.passes)]
        while not seen(results[-1]):
            results.append(await next_pass(self.passes))
        return results

    async def watching(self, path: Path) -> None:
        """Rewrite ``path`` with its own bytes until the watcher reports it: from then on,
        every write is seen."""
        same = await anyio.Path(path).read_bytes()
        with anyio.fail_after(HANG_GUARD):
            while True:
                await anyio.Path(path).write_bytes(same)
                with anyio.move_on_after(0.5):
                    await self.until(lambda r: r.trigger == "files changed")
                    return

    def waiting(self) -> bool:
        """Whether the loop waits for a file written in place to become quiet."""
        return self.loop.next_deadline() != math.inf


async def write_with_a_pause(folder: FolderLoop, path: Path, content: bytes) -> list[PassResult]:
    """Truncate ``path`` and write the first half of ``content`` (valid on its own), let
    a pass read it, then write the rest; the passes until the loop has nothing to do and
    nothing to wait for (the clock moved on by the settle time after each pass)."""
    half = content.index(b"\n[[ports]]") if b"[[ports]]" in content else len(APP)
    with path.open("r+b") as file:
        file.truncate(0)
        file.write(content[:half])
        file.flush()
        seen = await folder.until(lambda r: bool(r.plan.actions) or folder.waiting())
        file.write(content[half:])
    while seen[-1].plan.actions or folder.waiting():
        folder.clock.advance(folder.settings.settle_ms / 1000)
        seen.append(await next_pass(folder.passes))
    return seen


@contextlib.asynccontextmanager
async def folder_loop(folder: Path, probe: str = "web.toml") -> AsyncIterator[FolderLoop]:
    """The loop on ``folder``, after its first passes, once the watcher reports writes
    to ``probe`` (a squishfile of the folder)."""
    send, passes = anyio.create_memory_object_stream[PassResult](64)
    running = FolderLoop(folder, passes)
    stop = anyio.Event()
    run = functools.partial(
        run_loop, running.loop, settings=running.settings, on_pass=send.send_nowait, stop=stop
    )
    async with anyio.create_task_group() as group, send, passes:
        group.start_soon(run)
        await running.until(lambda r: not r.plan.actions)
        await running.watching(folder / probe)
        yield running
        stop.set()


@pytest.mark.anyio
async def test_a_save_in_place_with_a_pause_is_applied_once_as_the_final_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    async with folder_loop(tmp_path) as folder:
        before = len(folder.fake.calls)
        seen = await write_with_a_pause(folder, tmp_path / "web.toml", with_port(8081))
    changes = [
        [(a.kind, [p.host for p in a.ports]) for a in r.plan.actions]
        for r in seen
        if r.plan.actions
    ]
    assert changes == [[(ActionKind.BIND, [8081]), (ActionKind.RELEASE, [8080])]]
    # one pass, from the old file to the final one: never a pass without a port
    assert [p.host for p in folder.fake.inspect("web").ports] == [8081]
    assert "remove" not in [c.method for c in folder.fake.calls[before:]]


@pytest.mark.anyio
async def test_a_byte_identical_rewrite_with_a_pause_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    async with folder_loop(tmp_path) as folder:
        revision = folder.loop.revision
        before = len(folder.fake.calls)
        seen = await write_with_a_pause(folder, tmp_path / "web.toml", with_port(8080))
    assert [r.plan.actions for r in seen] == [()] * len(seen)
    assert {c.method for c in folder.fake.calls[before:]} <= {"list", "list_networks", "sweep"}
    assert {r.revision for r in seen} == {revision}


@pytest.mark.anyio
async def test_a_file_renamed_into_place_is_applied_at_once(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    async with folder_loop(tmp_path) as folder:
        (tmp_path / ".web.toml.new").write_bytes(with_port(8081))
        (tmp_path / ".web.toml.new").rename(tmp_path / "web.toml")
        seen = await folder.until(lambda r: bool(r.plan.actions))
    assert all(r.trigger == "files changed" for r in seen)  # the clock never moved on
    assert [p.host for p in folder.fake.inspect("web").ports] == [8081]


# -- symbolic links: what the squishfiles lead to is watched too ----------------------------


def configmap_version(folder: Path, version: str, content: bytes) -> None:
    """Publish ``content`` as ``web.toml`` the way a ConfigMap volume does: a new
    timestamped directory, a ``..data_tmp`` link to it renamed over ``..data``, the old
    directory deleted; ``web.toml`` itself is a link to ``..data/web.toml``."""
    (folder / version).mkdir()
    (folder / version / "web.toml").write_bytes(content)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    (folder / "..data_tmp").symlink_to(version)
    (folder / "..data_tmp").rename(folder / "..data")
    if old is not None:
        shutil.rmtree(folder / old)
    if not (folder / "web.toml").is_symlink():
        (folder / "web.toml").symlink_to("..data/web.toml")


@pytest.mark.anyio
async def test_a_configmap_swap_is_applied_by_the_watcher(tmp_path: Path) -> None:
    configmap_version(tmp_path, "..2026_12_01_00_00_00.1", with_port(8080))
    (tmp_path / "probe.toml").write_text(APP)
    async with folder_loop(tmp_path, probe="probe.toml") as folder:  # resync: an hour
        configmap_version(tmp_path, "..2026_12_01_00_00_00.2", with_port(8081))
        await folder.until(lambda r: bool(r.plan.actions))
        await folder.until(lambda r: not r.plan.actions)  # the look again after changes
        first = [p.host for p in folder.fake.inspect("web").ports]
        configmap_version(tmp_path, "..2026_12_01_00_00_00.3", with_port(8082))
        seen = await folder.until(lambda r: bool(r.plan.actions))
        second = [p.host for p in folder.fake.inspect("web").ports]
    assert (first, second) == ([8081], [8082])
    assert seen[-1].trigger in ("files changed", "links changed")  # the watch still runs
    assert sorted(info.name for info in folder.fake.list()) == ["probe", "web"]
    assert [c.method for c in folder.fake.calls].count("run") == 2  # ..data is no squishfile


@pytest.mark.anyio
async def test_a_linked_file_outside_the_folder_is_watched(tmp_path: Path) -> None:
    desired, elsewhere = tmp_path / "desired", tmp_path / "elsewhere"
    desired.mkdir()
    elsewhere.mkdir()
    (elsewhere / "web.toml").write_bytes(with_port(8080))
    (desired / "web.toml").symlink_to(elsewhere / "web.toml")
    (desired / "probe.toml").write_text(APP)
    async with folder_loop(desired, probe="probe.toml") as folder:
        (elsewhere / ".web.toml.new").write_bytes(with_port(8081))
        (elsewhere / ".web.toml.new").rename(elsewhere / "web.toml")
        await folder.until(lambda r: bool(r.plan.actions))
    assert [p.host for p in folder.fake.inspect("web").ports] == [8081]


@pytest.mark.anyio
async def test_a_linked_file_whose_folder_appears_later_is_watched(tmp_path: Path) -> None:
    desired, conf = tmp_path / "desired", tmp_path / "elsewhere" / "conf"
    desired.mkdir()
    conf.parent.mkdir()
    (desired / "web.toml").symlink_to(conf / "web.toml")  # leads nowhere yet
    (desired / "probe.toml").write_text(APP)
    async with folder_loop(desired, probe="probe.toml") as folder:
        conf.mkdir()
        (conf / ".web.toml.new").write_bytes(with_port(8081))
        (conf / ".web.toml.new").rename(conf / "web.toml")
        await folder.until(lambda r: bool(r.plan.actions))
    assert [p.host for p in folder.fake.inspect("web").ports] == [8081]


def test_a_configmap_layout_is_read_as_its_squishfiles_alone(tmp_path: Path) -> None:
    configmap_version(tmp_path, "..2026_12_01_00_00_00.1", with_port(8080))
    desired = FolderSource(tmp_path).load().desired
    assert [c.file.name for c in desired.containers.values()] == ["web.toml"]
    assert (desired.errors, desired.skipped) == ((), ())


def test_links_that_loop_or_lead_nowhere_are_followed_no_further(tmp_path: Path) -> None:
    (tmp_path / "loop.toml").symlink_to("loop.toml")
    (tmp_path / "gone.toml").symlink_to(tmp_path / "missing" / "gone.toml")
    linked = linked_from(tmp_path)
    assert {tmp_path / "loop.toml", tmp_path / "gone.toml"} <= linked.paths
    assert tmp_path / "missing" not in linked.folders  # it does not exist: nothing to watch


def test_links_that_double_at_each_step_are_followed_as_far_as_the_kernel_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # l0 -> l1/l1, l1 -> l2/l2, ..., l12 -> .: each link leads through two more, so the
    # kernel gives up (ELOOP) after 40 links; a walk that counts depth only reads 2**13.
    (tmp_path / "l12").symlink_to(".")
    for k in range(11, -1, -1):
        (tmp_path / f"l{k}").symlink_to(f"l{k + 1}/l{k + 1}")
    (tmp_path / "web.toml").symlink_to("l0/l0/real.toml")
    (tmp_path / "real.toml").write_text(APP)
    read: list[str] = []
    readlink = os.readlink

    def counted(path: str | os.PathLike[str]) -> str:
        read.append(os.fspath(path))
        return readlink(path)

    monkeypatch.setattr(os, "readlink", counted)
    linked = linked_from(tmp_path)
    assert tmp_path / "web.toml" in linked.paths
    assert len(read) <= 41  # web.toml, then at most the kernel's 40 links


class Changes:
    """What a watch says changed; :meth:`next` waits for its next word."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self._said = anyio.Event()

    def __call__(self, reason: str) -> None:
        self.said.append(reason)
        self._said.set()

    async def next(self) -> None:
        await self._said.wait()
        self._said = anyio.Event()


@contextlib.asynccontextmanager
async def watched(source: FolderSource, probe: Path) -> AsyncIterator[Changes]:
    """``source``'s watch running, once it reports writes to ``probe`` (rewritten with
    its own bytes until it does) and their batch has ended (a write joining it would be
    told by no other word)."""
    changes, stop = Changes(), anyio.Event()
    same = await anyio.Path(probe).read_bytes()
    async with anyio.create_task_group() as group:
        group.start_soon(source.watch, changes, stop)
        with anyio.fail_after(HANG_GUARD):
            while not changes.said:
                await anyio.Path(probe).write_bytes(same)
                with anyio.move_on_after(0.5):
                    await changes.next()
        await batch_ended(source)
        yield changes
        stop.set()


def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The squishfiles read from now on, in order."""
    reads: list[Path] = []

    def counting(path: Path) -> ReadFile:
        reads.append(path)
        return read_squishfile(path)

    monkeypatch.setattr(folder, "read_squishfile", counting)
    return reads


def ports_of(source: FolderSource) -> list[int]:
    return [p.host for p in source.load().desired.containers["web"].spec.ports]


@pytest.mark.anyio
async def test_while_the_watch_sees_nothing_a_load_reads_no_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    source = FolderSource(tmp_path, Settings(settle_ms=0))
    reads = counted_reads(monkeypatch)
    source.load(), source.load()
    assert len(reads) == 2, "with no watch, every load reads every file"
    async with watched(source, tmp_path / "web.toml"):
        source.load()  # the first since the watch's last event reads everything
        assert len(reads) == 3
        assert ports_of(source) == [8080]
        assert len(reads) == 3


@pytest.mark.anyio
async def test_an_edit_the_files_status_does_not_show_is_read_after_the_watchs_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-size edit within one timestamp tick leaves the status as it was (made so
    here): the watch's event is what makes the next load read the file."""
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    source = FolderSource(tmp_path, Settings(settle_ms=0))
    monkeypatch.setattr(folder.Cached, "unchanged", lambda self, path: True)
    async with watched(source, tmp_path / "web.toml") as changes:
        assert ports_of(source) == ports_of(source) == [8080]
        await anyio.Path(tmp_path / "web.toml").write_bytes(with_port(8081))
        with anyio.fail_after(HANG_GUARD):
            await changes.next()
        assert ports_of(source) == [8081]


def test_an_event_told_at_any_moment_of_a_load_is_never_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch tells events in the event loop while a load runs in a worker thread:
    an event told at any line of :meth:`FolderSource.load` makes that load, or the next
    one, read every file (not trust the files' status). Each line is tried in turn."""
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    source = FolderSource(tmp_path, Settings(settle_ms=0))
    source._armed = True  # as while the watch runs
    told: list[bool | str] = []  # each load's `trusted`, and "event" where one was told
    loading = folder.load_desired

    def spy(*args: object, trusted: bool = False, **kwargs: object) -> object:
        told.append(trusted)
        return loading(*args, trusted=trusted, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("reconciler.desired.source.load_desired", spy)
    code = FolderSource.load.__code__
    for line in sorted({n for *_, n in code.co_lines() if n and n > code.co_firstlineno}):
        source.load()  # the watch has vouched since this load: the next may trust
        told.clear()
        with _told_at(code, line, source.note_event, told):
            source.load()
        source.load()
        after = told[told.index("event") + 1 :]
        assert False in after[:2], f"an event told at line {line} was lost: {told}"


@contextlib.contextmanager
def _told_at(
    code: CodeType, line: int, note: Callable[[], None], told: list[bool | str]
) -> Iterator[None]:
    """Call ``note`` (and mark it in ``told``) when ``code`` is about to run ``line``."""

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == line and "event" not in told:
            told.append("event")
            note()
        return local

    def anywhere(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(anywhere)
    try:
        yield
    finally:
        sys.settrace(None)


# -- a pass loads while a batch gathers, and acts once it has ended ------------------------


async def batch_ended(source: FolderSource) -> None:
    """Until the batch the watch is gathering (if any) has ended."""
    with anyio.fail_after(HANG_GUARD):
        await source.batch_ended()


HELD = Settings(settle_ms=0, step_ms=1000, debounce_ms=1000)
"""A batch held by a file open for writing lasts a second: the load amid it has that
long to begin (the thread it runs in may wait its turn on a busy machine)."""


@contextlib.asynccontextmanager
async def held_open(source: FolderSource, changes: Changes) -> AsyncIterator[Snapshot]:
    """A new squishfile made and held open (one event; its batch ends after the step's
    quiet); the snapshot a pass loads once the watch told the batch's first event."""
    await batch_ended(source)
    told = len(changes.said)
    fd = os.open(source.path / "slow.toml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with anyio.fail_after(HANG_GUARD):
            while len(changes.said) == told:
                await changes.next()
        snapshot = await anyio.to_thread.run_sync(source.load)
        assert source._batch is not None  # still gathering
        yield snapshot
    finally:
        os.close(fd)


@pytest.mark.anyio
async def test_a_load_amid_a_batch_holds_once_the_batch_ends_with_nothing_after_it(
    tmp_path: Path,
) -> None:
    """The first event of a batch is told at once, so a pass loads while the batch
    gathers; its snapshot holds once the batch has ended, and the end is not told again."""
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    source = FolderSource(tmp_path, HELD)
    assert source.load().current is None  # no batch: acted on at once
    async with (
        watched(source, tmp_path / "web.toml") as changes,
        held_open(source, changes) as snapshot,
    ):
        told = len(changes.said)
        assert snapshot.current is not None
        with anyio.fail_after(HANG_GUARD):
            assert await snapshot.current() is True
        assert len(changes.said) == told  # the pass that waited acts on it
    assert {e.name for e in snapshot.desired.errors} == {"slow"}  # read amid the batch


@pytest.mark.anyio
async def test_a_load_amid_a_batch_that_more_events_joined_is_loaded_again(
    tmp_path: Path,
) -> None:
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    source = FolderSource(tmp_path, HELD)
    async with (
        watched(source, tmp_path / "web.toml") as changes,
        held_open(source, changes) as snapshot,
    ):
        told = len(changes.said)
        (tmp_path / "api.toml").write_bytes(with_port(8082))  # joins the same batch
        assert snapshot.current is not None
        with anyio.fail_after(HANG_GUARD):
            assert await snapshot.current() is False
        assert len(changes.said) == told  # the pass that waited loads again itself
        assert set(source.load().desired.containers) == {"api", "web"}


class BatchWithMore(MemorySource):
    """Each snapshot is loaded amid a batch; by the end of the first, "api" came too."""

    def load(self) -> Snapshot:
        return Snapshot(self.state, f"memory:{self.revision}", current=self._current)

    async def _current(self) -> bool:
        if "api" in self.state.containers:
            return True
        self.put("web", "api")
        return False


@pytest.mark.anyio
async def test_a_pass_whose_load_a_batch_made_stale_loads_again_before_it_acts() -> None:
    clock = FakeClock()
    fake = FakeRuntime(clock)
    source = BatchWithMore("web")
    loop = loop_over(source, fake, clock)
    result = await loop.reconcile("files changed")
    assert (result.revision, sorted(kinds(result))) == (
        "memory:2",
        [(ActionKind.CREATE, "api"), (ActionKind.CREATE, "web")],
    )
    assert [info.name for info in fake.list()] == ["api", "web"]


class ListsOnceTheBatchEnded(FakeRuntime):
    """A runtime whose ``list`` (or ``sweep``) returns only once the watch's batch has
    ended: the pass looks at the batch only after it ended, however fast it loaded."""

    def __init__(self, clock: FakeClock, slow: str) -> None:
        super().__init__(clock)
        self.source: FolderSource | None = None
        self.slow = slow

    def _until_the_batch_ended(self) -> None:
        if self.source is not None:
            anyio.from_thread.run(batch_ended, self.source)

    def sweep(self) -> list[str]:
        if self.slow == "sweep":
            self._until_the_batch_ended()
        return super().sweep()

    def list(self) -> list[ContainerInfo]:
        if self.slow == "list":
            self._until_the_batch_ended()
        return super().list()


@pytest.mark.anyio
@pytest.mark.parametrize("slow", ["sweep", "list"])
async def test_a_batch_the_pass_looked_at_after_its_end_makes_no_second_pass(
    tmp_path: Path, slow: str
) -> None:
    """The batch's first event began the pass; the pass loads after the batch ended
    (``sweep``) or amid it and looks at it after its end (``list``): the batch is that
    pass's, and the next pass is the next trigger's."""
    (tmp_path / "web.toml").write_bytes(with_port(8080))
    clock = FakeClock()
    fake = ListsOnceTheBatchEnded(clock, slow)
    settings = Settings(resync=3600.0, settle_ms=0)
    source = FolderSource(tmp_path, settings, clock=clock)
    loop = loop_over(source, fake, clock)
    send, passes = anyio.create_memory_object_stream[PassResult](64)
    asked: list[Changed] = []
    stop = anyio.Event()
    run = functools.partial(
        run_loop,
        loop,
        settings=settings,
        on_pass=send.send_nowait,
        stop=stop,
        on_ready=asked.append,
    )
    async with anyio.create_task_group() as group, send, passes:
        group.start_soon(run)
        await passes_until_quiet(passes)
        with anyio.fail_after(HANG_GUARD):
            while not source._armed:  # noqa: ASYNC110 (the watch tells no arming)
                await anyio.sleep(0.001)
        fake.source = source
        (tmp_path / ".web.toml.new").write_bytes(with_port(8081))
        (tmp_path / ".web.toml.new").rename(tmp_path / "web.toml")
        acted = await next_pass(passes)
        while not acted.plan.actions:  # the watch's first look at the folder, say
            acted = await next_pass(passes)
        then = [await next_pass(passes)]  # the look again after changes
        (tell,) = asked
        tell("asked")  # dropped if a pass were pending: the next pass would be that one
        then.append(await next_pass(passes))
        stop.set()
    assert [p.host for p in fake.inspect("web").ports] == [8081]
    assert [(r.trigger, kinds(r)) for r in then] == [("resync", []), ("asked", [])]
