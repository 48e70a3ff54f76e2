"""The folder watch: inotify events read by the event loop, batched by a quiet time."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import pytest
from inotify_simple import flags

from reconciler.desired.inotify import Inotify, batches

HANG_GUARD = 30.0


def squishfiles(path: Path) -> bool:
    return path.suffix == ".toml"


async def next_batch(events: AsyncGenerator[bool, None]) -> bool:
    with anyio.fail_after(HANG_GUARD):
        return await anext(events)


def test_events_name_the_entry_or_the_folder(tmp_path: Path) -> None:
    with Inotify() as notify:
        notify.add(tmp_path)
        (tmp_path / "web.toml").write_text("x")
        os.rename(tmp_path / "web.toml", tmp_path / "api.toml")
        seen = [path for path, _ in notify.read()]
        assert notify.read() == []  # read drains
    assert tmp_path / "web.toml" in seen and tmp_path / "api.toml" in seen


def test_watching_what_is_no_folder_says_why(tmp_path: Path) -> None:
    with Inotify() as notify, pytest.raises(FileNotFoundError):
        notify.add(tmp_path / "missing")


@pytest.mark.anyio
async def test_a_burst_written_within_the_quiet_time_is_one_batch(tmp_path: Path) -> None:
    with Inotify() as notify:
        notify.add(tmp_path)
        events = batches(notify, squishfiles, quiet=2.0, longest=HANG_GUARD, tick=60)
        for n in range(20):  # all at once, as a checkout writes them
            (tmp_path / f"f{n}.toml").write_text("x")
        assert await next_batch(events) is True
        assert notify.read() == []  # every event of the burst went into that batch
        await events.aclose()


@pytest.mark.anyio
async def test_a_batch_ends_at_the_longest_however_busy_the_folder(tmp_path: Path) -> None:
    with Inotify() as notify:
        notify.add(tmp_path)
        events = batches(notify, squishfiles, quiet=HANG_GUARD, longest=0.05, tick=60)
        async with anyio.create_task_group() as group:

            async def keep_writing() -> None:
                while True:
                    (tmp_path / "busy.toml").write_text("x")
                    await anyio.sleep(0.001)

            group.start_soon(keep_writing)
            assert await next_batch(events) is True  # not after HANG_GUARD's quiet
            group.cancel_scope.cancel()
        await events.aclose()


@pytest.mark.anyio
async def test_events_that_do_not_count_make_no_batch_and_a_tick_tells_the_quiet(
    tmp_path: Path,
) -> None:
    with Inotify() as notify:
        notify.add(tmp_path)
        events = batches(notify, squishfiles, quiet=0.001, longest=1.0, tick=0.05)
        (tmp_path / ".web.toml.swp").write_text("x")
        assert await next_batch(events) is False
        (tmp_path / ".web.toml.new").write_text("x")
        (tmp_path / ".web.toml.new").rename(tmp_path / "web.toml")
        assert await next_batch(events) is True
        await events.aclose()


@pytest.mark.anyio
async def test_the_folder_itself_going_is_an_event_of_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "desired"
    folder.mkdir()
    with Inotify() as notify:
        notify.add(folder)
        events = batches(notify, lambda p: p == folder, quiet=0.001, longest=1.0, tick=60)
        folder.rmdir()
        assert await next_batch(events) is True
        await events.aclose()


@pytest.mark.anyio
async def test_a_closed_write_ends_the_batch_without_waiting_out_the_quiet_time(
    tmp_path: Path,
) -> None:
    with Inotify() as notify:
        notify.add(tmp_path)
        events = batches(notify, squishfiles, quiet=HANG_GUARD * 2, longest=HANG_GUARD * 3, tick=60)
        (tmp_path / "web.toml").write_text("x")  # created, written, closed
        assert await next_batch(events) is True  # within HANG_GUARD, not the quiet time
        await events.aclose()


@pytest.mark.anyio
async def test_a_file_still_open_for_writing_holds_the_batch(tmp_path: Path) -> None:
    """A writer that pauses mid-file: its second half joins the batch of its first."""
    told: list[bool] = []
    first = anyio.Event()
    with Inotify() as notify:
        notify.add(tmp_path)
        events = batches(notify, squishfiles, quiet=HANG_GUARD / 10, longest=HANG_GUARD, tick=60)

        async def follow() -> None:
            async for batch in events:
                told.append(batch)
                first.set()

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            with (tmp_path / "web.toml").open("w") as file:
                file.write("first half\n")
                file.flush()
                await anyio.sleep(0.1)  # a hundred times what ends a batch of closed files
                file.write("second half\n")
            with anyio.fail_after(HANG_GUARD):
                await first.wait()
            await anyio.sleep(0.1)  # a second batch, had the first ended before the close
            group.cancel_scope.cancel()
        await events.aclose()
    assert told == [True]


def test_a_lost_queue_is_an_event_on_every_watched_folder(tmp_path: Path) -> None:
    """More events than the kernel queues: the overflow names each folder (anything in
    them may have changed), not the entries whose events were dropped."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with Inotify() as notify:
        notify.add(first)
        notify.add(second)
        for n in range(queued // 2 + 1):  # a create and a close each, at least
            (first / f"f{n}").touch()
        seen = notify.read()
    assert (first, seen[-1][1]) in seen and (second, seen[-1][1]) in seen
    assert seen[-1][1] & flags.Q_OVERFLOW
