"""Bind sources are never followed through a symlink, and a renamed container starts again
with mounts and /etc files of its own (real rootless containers)."""

from __future__ import annotations

import errno
import functools
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.api.interface import ContainerState
from runtime.api.spec import BindMount
from runtime.client import binds
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerStartError
from runtime.sandbox import mounts
from runtime.sandbox import syscalls as sc
from tests.conftest import rootless
from tests.support import shell

pytestmark = rootless

PLANT_THEN_READ = (
    "if [ -e /data/planted ]; then cat /inner/secret; touch /inner/escaped; echo second-run;"
    " else rm -rf /data/sub && ln -s {outside} /data/sub && touch /data/planted && echo planted;"
    " fi"
)


def _planted(rt: LinuxRuntime, tmp_path: Path, name: str) -> tuple[Path, str]:
    """A container whose first run replaced the source of its inner bind (a folder of its
    read-write outer bind) with a symlink to a folder outside every bind, holding a 0600
    file of the user's; returns that folder and the file's secret."""
    outer, outside = tmp_path / "outer", tmp_path / "outside"
    (outer / "sub").mkdir(parents=True)
    outside.mkdir()
    secret = secrets.token_hex(8)
    (outside / "secret").write_text(secret)
    (outside / "secret").chmod(0o600)
    spec = shell(
        name,
        PLANT_THEN_READ.format(outside=outside),
        binds=(
            BindMount(source=str(outer), target="/data", rw=True),
            BindMount(source=str(outer / "sub"), target="/inner", rw=True),
        ),
    )
    rt.run(spec)
    assert rt.wait(name, timeout=60) == 0, rt.logs(name)
    assert rt.logs(name) == b"planted\n"
    assert (outer / "sub").is_symlink()
    return outside, secret


