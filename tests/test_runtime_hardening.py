"""What a container must not get from the host, and how the runtime copes with stress:
leaked descriptors, the init's /proc entries, writable submounts of read-only binds,
concurrent clients, a dead spare launcher."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path

import pytest

from runtime.api.interface import ContainerState
from runtime.api.spec import BindMount, ContainerSpec
from runtime.client.linux import LinuxRuntime
from runtime.errors import ContainerStartError
from runtime.util.processes import ProcessId
from tests.conftest import rootless
from tests.support import BUSYBOX, shell

pytestmark = rootless


def output_of(rt: LinuxRuntime, spec: ContainerSpec) -> str:
    rt.run(spec)
    assert rt.wait(spec.name, timeout=60) == 0, rt.logs(spec.name)
    return rt.logs(spec.name).decode()


def test_no_host_descriptor_reaches_the_command(cache_path: Path) -> None:
    secret_r, secret_w = os.pipe()
    os.set_inheritable(secret_r, True)  # a careless client: inheritable descriptors
    os.set_inheritable(secret_w, True)
    state = Path("/dev/shm") / f"sqt-fd-{secrets.token_hex(3)}"
    rt = LinuxRuntime(state=state, cache=cache_path)
    try:
        out = output_of(rt, shell("fds", "ls /proc/self/fd | sort -n | tr '\\n' ' '"))
    finally:
        rt.shutdown()
        shutil.rmtree(state, ignore_errors=True)
        os.close(secret_r)
        os.close(secret_w)
    # 0, 1, 2 and the descriptor ls opens to read the directory itself
    assert out.split() == ["0", "1", "2", "3"]


def test_container_root_cannot_read_its_init(rt: LinuxRuntime) -> None:
    script = (
        "cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable;"
        "ls /proc/1/fd >/dev/null 2>&1 && echo fds-readable;"
        "ls /proc/1/root/ >/dev/null 2>&1 && echo root-readable;"
        "echo done"
    )
    assert output_of(rt, shell("init-proc", script)) == "done\n"


def test_read_only_bind_is_read_only_all_the_way_down(rt: LinuxRuntime) -> None:
    # "/" carries submounts (/dev/shm, /proc, ...): none may become writable through it.
    probe = f"sqt-ro-{secrets.token_hex(4)}"
    spec = shell(
        "ro-tree",
        f"touch /host/dev/shm/{probe} 2>/dev/null && echo wrote-submount;"
        f"touch /host/tmp/{probe} 2>/dev/null && echo wrote-top; echo done",
        binds=(BindMount(source="/", target="/host"),),
    )
    try:
        assert output_of(rt, spec) == "done\n"
    finally:
        for leftover in (Path("/dev/shm") / probe, Path("/tmp") / probe):
            leftover.unlink(missing_ok=True)


def test_bind_below_tmp_is_visible(rt: LinuxRuntime, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("under tmp\n")
    spec = shell(
        "tmp-bind",
        "cat /tmp/in/data.txt; touch /tmp/scratch && echo tmp-writable",
        binds=(BindMount(source=str(tmp_path), target="/tmp/in"),),
    )
    assert output_of(rt, spec) == "under tmp\ntmp-writable\n"


def test_missing_workdir_is_named(rt: LinuxRuntime) -> None:
    with pytest.raises(ContainerStartError, match="working directory /nowhere"):
        rt.run(shell("workdir", "true", workdir="/nowhere"))


def test_concurrent_clients_start_long_running_containers(rt: LinuxRuntime) -> None:
    errors: list[BaseException] = []

    def start_some(prefix: str) -> None:
        try:
            for i in range(4):
                rt.run(
                    ContainerSpec(
                        name=f"{prefix}-{i}", rootfs=BUSYBOX, argv=("sleep", "600"), network="none"
                    )
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start_some, args=(f"c{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    states = {info.name: info.state for info in rt.list()}
    assert len(states) == 12
    assert set(states.values()) == {ContainerState.RUNNING}


def _net_namespaces_held(pid: int) -> set[str]:
    """The network namespaces ``pid`` holds open (``net:[inode]``)."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("net:"):
                held.add(target)
    return held


def _warm_spare_launchers(holder_pid: int) -> list[ProcessId]:
    """The warm spare launchers: children of the holder in its network namespace that
    hold the namespaces of their container init open (they do from the moment the init
    is warm until a launch takes them). Other children of the holder come and go on
    their own: the spare that launched a container finishes after it answered, a worker
    after its reply, the /proc view's server once its last container ended."""
    holder_net = os.readlink(f"/proc/{holder_pid}/ns/net")
    spares = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != holder_pid or os.readlink(entry / "ns" / "net") != holder_net:
                continue
            identity = ProcessId.of(int(entry.name))
            if identity is not None and _net_namespaces_held(identity.pid) - {holder_net}:
                spares.append(identity)
        except (OSError, ValueError, IndexError):
            continue
    return spares


