"""Hostile SDK layers, served over HTTP on 127.0.0.1: refused from their headers, within
one budget for all the layers of a container, remembered by checksum, cancellable, and
never leaving anything in the cache."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from runtime.api.spec import SdkLayer
from runtime.errors import ArchiveError, ArchiveRefused
from runtime.images.budget import Budget
from runtime.images.extract import _Extractor, extract_tar, remove_tree, sweep_staging
from runtime.images.layers import resolve_sdk, resolve_sdks, sweep_cache
from runtime.settings import BadSetting, RuntimeSettings, UnpackLimits
from runtime.util.cancel import Cancel, Cancelled
from tests.fixtures.mirror import serve_handler

MiB = 1024 * 1024
HANG_GUARD = 120.0
"""Only so that a broken test ends: every wait below is for an event, not a duration."""


# -- archives -------------------------------------------------------------------------------


def tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644, len(data)
    return info, data if kind == tarfile.REGTYPE else None


def many_entries(count: int) -> bytes:
    return tar_bytes([entry(f"f{i}") for i in range(count)])


def deep_tree(depth: int) -> bytes:
    return tar_bytes(
        [entry("/".join(["d"] * level), kind=tarfile.DIRTYPE) for level in range(1, depth + 1)]
    )


def sparse_member(size: int) -> bytes:
    """One member of ``size`` bytes that is all hole: a few hundred bytes compressed."""
    info = tarfile.TarInfo("disk.img")
    info.size, info.mode = 0, 0o644
    info.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.size": str(size)}
    return tar_bytes([(info, None)])


def files_of(size: int, count: int = 1) -> bytes:
    return tar_bytes([entry(f"data{i}", os.urandom(size)) for i in range(count)])


# -- a server -------------------------------------------------------------------------------


@dataclass
class Site:
    """What the server serves, what it was asked, and a stall: ``stall_after`` bytes into
    ``stall_path`` it tells ``stalled`` and waits for ``resume``."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    stall_path: str | None = None
    stall_after: int = 0
    stalled: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return hashlib.sha256(body).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, site: Site, **kwargs: Any) -> None:
        self.site = site
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        site = self.site
        site.requests[self.path] += 1
        body = site.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path != site.stall_path:
            self.wfile.write(body)
            return
        self.wfile.write(body[: site.stall_after])
        self.wfile.flush()
        site.stalled.set()
        site.resume.wait(HANG_GUARD)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    served = Site()
    with serve_handler(functools.partial(_Handler, site=served)) as url:
        yield served, url
        served.resume.set()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def layer(site: tuple[Site, str], name: str, body: bytes) -> SdkLayer:
    served, url = site
    sha256 = served.add(f"/{name}.tar.gz", body)
    return SdkLayer(name=name, url=f"{url}/{name}.tar.gz", sha256=sha256)


def left_in(cache: Path) -> list[str]:
    """Everything under the cache's layers and downloads folders (the refusal records
    and verified downloads of good layers aside)."""
    found = []
    for folder in ("layers", "downloads"):
        if (cache / folder).is_dir():
            found += [f"{folder}/{name}" for name in os.listdir(cache / folder)]
    return sorted(found)


# -- refused from their headers -------------------------------------------------------------


def test_an_archive_of_too_many_entries_is_refused_after_counting_one_more(
    site: tuple[Site, str], cache: Path
) -> None:
    many = layer(site, "many", many_entries(3000))
    with pytest.raises(ArchiveRefused, match="more than 1000 entries") as refused:
        resolve_sdks([many], cache, limits=UnpackLimits(entries=1000))
    assert refused.value.at_least[0] == 1001  # stopped at the first entry over the limit
    assert left_in(cache) == []


