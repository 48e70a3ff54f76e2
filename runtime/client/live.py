"""Operations on a running container: live port forwards, a healed network, TCP probes,
``exec``, live cgroup limits, pause and resume. Mixed into ``LinuxRuntime``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.api.interface import CommandResult, ContainerInfo, ContainerState
from runtime.api.spec import ContainerSpec, PortMapping, Resources
from runtime.cgroups import fs as cgroups
from runtime.client.records import (
    RecordStore,
    forward_key,
    forward_of,
    leaf_of,
    mapping_of,
    process_confined,
)
from runtime.errors import (
    ContainerNotRunning,
    ContainerPaused,
    ContainerStarting,
    FreezeTimeout,
    HostSetupError,
    NetworkLost,
    PortInUse,
    PortPrivileged,
    SlirpError,
)
from runtime.holder.client import failure_error
from runtime.holder.protocol import (
    ErrorCode,
    Exec,
    ExecResult,
    Failure,
    ProbeResult,
    ProbeTcp,
    Restored,
    RestoreNetwork,
    Rewire,
    Rewired,
)
from runtime.network.bridge import NotHeld
from runtime.network.driver import Forwards, driver_for
from runtime.util.files import read_json, write_json_atomic
from runtime.wire import Forward

__all__ = ("RunningOps",)


class RunningOps(RecordStore):
    """What can be done to a running container without restarting it."""

    def _running_api(self, cdir: Path, name: str) -> tuple[Forwards, dict[str, Any]]:
        info = self._info(cdir, fresh=False)  # callers ask the network themselves
        if info.state is not ContainerState.RUNNING:
            raise ContainerNotRunning(name)
        network = driver_for(info.spec)
        forwards = network.forwards(cdir, name, self.settings.port_handler)
        if info.slirp_pid is None:
            raise SlirpError(f"container {name!r} has no {network.name} network")
        run = read_json(cdir / "run.json")
        assert isinstance(run, dict)
        return forwards, run

    def _record_ports(self, cdir: Path, run: dict[str, Any]) -> None:
        """Keep run.json, spec.json and launch.json on the forwards now in place, so a
        later start of the same container forwards what it forwards now."""
        write_json_atomic(cdir / "run.json", run)
        ports = tuple(sorted({mapping_of(f) for f in run["forwards"]}, key=forward_key))
        spec = self._spec(cdir).model_copy(update={"ports": ports})
        self._write_spec(cdir, spec)
        request = self._launch_request(cdir)
        updated = dataclasses.replace(request, forwards=tuple(forward_of(p) for p in ports))
        self._write_launch_request(cdir, updated)

    def add_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        with self._locked(name) as cdir:
            api, run = self._running_api(cdir, name)
            forward = forward_of(mapping)
            # The network's own list decides: run.json may still name a forward that was
            # removed behind our back.
            live = api.find(forward)
            if live is None:
                driver_for(self._spec(cdir)).ensure_port_free(forward)
                live_id = self._add_forward(cdir, api, forward)
            else:
                live_id = live.id
            run["forwards"] = [f for f in run["forwards"] if mapping_of(f) != mapping]
            run["forwards"].append({"id": live_id, **asdict(forward)})
            self._record_ports(cdir, run)
            return self._info(cdir)

    def _add_forward(self, cdir: Path, api: Forwards, forward: Forward) -> int:
        try:
            return api.add(forward)
        except NotHeld:
            self._hand_over(cdir)
            return api.add(forward)

    def _hand_over(self, cdir: Path) -> None:
        """Wire running bridge container ``cdir`` again, which hands its namespace to the
        keeper (:class:`NotHeld`: the keeper had no way into it for the port handler)."""
        info = self._info(cdir)
        if info.pid is None:
            raise ContainerNotRunning(cdir.name)
        self._rewire(cdir, self._spec(cdir), info.pid)

    def remove_port(self, name: str, mapping: PortMapping) -> ContainerInfo:
        with self._locked(name) as cdir:
            api, run = self._running_api(cdir, name)
            live = api.find(forward_of(mapping))
            if live is not None:
                api.remove(live.id)
            run["forwards"] = [f for f in run["forwards"] if mapping_of(f) != mapping]
            self._record_ports(cdir, run)
            return self._info(cdir)

    def restore_network(self, name: str) -> ContainerInfo:
        """Start slirp4netns again for a running container whose slirp4netns died, in the
        same network namespace, and put back every forward it can (a port taken in the
        meantime stays out and shows as missing). Raises :class:`NetworkLost` when only a
        recreate can help. A bridge container whose shared namespace is gone (its keeper
        died) is wired again into a new one, its forwards with it."""
        with self._locked(name) as cdir:
            info = self._info(cdir)
            if info.state is not ContainerState.RUNNING or info.pid is None:
                raise ContainerNotRunning(name)
            if info.spec.network == "bridge" and info.slirp_pid is None:
                self._rewire(cdir, info.spec, info.pid)
                return self._info(cdir)
            if not driver_for(info.spec).has_helper or info.slirp_pid is not None:
                return info
            launch = self._launch_request(cdir)
            request = RestoreNetwork(
                init_pid=info.pid,
                container_dir=str(cdir),
                sandbox=launch.sandbox_slirp,
                network=launch.network,
            )
            reply = self.holder.call(request, Restored)
            if isinstance(reply, Failure) and reply.code is ErrorCode.UNKNOWN_CONTAINER:
                raise NetworkLost(name, reply.message)
            if isinstance(reply, Failure):
                raise failure_error(name, reply)
            run = read_json(cdir / "run.json")
            assert isinstance(run, dict)
            wanted = [mapping_of(record) for record in run.get("forwards", [])]
            run["slirp"] = reply.slirp
            run["forwards"] = []
            write_json_atomic(cdir / "run.json", run)  # the new slirp4netns first
            api = driver_for(info.spec).forwards(cdir, name, self.settings.port_handler)
            for mapping in wanted:
                forward = forward_of(mapping)
                # Left out (taken meanwhile, or privileged now): the next pass binds it.
                with suppress(PortInUse, PortPrivileged, SlirpError):
                    run["forwards"].append({"id": api.add(forward), **asdict(forward)})
            write_json_atomic(cdir / "run.json", run)
            self._forward_checks.pop(cdir, None)
            return self._info(cdir)

    def _rewire(self, cdir: Path, spec: ContainerSpec, init_pid: int) -> None:
        """Have the holder make running bridge container ``spec``'s interfaces match its
        networks (in a new shared namespace, if the old one is gone)."""
        joins = tuple(attachment.network for attachment in spec.networks)
        request = Rewire(init_pid=init_pid, container_dir=str(cdir), networks=joins)
        reply = self.holder.call(request, Rewired)
        if isinstance(reply, Failure) and reply.code is ErrorCode.UNKNOWN_CONTAINER:
            raise NetworkLost(spec.name, reply.message)
        if isinstance(reply, Failure):
            raise failure_error(spec.name, reply)

    def move_port(self, name: str, to: str, mapping: PortMapping) -> None:
        """Move a forward from one running container to another: in one step where the
        network can hand it over (the port handler: nothing refused), else with the
        shortest gap the slirp4netns API allows (remove and add back to back);
        bookkeeping after."""
        if name == to:
            raise ValueError("a forward cannot move to the container it is on")
        first, second = sorted((name, to))  # one lock order for every mover: no deadlock
        with self._locked(first) as first_dir, self._locked(second) as second_dir:
            source, target = (first_dir, second_dir) if first == name else (second_dir, first_dir)
            source_api, source_run = self._running_api(source, name)
            target_api, target_run = self._running_api(target, to)
            forward = forward_of(mapping)
            try:
                new_id = target_api.take(forward, name)
            except NotHeld:  # the record is the target's now: its listener, once held
                self._hand_over(target)
                live = target_api.find(forward)
                if live is None:
                    raise
                new_id = live.id
            if new_id is None:
                new_id = _move_by_hand(source_api, target_api, forward)
            source_run["forwards"] = [f for f in source_run["forwards"] if mapping_of(f) != mapping]
            target_run["forwards"] = [f for f in target_run["forwards"] if mapping_of(f) != mapping]
            target_run["forwards"].append({"id": new_id, **asdict(forward)})
            self._record_ports(source, source_run)
            self._record_ports(target, target_run)

    def probe_tcp(self, name: str, port: int) -> bool:
        """Whether something inside the running container accepts TCP on ``port`` (tried
        from within its network namespace, so no forward is needed)."""
        info = self.inspect(name)
        if info.state is not ContainerState.RUNNING or info.pid is None:
            return False
        reply = self.holder.call(ProbeTcp(init_pid=info.pid, port=port), ProbeResult)
        if isinstance(reply, Failure):
            raise failure_error(name, reply, port=port)
        return reply.ready

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
            raise ContainerNotRunning(name)
        if info.paused:  # the command would freeze with it
            raise ContainerPaused(name)
        if not process_confined(info.pid):  # the init still holds what no command may reach
            raise ContainerStarting(name)
        leaf = leaf_of(read_json(cdir / "run.json"))
        launch = self._launch_request(cdir)
        request = Exec(
            init_pid=info.pid,
            init_start_time=info.pid_start_time or 0,
            argv=tuple(argv),
            env=launch.command_env(),
            container_dir=str(cdir),
            workdir=launch.workdir,
            timeout=timeout,
            seccomp=launch.seccomp,
            cgroup=str(leaf.path) if leaf is not None else "",
        )
        reply = self.holder.call(request, ExecResult, timeout=timeout + 30.0)
        if isinstance(reply, Failure):
            raise failure_error(name, reply, program=argv[0])
        return CommandResult(
            exit_code=reply.exit_code, output=reply.output, timed_out=reply.timed_out
        )

    def update_resources(self, name: str, resources: Resources | None) -> ContainerInfo:
        self.cgroups.check(resources)
        with self._locked(name) as cdir:
            info = self._info(cdir, fresh=False)
            leaf = leaf_of(read_json(cdir / "run.json"))
            if info.state is ContainerState.RUNNING:
                if leaf is None and cgroups.needed_controllers(resources):
                    raise HostSetupError(
                        f"container {name!r} runs without a cgroup of its own (it was started "
                        "before one was delegated): recreate it to give it limits"
                    )
                if leaf is not None:
                    self.cgroups.apply_live(leaf, resources)
            # Recorded once applied: a limit that could not be set is tried again.
            spec = self._spec(cdir).model_copy(update={"resources": resources})
            self._write_spec(cdir, spec)
            return self._info(cdir, fresh=False)

    def _running_leaf(self, cdir: Path, name: str) -> cgroups.Leaf:
        leaf = leaf_of(read_json(cdir / "run.json"))
        if self._info(cdir, fresh=False).state is not ContainerState.RUNNING:
            raise ContainerNotRunning(name)
        if leaf is None:
            raise HostSetupError(
                f"container {name!r} has no cgroup of its own, so it cannot be paused: "
                f"{self.cgroups.problem or 'it was started without one'}"
            )
        return leaf

    def pause(self, name: str) -> ContainerInfo:
        with self._locked(name) as cdir:
            if not self._running_leaf(cdir, name).freeze(True):
                raise FreezeTimeout(name, freezing=True, seconds=10)
            return self._info(cdir, fresh=False)

    def resume(self, name: str) -> ContainerInfo:
        with self._locked(name) as cdir:
            if not self._running_leaf(cdir, name).freeze(False):
                raise FreezeTimeout(name, freezing=False, seconds=10)
            return self._info(cdir, fresh=False)


def _move_by_hand(source: Forwards, target: Forwards, forward: Forward) -> int:
    """Remove ``forward`` from ``source``, add it to ``target``; put it back on failure."""
    live = source.find(forward)
    if live is not None:
        source.remove(live.id)
    try:
        return target.add(forward)  # the port was just freed
    except BaseException:
        if live is not None:  # put it back where it was
            with suppress(PortInUse, PortPrivileged, SlirpError):
                source.add(forward)
        raise
