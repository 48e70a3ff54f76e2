"""A container root mounted ahead by a warm init (``runtime.sandbox.mounts.premount_root``).

The holder remembers the shape of the last launch's root (its rootfs and the mount
points of its skeleton); the next spare's init mounts a root of that shape while it
waits. A launch of that shape mounts only its own mounts (the view, the binds) on it;
any other launch mounts its root in full, as a cold start does. Which of the two a
container got shows in the options of its root's overlay: the skeleton is the
container's own (``containers/NAME/skel``) or the warm init's (``premount/skel``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from runtime.client.linux import LinuxRuntime
from runtime.sandbox.mounts import Premade, RootShape
from runtime.wire import VIEW_FILES, MountPoint
from tests.conftest import rootless
from tests.support import shell

_MOUNTS = "cat /proc/self/mountinfo"


def _mounts(
    rt: LinuxRuntime, name: str, binds: list[dict[str, object]], **fields: object
) -> list[str]:
    """The mounts container ``name`` sees (run with ``binds``), as /proc/self/mountinfo
    lists them, in order."""
    rt.run(shell(name, _MOUNTS, binds=binds, **fields))
    assert rt.wait(name, timeout=60) == 0
    return rt.logs(name).decode().splitlines()


def _skeleton(lines: list[str]) -> str:
    """Where the skeleton of the root's overlay is: the container's own, or premade."""
    root = next(line for line in lines if line.split()[4] == "/")
    found = re.search(r"lowerdir=([^:,]+)/skel:", root)
    assert found is not None, root
    return "premade" if found[1].endswith("/premount") else "own"


def _without_ids(lines: list[str], name: str) -> list[str]:
    """The mounts of container ``name`` without their ids, device numbers, the
    skeleton's folder and the container's name (in the sources of its /etc files)."""
    fields = (line.split() for line in lines)
    text = (" ".join(f[3:]).replace(f"/containers/{name}/", "/containers/NAME/") for f in fields)
    return [re.sub(r"lowerdir=[^:,]+/skel:", "lowerdir=SKEL:", line) for line in text]


def _data_bind(tmp_path: Path, target: str = "/data") -> list[dict[str, object]]:
    (tmp_path / "data").mkdir(exist_ok=True)
    return [{"source": str(tmp_path / "data"), "target": target}]


@rootless
def test_a_start_on_a_premade_root_has_the_mounts_of_a_cold_start(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    _mounts(rt, "shape-a", [])  # the next spare prepares a root without /warm-data
    # (a shape no earlier start had: the first start of it finds no root of it ahead)
    cold = _mounts(rt, "cold", _data_bind(tmp_path, "/warm-data"))
    assert _skeleton(cold) == "own"
    # The spare forked for this shape once "cold" ended serves the next start of it, if
    # that start comes after the holder saw "cold"'s spare end (else it takes the spare
    # of the other shape, warm already, and mounts its own root): tried a few times.
    for attempt in range(3):
        warm = _mounts(rt, f"warm-{attempt}", _data_bind(tmp_path, "/warm-data"))
        if _skeleton(warm) == "premade":
            break
    assert _skeleton(warm) == "premade"
    assert _without_ids(warm, f"warm-{attempt}") == _without_ids(cold, "cold")
    assert any(line.split()[4] == "/warm-data" for line in warm)


@rootless
def test_a_start_of_another_shape_never_uses_the_premade_root(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    _mounts(rt, "shape-a", [])
    # a shape no earlier start had: no warm spare has a root of it mounted ahead
    other = _mounts(rt, "other", _data_bind(tmp_path, "/other-data"))
    assert _skeleton(other) == "own"
    assert not any("/premount" in line for line in other)
    # the view's files bound ahead went with that root: this start has them all the same
    assert _view_files(other) == sorted(VIEW_FILES.values())


@rootless
def test_a_start_without_the_view_on_a_premade_root_has_the_kernels_files(
    rt: LinuxRuntime,
) -> None:
    """The root made ahead has the view's files bound already (while its init was
    warm); a start that asks for no view gets the kernel's files on it."""
    _mounts(rt, "viewed", [])
    for attempt in range(3):
        plain = _mounts(rt, f"plain-{attempt}", [], proc_view=False)
        if _skeleton(plain) == "premade":
            break
    assert _skeleton(plain) == "premade"
    assert _view_files(plain) == []
    assert _view_files(_mounts(rt, "viewed-again", [])) == sorted(VIEW_FILES.values())