def _nothing_escaped(rt: LinuxRuntime, name: str, outside: Path, secret: str) -> None:
    assert rt.inspect(name).state is not ContainerState.RUNNING
    assert secret.encode() not in rt.logs(name)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_a_symlink_planted_in_a_read_write_bind_is_not_followed_at_restart(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    outside, secret = _planted(rt, tmp_path, "plant")
    link = tmp_path / "outer" / "sub"
    with pytest.raises(ContainerStartError, match="mounted at /inner") as refused:
        rt.start("plant")
    assert f"{link} is a symlink" in str(refused.value)
    _nothing_escaped(rt, "plant", outside, secret)


def test_the_containers_init_refuses_the_symlink_itself(
    rt: LinuxRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's look before a start only words the error: the init opens every source
    without following symlinks and mounts what it opened."""
    outside, secret = _planted(rt, tmp_path, "plant-init")
    monkeypatch.setattr(binds, "check_sources", lambda name, mounts: None)
    with pytest.raises(ContainerStartError, match=r"filesystem failed.*is a symlink"):
        rt.start("plant-init")
    _nothing_escaped(rt, "plant-init", outside, secret)


def test_a_symlink_planted_on_a_nested_bind_target_is_not_followed(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    """A bind whose target lies inside a read-write bind: another container writing the
    same folder replaces that mount point with a symlink to /proc; the start must not
    mount the host folder over the container's /proc."""
    outer, other = tmp_path / "outer", tmp_path / "other"
    (outer / "sub").mkdir(parents=True)
    other.mkdir()
    (other / "marker").touch()
    data = BindMount(source=str(outer), target="/data", rw=True)
    nested = shell(
        "nested",
        "ls /proc",
        binds=(data, BindMount(source=str(other), target="/data/sub", rw=True)),
    )
    rt.create(nested)
    plant = "rmdir /data/sub && ln -s /proc /data/sub"
    rt.run(shell("planter", plant, binds=(data,)))
    assert rt.wait("planter", timeout=60) == 0, rt.logs("planter")
    with pytest.raises(ContainerStartError, match="target /data/sub goes through a symlink"):
        rt.start("nested")
    assert b"marker" not in rt.logs("nested")


def test_a_bind_source_through_a_symlink_is_refused_at_create(
    rt: LinuxRuntime, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    bind = BindMount(source=str(tmp_path / "link"), target="/x")
    with pytest.raises(ContainerStartError, match=f"{tmp_path / 'link'} is a symlink"):
        rt.create(shell("linked", "true", binds=(bind,)))
    assert [info.name for info in rt.list()] == []


def test_a_runtime_whose_state_folder_is_reached_through_a_symlink(
    tmp_path: Path, cache_path: Path
) -> None:
    """The runtime's own sources (here the /etc files) are recorded by their real path,
    and a record made before that, which named them through the symlink, still starts."""
    (tmp_path / "real").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "real")
    rt = LinuxRuntime(state=tmp_path / "home" / "state", cache=cache_path)
    try:
        rt.run(shell("linked", "cat /etc/hostname"))
        assert rt.wait("linked", timeout=60) == 0, rt.logs("linked")
        launch = rt.containers / "linked" / "launch.json"
        old = json.loads(launch.read_text())
        for mount in old["mounts"]:
            mount["source"] = mount["source"].replace(
                str(tmp_path / "real"), str(tmp_path / "home")
            )
        launch.write_text(json.dumps(old))
        rt.start("linked")
        assert rt.wait("linked", timeout=60) == 0, rt.logs("linked")
        assert rt.logs("linked") == b"linked\nlinked\n"
    finally:
        rt.shutdown()


def _etc_view(rt: LinuxRuntime, name: str) -> str:
    script = "cat /etc/hostname; hostname; tail -n 1 /etc/hosts | cut -f 2; cat /etc/resolv.conf"
    result = rt.exec_command(name, ["/bin/sh", "-c", script])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_container_renamed_while_running_starts_again_with_its_own_etc_files(
    rt: LinuxRuntime,
) -> None:
    """As a start-first replacement: NAME.next runs, takes the name NAME, and is later
    stopped and started again (its launch once named NAME.next's folder, gone since)."""
    rt.run(shell("web.next", "exec sleep 600", network="slirp4netns", stop_timeout=0))
    before = _etc_view(rt, "web.next")
    rt.rename("web.next", "web")
    assert _etc_view(rt, "web") == before  # a running container keeps what it started with
    rt.stop("web")
    assert "web.next" not in (rt.containers / "web" / "launch.json").read_text()
    assert rt.start("web").state is ContainerState.RUNNING
    after = _etc_view(rt, "web")
    assert after == before.replace("web.next", "web")
    assert after.startswith("web\nweb\nweb\nnameserver ")


def _bind_three(base: Path, swap: Callable[[], None]) -> dict[str, str]:
    """In a new user and mount namespace: bind ``base/host`` read-write at /data, then
    ``src_a`` read-only at /data/a and ``src_b`` read-only at /data/b, calling ``swap``
    once the last bind's target is open; per nested target, its source and whether it
    could be written."""
    uid, gid, root = os.getuid(), os.getgid(), base / "root"
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.mount("tmpfs", str(root), "tmpfs", 0, "mode=755")
    (root / "data").mkdir()
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    opened, swapped = mounts._open_in_root, list[str]()

    def open_then_swap(fd: int, target: str) -> int:
        target_fd = opened(fd, target)
        if target == "/data/b" and not swapped:  # once: the code may look it up again
            swapped.append(target)
            swap()
        return target_fd

    mounts._open_in_root = open_then_swap  # type: ignore[assignment]  # in this child only
    binds = (("host", "/data", True), ("src_a", "/data/a", False), ("src_b", "/data/b", False))
    for source, target, rw in binds:
        mounts._bind(root_fd, os.open(base / source, os.O_PATH), target, rw)
    seen = {}
    for name in ("a", "b"):
        folder = root / "data" / name
        try:
            (folder / "written").touch()
            written = "written"
        except OSError as exc:
            written = errno.errorcode[exc.errno or 0]
        seen[name] = f"{(folder / 'marker').read_text()} {written}"
    return seen


def test_a_read_only_bind_stays_read_only_when_its_mount_point_is_renamed_meanwhile(
    tmp_path: Path,
) -> None:
    """Another container writing the folder of a read-write bind swaps the names of two
    nested mount points while a start mounts them: the read-only binds must stay
    read-only wherever their mount points now are (the mount is made read-only through
    what was opened, never by looking the path up again)."""
    for folder in ("host/a", "host/b", "src_a", "src_b", "root"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "src_a" / "marker").write_text("A")
    (tmp_path / "src_b" / "marker").write_text("B")
    go, went = os.pipe(), os.pipe()
    report = tmp_path / "report.json"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the file
        try:
            swap = functools.partial(_ask_and_wait, go[1], went[0])
            report.write_text(json.dumps(_bind_three(tmp_path, swap)))
        finally:
            os._exit(0)
    os.close(go[1])
    if os.read(go[0], 1):  # outside the child's mount namespace, as another container
        host = tmp_path / "host"
        (host / "a").rename(host / "t")
        (host / "b").rename(host / "a")
        (host / "t").rename(host / "b")
        os.write(went[1], b".")
    os.waitpid(pid, 0)
    assert json.loads(report.read_text()) == {"a": "B EROFS", "b": "A EROFS"}
    assert not list(tmp_path.glob("src_*/written"))


def _ask_and_wait(ask: int, answered: int) -> None:
    os.write(ask, b".")
    os.read(answered, 1)
