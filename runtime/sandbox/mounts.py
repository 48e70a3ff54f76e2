"""The container's filesystem: an overlay root, bind mounts, /proc, /sys, /dev, /tmp.

The root is an overlay of two read-only lower layers and no upper layer, so it cannot be
written at all: a per-container *skeleton* (empty mount points for every bind target, for
/proc, /sys, /dev, /tmp and the generated /etc files) on top of the shared rootfs. The
skeleton also hides any symlink of the rootfs on the path of a mount point; targets are
opened with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`` all the same, so no target
can escape the root, nor be redirected (onto /proc, say) by a symlink a container planted
in a read-write bind that holds a nested target.

Bind sources are opened with ``openat2(RESOLVE_NO_SYMLINKS)`` at every start and mounted
by fd (a detached copy, made read-only before it is attached to the target's fd): a
container that replaced a folder of a read-write bind with a symlink (the source of
another bind below it) gets a refused start, never the host's file at the link's end.

``prepare_skeleton`` runs in the client; ``assemble`` and ``enter_root`` run in the
container's init, inside its new mount namespace, before the command starts.

A warm init mounts ahead what depends only on the root's *shape* (``RootShape``: the
rootfs and the skeleton's mount points), the shape of the last launch: the overlay on a
skeleton of its own, /proc, /sys, the masked paths, /dev and /tmp (``premount_root``),
then binds the view's files into it (``Premade.bind_view``). A launch of that shape then
mounts only what is its own (the binds); any other launch throws the premade root away
and mounts as above.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.sandbox import syscalls as sc
from runtime.wire import VIEW_FILES, MountPoint

__all__ = (
    "DEVICES",
    "MASKED",
    "READ_ONLY",
    "Premade",
    "RootShape",
    "assemble",
    "enter_root",
    "mount_view",
    "open_source",
    "premount_root",
    "premount_view",
    "prepare_skeleton",
)

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
"""Host device nodes bind-mounted into the container's /dev."""

_HIDDEN = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
_FIXED_DIRS = ("proc", "sys", "dev", "tmp", "etc")


def prepare_skeleton(skel: Path, mounts: Sequence[MountPoint]) -> None:
    """Create the empty mount points every mount of the container needs."""
    _make_skeleton(skel, ((m.target, m.is_dir) for m in mounts))


def _make_skeleton(skel: Path, points: Iterable[tuple[str, bool]]) -> None:
    """The skeleton of the mount points ``points`` (target, is a folder) at ``skel``."""
    skel.mkdir(mode=0o755, exist_ok=True)
    for name in _FIXED_DIRS:
        (skel / name).mkdir(mode=0o755, exist_ok=True)
    for target, is_dir in points:
        path = skel / target.lstrip("/")
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if is_dir:
            path.mkdir(mode=0o755, exist_ok=True)
        else:
            path.touch(mode=0o644, exist_ok=True)


@dataclass(frozen=True)
class RootShape:
    """What a container's root up to its own mounts depends on: the rootfs and the
    skeleton's mount points (target, is a folder; sorted), which make the skeleton."""

    rootfs: str
    points: tuple[tuple[str, bool], ...]

    @classmethod
    def of(cls, rootfs: str, mounts: Iterable[MountPoint]) -> RootShape:
        return cls(rootfs, tuple(sorted((m.target, m.is_dir) for m in mounts)))

    @classmethod
    def of_json(cls, request: dict[str, Any]) -> RootShape | None:
        """The shape of a launch request as JSON (``LaunchRequest.to_json``), or None
        when it is malformed (the spare that takes it refuses it)."""
        try:
            mounts = request.get("mounts", ())
            points = [(str(m["target"]), bool(m.get("is_dir", True))) for m in mounts]
            return cls(str(request["rootfs"]), tuple(sorted(points)))
        except (KeyError, TypeError, AttributeError):
            return None


def _first_symlink(path: str) -> str | None:
    """The first component of the absolute ``path`` that is a symlink, if any (for the
    message only: whether a source is followed is decided by :func:`open_source`)."""
    current = "/"
    for part in path.split("/"):
        if not part:
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            return current
    return None


def open_source(mount_point: MountPoint) -> int:
    """An ``O_PATH`` fd of the bind source, resolved without following any symlink;
    OSError naming the bind (and the component that is a symlink) otherwise."""
    try:
        return sc.openat2(
            sc.AT_FDCWD,
            mount_point.source,
            os.O_PATH | os.O_CLOEXEC,
            sc.RESOLVE_NO_SYMLINKS,
        )
    except OSError as exc:
        where = f"bind source {mount_point.source} (mounted at {mount_point.target})"
        if exc.errno != errno.ELOOP:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(exc.errno, f"{where}: {reason}") from None
        link = _first_symlink(mount_point.source) or "a component of its path"
        raise OSError(
            exc.errno,
            f"{where}: {link} is a symlink, and a bind source is never followed through "
            "one (a container writing to a folder above it could have planted it); "
            "remove the link, or name the real path",
        ) from None


