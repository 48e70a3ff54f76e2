"""``LinuxRuntime``: the ``Runtime`` interface on real namespaces, rootless only.

The client side: it resolves rootfs and layers, lays out the container's folder, asks the
namespace holder to start the container, signals it to stop, and edits port forwards
through slirp4netns' API socket. It never forks a container itself, so it may run in a
threaded program.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime import cgroups, folders, seccomp, slirp
from runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    ContainerStartError,
    HostSetupError,
    NetworkLost,
    PortInUse,
    RootRefused,
    SlirpError,
)
from runtime.holder import SUN_PATH_MAX, Holder
from runtime.interface import CommandResult, ContainerInfo, ContainerState
from runtime.launch import SECCOMP_FILE, Forward, LaunchRequest, MountPoint
from runtime.layers import resolve_sdk
from runtime.mounts import prepare_skeleton
from runtime.paths import cache_dir, private_dir, state_dir
from runtime.rootfs import resolve_rootfs
from runtime.spec import ContainerSpec, PortMapping, Resources, RootfsRef
from runtime.state import ProcessId, read_json, write_json_atomic

__all__ = ("LinuxRuntime",)


def _etc_contents(spec: ContainerSpec) -> dict[str, str]:
    hostname = spec.hostname or spec.name
    own_addr = slirp.CONTAINER_ADDR if spec.network == "slirp4netns" else "127.0.1.1"
    return {
        "resolv.conf": f"nameserver {slirp.DNS_ADDR}\n" if spec.network == "slirp4netns" else "",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{own_addr}\t{hostname}\n",
        "hostname": f"{hostname}\n",
    }


def _forward(mapping: PortMapping) -> Forward:
    return Forward(
        proto=mapping.protocol,
        host_addr=mapping.host_addr,
        host_port=mapping.host,
        guest_port=mapping.container,
    )


def _mapping(record: dict[str, Any]) -> PortMapping:
    return PortMapping(
        container=record["guest_port"],
        host=record["host_port"],
        protocol=record["proto"],
        host_addr=record["host_addr"],
    )


def _confined(pid: int) -> bool:
    """Whether the init ``pid`` has confined itself (no_new_privs comes after it stopped
    being dumpable): until then an exec'd command must not run next to it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nNoNewPrivs:\t1" in status


def _leaf(run: Any) -> cgroups.Leaf | None:
    """The cgroup leaf a run record names, if any."""
    path = run.get("cgroup") if isinstance(run, dict) else None
    return cgroups.Leaf(Path(path)) if isinstance(path, str) and path else None


def _cgroup_facts(run: dict[str, Any]) -> dict[str, Any]:
    """Paused, OOM kills and refused forks, from the run's cgroup leaf (if it has one)."""
    leaf = _leaf(run)
    if leaf is None or not leaf.path.exists():
        return {}
    return {"paused": leaf.frozen(), **leaf.events()}


def _forward_key(port: PortMapping) -> tuple[str, str, int, int]:
    return (port.protocol, port.host_addr, port.host, port.container)