def _view_files(lines: list[str]) -> list[str]:
    """The mount points of the view's files among the mounts ``lines``."""
    return sorted(line.split()[4] for line in lines if " - fuse.squish " in line)


@rootless
def test_a_bind_above_the_premade_root_gets_a_cold_start(
    rt: LinuxRuntime, state_path: Path
) -> None:
    binds: list[dict[str, object]] = [{"source": str(state_path), "target": "/state"}]
    _mounts(rt, "first", binds)
    again = _mounts(rt, "again", binds)
    assert _skeleton(again) == "own"
    assert not any(line.split()[4].startswith("/state/premount") for line in again)


def test_the_shape_is_the_rootfs_and_the_mount_points() -> None:
    a = (MountPoint("/h/a", "/data"), MountPoint("/h/x/hosts", "/etc/hosts", is_dir=False))
    b = (
        MountPoint("/h/y/hosts", "/etc/hosts", is_dir=False),
        MountPoint("/other", "/data", rw=True),
    )
    assert RootShape.of("/rootfs", a) == RootShape.of("/rootfs", b)
    assert RootShape.of("/rootfs", a) == RootShape.of_json(
        {
            "rootfs": "/rootfs",
            "mounts": [
                {"source": "/s", "target": "/etc/hosts", "is_dir": False},
                {"source": "/s", "target": "/data"},
            ],
        }
    )
    assert RootShape.of("/rootfs", a) != RootShape.of("/other-rootfs", a)
    assert RootShape.of("/rootfs", a) != RootShape.of("/rootfs", a[:1])
    as_file = (MountPoint("/h/a", "/data", is_dir=False), a[1])
    assert RootShape.of("/rootfs", a) != RootShape.of("/rootfs", as_file)
    assert RootShape.of_json({"mounts": []}) is None


def _premade(rootfs: Path) -> Premade:
    """A root of ``rootfs`` with a /data folder, as if mounted ahead on /st/premount."""
    shape = RootShape.of(str(rootfs), [MountPoint("/x", "/data")])
    return Premade("/st/premount", shape, os.open(rootfs, os.O_PATH | os.O_CLOEXEC))


def test_a_premade_root_fits_no_bind_at_above_or_below_its_folder(tmp_path: Path) -> None:
    rootfs = str(tmp_path)
    premade = _premade(tmp_path)
    assert premade.fits(rootfs, [MountPoint("/h/data", "/data")])
    assert premade.fits(rootfs, [MountPoint("/st/premountx", "/data")])
    assert not premade.fits(rootfs, [MountPoint("/h/data", "/data", is_dir=False)])
    assert not premade.fits("/other", [MountPoint("/h/data", "/data")])
    for source in ("/", "/st", "/st/", "/st/premount", "/st/premount/root", "/h/../st"):
        assert not premade.fits(rootfs, [MountPoint(source, "/data")]), source


def test_a_rootfs_made_again_in_its_place_does_not_fit_the_premade_root(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    premade = _premade(rootfs)
    data = [MountPoint("/h/data", "/data")]
    assert premade.fits(str(rootfs), data)
    rootfs.rename(tmp_path / "old")
    assert not premade.fits(str(rootfs), data)  # gone
    rootfs.mkdir()
    assert not premade.fits(str(rootfs), data)  # another folder under its name


def test_a_rootfs_deleted_and_made_again_does_not_fit_the_premade_root(tmp_path: Path) -> None:
    """Deleted, then made again at its path (an image extracted afresh): the new folder
    may have the old one's inode number (ext4 hands a freed one out again at once), yet
    the premade root's overlay is on the old, deleted folder."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    premade = _premade(rootfs)
    data = [MountPoint("/h/data", "/data")]
    assert premade.fits(str(rootfs), data)
    shutil.rmtree(rootfs)
    (rootfs / "bin").mkdir(parents=True)
    assert not premade.fits(str(rootfs), data)