def _open_in_root(root_fd: int, target: str) -> int:
    """The mount point ``target``, resolved inside the root and through no symlink: the
    skeleton makes every component of a target a real folder, so a symlink on the way is
    one planted in a read-write bind above a nested target (it could lead to /proc)."""
    try:
        return sc.openat2(
            root_fd,
            target.lstrip("/"),
            os.O_PATH | os.O_CLOEXEC,
            sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_SYMLINKS,
        )
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OSError(
            exc.errno,
            f"bind target {target} goes through a symlink inside the container (a "
            "container writing to the bind above it could have planted it); nothing is "
            "mounted there",
        ) from None


def _bind(root_fd: int, source_fd: int, target: str, rw: bool) -> None:
    """Bind the source at ``target``: a detached copy of its mount tree, made read-only
    (submounts included) before it is attached to the mount point opened once. Nothing
    is looked up again by path, so a mount point renamed meanwhile (by a container
    writing the folder of a read-write bind above it) cannot leave this bind writable."""
    target_fd = _open_in_root(root_fd, target)
    try:
        tree_fd = sc.open_tree_clone(source_fd)
        try:
            if not rw:
                sc.mount_setattr_rdonly(tree_fd)
            sc.move_mount(tree_fd, target_fd)
        finally:
            os.close(tree_fd)
    finally:
        os.close(target_fd)


def _make_mount_point(root: str, mount_point: MountPoint) -> None:
    """Create a mount point inside the fresh /tmp tmpfs, which hides the skeleton's."""
    path = os.path.join(root, mount_point.target.lstrip("/"))
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if mount_point.is_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))


def _populate_dev(dev: str) -> None:
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        node = f"{dev}/{name}"
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        sc.mount(f"/dev/{name}", node, None, sc.MS_BIND)
    os.mkdir(f"{dev}/pts", 0o755)
    sc.mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        sc.MS_NOSUID | sc.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    sc.mount(
        "shm",
        f"{dev}/shm",
        "tmpfs",
        sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
        "mode=1777,size=65536k",
    )
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")


MASKED = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
"""Hidden as the OCI runtimes' defaults hide them: a file under /dev/null, a folder under
an empty read-only tmpfs."""
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
"""Made read-only (recursively), as the OCI runtimes' defaults make them."""


def _mask_kernel_files(root: str) -> None:
    for path in MASKED:
        target = f"{root}{path}"
        if os.path.isdir(target):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY | _HIDDEN, "size=0,mode=0555")
        elif os.path.lexists(target):
            sc.mount("/dev/null", target, None, sc.MS_BIND)
    for path in READ_ONLY:
        target = f"{root}{path}"
        if not os.path.lexists(target):
            continue
        sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
        try:
            sc.mount_setattr_rdonly(fd)
        finally:
            os.close(fd)


_VIEW_OPTIONS: dict[str, str | None] = {
    "rootmode": "40000",
    "user_id": "0",
    "group_id": "0",
    "allow_other": None,
}
"""A FUSE mount of the view's connection (its ``fd`` too), its root a folder, owned by
the container's root; ``allow_other``: the container's other users read it too."""


def premount_view(fuse_fd: int) -> int:
    """The FUSE connection ``fuse_fd`` mounted but attached nowhere (an fd, for
    :func:`mount_view`). A warm init makes it before it says it is warm: the holder
    then hands the connection to the view's server, and a connection the server finds
    mounted is answered at once, where one not mounted yet waits for the server's next
    try (milliseconds). ``ro``: the file system read-only
    too, as mount(2)'s ``MS_RDONLY`` makes it."""
    options = {"source": "squish-procview", "subtype": "squish", "fd": str(fuse_fd), "ro": None}
    return sc.fs_mount("fuse", {**options, **_VIEW_OPTIONS}, _HIDDEN | sc.MS_RDONLY)