def test_a_dead_spare_launcher_is_replaced(rt: LinuxRuntime) -> None:
    rt.run(shell("before", "true"))
    rt.wait("before", timeout=60)
    holder = rt.holder.identity()
    assert holder is not None
    while len(spares := _warm_spare_launchers(holder.pid)) < rt.settings.spares:
        threading.Event().wait(0.01)  # the holder forks the next spare once "before" is out
    for spare in spares:  # a warm spare waits for a launch: it cannot end on its own
        assert spare.send(signal.SIGKILL), f"the warm spare launcher {spare.pid} had gone"
    for n in range(3):
        assert output_of(rt, shell(f"after-{n}", "echo fine")) == "fine\n"


def test_a_half_created_container_left_by_a_killed_client_is_replaced(
    rt: LinuxRuntime, state_path: Path
) -> None:
    leftover = state_path / "containers" / "half"
    (leftover / "skel").mkdir(parents=True)
    (leftover / "spec.json").write_text("{}")  # no launch.json: the create never finished
    assert "half" not in {info.name for info in rt.list()}
    assert output_of(rt, shell("half", "echo whole")) == "whole\n"


def test_sweep_deletes_what_killed_clients_left_and_nothing_in_use(
    rt: LinuxRuntime, state_path: Path
) -> None:
    containers = state_path / "containers"
    rt.run(shell("kept", "sleep 600", stop_timeout=0))
    rt.run(shell("cut", "sleep 600", stop_timeout=0))
    cut = rt.inspect("cut")
    (containers / "cut" / "spec.json").unlink()  # a remover killed halfway (older layout)
    (containers / ".new-made-abc" / "skel").mkdir(parents=True)  # a creator killed
    (containers / ".gone-old-abc" / "c" / "skel").mkdir(parents=True)  # a remover killed
    (containers / "unfinished").mkdir()  # killed before its record was written
    busy = containers / ".new-busy-abc"
    busy.mkdir()
    fd = os.open(busy / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a create in progress: its folder stays
        swept = rt.sweep()
        assert swept == [".gone-old-abc", ".new-made-abc", "cut", "unfinished"]
        assert {p.name for p in containers.iterdir()} >= {"kept", ".new-busy-abc"}
        assert not {p.name for p in containers.iterdir()} & set(swept)
        assert cut.pid is not None and cut.pid_start_time is not None
        assert not ProcessId(cut.pid, cut.pid_start_time).alive()  # its init was killed
        assert rt.inspect("kept").state is ContainerState.RUNNING
        assert rt.sweep() == []
    finally:
        os.close(fd)
        shutil.rmtree(busy)


def test_a_removed_container_leaves_no_folder_behind(rt: LinuxRuntime, state_path: Path) -> None:
    containers = state_path / "containers"
    before = set(containers.iterdir())
    rt.run(shell("brief", "true"))
    rt.wait("brief", timeout=60)
    rt.remove("brief")
    assert set(containers.iterdir()) == before


def test_a_damaged_record_does_not_break_the_listing(rt: LinuxRuntime, state_path: Path) -> None:
    rt.run(shell("fine", "true"))
    damaged = state_path / "containers" / "damaged"
    damaged.mkdir()
    (damaged / "launch.json").write_text("{}")
    (damaged / "spec.json").write_text("{}")
    try:
        assert [info.name for info in rt.list()] == ["fine"]
    finally:
        shutil.rmtree(damaged)


def test_a_container_half_removed_by_a_killed_client_is_replaced(
    rt: LinuxRuntime, state_path: Path
) -> None:
    rt.run(shell("halfgone", "sleep 600", stop_timeout=0))
    before = rt.inspect("halfgone")
    (state_path / "containers" / "halfgone" / "spec.json").unlink()  # rmtree cut short
    assert "halfgone" not in {info.name for info in rt.list()}
    assert output_of(rt, shell("halfgone", "echo again")) == "again\n"
    assert before.pid is not None and before.pid_start_time is not None
    assert not ProcessId(before.pid, before.pid_start_time).alive()


def test_a_container_recorded_before_seccomp_filters_were_stored_still_starts(
    rt: LinuxRuntime, state_path: Path
) -> None:
    rt.create(shell("older", "grep Seccomp: /proc/self/status"))
    record = state_path / "containers" / "older"
    (record / "seccomp.bpf").unlink()  # as an older version left it
    launch = json.loads((record / "launch.json").read_text())
    del launch["seccomp"]
    (record / "launch.json").write_text(json.dumps(launch))
    rt.start("older")
    assert rt.wait("older", timeout=60) == 0
    assert b"Seccomp:\t2" in rt.logs("older")  # confined all the same