class LinuxRuntime:
    """Rootless containers in Linux namespaces; see ``docs/runtime.md``."""

    def __init__(self, state: Path | None = None, cache: Path | None = None) -> None:
        if os.geteuid() == 0:
            raise RootRefused(
                "squish runs rootless only and refuses to run as root (uid 0); "
                "run it as an unprivileged user (`make run` as root does that for you)"
            )
        self.state = private_dir(state, "state directory") if state is not None else state_dir()
        self.cache = private_dir(cache, "cache directory") if cache is not None else cache_dir()
        self.containers = self.state / "containers"
        self.containers.mkdir(mode=0o700, exist_ok=True)
        self.holder = Holder(self.state)
        self.cgroups = cgroups.detect()
        self._group = hashlib.blake2b(str(self.state).encode(), digest_size=4).hexdigest()
        """This state folder's cgroup folder: two state folders never share leaves."""
        self._rootfs_paths: dict[RootfsRef, Path] = {}
        self._specs: dict[Path, tuple[tuple[int, int], ContainerSpec]] = {}
        self._forward_checks: dict[
            Path, tuple[float, tuple[PortMapping, ...], tuple[PortMapping, ...]]
        ] = {}
        self.forward_check_interval = 10.0
        """How often ``list()`` asks each slirp4netns for its forwards (``inspect`` always does)."""

    # -- folders and records ------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = self.containers / name
        if not (path / "launch.json").is_file():
            raise ContainerNotFound(name)
        return path

    def _locked(self, name: str) -> AbstractContextManager[Path]:
        return folders.locked(self._dir(name), name)

    def _launch_request(self, cdir: Path) -> LaunchRequest:
        return LaunchRequest.from_json(read_json(cdir / "launch.json"))

    def _spec(self, cdir: Path) -> ContainerSpec:
        """The container's spec, parsed again only when spec.json changed."""
        path = cdir / "spec.json"
        st = path.stat()
        key = (st.st_ino, st.st_mtime_ns)
        known = self._specs.get(path)
        if known is not None and known[0] == key:
            return known[1]
        spec = ContainerSpec.model_validate_json(path.read_bytes())
        self._specs[path] = (key, spec)
        return spec

    def _live_ports(
        self, cdir: Path, recorded: tuple[PortMapping, ...], fresh: bool
    ) -> tuple[PortMapping, ...]:
        """slirp4netns' own forward list (the truth: it shows a forward removed behind our
        back); ``list()`` asks at most every ``forward_check_interval`` seconds per container."""
        now = time.monotonic()
        checked = self._forward_checks.get(cdir)
        if not fresh and checked is not None and now - checked[0] < self.forward_check_interval:
            return checked[1] if checked[2] == recorded else recorded
        try:
            live = tuple(
                _mapping(asdict(f.forward)) for f in slirp.list_forwards(cdir / "slirp.sock")
            )
        except SlirpError:
            return recorded
        self._forward_checks[cdir] = (now, live, recorded)
        return live

    def _info(self, cdir: Path, *, fresh: bool = True) -> ContainerInfo:
        spec = self._spec(cdir)
        meta = read_json(cdir / "meta.json") or {}
        run = read_json(cdir / "run.json")
        common: dict[str, Any] = {
            "name": spec.name,
            "spec": spec,
            "log_path": str(cdir / "output.log"),
            "restarts": int(meta.get("restarts", 0)),
            "created_at": float(meta.get("created_at", 0.0)),
        }
        if not isinstance(run, dict):
            return ContainerInfo(state=ContainerState.CREATED, **common)
        init = ProcessId.from_json(run.get("init"))
        if init is not None and init.alive():
            slirp_id = ProcessId.from_json(run.get("slirp"))
            slirp_alive = slirp_id is not None and slirp_id.alive()
            ports = tuple(_mapping(f) for f in run.get("forwards", []))
            if slirp_alive:
                ports = self._live_ports(cdir, ports, fresh)
            return ContainerInfo(
                state=ContainerState.RUNNING,
                pid=init.pid,
                pid_start_time=init.start_time,
                started_at=run.get("started_at"),
                ports=ports,
                slirp_pid=slirp_id.pid if slirp_id is not None and slirp_alive else None,
                **_cgroup_facts(run),
                **common,
            )
        exited = read_json(cdir / "exit.json")
        if not isinstance(exited, dict):
            # The init died without recording an exit (it was killed): record when that
            # was first seen, so the exit has a time even if its code is unknown.
            exited = {"exit_code": None, "signal": None, "finished_at": time.time()}
            write_json_atomic(cdir / "exit.json", exited)
        exit_code = exited.get("exit_code")
        finished = exited.get("finished_at")
        return ContainerInfo(
            state=ContainerState.EXITED,
            started_at=run.get("started_at"),
            finished_at=finished,
            exit_code=exit_code,
            **_cgroup_facts(run),
            **common,
        )

    # -- create and start ---------------------------------------------------------------

    def _mounts(self, spec: ContainerSpec, cdir: Path) -> tuple[MountPoint, ...]:
        mounts: list[MountPoint] = []
        for layer in spec.sdks:
            path = resolve_sdk(layer, self.cache)
            mounts.append(MountPoint(source=str(path), target=f"/sdk/{layer.name}"))
        for bind in spec.binds:
            source = Path(bind.source)
            try:
                is_dir = source.is_dir()
                source.stat()
            except FileNotFoundError:
                raise ContainerStartError(
                    spec.name, f"bind source {source} does not exist"
                ) from None
            except OSError as exc:
                raise ContainerStartError(
                    spec.name, f"bind source {source}: {exc.strerror}"
                ) from None
            mounts.append(
                MountPoint(source=str(source), target=bind.target, rw=bind.rw, is_dir=is_dir)
            )
        etc = cdir / "etc"
        etc.mkdir(mode=0o700, exist_ok=True)
        for name, content in _etc_contents(spec).items():
            (etc / name).write_text(content)
            mounts.append(MountPoint(source=str(etc / name), target=f"/etc/{name}", is_dir=False))
        targets = [m.target for m in mounts]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise ContainerStartError(spec.name, f"two mounts share a target: {duplicates}")
        return tuple(sorted(mounts, key=lambda m: m.target.count("/")))

    def _rootfs(self, ref: RootfsRef) -> Path:
        """Resolve a rootfs once per runtime object (resolving hashes the busybox binary)."""
        known = self._rootfs_paths.get(ref)
        if known is None or not known.is_dir():
            known = self._rootfs_paths[ref] = resolve_rootfs(ref, self.cache)
        return known

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        cdir = self.containers / spec.name
        if len(os.fsencode(cdir / "slirp.sock")) > SUN_PATH_MAX:
            raise HostSetupError(
                f"the state folder's path is too long for container {spec.name!r}'s "
                f"slirp4netns socket ({cdir / 'slirp.sock'})",
                fix="set SQUISH_STATE_DIR to a shorter path, or use a shorter name",
            )
        self.cgroups.check(spec.resources)  # refused here, before anything is made
        rootfs = self._rootfs(spec.rootfs)
        syscall_filter = self._syscall_filter(spec)
        lock_fd = folders.claim(self.containers, spec.name, self._readable, self._kill_leftover)
        try:
            mounts = self._mounts(spec, cdir)
            prepare_skeleton(cdir / "skel", mounts)
            (cdir / "root").mkdir(mode=0o755)
            request = LaunchRequest(
                name=spec.name,
                container_dir=str(cdir),
                rootfs=str(rootfs),
                argv=spec.argv,
                mounts=mounts,
                env=dict(spec.env),
                workdir=spec.workdir,
                hostname=spec.hostname or spec.name,
                network=spec.network,
                forwards=tuple(_forward(p) for p in spec.ports),
                seccomp=syscall_filter is not None,
            )
            if syscall_filter is not None:
                (cdir / SECCOMP_FILE).write_bytes(syscall_filter)
            write_json_atomic(
                cdir / "meta.json", {"restarts": 0, "created_at": time.time(), "started": 0}
            )
            (cdir / "spec.json").write_text(spec.model_dump_json())
            write_json_atomic(cdir / "launch.json", request.to_json())
        except BaseException:
            folders.discard(cdir)
            raise
        finally:
            os.close(lock_fd)
        return self._info(cdir)

    @staticmethod
    def _syscall_filter(spec: ContainerSpec) -> bytes | None:
        """The BPF of the spec's seccomp profile (compiled once per profile)."""
        if spec.seccomp == "unconfined":
            return None
        if spec.seccomp == "default":
            return seccomp.compile_default()
        return seccomp.compile_profile(spec.seccomp)

    @staticmethod
    def _has_record(cdir: Path) -> bool:
        """The cheap test of a whole record (a damaged one is reported, never swept)."""
        return (cdir / "launch.json").is_file() and (cdir / "spec.json").is_file()

    def sweep(self) -> list[str]:
        """Delete the folders clients killed in the middle of a create or a remove left,
        after stopping whatever those still run; return their names."""
        swept = folders.sweep(self.containers, self._has_record, self._kill_leftover)
        for name in swept:
            self._forget(self.containers / name)
        return swept

    def _readable(self, cdir: Path) -> bool:
        """Whether ``cdir`` holds a whole container record (else it is a leftover)."""
        if not (cdir / "launch.json").is_file():
            return False
        try:
            self._spec(cdir)
            self._launch_request(cdir)
        except (OSError, ValueError):
            return False
        return True

    def start(self, name: str) -> ContainerInfo:
        with self._locked(name) as cdir:
            info = self._info(cdir)
            if info.state is ContainerState.RUNNING:
                return info
            request = self._launch_request(cdir)
            if request.seccomp and not (cdir / SECCOMP_FILE).is_file():
                # A record made before filters were stored: compile it now, from the spec.
                syscall_filter = self._syscall_filter(self._spec(cdir))
                if syscall_filter is not None:
                    (cdir / SECCOMP_FILE).write_bytes(syscall_filter)
            for forward in request.forwards:
                slirp.ensure_port_free(forward)
            self._reap_leftovers(cdir, remove_cgroup=True)
            for stale in ("run.json", "exit.json"):
                (cdir / stale).unlink(missing_ok=True)
            leaf = self.cgroups.make_leaf(self._group, name, self._spec(cdir).resources)
            if leaf is not None:
                request = dataclasses.replace(request, cgroup=str(leaf.path))
            reply = self.holder.request({"op": "launch", "request": request.to_json()})
            if not reply.get("ok"):
                if leaf is not None:
                    leaf.kill()
                    leaf.remove()
                self._raise_launch_error(name, reply)
            meta = read_json(cdir / "meta.json") or {}
            started = int(meta.get("started", 0)) + 1
            meta.update(started=started, restarts=max(0, started - 1))
            write_json_atomic(cdir / "meta.json", meta)
            return self._info(cdir, fresh=False)

    @staticmethod
    def _raise_launch_error(name: str, reply: dict[str, Any]) -> None:
        if reply.get("error") == "port_in_use":
            raise PortInUse(
                str(reply["host_addr"]),
                int(reply["host_port"]),
                str(reply["protocol"]),
                reply.get("holder"),
            )
        if reply.get("error") == "slirp":
            raise SlirpError(str(reply.get("message")))
        raise ContainerStartError(name, str(reply.get("message", "unknown error")))

    def run(self, spec: ContainerSpec) -> ContainerInfo:
        self.create(spec)
        try:
            return self.start(spec.name)
        except BaseException:
            self.remove(spec.name, force=True)
            raise

    # -- stop and remove ----------------------------------------------------------------

    def _kill_leftover(self, cdir: Path) -> None:
        """SIGKILL whatever an incomplete record still names, then its slirp4netns."""
        run = read_json(cdir / "run.json")
        init = ProcessId.from_json(run.get("init")) if isinstance(run, dict) else None
        if init is not None and init.send(signal.SIGKILL):
            init.wait_gone(10.0)
        self._reap_leftovers(cdir, remove_cgroup=True)

    def _reap_leftovers(self, cdir: Path, *, remove_cgroup: bool = False) -> None:
        """Kill what a dead container left: its slirp4netns (it exits on its own within
        ms) and anything still in its cgroup; ``remove_cgroup`` deletes the leaf too (it is
        otherwise kept after an exit, for its OOM and pids counts)."""
        run = read_json(cdir / "run.json")
        if not isinstance(run, dict):
            return
        leaf = _leaf(run)
        if leaf is not None:
            if leaf.populated():
                leaf.kill()
            if remove_cgroup:
                leaf.remove()
        slirp_id = ProcessId.from_json(run.get("slirp"))
        if slirp_id is not None and not slirp_id.wait_gone(1.0):
            slirp_id.send(signal.SIGKILL)
            slirp_id.wait_gone(5.0)

    def stop(self, name: str, timeout: float | None = None) -> ContainerInfo:
        with self._locked(name) as cdir:
            run = read_json(cdir / "run.json")
            init = ProcessId.from_json(run.get("init")) if isinstance(run, dict) else None
            if init is not None and init.alive():
                grace = self._spec(cdir).stop_timeout if timeout is None else timeout
                init.send(signal.SIGTERM)
                if not init.wait_gone(grace):
                    init.send(signal.SIGKILL)
                    leaf = _leaf(run)
                    if leaf is not None:
                        leaf.kill()  # every process at once, the init included
                    if not init.wait_gone(10.0):
                        raise ContainerStartError(name, f"init {init.pid} survived SIGKILL")
                if not (cdir / "exit.json").exists():
                    write_json_atomic(
                        cdir / "exit.json",
                        {
                            "exit_code": 128 + signal.SIGKILL,
                            "signal": int(signal.SIGKILL),
                            "finished_at": time.time(),
                        },
                    )
            self._reap_leftovers(cdir)
            return self._info(cdir)

    def remove(self, name: str, *, force: bool = False) -> None:
        if self._info(self._dir(name), fresh=False).state is ContainerState.RUNNING:
            if not force:
                raise ContainerStartError(name, "it is running; stop it or remove with force")
            self.stop(name)  # as podman rm -f: SIGTERM, SIGKILL after the stop timeout
        with self._locked(name) as cdir:
            if self._info(cdir).state is ContainerState.RUNNING:
                raise ContainerStartError(name, "it was started again while being removed")
            self._reap_leftovers(cdir, remove_cgroup=True)
            folders.discard(cdir)
            self._forget(cdir)

    def _forget(self, cdir: Path) -> None:
        """Drop what is cached about a folder that is gone or moved."""
        self._specs.pop(cdir / "spec.json", None)
        self._forward_checks.pop(cdir, None)

    # -- observe ------------------------------------------------------------------------

    def list(self) -> list[ContainerInfo]:
        found = []
        for cdir in sorted(self.containers.iterdir()):
            if cdir.name.startswith(folders.HIDDEN) or not self._has_record(cdir):
                continue  # being made or removed, or left so by a killed client
            try:
                found.append(self._info(cdir, fresh=False))
            except FileNotFoundError:
                continue  # being created or removed right now
            except ValueError as exc:  # a damaged record: report it, never fail the listing
                print(f"squish: skipping {cdir}: unreadable record: {exc}", file=sys.stderr)
        return found

    def inspect(self, name: str) -> ContainerInfo:
        return self._info(self._dir(name))

    def logs(self, name: str) -> bytes:
        try:
            return (self._dir(name) / "output.log").read_bytes()
        except FileNotFoundError:
            return b""

    def wait(self, name: str, timeout: float | None = None) -> int:
        cdir = self._dir(name)
        run = read_json(cdir / "run.json")
        init = ProcessId.from_json(run.get("init")) if isinstance(run, dict) else None
        if init is None:
            raise ContainerStartError(name, "it was never started")
        if not init.wait_gone(float("inf") if timeout is None else timeout):
            raise TimeoutError(f"container {name!r} still running after {timeout} s")
        code = self._info(cdir).exit_code
        return 128 + signal.SIGKILL if code is None else code

    # -- live port forwards -------------------------------------------------------------

    def _running_api(self, cdir: Path, name: str) -> tuple[Path, dict[str, Any]]:
        info = self._info(cdir, fresh=False)  # callers ask slirp4netns themselves
        if info.state is not ContainerState.RUNNING:
            raise ContainerStartError(name, "it is not running")
        if info.spec.network != "slirp4netns" or info.slirp_pid is None:
            raise SlirpError(f"container {name!r} has no slirp4netns network")
        run = read_json(cdir / "run.json")
        assert isinstance(run, dict)
        return cdir / "slirp.sock", run

    def _record_ports(self, cdir: Path, run: dict[str, Any]) -> None:
        """Keep run.json, spec.json and launch.json on the forwards now in place, so a
        later start of the same container forwards what it forwards now."""
        write_json_atomic(cdir / "run.json", run)
        ports = tuple(sorted({_mapping(f) for f in run["forwards"]}, key=_forward_key))
        spec = self._spec(cdir).model_copy(update={"ports": ports})
        (cdir / "spec.json.tmp").write_text(spec.model_dump_json())
        (cdir / "spec.json.tmp").rename(cdir / "spec.json")
        request = self._launch_request(cdir)
        updated = dataclasses.replace(request, forwards=tuple(_forward(p) for p in ports))
        write_json_atomic(cdir / "launch.json", updated.to_json())

    def add_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        with self._locked(name) as cdir:
            api, run = self._running_api(cdir, name)
            forward = _forward(mapping)
            # slirp4netns' own list decides: run.json may still name a forward that was
            # removed behind our back.
            live = slirp.find_forward(api, forward)
            if live is None:
                slirp.ensure_port_free(forward)
                live_id = slirp.add_forward(api, forward)
            else:
                live_id = live.id
            run["forwards"] = [f for f in run["forwards"] if _mapping(f) != mapping]
            run["forwards"].append({"id": live_id, **asdict(forward)})
            self._record_ports(cdir, run)
            return self._info(cdir)

    def remove_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        with self._locked(name) as cdir:
            api, run = self._running_api(cdir, name)
            live = slirp.find_forward(api, _forward(mapping))
            if live is not None:
                slirp.remove_forward(api, live.id)
            run["forwards"] = [f for f in run["forwards"] if _mapping(f) != mapping]
            self._record_ports(cdir, run)
            return self._info(cdir)

    def restore_network(self, name: str) -> ContainerInfo:
        """Start slirp4netns again for a running container whose slirp4netns died, in the
        same network namespace, and put back every forward it can (a port taken in the
        meantime stays out and shows as missing). Raises :class:`NetworkLost` when only a
        recreate can help."""
        with self._locked(name) as cdir:
            info = self._info(cdir)
            if info.state is not ContainerState.RUNNING:
                raise ContainerStartError(name, "it is not running")
            if info.spec.network != "slirp4netns" or info.slirp_pid is not None:
                return info
            reply = self.holder.request(
                {
                    "op": "restore_network",
                    "init_pid": info.pid,
                    "container_dir": str(cdir),
                    "sandbox": self._launch_request(cdir).sandbox_slirp,
                }
            )
            if reply.get("error") == "unknown_container":
                raise NetworkLost(name, str(reply.get("message")))
            if not reply.get("ok"):
                raise SlirpError(f"cannot restore the network of {name!r}: {reply.get('message')}")
            run = read_json(cdir / "run.json")
            assert isinstance(run, dict)
            wanted = [_mapping(record) for record in run.get("forwards", [])]
            run["slirp"] = reply["slirp"]
            run["forwards"] = []
            write_json_atomic(cdir / "run.json", run)  # the new slirp4netns first
            api = cdir / "slirp.sock"
            for mapping in wanted:
                forward = _forward(mapping)
                with suppress(PortInUse, SlirpError):  # left out: the next pass binds it
                    run["forwards"].append(
                        {"id": slirp.add_forward(api, forward), **asdict(forward)}
                    )
            write_json_atomic(cdir / "run.json", run)
            self._forward_checks.pop(cdir, None)
            return self._info(cdir)

    def move_port(self, name: str, to: str, mapping: PortMapping) -> None:
        """Move a forward from one running container to another with the shortest gap
        the slirp4netns API allows: remove and add back to back, bookkeeping after."""
        if name == to:
            raise ValueError("a forward cannot move to the container it is on")
        first, second = sorted((name, to))  # one lock order for every mover: no deadlock
        with self._locked(first) as first_dir, self._locked(second) as second_dir:
            source, target = (first_dir, second_dir) if first == name else (second_dir, first_dir)
            source_api, source_run = self._running_api(source, name)
            target_api, target_run = self._running_api(target, to)
            forward = _forward(mapping)
            live = slirp.find_forward(source_api, forward)
            if live is not None:
                slirp.remove_forward(source_api, live.id)
            try:
                new_id = slirp.add_forward(target_api, forward)  # the port was just freed
            except BaseException:
                if live is not None:  # put it back where it was
                    with suppress(PortInUse, SlirpError):
                        slirp.add_forward(source_api, forward)
                raise
            source_run["forwards"] = [f for f in source_run["forwards"] if _mapping(f) != mapping]
            target_run["forwards"] = [f for f in target_run["forwards"] if _mapping(f) != mapping]
            target_run["forwards"].append({"id": new_id, **asdict(forward)})
            self._record_ports(source, source_run)
            self._record_ports(target, target_run)

    def probe_tcp(self, name: str, port: int) -> bool:
        """Whether something inside the running container accepts TCP on ``port`` (tried
        from within its network namespace, so no forward is needed)."""
        info = self.inspect(name)
        if info.state is not ContainerState.RUNNING or info.pid is None:
            return False
        reply = self.holder.request({"op": "probe_tcp", "init_pid": info.pid, "port": port})
        if not reply.get("ok"):
            raise ContainerStartError(name, f"cannot probe port {port}: {reply.get('message')}")
        return bool(reply.get("ready"))

    def exec_command(
        self, name: str, argv: Sequence[str], *, timeout: float = 10.0
    ) -> CommandResult:
        if not argv:
            raise ValueError("exec_command needs a command")
        if any("\0" in part for part in argv):
            raise ValueError("an argument of exec_command contains a NUL byte")
        if not 0 < timeout <= 86_400:  # NaN fails this too
            raise ValueError(f"exec_command timeout must be in (0, 86400] seconds, not {timeout}")
        cdir = self._dir(name)
        info = self._info(cdir, fresh=False)
        if info.state is not ContainerState.RUNNING or info.pid is None:
            raise ContainerStartError(name, "it is not running")
        if info.paused:  # the command would freeze with it
            raise ContainerStartError(name, "it is paused (unpause it first)")
        if not _confined(info.pid):  # its init still holds what its command must not reach
            raise ContainerStartError(name, "it is still starting; try again")
        leaf = _leaf(read_json(cdir / "run.json"))
        request = self._launch_request(cdir)
        reply = self.holder.request(
            {
                "op": "exec",
                "init_pid": info.pid,
                "init_start_time": info.pid_start_time,
                "argv": list(argv),
                "env": request.command_env(),
                "workdir": request.workdir,
                "timeout": timeout,
                "container_dir": str(cdir),
                "seccomp": request.seccomp,
                "cgroup": str(leaf.path) if leaf is not None else "",
            },
            timeout=timeout + 30.0,
        )
        if not reply.get("ok"):
            raise ContainerStartError(name, f"cannot run {argv[0]!r} in it: {reply.get('message')}")
        return CommandResult(
            exit_code=int(reply["exit_code"]),
            output=str(reply["output"]),
            timed_out=bool(reply.get("timed_out")),
        )

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        """Give a container another name, running or not (a replacement takes over the
        name of the container it replaced)."""
        ContainerSpec.model_validate({**self.inspect(name).spec.model_dump(), "name": new_name})
        with self._locked(name) as cdir:
            target = self.containers / new_name
            if target.exists():
                raise ContainerExists(new_name)
            os.rename(cdir, target)
            spec = self._spec(target).model_copy(update={"name": new_name})
            (target / "spec.json.tmp").write_text(spec.model_dump_json())
            (target / "spec.json.tmp").rename(target / "spec.json")
            request = dataclasses.replace(
                self._launch_request(target), name=new_name, container_dir=str(target)
            )
            write_json_atomic(target / "launch.json", request.to_json())
            self._forget(cdir)
            return self._info(target)

    # -- cgroups -------------------------------------------------------------------------

    def update_resources(self, name: str, resources: Resources | None) -> ContainerInfo:
        self.cgroups.check(resources)
        with self._locked(name) as cdir:
            spec = self._spec(cdir).model_copy(update={"resources": resources})
            (cdir / "spec.json.tmp").write_text(spec.model_dump_json())
            (cdir / "spec.json.tmp").rename(cdir / "spec.json")
            info = self._info(cdir, fresh=False)
            leaf = _leaf(read_json(cdir / "run.json"))
            if info.state is ContainerState.RUNNING and leaf is not None:
                leaf.apply(resources)  # live: the kernel enforces the new limits at once
            return self._info(cdir, fresh=False)

    def _running_leaf(self, cdir: Path, name: str) -> cgroups.Leaf:
        leaf = _leaf(read_json(cdir / "run.json"))
        if self._info(cdir, fresh=False).state is not ContainerState.RUNNING:
            raise ContainerStartError(name, "it is not running")
        if leaf is None:
            raise HostSetupError(
                f"container {name!r} has no cgroup of its own, so it cannot be paused: "
                f"{self.cgroups.problem or 'it was started without one'}"
            )
        return leaf

    def pause(self, name: str) -> ContainerInfo:
        with self._locked(name) as cdir:
            if not self._running_leaf(cdir, name).freeze(True):
                raise ContainerStartError(name, "its cgroup did not freeze within 10 s")
            return self._info(cdir, fresh=False)

    def resume(self, name: str) -> ContainerInfo:
        with self._locked(name) as cdir:
            if not self._running_leaf(cdir, name).freeze(False):
                raise ContainerStartError(name, "its cgroup did not thaw within 10 s")
            return self._info(cdir, fresh=False)

    # -- the whole runtime --------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop and remove every container of this state directory, then the holder."""
        for info in self.list():
            self.remove(info.name, force=True)
        self.holder.stop()
        if self.cgroups.root is not None:  # this state folder's cgroup folder, once empty
            with suppress(OSError):
                (self.cgroups.root / "squish" / self._group).rmdir()

    def check_host(self) -> None:
        """Raise :class:`HostSetupError` when slirp4netns cannot work for this user."""
        slirp.slirp_binary()
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR)
        except OSError as exc:
            raise HostSetupError(
                f"/dev/net/tun cannot be opened by uid {os.getuid()}: {exc.strerror}",
                fix="as root: chmod 0666 /dev/net/tun (the mode distributions ship)",
            ) from exc
        os.close(fd)