def _attach_view(staging: str, fuse_fd: int, premounted: int | None) -> None:
    """Mount the view's connection on ``staging``: the mount made ahead
    (:func:`premount_view`) if there is one, else a new one."""
    if premounted is None:
        pairs = {"fd": str(fuse_fd), **_VIEW_OPTIONS}.items()
        options = ",".join(key if value is None else f"{key}={value}" for key, value in pairs)
        sc.mount("squish-procview", staging, "fuse.squish", _HIDDEN | sc.MS_RDONLY, options)
        return
    target = os.open(staging, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.move_mount(premounted, target)
    finally:
        os.close(target)


def mount_view(root: str, fuse_fd: int, premounted: int | None = None) -> None:
    """Mount the FUSE connection ``fuse_fd`` (or its mount made ahead, ``premounted``)
    on the skeleton's /tmp (before the tmpfs covers it) and bind its files over the
    kernel's (``VIEW_FILES``); the staging mount goes again, the binds keep the
    connection mounted. Each bind asks the view's server to look its file up: the
    server must be serving the connection."""
    staging = f"{root}/tmp"
    _attach_view(staging, fuse_fd, premounted)
    try:
        _bind_view_files(root, staging)
    finally:
        sc.umount2(staging, sc.MNT_DETACH)


def _bind_view_files(root: str, view: str) -> list[str]:
    """Bind the files of the view mounted at ``view`` over the kernel's in ``root``:
    all of them or, when one fails, none. Returns what they cover."""
    made: list[str] = []
    try:
        for name, path in VIEW_FILES.items():
            target = f"{root}{path}"
            if os.path.exists(target):
                sc.mount(f"{view}/{name}", target, None, sc.MS_BIND)
                made.append(target)
    except OSError:
        _unbind(made)
        raise
    return made


def _unbind(targets: list[str]) -> None:
    for target in reversed(targets):  # the kernel's files again
        sc.umount2(target, sc.MNT_DETACH)


def _try_view(root: str, fuse_fd: int | str | None, premounted: int | None) -> str:
    """Mount the view if there is a connection for it; why there is none, else ("")."""
    if not isinstance(fuse_fd, int):
        return fuse_fd or ""
    try:
        mount_view(root, fuse_fd, premounted)
    except OSError as exc:
        return f"mounting the FUSE view failed: {exc}"
    return ""


def _check_layers(*paths: str) -> None:
    for path in paths:
        if "," in path or ":" in path:
            raise ValueError(f"overlay layer path may not contain ',' or ':': {path}")


def _mount_fixed(root: str, skel: str, rootfs: str) -> None:
    """The mounts of every container of a shape: the overlay root, /proc, /sys, the
    masked paths, /dev and /tmp (which comes before the binds, so that a bind below /tmp
    lands on the tmpfs instead of being hidden by it)."""
    _check_layers(skel, rootfs)
    sc.mount("overlay", root, "overlay", sc.MS_NODEV, f"lowerdir={skel}:{rootfs}")
    sc.mount("proc", f"{root}/proc", "proc", _HIDDEN)
    sc.mount("sysfs", f"{root}/sys", "sysfs", _HIDDEN | sc.MS_RDONLY)
    _mask_kernel_files(root)
    _populate_dev(f"{root}/dev")
    sc.mount("tmpfs", f"{root}/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")


def _mount_own(
    root: str,
    mounts: Sequence[MountPoint],
    sources: Sequence[int],
    view: int | str | None,
    premounted: int | None,
) -> str:
    """The container's own mounts on its root: the view (staged on /tmp, above its
    tmpfs), then the binds; returns why the view is missing ("" if it is not)."""
    missing_view = _try_view(root, view, premounted)
    for mount_point in mounts:
        if mount_point.target.startswith("/tmp/"):
            _make_mount_point(root, mount_point)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for mount_point, source_fd in zip(mounts, sources, strict=True):
            _bind(root_fd, source_fd, mount_point.target, mount_point.rw)
    finally:
        os.close(root_fd)
    return missing_view


def assemble(
    root: str,
    skel: str,
    rootfs: str,
    mounts: Sequence[MountPoint],
    view: int | str | None = None,
    premounted: int | None = None,
    premade: Premade | None = None,
) -> str:
    """Mount the container's filesystem at ``root`` (in a fresh mount namespace), or
    only its own mounts on the root ``premade`` ahead when it has the shape asked for.

    ``view`` is the /dev/fuse descriptor of the /proc and /sys view
    (:func:`mount_view`; ``premounted``: its mount made ahead, :func:`premount_view`),
    why there is none, or None (not asked for). Returns "" or why
    the view is not there: the container runs with the kernel's files then.
    """
    copy = None
    if premade is not None:
        if premade.view is not None and isinstance(view, int):
            view, copy = premade.take_view()
            premounted = copy  # attached by the start below
        premade.discard()  # a root of another shape, or no longer needed
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sources: list[int] = []
    try:
        # One by one: what was opened before a refusal is still closed below.
        sources.extend(open_source(mount_point) for mount_point in mounts)
        _mount_fixed(root, skel, rootfs)
        return _mount_own(root, mounts, sources, view, premounted)
    finally:
        for fd in sources if copy is None else (*sources, copy):
            os.close(fd)


@dataclass
class Premade:
    """A container root of ``shape`` mounted ahead (:func:`premount_root`) at
    ``staging``/root, on a skeleton of its own in a tmpfs at ``staging``; ``rootfs_fd``
    is the rootfs folder as it was found before its overlay was mounted (``O_PATH``)."""

    staging: str
    shape: RootShape
    rootfs_fd: int
    view: int | None = None
    """The view's mount made ahead once attached at ``staging``/view (:meth:`bind_view`)."""
    view_files: tuple[str, ...] = ()
    """What the view's files bound ahead cover in the root."""
    view_failure: str = ""
    """Why they could not be bound ahead, if they could not."""

    @property
    def root(self) -> str:
        return f"{self.staging}/root"

    def bind_view(self, premounted: int) -> None:
        """Attach the view's mount made ahead (:func:`premount_view`) at
        ``staging``/view, outside the root, and bind its files into the root, as
        :func:`mount_view` does at a start: each bind waits for the view's server to
        look its file up (the holder hands it the connection while this init is warm).
        ``premounted`` refers to the attached mount then (:meth:`take_view`)."""
        folder = f"{self.staging}/view"
        os.mkdir(folder, 0o755)
        _attach_view(folder, -1, premounted)
        self.view = premounted
        try:
            self.view_files = tuple(_bind_view_files(self.root, folder))
        except OSError as exc:
            self.view_failure = f"mounting the FUSE view failed: {exc}"

    def take_view(self) -> tuple[int | str, int | None]:
        """For a start that does not use this root (the view's mount goes with it): a
        copy of the view's mount attached nowhere, twice (as the connection and as its
        mount made ahead, :func:`mount_view`), or why there is none, and None."""
        assert self.view is not None
        try:
            copy = sc.open_tree_clone(self.view)
        except OSError as exc:
            return f"mounting the FUSE view failed: {exc}", None
        return copy, copy

    def fits(self, rootfs: str, mounts: Sequence[MountPoint]) -> bool:
        """Whether a container of ``rootfs`` and ``mounts`` can have this root: the
        same shape, the same rootfs folder still at its path (not one made again in its
        place since, even with the inode number of the old one, deleted), and no bind
        source at, above or below the staging folder (a copy of one above would carry
        the premade mounts into the container, and one below is hidden by them)."""
        if RootShape.of(rootfs, mounts) != self.shape:
            return False
        try:
            held, found = os.fstat(self.rootfs_fd), os.stat(rootfs)
        except OSError:
            return False
        if held.st_nlink == 0 or (held.st_dev, held.st_ino) != (found.st_dev, found.st_ino):
            return False
        staging = f"{self.staging}/"
        for mount_point in mounts:
            source = os.path.normpath(mount_point.source).rstrip("/") + "/"
            if staging.startswith(source) or source.startswith(staging):
                return False
        return True

    def discard(self) -> None:
        """Unmount the root and its tmpfs (lazily: a detach)."""
        os.close(self.rootfs_fd)
        sc.umount2(self.staging, sc.MNT_DETACH)

    def assemble(
        self,
        mounts: Sequence[MountPoint],
        view: int | str | None = None,
        premounted: int | None = None,
    ) -> str:
        """The container's own mounts on this root (:func:`assemble` else); returns
        why the view is missing ("" if it is not)."""
        os.close(self.rootfs_fd)  # checked by fits(): a host folder, no longer needed
        sources: list[int] = []
        try:
            sources.extend(open_source(mount_point) for mount_point in mounts)
            if self.view is not None:
                view = self._keep_view(isinstance(view, int))
            return _mount_own(self.root, mounts, sources, view, premounted)
        finally:
            for fd in sources:
                os.close(fd)

    def _keep_view(self, wanted: bool) -> str | None:
        """The view's files bound ahead stay if ``wanted`` (else they go); None (nothing
        left for the start to mount) or why the view is missing."""
        if not wanted:
            _unbind(list(self.view_files))
            return None
        return self.view_failure or None


def premount_root(staging: str, shape: RootShape) -> Premade:
    """Mount a root of ``shape`` ahead at ``staging``/root (in this process's own mount
    namespace, made private here): a tmpfs on ``staging`` (an empty folder) holds its
    skeleton, made as :func:`prepare_skeleton` makes a container's; then what
    :func:`assemble` mounts before a container's own mounts. Nothing stays mounted
    when it fails."""
    # Opened before its overlay is mounted: a swap after it is seen.
    rootfs_fd = os.open(shape.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("tmpfs", staging, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=755,size=1m")
    except BaseException:
        os.close(rootfs_fd)
        raise
    premade = Premade(staging, shape, rootfs_fd)
    try:
        _make_skeleton(Path(staging, "skel"), shape.points)
        os.mkdir(premade.root, 0o755)
        _mount_fixed(premade.root, f"{staging}/skel", shape.rootfs)
    except BaseException:
        premade.discard()
        raise
    return premade


def enter_root(root: str) -> None:
    """Make ``root`` the root of this mount namespace and drop every host mount."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
