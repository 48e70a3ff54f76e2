"""Safe tar extraction: crafted malicious archives and a faithful round trip."""

from __future__ import annotations

import io
import logging
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from runtime.errors import ArchiveError
from runtime.images.budget import Budget
from runtime.images.extract import extract_tar, remove_tree
from runtime.settings import UnpackLimits

Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes = b"data\n", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def special(name: str, kind: bytes, *, target: str = "", mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, target, mode, 1_700_000_000
    return info, None


def directory(name: str, mode: int = 0o755) -> Member:
    return special(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return special(name, tarfile.SYMTYPE, target=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return special(name, tarfile.LNKTYPE, target=target, mode=0o644)


def build_tar(path: Path, members: Sequence[Member], *, compress: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(folder for archives, folder receiving extractions, folder standing for 'outside')."""
    archives, target_parent, outside = (tmp_path / n for n in ("archives", "out", "outside"))
    for folder in (archives, target_parent, outside):
        folder.mkdir()
    (outside / "secret").write_text("host secret\n")
    return archives, target_parent, outside


def assert_nothing_published(target_parent: Path) -> None:
    """A failed extraction leaves neither the target nor a staging directory behind."""
    assert list(target_parent.iterdir()) == []


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "./a/../../../escape"])
def test_dot_dot_component_is_refused(workspace: tuple[Path, Path, Path], name: str) -> None:
    archives, target_parent, _ = workspace
    archive = build_tar(archives / "evil.tar", [regular("fine"), regular(name)])
    with pytest.raises(ArchiveError, match=r"'\.\.' component") as caught:
        extract_tar(archive, target_parent / "rootfs")
    assert caught.value.member == name
    assert not (target_parent.parent / "escape").exists()
    assert not (target_parent / "escape").exists()
    assert_nothing_published(target_parent)


def test_absolute_name_is_refused(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, outside = workspace
    evil = str(outside / "planted")
    archive = build_tar(archives / "evil.tar.gz", [regular(evil)], compress=True)
    with pytest.raises(ArchiveError, match="absolute path"):
        extract_tar(archive, target_parent / "rootfs")
    assert not (outside / "planted").exists()
    assert_nothing_published(target_parent)


def test_write_through_planted_directory_symlink_is_refused(
    workspace: tuple[Path, Path, Path],
) -> None:
    archives, target_parent, outside = workspace
    archive = build_tar(
        archives / "evil.tar",
        [
            symlink("etc", str(outside)),
            regular("etc/secret", b"overwritten\n"),
        ],
    )
    with pytest.raises(ArchiveError, match="symlink or not a directory"):
        extract_tar(archive, target_parent / "rootfs")
    assert (outside / "secret").read_text() == "host secret\n"
    assert_nothing_published(target_parent)


def test_relative_symlink_escape_is_not_followed_either(
    workspace: tuple[Path, Path, Path],
) -> None:
    archives, target_parent, outside = workspace
    archive = build_tar(
        archives / "evil.tar",
        [
            directory("a"),
            symlink("a/up", "../../../outside"),
            regular("a/up/new-file"),
        ],
    )
    with pytest.raises(ArchiveError):
        extract_tar(archive, target_parent / "rootfs")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_file_replacing_a_symlink_does_not_write_through_it(
    workspace: tuple[Path, Path, Path],
) -> None:
    archives, target_parent, outside = workspace
    archive = build_tar(
        archives / "dup.tar",
        [
            symlink("passwd", str(outside / "secret")),
            regular("passwd", b"container passwd\n"),
        ],
    )
    dest = target_parent / "rootfs"
    extract_tar(archive, dest)
    assert (outside / "secret").read_text() == "host secret\n"
    assert not (dest / "passwd").is_symlink()
    assert (dest / "passwd").read_bytes() == b"container passwd\n"


@pytest.mark.parametrize("target_kind", ["parent-relative", "absolute", "unknown", "via-symlink"])
def test_hard_link_outside_the_archive_is_refused(
    workspace: tuple[Path, Path, Path], target_kind: str
) -> None:
    archives, target_parent, outside = workspace
    members: list[Member] = [regular("inside")]
    if target_kind == "parent-relative":
        members.append(hardlink("h", "../outside/secret"))
    elif target_kind == "absolute":
        members.append(hardlink("h", str(outside / "secret")))
    elif target_kind == "unknown":
        members.append(hardlink("h", "not-in-archive"))
    else:
        members += [symlink("s", str(outside)), hardlink("h", "s/secret")]
    archive = build_tar(archives / "evil.tar", members)
    with pytest.raises(ArchiveError):
        extract_tar(archive, target_parent / "rootfs")
    assert (outside / "secret").stat().st_nlink == 1
    assert_nothing_published(target_parent)


def test_device_nodes_and_fifos_are_skipped_and_logged(
    workspace: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    archives, target_parent, _ = workspace
    null = special("dev/null", tarfile.CHRTYPE, mode=0o666)
    null[0].devmajor, null[0].devminor = 1, 3
    disk = special("dev/sda", tarfile.BLKTYPE, mode=0o660)
    archive = build_tar(
        archives / "dev.tar",
        [
            directory("dev"),
            null,
            disk,
            special("run/fifo", tarfile.FIFOTYPE, mode=0o600),
            regular("etc/hostname", b"box\n"),
        ],
    )
    dest = target_parent / "rootfs"
    with caplog.at_level(logging.INFO, logger="runtime.images.extract"):
        extract_tar(archive, dest)
    assert (dest / "dev").is_dir()
    assert list((dest / "dev").iterdir()) == []
    assert not (dest / "run" / "fifo").exists()
    assert (dest / "etc" / "hostname").read_bytes() == b"box\n"
    assert "skipped 3 device node(s)/fifo(s)" in caplog.text


def test_setuid_setgid_and_sticky_bits_are_stripped(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, _ = workspace
    archive = build_tar(
        archives / "suid.tar",
        [
            directory("tmp", 0o1777),
            directory("shared", 0o2775),
            regular("bin/su", b"\x7fELF", 0o4755),
            regular("bin/wall", b"\x7fELF", 0o2755),
        ],
    )
    dest = target_parent / "rootfs"
    extract_tar(archive, dest)

    def mode(relative: str) -> int:
        return stat.S_IMODE((dest / relative).stat().st_mode)

    assert mode("bin/su") == 0o755
    assert mode("bin/wall") == 0o755
    assert mode("tmp") == 0o777
    assert mode("shared") == 0o775


def test_owners_in_the_archive_are_ignored(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, _ = workspace
    info, data = regular("owned", b"x")
    info.uid, info.gid, info.uname, info.gname = 4242, 4343, "someone", "others"
    dest = target_parent / "rootfs"
    extract_tar(build_tar(archives / "owned.tar", [(info, data)]), dest)
    assert (dest / "owned").stat().st_uid == os.getuid()
    assert (dest / "owned").stat().st_gid == os.getgid()


def test_read_only_directories_get_filled_then_keep_their_mode(
    workspace: tuple[Path, Path, Path],
) -> None:
    archives, target_parent, _ = workspace
    archive = build_tar(
        archives / "ro.tar",
        [
            directory("ro", 0o555),
            directory("ro/inner", 0o500),
            regular("ro/inner/file", b"deep\n", 0o444),
        ],
    )
    dest = target_parent / "rootfs"
    extract_tar(archive, dest)
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "ro" / "inner").stat().st_mode) == 0o500
    assert (dest / "ro" / "inner" / "file").read_bytes() == b"deep\n"
    remove_tree(dest)
    assert not dest.exists()


def test_round_trip_of_a_real_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (tree / "usr" / "bin" / "tool").chmod(0o750)
    (tree / "usr" / "bin" / "alias").hardlink_to(tree / "usr" / "bin" / "tool")
    (tree / "bin").symlink_to("usr/bin")
    (tree / "abs").symlink_to("/usr/bin/tool")
    (tree / "big").write_bytes(os.urandom(700_000))
    os.utime(tree / "big", (1_600_000_000, 1_600_000_000))
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")

    dest = tmp_path / "extracted"
    extract_tar(archive, dest)

    tool = dest / "usr" / "bin" / "tool"
    assert tool.read_bytes() == b"#!/bin/sh\necho tool\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o750
    assert (dest / "usr" / "bin" / "alias").stat().st_ino == tool.stat().st_ino
    assert os.readlink(dest / "bin") == "usr/bin"
    assert os.readlink(dest / "abs") == "/usr/bin/tool"
    assert (dest / "big").read_bytes() == (tree / "big").read_bytes()
    assert (dest / "big").stat().st_mtime == 1_600_000_000
    assert (dest / "empty").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extracted", "tree", "tree.tar.gz"]


def test_existing_destination_is_refused(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, _ = workspace
    dest = target_parent / "rootfs"
    dest.mkdir()
    (dest / "keep").write_text("old")
    with pytest.raises(FileExistsError):
        extract_tar(build_tar(archives / "ok.tar", [regular("new")]), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["keep"]


def test_truncated_archive_is_an_archive_error(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, _ = workspace
    good = build_tar(archives / "good.tar.gz", [regular("f", os.urandom(200_000))], compress=True)
    truncated = archives / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        extract_tar(truncated, target_parent / "rootfs")
    assert_nothing_published(target_parent)


def test_not_a_tarball_is_an_archive_error(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, _ = workspace
    bogus = archives / "bogus.tar"
    bogus.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(ArchiveError):
        extract_tar(bogus, target_parent / "rootfs")
    assert_nothing_published(target_parent)


def test_before_publish_sees_the_tree_before_it_gets_its_final_name(
    workspace: tuple[Path, Path, Path],
) -> None:
    archives, target_parent, _ = workspace
    dest = target_parent / "rootfs"
    seen: list[Path] = []

    def add_marker(staging: Path) -> None:
        assert not dest.exists()
        assert (staging / "etc" / "motd").is_file()
        (staging / "marker").write_text("added")
        seen.append(staging)

    archive = build_tar(archives / "ok.tar", [directory("etc", 0o555), regular("etc/motd")])
    extract_tar(archive, dest, before_publish=add_marker)
    assert len(seen) == 1
    assert seen[0] != dest
    assert not seen[0].exists()
    assert (dest / "marker").read_text() == "added"


def test_a_decompression_bomb_is_refused_before_it_fills_the_disk(
    workspace: tuple[Path, Path, Path],
) -> None:
    archives, target_parent, _ = workspace
    zeros = bytes(4 * 1024 * 1024)  # compresses to a few KiB
    bomb = build_tar(
        archives / "bomb.tar.gz", [regular(f"z{i}", zeros) for i in range(4)], compress=True
    )
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match="unpacks to more than 10000000 bytes") as caught:
        extract_tar(bomb, target_parent / "rootfs", budget=Budget(UnpackLimits(bytes=10_000_000)))
    assert "z2" in str(caught.value)  # stopped at the entry that crossed the limit
    assert_nothing_published(target_parent)


def test_an_archive_of_too_many_entries_is_refused(workspace: tuple[Path, Path, Path]) -> None:
    archives, target_parent, _ = workspace
    many = build_tar(archives / "many.tar", [regular(f"f{i}") for i in range(50)])
    with pytest.raises(ArchiveError, match="more than 20 entries"):
        extract_tar(many, target_parent / "rootfs", budget=Budget(UnpackLimits(entries=20)))
    assert_nothing_published(target_parent)
