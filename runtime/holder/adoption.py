"""Taking over running containers whose holder is gone.

A container's init is not dumpable and its memory belongs to the host's user namespace
(it is a fork of the holder), so nobody may open its ``/proc/PID/ns/*`` once its command
runs. Its command, though, was exec'd inside the container: it is dumpable, and its
namespaces are the init's. The launcher records the inode of each of the init's
namespaces in ``run.json`` (``namespaces``); a new holder finds a process of the
container whose namespaces all carry those inodes, joins the container's user namespace
when it starts (:func:`user_namespace_to_join`: a namespace cannot be joined from a
sibling user namespace, so every container stays in one) and opens the others
(:func:`adopt`), checking each descriptor's inode once opened, so a pid reused meanwhile
is never taken for the container. The init itself is checked against its recorded start
time first.

A container that cannot be taken over (a record made before namespaces were recorded,
a command that is not dumpable, another user namespace) gets the reason, which the
holder answers any request about it with.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.holder.exec_runner import NAMESPACES
from runtime.holder.protocol import CONTAINERS_DIR
from runtime.util.files import read_json
from runtime.util.processes import ProcessId, descendants, parent_pids

__all__ = (
    "NAMESPACE_KINDS",
    "Running",
    "Unreachable",
    "adopt",
    "namespace_ids",
    "run_records",
    "running",
    "user_namespace_to_join",
)

NAMESPACE_KINDS = ("user", *(kind for kind, _ in NAMESPACES))
"""Every namespace of a container's init that ``run.json`` records, the user one first."""


def namespace_ids(pid: int) -> dict[str, int]:
    """The inode of each namespace of process ``pid`` (it must be dumpable, or ours)."""
    return {kind: os.stat(f"/proc/{pid}/ns/{kind}").st_ino for kind in NAMESPACE_KINDS}


@dataclass(frozen=True)
class Running:
    """A container whose init is still the one its run record names."""

    name: str
    init: ProcessId
    namespaces: dict[str, int] | None
    """The inodes of its namespaces, if the launcher recorded them."""


def run_records(state: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each container of the state folder ``state`` that has a readable run record: its
    name and the record, by name."""
    with contextlib.suppress(OSError):
        for cdir in sorted(Path(state, CONTAINERS_DIR).iterdir()):
            run = read_json(cdir / "run.json")
            if isinstance(run, dict):
                yield cdir.name, run


def running(state: Path) -> Iterator[Running]:
    """The running containers of the state folder ``state``, by name."""
    for name, run in run_records(state):
        init = ProcessId.from_json(run.get("init"))
        if init is not None and init.alive():
            yield Running(name, init, _valid_ids(run.get("namespaces")))


def _valid_ids(recorded: object) -> dict[str, int] | None:
    if not isinstance(recorded, dict):
        return None
    ids = {kind: recorded.get(kind) for kind in NAMESPACE_KINDS}
    if not all(isinstance(ino, int) for ino in ids.values()):
        return None
    return {kind: int(ino) for kind, ino in ids.items() if isinstance(ino, int)}


class Unreachable(Exception):
    """Why a running container's namespaces cannot be opened."""


def _open_all(pid: int, wanted: dict[str, int]) -> dict[str, int] | None:
    """Descriptors of ``pid``'s namespaces, if each is the one ``wanted`` names."""
    fds: dict[str, int] = {}
    try:
        for kind, ino in wanted.items():
            fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            if os.fstat(fds[kind]).st_ino != ino:
                raise LookupError(kind)
    except (OSError, LookupError):
        for fd in fds.values():
            os.close(fd)
        return None
    return fds


def _open_namespaces(
    container: Running, kinds: tuple[str, ...], parent_of: dict[int, int]
) -> dict[str, int]:
    """Descriptors of the container's namespaces ``kinds``, from any process in them."""
    if container.namespaces is None:
        raise Unreachable("its run record names no namespaces (it was started by an older squish)")
    wanted = {kind: container.namespaces[kind] for kind in kinds}
    for pid in descendants(container.init.pid, parent_of):  # its children first
        fds = _open_all(pid, wanted)
        if fds is not None:
            if container.init.alive():
                return fds
            for fd in fds.values():
                os.close(fd)
            break
    raise Unreachable(
        "no process of it can be opened (its init never can be, and its command is gone "
        "or not dumpable) or it has exited"
    )


_NS_GET_PARENT = 0xB702
"""ioctl(2) on a namespace descriptor: a descriptor of its parent (``_IO(0xb7, 0x2)``)."""


def _is_child_of_own(user_ns: int) -> bool:
    """Whether the user namespace ``user_ns`` was created from this process's own, as a
    holder creates it (never one a container nested inside)."""
    try:
        parent = fcntl.ioctl(user_ns, _NS_GET_PARENT)
    except OSError:
        return False
    try:
        return os.fstat(parent).st_ino == os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(parent)


def user_namespace_to_join(state: Path) -> int | None:
    """A descriptor of the user namespace most running containers of ``state`` share,
    if any of them can be reached and it is a child of this process's own; None when
    no container runs."""
    by_user: dict[int, list[Running]] = collections.defaultdict(list)
    for container in running(state):
        if container.namespaces is not None:
            by_user[container.namespaces["user"]].append(container)
    parent_of = parent_pids()
    for containers in sorted(by_user.values(), key=len, reverse=True):
        for container in containers:
            with contextlib.suppress(Unreachable):
                user_ns = _open_namespaces(container, ("user",), parent_of)["user"]
                if _is_child_of_own(user_ns):
                    return user_ns
                os.close(user_ns)
                break  # the others of this namespace are no better
    return None


def adopt(container: Running, parent_of: dict[int, int]) -> dict[str, int]:
    """Descriptors of the namespaces (``NAMESPACES``) of a running container this holder
    did not start, given every process's parent; raises :class:`Unreachable` with the
    reason when it cannot."""
    own_user = os.stat("/proc/self/ns/user").st_ino
    if container.namespaces is not None and container.namespaces["user"] != own_user:
        raise Unreachable("it lives in another user namespace than this holder's")
    return _open_namespaces(container, tuple(kind for kind, _ in NAMESPACES), parent_of)
