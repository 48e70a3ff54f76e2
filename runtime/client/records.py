"""Container folders as records: what the runtime reads about a container, and the
state every part of ``LinuxRuntime`` shares (the state folder, the holder, the cgroup
subtree, caches). ``runtime.client.live`` and ``runtime.client.linux`` build on it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.api.interface import ContainerInfo, ContainerState
from runtime.api.spec import ContainerSpec, PortMapping, RootfsRef
from runtime.cgroups import fs as cgroups
from runtime.cgroups.driver import CgroupDriver, detect
from runtime.client import folders, logfiles
from runtime.client.paths import cache_dir, private_dir, state_dir
from runtime.errors import ContainerNotFound, RootRefused, SlirpError
from runtime.holder.client import Holder
from runtime.holder.protocol import CONTAINERS_DIR
from runtime.network import bridge, shared
from runtime.network.addresses import leases_of
from runtime.network.driver import LiveForward, driver_for
from runtime.settings import RuntimeSettings
from runtime.util.files import read_json, write_json_atomic
from runtime.util.processes import ProcessId
from runtime.wire import LOG_FILE, Forward, LaunchRequest

__all__ = (
    "BridgeLook",
    "RecordStore",
    "cgroup_facts",
    "forward_key",
    "forward_of",
    "leaf_of",
    "mapping_of",
    "process_confined",
)

log = logging.getLogger(__name__)


def forward_of(mapping: PortMapping) -> Forward:
    return Forward(
        proto=mapping.protocol,
        host_addr=mapping.host_addr,
        host_port=mapping.host,
        guest_port=mapping.container,
    )


def mapping_of(record: dict[str, Any]) -> PortMapping:
    return PortMapping(
        container=record["guest_port"],
        host=record["host_port"],
        protocol=record["proto"],
        host_addr=record["host_addr"],
    )


def process_confined(pid: int) -> bool:
    """Whether the init ``pid`` has confined itself (no_new_privs comes after it stopped
    being dumpable): until then an exec'd command must not run next to it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nNoNewPrivs:\t1" in status


def leaf_of(run: Any) -> cgroups.Leaf | None:
    """The cgroup leaf a run record names, if any."""
    path = run.get("cgroup") if isinstance(run, dict) else None
    return cgroups.Leaf(Path(path)) if isinstance(path, str) and path else None