def test_nothing_of_an_archive_over_the_entry_limit_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(many_entries(3000))
    written: list[str] = []
    unpack_member = _Extractor._extract_member

    def spy(self: _Extractor, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        written.append(member.name)
        unpack_member(self, tar, member)

    monkeypatch.setattr(_Extractor, "_extract_member", spy)
    with pytest.raises(ArchiveRefused, match="more than 1000 entries") as refused:
        extract_tar(archive, tmp_path / "out", budget=Budget(UnpackLimits(entries=1000)))
    assert refused.value.at_least[0] == 1001
    assert written == []  # refused from the raw headers of the whole archive first


def _awkward_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Long names and links, a non-ASCII name, and a tar archive as a file's data."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(50):
            tar.addfile(tarfile.TarInfo(f"inner{i}"))
    link, _ = entry("link", kind=tarfile.SYMTYPE)
    link.linkname = "t" * 200
    return [
        entry("/".join(["long-directory-name"] * 12), kind=tarfile.DIRTYPE),
        entry("nested.tar", inner.getvalue()),
        entry("\u00fc" * 70, b"abc"),
        (link, None),
        entry("random", os.urandom(1000)),
    ]


def test_a_sparse_member_stored_larger_than_it_unpacks_is_counted_as_it_unpacks(
    tmp_path: Path,
) -> None:
    info = tarfile.TarInfo("sparse")
    info.size = 600  # stored: what the archive holds, more than the 10 bytes it unpacks to
    info.pax_headers = {"GNU.sparse.map": "0,10", "GNU.sparse.size": "10"}
    archive = tmp_path / "sparse.tar"
    archive.write_bytes(tar_bytes([(info, os.urandom(600))]))
    usage = extract_tar(archive, tmp_path / "out", budget=Budget(UnpackLimits(bytes=10)))
    assert usage.as_tuple()[:2] == (1, 10)
    assert (tmp_path / "out" / "sparse").stat().st_size == 10


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz", "w:bz2"])
def test_the_raw_header_count_never_refuses_an_archive_at_its_limits(
    tmp_path: Path, fmt: int, mode: str
) -> None:
    archive = tmp_path / "awkward.tar"
    members = _awkward_members()
    with tarfile.open(archive, mode, format=fmt) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    size = sum(info.size for info, _ in members if info.isreg())
    limits = UnpackLimits(entries=len(members), bytes=size)
    usage = extract_tar(archive, tmp_path / "out", budget=Budget(limits))
    assert usage.as_tuple()[:2] == (len(members), size)


def test_a_deep_tree_is_refused_from_its_headers_by_default(
    site: tuple[Site, str], cache: Path
) -> None:
    deep = layer(site, "deep", deep_tree(1500))
    with pytest.raises(ArchiveRefused, match="deeper than 128") as refused:
        resolve_sdk(deep, cache)
    assert refused.value.at_least[2] == 129
    assert left_in(cache) == []


def test_a_sparse_member_counts_at_its_full_size_before_it_is_written(
    site: tuple[Site, str], cache: Path
) -> None:
    body = sparse_member(64 * MiB)
    assert len(body) < 1024
    sparse = layer(site, "sparse", body)
    with pytest.raises(ArchiveRefused, match="more than 16777216 bytes") as refused:
        resolve_sdks([sparse], cache, limits=UnpackLimits(bytes=16 * MiB))
    assert refused.value.at_least[:2] == (1, 64 * MiB)
    assert left_in(cache) == []


def test_the_default_limits_refuse_a_3_gb_sparse_member(
    site: tuple[Site, str], cache: Path
) -> None:
    sparse = layer(site, "sparse", sparse_member(3 * 10**9))
    with pytest.raises(ArchiveRefused, match="bytes"):
        resolve_sdk(sparse, cache)
    assert left_in(cache) == []


def test_the_layers_of_a_container_share_one_budget(site: tuple[Site, str], cache: Path) -> None:
    layers = [layer(site, name, files_of(6 * MiB)) for name in ("a", "b", "c")]
    limits = UnpackLimits(bytes=16 * MiB)
    with pytest.raises(ArchiveRefused, match="with the container's other layers") as refused:
        resolve_sdks(layers, cache, limits=limits)
    assert Path(refused.value.archive).name.startswith("c-")
    kept = left_in(cache)
    assert [n for n in kept if n.startswith("layers/") and not n.endswith(".json")] == [
        f"layers/{one.name}-{str(one.sha256)[:16]}" for one in layers[:2]
    ]
    assert not any(n.startswith("layers/.") or n.startswith("downloads/c-") for n in kept)
    # Again: a and b come from the cache, charged what they used; c is refused unasked.
    served, _ = site
    with pytest.raises(ArchiveRefused, match="refused before"):
        resolve_sdks(layers, cache, limits=limits)
    assert served.requests["/c.tar.gz"] == 1
    # Each fits alone: the refusal depends on the company, not on the archive.
    assert resolve_sdks(layers[2:], cache, limits=limits)[0].is_dir()


def test_a_refused_archive_is_not_downloaded_again(site: tuple[Site, str], cache: Path) -> None:
    served, _ = site
    many = layer(site, "many", many_entries(300))
    for _ in range(3):
        with pytest.raises(ArchiveRefused) as refused:
            resolve_sdks([many], cache, limits=UnpackLimits(entries=100))
    assert refused.value.remembered
    assert "more than 100 entries" in str(refused.value)
    assert served.requests["/many.tar.gz"] == 1
    assert (cache / "refused" / f"{many.sha256}.json").is_file()
    # Limits raised far enough: it is fetched and unpacked after all.
    (root,) = resolve_sdks([many], cache, limits=UnpackLimits(entries=1000))
    assert len(os.listdir(root)) == 300
    assert served.requests["/many.tar.gz"] == 2


def test_an_unsafe_archive_is_remembered_whatever_the_limits(
    site: tuple[Site, str], cache: Path
) -> None:
    served, _ = site
    escape = layer(site, "escape", tar_bytes([entry("../../outside", b"x")]))
    with pytest.raises(ArchiveError, match="escapes"):
        resolve_sdk(escape, cache)
    with pytest.raises(ArchiveRefused, match=r"refused before.*escapes"):
        resolve_sdks([escape], cache, limits=UnpackLimits(entries=10**9))
    assert served.requests["/escape.tar.gz"] == 1


# -- cancelled at once, nothing left -----------------------------------------------------------


def test_a_stalled_download_stops_when_cancelled(site: tuple[Site, str], cache: Path) -> None:
    served, _ = site
    body = files_of(4 * MiB)
    stuck = layer(site, "stuck", body)
    served.stall_path, served.stall_after = "/stuck.tar.gz", len(body) // 2
    cancel = Cancel()
    outcome: list[BaseException] = []

    def prepare() -> None:
        try:
            resolve_sdks([stuck], cache, cancel=cancel)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=prepare)
    worker.start()
    assert served.stalled.wait(HANG_GUARD)
    cancel.cancel()
    worker.join(HANG_GUARD)
    assert not served.resume.is_set()  # the server still stalls: the cancel ended it
    assert [type(e) for e in outcome] == [Cancelled]
    assert left_in(cache) == []


