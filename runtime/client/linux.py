"""``LinuxRuntime``: the ``Runtime`` interface on real namespaces, rootless only.

The client side: it resolves rootfs and layers, lays out the container's folder, asks the
namespace holder to start the container, signals it to stop, and edits port forwards
through the container's network driver (:mod:`runtime.network.driver`). It never forks a
container itself, so it may run in a threaded program.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from runtime.api.interface import ContainerInfo, ContainerState
from runtime.api.spec import ContainerSpec, LogLimits, RootfsRef
from runtime.client import binds, folders, logfiles
from runtime.client.networks import NetworkOps, lease_all
from runtime.client.paths import log_dir
from runtime.client.records import BridgeLook, forward_of, leaf_of
from runtime.errors import (
    ContainerExists,
    ContainerNotRunning,
    ContainerRunning,
    ContainerStartError,
    HostSetupError,
    StopFailed,
)
from runtime.holder.client import SUN_PATH_MAX, failure_error
from runtime.holder.protocol import ErrorCode, Failure, Launch, Launched
from runtime.images.layers import resolve_sdks, sweep_cache
from runtime.images.rootfs import resolve_rootfs
from runtime.network import bridge, shared
from runtime.network.addresses import open_book
from runtime.network.driver import driver_for
from runtime.sandbox.mounts import prepare_skeleton
from runtime.security import seccomp
from runtime.util.cancel import Cancel
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from runtime.wire import LOG_FILE, SECCOMP_FILE, LaunchRequest, MountPoint

__all__ = ("LinuxRuntime",)

log = logging.getLogger(__name__)

LOG_DRAIN_TIMEOUT = 10.0
"""How long the log pump of a container whose processes are gone gets to move the last
of their output (at most a pipe's worth) before it is killed."""


def _log_drained(run: object, timeout: float) -> bool:
    """Wait until the run's log pump has moved all the output and exited; False if it
    is still there after ``timeout`` seconds."""
    pump = ProcessId.from_json(run.get("log_pump")) if isinstance(run, dict) else None
    return pump is None or pump.wait_gone(timeout)


_HELPER = "slirp4netns"
"""The program a run record's ``slirp`` names (its ``comm``): a recorded pid running
anything else is not ended."""


def _end_helper(slirp: ProcessId | None) -> None:
    """End a dead container's slirp4netns (it exits on its own within ms), unless it is
    gone or its pid is another program's now."""
    if slirp is None or slirp.name() != _HELPER:
        return
    if not slirp.wait_gone(1.0):
        slirp.send(signal.SIGKILL)
        slirp.wait_gone(5.0)


def _names(folder: Path) -> frozenset[str]:
    """The names in ``folder`` (none when it does not exist)."""
    try:
        return frozenset(os.listdir(folder))
    except FileNotFoundError:
        return frozenset()


def _check_socket_paths(spec: ContainerSpec, cdir: Path) -> None:
    """Refuse a container folder too deep for the sockets its network binds there."""
    network = driver_for(spec)
    for socket_name in network.sockets:
        if len(os.fsencode(cdir / socket_name)) > SUN_PATH_MAX:
            raise HostSetupError(
                f"the state folder's path is too long for container {spec.name!r}'s "
                f"{network.name} socket ({cdir / socket_name})",
                fix="set SQUISH_STATE_DIR to a shorter path, or use a shorter name",
            )


class LinuxRuntime(NetworkOps):
    """Rootless containers in Linux namespaces; see ``docs/runtime.md``. The container
    lifecycle is here; records in :mod:`runtime.client.records`, live operations in
    :mod:`runtime.client.live`."""

    # -- folders and records ------------------------------------------------------------

    # -- create and start ---------------------------------------------------------------

    def prepare(self, spec: ContainerSpec, cancel: Cancel | None = None) -> None:
        self._sdks(spec, cancel)

    def _sdks(self, spec: ContainerSpec, cancel: Cancel | None = None) -> list[Path]:
        """The extracted SDK layers of ``spec``, all within the unpacking limits."""
        return resolve_sdks(
            spec.sdks,
            self.cache,
            index_url=self.settings.layer_index,
            limits=self.settings.unpack_limits,
            cancel=cancel,
        )

    def _mounts(self, spec: ContainerSpec, cdir: Path) -> tuple[MountPoint, ...]:
        mounts: list[MountPoint] = []
        for layer, path in zip(spec.sdks, self._sdks(spec), strict=True):
            real = os.path.realpath(path)  # the cache's own path, links resolved once
            mounts.append(MountPoint(source=real, target=f"/sdk/{layer.name}"))
        mounts.extend(binds.user_bind(spec.name, bind) for bind in spec.binds)
        mounts.extend(binds.etc_mounts(spec, cdir))
        targets = [m.target for m in mounts]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise ContainerStartError(spec.name, f"two mounts share a target: {duplicates}")
        return tuple(sorted(mounts, key=lambda m: m.target.count("/")))

    def _rootfs(self, ref: RootfsRef) -> Path:
        """Resolve a rootfs once per runtime object (resolving hashes the busybox binary)."""
        known = self._rootfs_paths.get(ref)
        if known is None or not known.is_dir():
            known = self._rootfs_paths[ref] = resolve_rootfs(
                ref, self.cache, mirror=self.settings.alpine_mirror
            )
        return known

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        cdir = self.containers / spec.name
        _check_socket_paths(spec, cdir)
        self.cgroups.check(spec.resources)  # refused here, before anything is made
        rootfs = self._rootfs(spec.rootfs)
        syscall_filter = self._syscall_filter(spec)
        lock_fd = folders.claim(self.containers, spec.name, self._readable, self._drop_leftover)
        try:
            lease_all(self.state, spec)  # its addresses go into its /etc files
            mounts = self._mounts(spec, cdir)
            log_path = self._new_log_path()
            limits = spec.logs or LogLimits()
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
                forwards=tuple(forward_of(p) for p in spec.ports),
                seccomp=syscall_filter is not None,
                log_path=str(log_path),
                log_max_size=limits.max_size,
                log_max_files=limits.max_files,
                proc_view=spec.proc_view,
            )
            if syscall_filter is not None:
                (cdir / SECCOMP_FILE).write_bytes(syscall_filter)
            meta = {"restarts": 0, "created_at": time.time(), "started": 0}
            write_json_atomic(cdir / "meta.json", {**meta, "log_path": str(log_path)})
            self._write_spec(cdir, spec)
            self._write_launch_request(cdir, request)
        except BaseException:
            folders.discard(cdir)
            self._release(spec.name)
            raise
        finally:
            os.close(lock_fd)
        return self._info(cdir)

    def _release_orphans(self) -> None:
        """Free the addresses of containers that are gone: a client killed between a
        lease and its create's end, or in a remove, left them."""
        present = {entry.name for entry in self.containers.iterdir()}
        prefix = f"{folders.HIDDEN}new-"  # .new-NAME-XXXXXXXX, the random part has no dash
        being_made = {n[len(prefix) :].rsplit("-", 1)[0] for n in present if n.startswith(prefix)}
        with open_book(self.state) as book:
            for record in book.networks.values():
                for name in [n for n in record.leases if n not in present | being_made]:
                    book.release(record.name, name)

    def _release(self, name: str) -> None:
        """Free the addresses of container ``name`` (gone, or never made)."""
        with open_book(self.state) as book:
            book.release_all(name)
        bridge.sync_if_running(self.state)

    def _new_log_path(self) -> Path:
        """Where a new container's log goes: a folder of its own in the log folder, with
        a random name (as podman's container ids): a rename keeps it, and two state
        folders never share one."""
        return log_dir(self.settings) / secrets.token_hex(8) / LOG_FILE

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
        """The cheap test of a whole record (a damaged one is reported, never swept); the
        sweep of every pass asks it of every container: strings, no Path built."""
        return os.path.isfile(f"{cdir}/launch.json") and os.path.isfile(f"{cdir}/spec.json")

    def sweep(self) -> list[str]:
        """Delete the folders clients killed in the middle of a create or a remove left,
        after stopping whatever those still run; return their names."""
        swept = folders.sweep(self.containers, self._has_record, self._drop_leftover)
        for name in swept:
            self._forget(self.containers / name)
        self._release_orphans()
        self._finish_rewires()
        for leftover in sweep_cache(self.cache):  # staging trees, partial downloads
            log.info("removed %s, left in the cache by a killed process", leftover)
        self._sweep_logs()
        return swept

    def _sweep_logs(self) -> None:
        """Delete the logs of this state folder that no record names any more (the
        records went with a reboot, say); a log folder that cannot be read is left.

        Skipped while neither this state folder's logs nor its containers' folders
        changed since a sweep found every log named: a log folder has a new random name,
        and a record never names another log, so only a listing that changed can make an
        orphan (and every pass sweeps: reading every record each time made it linear in
        them). Other state folders' logs share the log folder: they change nothing."""
        logs = log_dir(self.settings)
        try:
            listed = (self._log_owners.owned(logs, self.state), _names(self.containers))
            if listed == self._logs_swept:
                return
            owned = [logs / name for name in sorted(listed[0])]  # owners are read once
            orphans = logfiles.orphans(owned, self._named_logs)
            for orphan in orphans:
                logfiles.discard(orphan / LOG_FILE)
                log.info("removed the log %s, which no container of %s names", orphan, self.state)
        except OSError as exc:  # a full or unreadable disk: the records' sweep still counts
            log.warning("cannot sweep the logs of %s: %s", self.state, exc)
            return
        self._logs_swept = None if orphans else listed

    def _named_logs(self) -> set[Path]:
        """The log folders this state folder's records name (those of records being
        created or removed, under hidden names, too)."""
        metas = (*self.containers.glob("*/meta.json"), *self.containers.glob("*/c/meta.json"))
        records = (read_json(meta) for meta in metas)
        paths = (r.get("log_path") if isinstance(r, dict) else None for r in records)
        return {Path(path).parent for path in paths if isinstance(path, str)}

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
            request = binds.own_sources_resolved(self._launch_request(cdir), (self.cache, cdir))
            request = dataclasses.replace(request, port_handler=self.settings.port_handler)
            binds.check_sources(name, request.mounts)
            if request.seccomp and not (cdir / SECCOMP_FILE).is_file():
                # A record made before filters were stored: compile it now, from the spec.
                syscall_filter = self._syscall_filter(self._spec(cdir))
                if syscall_filter is not None:
                    (cdir / SECCOMP_FILE).write_bytes(syscall_filter)
            # What the last run left (a helper its holder could not end) may hold a port
            # of this container: it goes before the ports are checked.
            self._reap_leftovers(cdir, remove_cgroup=True)
            for forward in request.forwards:
                driver_for(request).ensure_port_free(forward)
            for stale in ("run.json", "exit.json"):
                (cdir / stale).unlink(missing_ok=True)
            if request.log_path:  # (an older record keeps its log in its own folder)
                logfiles.claim(Path(request.log_path).parent, self.state)
            reply = self._launch(cdir, name, request)
            if isinstance(reply, Failure):
                # A bridge container's forwards were recorded while it was wired: a
                # launch that failed after that leaves their host ports to others.
                self._reap_leftovers(cdir)
                raise failure_error(name, reply)
            meta = read_json(cdir / "meta.json") or {}
            started = int(meta.get("started", 0)) + 1
            meta.update(started=started, restarts=max(0, started - 1))
            write_json_atomic(cdir / "meta.json", meta)
            return self._info(cdir, ask=False)  # its forwards as the launch just made them

    def _launch(self, cdir: Path, name: str, request: LaunchRequest) -> Launched | Failure:
        """Ask the holder to start the container where the cgroup driver places it;
        refuse (and stop it) if its cgroup cannot hold its limits. A cgroup that no run
        ended up using is removed, whatever happened."""
        placement = self.cgroups.place(self._group, name, self._spec(cdir).resources)
        try:
            reply = self.holder.call(Launch.of(placement.request(request)), Launched)
            refused = isinstance(reply, Failure) and reply.code is ErrorCode.CGROUP_MOVE
            if placement.unplaced_after(refused):
                reply = self.holder.call(Launch.of(placement.request(request)), Launched)
            leaf = leaf_of(reply.run) if isinstance(reply, Launched) else None
            if leaf is not None:
                try:
                    placement.check_started(leaf)
                except HostSetupError as exc:
                    self._kill_leftover(cdir)
                    return Failure(ErrorCode.START_FAILED, str(exc))
            return reply
        finally:
            placement.discard_unused(leaf_of(read_json(cdir / "run.json")))

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

    def _drop_leftover(self, cdir: Path) -> None:
        """Stop what the folder of a killed client still runs, and delete its log (the
        folder itself is deleted next)."""
        self._kill_leftover(cdir)
        meta = read_json(cdir / "meta.json")
        log_path = meta.get("log_path") if isinstance(meta, dict) else None
        if isinstance(log_path, str):
            logfiles.discard(Path(log_path))

    def _reap_leftovers(self, cdir: Path, *, remove_cgroup: bool = False) -> None:
        """Kill what a dead container left: its slirp4netns (it exits on its own within
        ms) and anything still in its cgroup; ``remove_cgroup`` deletes the leaf too (it is
        otherwise kept after an exit, for its OOM and pids counts). A bridge container's
        forwards, held by the shared slirp4netns, go too."""
        spec = read_json(cdir / "spec.json")  # a half-made folder may have none
        if isinstance(spec, dict) and spec.get("network") == "bridge":
            bridge.drop_forwards(self.state, cdir.name)
        run = read_json(cdir / "run.json")
        if not isinstance(run, dict):
            return
        leaf = leaf_of(run)
        if leaf is not None:
            if leaf.populated():
                leaf.kill()
            if remove_cgroup:
                leaf.remove()
        _end_helper(ProcessId.from_json(run.get("slirp")))
        pump = ProcessId.from_json(run.get("log_pump"))
        if not _log_drained(run, LOG_DRAIN_TIMEOUT) and pump is not None:
            pump.send(signal.SIGKILL)  # stuck on a disk that does not answer

    def stop(self, name: str, timeout: float | None = None) -> ContainerInfo:
        with self._locked(name) as cdir:
            run = read_json(cdir / "run.json")
            init = ProcessId.from_json(run.get("init")) if isinstance(run, dict) else None
            if init is not None and init.alive():
                grace = self._spec(cdir).stop_timeout if timeout is None else timeout
                init.send(signal.SIGTERM)
                paused = leaf_of(run)
                if paused is not None and paused.frozen():
                    paused.freeze(False)  # so that it can act on the SIGTERM, as Docker does
                if not init.wait_gone(grace):
                    init.send(signal.SIGKILL)
                    leaf = leaf_of(run)
                    if leaf is not None:
                        leaf.kill()  # every process at once, the init included
                    if not init.wait_gone(10.0):
                        raise StopFailed(name, f"init {init.pid} survived SIGKILL")
                if not (cdir / "exit.json").exists():
                    self._record_exit(
                        cdir,
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
                raise ContainerRunning(name, "stop it or remove with force")
            self.stop(name)  # as podman rm -f: SIGTERM, SIGKILL after the stop timeout
        with self._locked(name) as cdir:
            if self._info(cdir).state is ContainerState.RUNNING:
                raise ContainerRunning(name, "it was started again while being removed")
            self._reap_leftovers(cdir, remove_cgroup=True)
            logfiles.discard(Path(self._info(cdir, fresh=False).log_path))
            folders.discard(cdir)
            self._forget(cdir)
            self._release(name)

    # -- observe ------------------------------------------------------------------------

    def list(self) -> list[ContainerInfo]:
        found = []
        look = BridgeLook(self.state)
        for cdir in sorted(self.containers.iterdir()):
            # a whole record: its launch.json here, its spec.json read below (a folder
            # without one is skipped there); each path as a string, no Path built
            if cdir.name.startswith(folders.HIDDEN) or not os.path.isfile(f"{cdir}/launch.json"):
                continue  # being made or removed, or left so by a killed client
            try:
                found.append(self._info(cdir, fresh=False, look=look))
            except FileNotFoundError:
                continue  # being created or removed right now
            except ValueError as exc:  # a damaged record: report it, never fail the listing
                log.warning("skipping %s: unreadable record: %s", cdir, exc)
        return found

    def logs(self, name: str) -> bytes:
        return b"".join(self.stream_logs(name))

    def stream_logs(self, name: str, *, follow: bool = False) -> Iterator[bytes]:
        cdir = self._dir(name)
        info = self._info(cdir, fresh=False)
        path = Path(info.log_path)
        if follow:
            return logfiles.follow(path, lambda: self._log_written(cdir))
        if info.state is ContainerState.EXITED:  # the last of its output, if still moving
            _log_drained(read_json(cdir / "run.json"), LOG_DRAIN_TIMEOUT)
        return logfiles.read_all(path)

    @staticmethod
    def _log_written(cdir: Path) -> bool:
        """Whether something may still write the container's log: its init or, while it
        moves the last of the output, its log pump."""
        run = read_json(cdir / "run.json")
        if not isinstance(run, dict):
            return False
        writers = (ProcessId.from_json(run.get(key)) for key in ("init", "log_pump"))
        return any(w is not None and w.alive() for w in writers)

    def wait(self, name: str, timeout: float | None = None) -> int:
        cdir = self._dir(name)
        run = read_json(cdir / "run.json")
        init = ProcessId.from_json(run.get("init")) if isinstance(run, dict) else None
        if init is None:
            raise ContainerNotRunning(name, "it was never started")
        if not init.wait_gone(float("inf") if timeout is None else timeout):
            raise TimeoutError(f"container {name!r} still running after {timeout} s")
        _log_drained(run, LOG_DRAIN_TIMEOUT)  # its output is all in the log when this returns
        code = self._info(cdir).exit_code
        return 128 + signal.SIGKILL if code is None else code

    # -- live port forwards -------------------------------------------------------------

    def rename(self, name: str, new_name: str) -> ContainerInfo:
        """Give a container another name, running or not (a replacement takes over the
        name of the container it replaced)."""
        ContainerSpec.model_validate({**self.inspect(name).spec.model_dump(), "name": new_name})
        with self._locked(name) as cdir:
            target = self.containers / new_name
            if target.exists():
                raise ContainerExists(new_name)
            with bridge.renaming(self.state, name, new_name):
                os.rename(cdir, target)
                with open_book(self.state) as book:
                    book.rename(name, new_name)
            spec = self._spec(target).model_copy(update={"name": new_name})
            self._write_spec(target, spec)
            request = self._launch_request(target)
            fresh = {m.target: m for m in binds.etc_mounts(spec, target)}
            request = dataclasses.replace(
                request,
                name=new_name,
                container_dir=str(target),
                hostname=spec.hostname or new_name,
                mounts=tuple(fresh.get(m.target, m) for m in request.mounts),
            )
            self._write_launch_request(target, request)
            self._forget(cdir)
            return self._info(target)

    # -- cgroups -------------------------------------------------------------------------

    # -- the whole runtime --------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop and remove every container of this state directory, then the holder."""
        for info in self.list():
            self.remove(info.name, force=True)
        shared.stop_supervisor(self.state)
        self.holder.stop()
        self.cgroups.release(self._group)
