"""What the client mounts into a container, and the checks a start makes of it.

Bind sources are recorded in ``launch.json`` as the spec names them; the runtime's own
sources (SDK layers, the generated /etc files) as their real paths. None of them may
contain a symlink: :func:`runtime.sandbox.mounts.open_source` refuses one at create, at
every start here in the client (for a clear error), and again in the container's init,
which mounts what it opened (nothing can be swapped in between the look and the mount).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from runtime.api.spec import BindMount, ContainerSpec
from runtime.errors import ContainerStartError
from runtime.network import bridge
from runtime.network.driver import driver_for
from runtime.sandbox.mounts import open_source
from runtime.util.files import write_atomic
from runtime.wire import LaunchRequest, MountPoint

__all__ = ("check_sources", "etc_contents", "etc_mounts", "own_sources_resolved", "user_bind")


def etc_contents(spec: ContainerSpec, state: Path | None = None) -> dict[str, str]:
    """What the container's /etc/{resolv.conf,hosts,hostname} say (``state``: the state
    folder, where a bridge container's addresses are)."""
    hostname = spec.hostname or spec.name
    network = driver_for(spec)
    own_addr, dns = network.container_addr(spec.name), network.dns_server
    if spec.network == "bridge" and state is not None:
        joins = [attachment.network for attachment in spec.networks]
        own_addr, dns = bridge.etc_facts(state, spec.name, joins)
    return {
        "resolv.conf": f"nameserver {dns}\n" if dns is not None else "",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{own_addr}\t{hostname}\n",
        "hostname": f"{hostname}\n",
    }


def etc_mounts(spec: ContainerSpec, cdir: Path) -> list[MountPoint]:
    """Write the container's /etc/{resolv.conf,hosts,hostname} into ``cdir``/etc and
    return their mounts. Each file is replaced, never rewritten in place: a running
    container keeps what it was started with until its next start (but see
    :func:`etc_rewrite`)."""
    etc = cdir / "etc"
    etc.mkdir(mode=0o700, exist_ok=True)
    real = os.path.realpath(etc)
    mounts = []
    for name, content in etc_contents(spec, cdir.parent.parent).items():
        write_atomic(etc / name, content.encode(), mode=0o644, sync=False)
        mounts.append(MountPoint(source=f"{real}/{name}", target=f"/etc/{name}", is_dir=False))
    return mounts


def etc_rewrite(spec: ContainerSpec, cdir: Path) -> None:
    """For a running container whose networks changed: its /etc files rewritten in the
    very files its mounts show (the inodes; a replaced file would go unseen), as Docker
    rewrites /etc/hosts on a network connect. Its resolv.conf then names the gateway of
    the network it is on now."""
    for name, content in etc_contents(spec, cdir.parent.parent).items():
        data = content.encode()
        fd = os.open(cdir / "etc" / name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, 0)  # the new bytes first, then the old tail cut
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def _opened_kind(name: str, mount_point: MountPoint) -> bool:
    """Whether the source is a folder, opened as the init will open it."""
    try:
        fd = open_source(mount_point)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ContainerStartError(
                name, f"bind source {mount_point.source} does not exist"
            ) from None
        raise ContainerStartError(name, exc.strerror or str(exc)) from None
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def user_bind(name: str, bind: BindMount) -> MountPoint:
    """The mount of one of the spec's binds; ContainerStartError if its source is
    missing or its path goes through a symlink."""
    mount_point = MountPoint(source=bind.source, target=bind.target, rw=bind.rw)
    return dataclasses.replace(mount_point, is_dir=_opened_kind(name, mount_point))


def check_sources(name: str, mounts: Iterable[MountPoint]) -> None:
    """Refuse a start whose bind sources went missing or through a symlink since the
    container was made (a container can plant one in a folder it may write)."""
    for mount_point in mounts:
        if _opened_kind(name, mount_point) != mount_point.is_dir:
            kind = "a folder" if mount_point.is_dir else "a file"
            raise ContainerStartError(name, f"bind source {mount_point.source} is no longer {kind}")


def own_sources_resolved(request: LaunchRequest, own: Iterable[Path]) -> LaunchRequest:
    """``request`` with the sources below the runtime's own folders ``own`` (the cache,
    the container's folder) taken by their real path, as a create records them now; a
    record made before kept them as the folders were named, through a symlinked home,
    say. The user's sources are never resolved."""
    prefixes = tuple(f"{folder}/" for folder in own)
    mounts = tuple(
        dataclasses.replace(m, source=os.path.realpath(m.source))
        if m.source.startswith(prefixes)
        else m
        for m in request.mounts
    )
    return dataclasses.replace(request, mounts=mounts)