class _CancelAfter(Cancel):
    """Cancels itself at its ``steps``-th check: counts the steps the work took."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.checks = steps, 0

    def check(self) -> None:
        self.checks += 1
        if self.checks == self.steps:
            self.cancel()
        super().check()


def test_an_unpack_stops_at_the_next_entry_when_cancelled(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(many_entries(5000))
    out = tmp_path / "out"
    out.mkdir()
    cancel = _CancelAfter(100)
    with pytest.raises(Cancelled):
        extract_tar(archive, out / "layer", budget=Budget(), cancel=cancel)
    assert cancel.checks == 100
    assert os.listdir(out) == []


# -- no recursion, nothing left ---------------------------------------------------------------


def test_a_tree_deeper_than_the_recursion_limit_is_removed(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o400, dir_fd=fd))
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.chmod(fd, 0o500)  # the innermost one is read-only, as an archive may leave it
    os.close(fd)
    remove_tree(top)
    assert not top.exists()


def test_the_sweep_removes_what_killed_processes_left_and_keeps_the_rest(
    cache: Path,
) -> None:
    layers, downloads = cache / "layers", cache / "downloads"
    left = layers / ".python-0123.abcd.extracting"
    (left / "bin" / "deep").mkdir(parents=True)
    (left / "bin" / "deep" / "file").write_text("x")
    (left / "bin").chmod(0o500)
    busy = layers / ".node-4567.efgh.extracting"
    busy.mkdir()
    downloads.mkdir()
    (downloads / ".python-0123.tar.gz.wxyz.part").write_bytes(b"half")
    (downloads / "python-0123.tar.gz").write_bytes(b"whole")
    (layers / "python-0123").mkdir()
    lock = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a live extraction holds it
        swept = sweep_cache(cache)
    finally:
        os.close(lock)
    assert swept == [".python-0123.abcd.extracting", ".python-0123.tar.gz.wxyz.part"]
    assert left_in(cache) == [
        "downloads/python-0123.tar.gz",
        "layers/.node-4567.efgh.extracting",
        "layers/python-0123",
    ]


def test_the_limits_come_from_the_environment() -> None:
    settings = RuntimeSettings.from_environ(
        {"SQUISH_UNPACK_MAX_ENTRIES": "10", "SQUISH_UNPACK_MAX_BYTES": "4096"}
    )
    assert settings.unpack_limits == UnpackLimits(entries=10, depth=128, bytes=4096)
    assert RuntimeSettings.from_environ({}).unpack_limits == UnpackLimits()
    with pytest.raises(BadSetting, match="SQUISH_UNPACK_MAX_DEPTH"):
        RuntimeSettings.from_environ({"SQUISH_UNPACK_MAX_DEPTH": "deep"})
    with pytest.raises(BadSetting, match="SQUISH_UNPACK_MAX_BYTES"):
        RuntimeSettings.from_environ({"SQUISH_UNPACK_MAX_BYTES": "0"})


def test_a_staging_tree_swept_before_it_was_locked_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep may look in the instant between the staging tree's mkdir and its lock."""
    archive = tmp_path / "small.tar.gz"
    archive.write_bytes(many_entries(3))
    make = tempfile.mkdtemp
    made: list[str] = []

    def swept_at_once(*args: Any, **kwargs: Any) -> str:
        made.append(make(*args, **kwargs))
        if len(made) == 1:
            assert sweep_staging(Path(made[0]).parent) == [Path(made[0]).name]
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", swept_at_once)
    extract_tar(archive, tmp_path / "out" / "layer")
    assert len(made) == 2
    assert sorted(os.listdir(tmp_path / "out" / "layer")) == ["f0", "f1", "f2"]
    assert os.listdir(tmp_path / "out") == ["layer"]