def cgroup_facts(
    run: dict[str, Any], *, running: bool, exited: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Paused (a running container only), OOM kills and refused forks, from the run's
    cgroup leaf; once it is gone (a systemd scope goes when empty), from what the init
    recorded in ``exit.json``."""
    recorded = {k: int(v) for k, v in (exited or {}).items() if k in ("oom_kills", "pids_refused")}
    leaf = leaf_of(run)
    if recorded or leaf is None:  # the init's own record: no cgroup file to read
        return recorded
    if not running:
        return leaf.events() if leaf.path.exists() else {}
    return {"paused": leaf.frozen(), **leaf.events()}  # missing files read as 0


def _status_key(path: Path | str) -> tuple[int, int, int, int] | None:
    """What tells a file replaced atomically from its last version (None: it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _run_identity(cdir: Path) -> tuple[int, int] | None:
    """Which run ``run.json`` records (a new start replaces the file)."""
    try:
        st = (cdir / "run.json").stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class BridgeLook:
    """The shared slirp4netns's forwards, asked for once by a whole listing: a bridge
    container asking for its own made observing N containers N requests, each
    answering with every container's forwards."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._found: dict[str, list[LiveForward]] | None = None

    def of(self, name: str) -> list[LiveForward]:
        """Container ``name``'s forwards in place (SlirpError: not known now)."""
        if self._found is None:
            self._found = bridge.live_forwards(self.state)
        return self._found.get(name, [])


def forward_key(port: PortMapping) -> tuple[str, str, int, int]:
    return (port.protocol, port.host_addr, port.host, port.container)


class RecordStore:
    """The state folder, the namespace holder and what is read from container folders."""

    def __init__(
        self,
        state: Path | None = None,
        cache: Path | None = None,
        *,
        settings: RuntimeSettings | None = None,
    ) -> None:
        """``settings`` default to the process's environment
        (:meth:`RuntimeSettings.from_environ`); ``state`` and ``cache`` override theirs."""
        if os.geteuid() == 0:
            raise RootRefused(
                "squish runs rootless only and refuses to run as root (uid 0); "
                "run it as an unprivileged user (`make run` as root does that for you)"
            )
        self.settings = RuntimeSettings.from_environ() if settings is None else settings
        self.state = (
            private_dir(state, "state directory") if state is not None else state_dir(self.settings)
        )
        self.cache = (
            private_dir(cache, "cache directory") if cache is not None else cache_dir(self.settings)
        )
        self.containers = self.state / CONTAINERS_DIR
        self.containers.mkdir(mode=0o700, exist_ok=True)
        self.cgroups: CgroupDriver = detect(self.settings)
        self._group = hashlib.blake2b(str(self.state).encode(), digest_size=4).hexdigest()
        """This state folder's cgroup folder: two state folders never share leaves."""
        self.holder = Holder(
            self.state,
            self.settings.native,
            place=self.cgroups.separate,
            ahead=self.cgroups.ahead(self._group),
            spares=self.settings.spares,
        )
        self._rootfs_paths: dict[RootfsRef, Path] = {}
        self._specs: dict[Path, tuple[tuple[int, int], ContainerSpec]] = {}
        """spec.json as last parsed, by container folder, with the status it had."""
        self._requests: dict[Path, tuple[tuple[int, int, int, int], LaunchRequest]] = {}
        """launch.json as last parsed or written, by container folder, with the status
        it had (a start reads back what its create wrote: not parsed again)."""
        self._forward_checks: dict[
            Path, tuple[float, tuple[PortMapping, ...], tuple[PortMapping, ...]]
        ] = {}
        self._records: dict[tuple[Path, str], tuple[tuple[int, int, int, int], Any]] = {}
        """meta.json and run.json as last parsed, by container folder and name, with the
        status they had."""
        self._exits: dict[Path, tuple[tuple[int, int] | None, dict[str, Any]]] = {}
        """Exits seen but not recorded (the state disk is full), by folder, with the
        identity of the run they ended."""
        self._log_owners = logfiles.Owners()
        self._logs_swept: tuple[frozenset[str], frozenset[str]] | None = None
        """The names of this state folder's logs and of its containers' folders when a
        sweep last found no orphan log (``LinuxRuntime._sweep_logs``)."""
        self.forward_check_interval = 10.0
        """How often ``list()`` asks each network for its forwards (``inspect`` always does)."""

    def _dir(self, name: str) -> Path:
        path = self.containers / name
        if not (path / "launch.json").is_file():
            raise ContainerNotFound(name)
        return path

    def _locked(self, name: str) -> AbstractContextManager[Path]:
        return folders.locked(self._dir(name), name)

    def _launch_request(self, cdir: Path) -> LaunchRequest:
        """The container's launch.json, parsed again only when its status changed (it
        is always replaced atomically)."""
        path = cdir / "launch.json"
        key = _status_key(path)
        known = self._requests.get(cdir)
        if key is not None and known is not None and known[0] == key:
            return known[1]
        try:
            request = LaunchRequest.from_json(read_json(path))
        except ValueError as exc:  # missing, damaged or of another shape: say which file
            raise ValueError(f"{path}: {exc}") from None
        if key is not None:
            self._requests[cdir] = (key, request)
        return request

    def _write_launch_request(self, cdir: Path, request: LaunchRequest) -> None:
        """Replace the container's launch.json atomically; remembered as written."""
        path = cdir / "launch.json"
        write_json_atomic(path, request.to_json())
        key = _status_key(path)
        if key is not None:
            self._requests[cdir] = (key, request)

    def _write_spec(self, cdir: Path, spec: ContainerSpec) -> None:
        """Replace the container's spec.json atomically."""
        write_json_atomic(cdir / "spec.json", spec.model_dump(mode="json"))

    def _spec(self, cdir: Path) -> ContainerSpec:
        """The container's spec, parsed again only when spec.json changed (its path as
        a string: listing a thousand containers builds no Path per file)."""
        path = f"{cdir}/spec.json"
        st = os.stat(path)
        key = (st.st_ino, st.st_mtime_ns)
        known = self._specs.get(cdir)
        if known is not None and known[0] == key:
            return known[1]
        with open(path, "rb") as file:
            spec = ContainerSpec.model_validate_json(file.read())
        self._specs[cdir] = (key, spec)
        return spec

    def _live_ports(
        self,
        cdir: Path,
        spec: ContainerSpec,
        recorded: tuple[PortMapping, ...],
        fresh: bool,
        look: BridgeLook | None,
    ) -> tuple[PortMapping, ...]:
        """The network's own forward list (the truth: it shows a forward removed behind our
        back); ``list()`` asks at most every ``forward_check_interval`` seconds per
        container, and the shared slirp4netns once for all its containers (``look``)."""
        now = time.monotonic()
        checked = self._forward_checks.get(cdir)
        if not fresh and checked is not None and now - checked[0] < self.forward_check_interval:
            return checked[1] if checked[2] == recorded else recorded
        try:
            if look is not None and spec.network == "bridge":
                forwards = look.of(spec.name)
            else:
                forwards = driver_for(spec).forwards(cdir, spec.name).list()
            live = tuple(mapping_of(asdict(f.forward)) for f in forwards)
        except SlirpError:
            return recorded
        self._forward_checks[cdir] = (now, live, recorded)
        return live

    def _record(self, cdir: Path, name: str) -> Any | None:
        """``read_json`` of the record ``name`` of ``cdir``, always replaced atomically
        (meta.json, run.json: each write is a new inode), parsed again only when its
        status changed. What it returns is shared: never change it."""
        path, known_as = f"{cdir}/{name}", (cdir, name)
        key = _status_key(path)
        if key is None:
            self._records.pop(known_as, None)
            return None
        known = self._records.get(known_as)
        if known is not None and known[0] == key:
            return known[1]
        data = read_json(path)
        self._records[known_as] = (key, data)
        return data

    def _info(
        self,
        cdir: Path,
        *,
        fresh: bool = True,
        look: BridgeLook | None = None,
        ask: bool = True,
    ) -> ContainerInfo:
        """What is known of the container of ``cdir``: a running one's forwards as its
        network holds them (``fresh``: asked now; else as last asked, see
        :meth:`_live_ports`), or as its run recorded them when not ``ask``-ed (a start
        that just made them: asking would cost the network a request while the
        container's command begins)."""
        spec = self._spec(cdir)
        meta = self._record(cdir, "meta.json") or {}
        run = self._record(cdir, "run.json")
        common: dict[str, Any] = {
            "name": spec.name,
            "spec": spec,
            "log_path": meta.get("log_path") or str(cdir / LOG_FILE),
            "restarts": int(meta.get("restarts", 0)),
            "created_at": float(meta.get("created_at", 0.0)),
            "addresses": leases_of(self.state, spec.name) if spec.networks else {},
        }
        if not isinstance(run, dict):
            return ContainerInfo(state=ContainerState.CREATED, **common)
        init = ProcessId.from_json(run.get("init"))
        if init is not None and init.alive():
            slirp_id = ProcessId.from_json(run.get("slirp"))
            if spec.network == "bridge":  # the shared one, if it serves this container
                wired = bridge.wired_to(cdir)
                slirp_id = None if wired is None else shared.slirp_identity(self.state, wired)
                # Found alive (or the keeper, while it starts one again): checked once,
                # as a slirp4netns that dies right after would read as a lost network.
                slirp_alive = slirp_id is not None
            else:
                slirp_alive = slirp_id is not None and slirp_id.alive()
            ports = tuple(mapping_of(f) for f in run.get("forwards", []))
            if slirp_alive and ask:
                ports = self._live_ports(cdir, spec, ports, fresh, look)
            return ContainerInfo(
                state=ContainerState.RUNNING,
                pid=init.pid,
                pid_start_time=init.start_time,
                started_at=run.get("started_at"),
                ports=ports,
                slirp_pid=slirp_id.pid if slirp_id is not None and slirp_alive else None,
                proc_view=run.get("proc_view"),
                **cgroup_facts(run, running=True),
                **common,
            )
        exited = self._exit_record(cdir)
        exit_code = exited.get("exit_code")
        finished = exited.get("finished_at")
        return ContainerInfo(
            state=ContainerState.EXITED,
            started_at=run.get("started_at"),
            finished_at=finished,
            exit_code=exit_code,
            **cgroup_facts(run, running=False, exited=exited),
            **common,
        )

    def _exit_record(self, cdir: Path) -> dict[str, Any]:
        """What ``exit.json`` says of the last run's end. The init died without recording
        an exit (it was killed): record when that was first seen, so the exit has a time
        even if its code is unknown."""
        exited = read_json(cdir / "exit.json")
        if isinstance(exited, dict):
            return exited
        kept = self._exits.get(cdir)
        if kept is not None and kept[0] == _run_identity(cdir):
            exited = kept[1]
        else:
            exited = {"exit_code": None, "signal": None, "finished_at": time.time()}
        self._record_exit(cdir, exited)
        return exited

    def _record_exit(self, cdir: Path, exited: dict[str, Any]) -> None:
        """Write ``exit.json``. A state disk that cannot take it (full, say) fails no
        observation: the exit is kept in memory until the run changes, so this process
        sees one time for it, and written by the first look that can. A folder removed
        meanwhile (by another client) needs no record: nothing is kept or said."""
        try:
            write_json_atomic(cdir / "exit.json", exited)
        except OSError as exc:
            if exc.errno == errno.ENOENT and not cdir.is_dir():
                self._exits.pop(cdir, None)
                return
            if cdir not in self._exits:
                log.warning("cannot record the exit of %s (kept in memory): %s", cdir.name, exc)
            self._exits[cdir] = (_run_identity(cdir), exited)
        else:
            self._exits.pop(cdir, None)

    def inspect(self, name: str) -> ContainerInfo:
        return self._info(self._dir(name))

    def _forget(self, cdir: Path) -> None:
        """Drop what is cached about a folder that is gone or moved."""
        self._specs.pop(cdir, None)
        self._requests.pop(cdir, None)
        self._records.pop((cdir, "meta.json"), None)
        self._records.pop((cdir, "run.json"), None)
        self._forward_checks.pop(cdir, None)
        self._exits.pop(cdir, None)
