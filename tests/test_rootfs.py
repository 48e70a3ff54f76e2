"""Root filesystems: the builtin busybox one, and Alpine's from a local mirror."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from runtime.api.spec import RootfsRef
from runtime.errors import ArchiveError, ChecksumMismatch, FetchError, HostSetupError, LayerNotFound
from runtime.images.rootfs import alpine_rootfs, busybox_rootfs, elf_is_static, resolve_rootfs
from runtime.settings import RuntimeSettings
from tests.fixtures.mirror import (
    alpine_mirror_fixture,
    alpine_release_dir,
    host_busybox_fixture,
    make_alpine_mirror,
    serve_directory,
    sha256_of,
    unused_local_url,
)

host_busybox = pytest.fixture(scope="module", name="host_busybox")(host_busybox_fixture)
alpine_mirror = pytest.fixture(scope="module", name="alpine_mirror")(alpine_mirror_fixture)

MOUNT_POINTS = ("proc", "sys", "dev", "tmp")
MOUNT_FILES = ("etc/resolv.conf", "etc/hostname", "etc/hosts")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def assert_has_mount_points(root: Path) -> None:
    for name in MOUNT_POINTS:
        assert (root / name).is_dir() and not (root / name).is_symlink(), name
    for name in MOUNT_FILES:
        assert (root / name).is_file() and not (root / name).is_symlink(), name


# --- busybox -------------------------------------------------------------------------


def test_busybox_rootfs_layout(cache: Path, host_busybox: Path) -> None:
    root = busybox_rootfs(cache, busybox=host_busybox)
    assert root.parent == cache / "rootfs"
    assert root.name.startswith("busybox-builtin-")
    assert (root / "bin" / "busybox").read_bytes() == host_busybox.read_bytes()
    assert os.readlink(root / "bin" / "sh") == "busybox"
    for alias in ("sbin", "usr/bin", "usr/sbin"):
        assert (root / alias).resolve() == (root / "bin").resolve(), alias
    assert (root / "usr" / "bin" / "env").is_symlink()
    passwd = (root / "etc" / "passwd").read_text()
    assert passwd.startswith("root:x:0:0:root:/root:/bin/sh\n")
    assert "nobody:" in passwd
    assert "squish busybox builtin" in (root / "etc" / "os-release").read_text()
    assert (root / "etc" / "resolv.conf").read_text() == ""
    for directory in ("root", "var/www", "run"):
        assert (root / directory).is_dir(), directory
    assert_has_mount_points(root)
    assert entries(cache / "rootfs") == [root.name]  # no staging directory left behind


def test_busybox_rootfs_shell_runs(cache: Path, host_busybox: Path) -> None:
    root = busybox_rootfs(cache, busybox=host_busybox)
    result = subprocess.run(
        [str(root / "bin" / "sh"), "-c", "echo $((6 * 7))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert result.stdout == "42\n"


def test_busybox_rootfs_is_built_once_then_reused(
    cache: Path, host_busybox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = busybox_rootfs(cache, busybox=host_busybox)
    (first / "marker").write_text("still here")

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the rootfs was rebuilt")

    monkeypatch.setattr(subprocess, "run", no_rebuild)
    assert busybox_rootfs(cache, busybox=host_busybox) == first
    assert (first / "marker").read_text() == "still here"


def test_dynamic_busybox_is_refused(cache: Path) -> None:
    assert not elf_is_static(Path("/bin/ls"))
    with pytest.raises(HostSetupError, match="busybox-static"):
        busybox_rootfs(cache, busybox=Path("/bin/ls"))
    assert entries(cache / "rootfs") == []


def test_non_elf_busybox_is_refused(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho fake\n")
    with pytest.raises(HostSetupError, match="not an ELF"):
        busybox_rootfs(cache, busybox=script)


def test_host_busybox_is_static(host_busybox: Path) -> None:
    assert elf_is_static(host_busybox)


def test_resolve_builtin_busybox(cache: Path, host_busybox: Path) -> None:
    root = resolve_rootfs(RootfsRef(kind="busybox", version="builtin"), cache)
    assert (root / "bin" / "busybox").is_file()
    with pytest.raises(LayerNotFound):
        resolve_rootfs(RootfsRef(kind="busybox", version="1.36"), cache)


# --- alpine --------------------------------------------------------------------------


def test_two_alpine_versions_give_two_rootfs(cache: Path, alpine_mirror: str) -> None:
    old = alpine_rootfs("3.19", cache, mirror=alpine_mirror, progress=False)
    new = alpine_rootfs("3.20", cache, mirror=alpine_mirror, progress=False)
    assert old != new
    assert old.name.startswith("alpine-3.19-") and new.name.startswith("alpine-3.20-")
    assert (old / "etc" / "alpine-release").read_text() == "3.19.0\n"
    assert (new / "etc" / "alpine-release").read_text() == "3.20.0\n"
    assert "ID=alpine" in (new / "etc" / "os-release").read_text().splitlines()
    assert os.readlink(new / "bin" / "sh") == "/bin/busybox"
    assert (new / "etc" / "hostname").read_text() == "localhost\n"  # kept, not replaced
    for root in (old, new):
        assert_has_mount_points(root)
    assert entries(cache / "downloads") == [
        "alpine-minirootfs-3.19.0-x86_64.tar.gz",
        "alpine-minirootfs-3.20.0-x86_64.tar.gz",
    ]
    assert entries(cache / "rootfs") == sorted([old.name, new.name])


def test_alpine_rootfs_is_reused(cache: Path, alpine_mirror: str) -> None:
    first = alpine_rootfs("3.20", cache, mirror=alpine_mirror, progress=False)
    (first / "marker").write_text("kept")
    assert alpine_rootfs("3.20", cache, mirror=alpine_mirror, progress=False) == first
    assert (first / "marker").read_text() == "kept"


def test_mirror_comes_from_the_environment(cache: Path, alpine_mirror: str) -> None:
    settings = RuntimeSettings.from_environ({"SQUISH_ALPINE_MIRROR": alpine_mirror + "/"})
    ref = RootfsRef(kind="alpine", version="3.19")
    root = resolve_rootfs(ref, cache, mirror=settings.alpine_mirror)
    assert (root / "etc" / "alpine-release").read_text() == "3.19.0\n"


def test_offline_mirror_explains_what_to_do(cache: Path) -> None:
    offline = unused_local_url()
    with pytest.raises(FetchError) as caught:
        alpine_rootfs("3.20", cache, mirror=offline, progress=False)
    message = str(caught.value)
    assert "connection refused" in message
    assert f"mirror {offline} is unreachable" in message
    assert "SQUISH_ALPINE_MIRROR" in message
    assert 'busybox = "builtin"' in message
    assert entries(cache / "rootfs") == []


def test_offline_mirror_falls_back_to_the_cached_rootfs(cache: Path, alpine_mirror: str) -> None:
    cached = alpine_rootfs("3.20", cache, mirror=alpine_mirror, progress=False)
    assert alpine_rootfs("3.20", cache, mirror=unused_local_url(), progress=False) == cached
    with pytest.raises(FetchError):
        alpine_rootfs("3.19", cache, mirror=unused_local_url(), progress=False)


def test_unknown_version_is_reported(cache: Path, alpine_mirror: str) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        alpine_rootfs("3.99", cache, mirror=alpine_mirror, progress=False)
    with pytest.raises(LayerNotFound):
        alpine_rootfs("three", cache, mirror=alpine_mirror, progress=False)


@pytest.fixture
def editable_mirror(tmp_path: Path, host_busybox: Path) -> Iterator[tuple[str, Path]]:
    """A one-version (3.20) mirror whose ``latest-releases.yaml`` the test may rewrite."""
    root = tmp_path / "mirror"
    make_alpine_mirror(root, ["3.20"], host_busybox)
    with serve_directory(root) as url:
        yield url, alpine_release_dir(root, "3.20") / "latest-releases.yaml"


def test_wrong_sha_in_index_caches_nothing(cache: Path, editable_mirror: tuple[str, Path]) -> None:
    url, index = editable_mirror
    releases = yaml.safe_load(index.read_text())
    for release in releases:
        release["sha256"] = "f" * 64
    index.write_text(yaml.safe_dump(releases))
    with pytest.raises(ChecksumMismatch):
        alpine_rootfs("3.20", cache, mirror=url, progress=False)
    assert entries(cache / "downloads") == []
    assert entries(cache / "rootfs") == []


def test_index_without_minirootfs_is_layer_not_found(
    cache: Path, editable_mirror: tuple[str, Path]
) -> None:
    url, index = editable_mirror
    releases = [r for r in yaml.safe_load(index.read_text()) if r["flavor"] != "alpine-minirootfs"]
    assert releases  # the other flavor is still listed
    index.write_text(yaml.safe_dump(releases))
    with pytest.raises(LayerNotFound, match="alpine-minirootfs"):
        alpine_rootfs("3.20", cache, mirror=url, progress=False)


def test_symlinked_etc_in_a_rootfs_is_refused(
    cache: Path, tmp_path: Path, host_busybox: Path
) -> None:
    """The mount-point files are added after extraction: never through a planted /etc link."""
    outside = tmp_path / "host-etc"
    outside.mkdir()
    root = tmp_path / "mirror"
    make_alpine_mirror(root, ["3.20"], host_busybox)
    release_dir = alpine_release_dir(root, "3.20")
    tarball = next(release_dir.glob("*.tar.gz"))
    with tarfile.open(tarball, "w:gz") as tar:
        link = tarfile.TarInfo("./etc")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
    index = release_dir / "latest-releases.yaml"
    releases = yaml.safe_load(index.read_text())
    for release in releases:
        release["sha256"] = sha256_of(tarball)
    index.write_text(yaml.safe_dump(releases))
    with serve_directory(root) as url, pytest.raises(ArchiveError, match="etc"):
        alpine_rootfs("3.20", cache, mirror=url, progress=False)
    assert list(outside.iterdir()) == []
    assert entries(cache / "rootfs") == []


def test_edge_uses_the_edge_branch_directory(
    cache: Path, tmp_path: Path, host_busybox: Path
) -> None:
    root = tmp_path / "mirror"
    make_alpine_mirror(root, ["edge"], host_busybox)
    assert (root / "edge" / "releases" / "x86_64" / "latest-releases.yaml").is_file()
    with serve_directory(root) as url:
        edge = alpine_rootfs("edge", cache, mirror=url, progress=False)
    assert edge.name.startswith("alpine-edge-")
    assert_has_mount_points(edge)


def test_a_mirror_serving_garbage_caches_no_rootfs(
    cache: Path, editable_mirror: tuple[str, Path]
) -> None:
    """Bytes that match the index's checksum but are no tarball (a compromised mirror)."""
    url, index = editable_mirror
    tarball = next(index.parent.glob("*.tar.gz"))
    tarball.write_bytes(os.urandom(4096))
    releases = yaml.safe_load(index.read_text())
    for release in releases:
        release["sha256"] = sha256_of(tarball)
    index.write_text(yaml.safe_dump(releases))
    with pytest.raises(ArchiveError):
        alpine_rootfs("3.20", cache, mirror=url, progress=False)
    assert entries(cache / "rootfs") == []
    assert entries(cache / "downloads") == []  # a repaired mirror is asked again