def test_what_a_killed_unpack_leaves_is_swept(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(many_entries(200_000))
    layers = tmp_path / "cache" / "layers"
    layers.mkdir(parents=True)
    script = (
        "import sys; from pathlib import Path; from runtime.images.extract import extract_tar; "
        "from runtime.images.budget import Budget; from runtime.settings import UnpackLimits; "
        "extract_tar(Path(sys.argv[1]), Path(sys.argv[2]), budget=Budget(UnpackLimits(10**6)))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(archive), str(layers / "many-0123")],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        staging = _first_entry(layers, child)  # it is filling its staging tree, locked
        child.send_signal(signal.SIGSTOP)  # held mid-way (its unpack has seconds to go)
        assert staging.endswith(".extracting")
        assert sweep_cache(tmp_path / "cache") == []  # locked: in use
    finally:
        child.kill()
        child.wait()
    assert os.listdir(layers) == [staging]  # the kill left it
    assert sweep_cache(tmp_path / "cache") == [staging]
    assert os.listdir(layers) == []


def _first_entry(folder: Path, child: subprocess.Popen[bytes]) -> str:
    """The first directory in ``folder`` that ``child`` has begun to fill (so it is locked)."""
    while True:
        assert child.poll() is None, "the child ended before it made anything"
        for name in os.listdir(folder):
            with contextlib.suppress(FileNotFoundError):
                if os.listdir(folder / name):
                    return name
        time.sleep(0.001)
