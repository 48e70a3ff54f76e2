"""Root filesystems: the builtin busybox one and Alpine's minirootfs releases.

Both are built once into ``<cache>/rootfs/<name>`` (in a temporary directory renamed
into place when complete) and reused afterwards. The directory name carries a hash of
its source (the busybox binary, the tarball's sha256), so a new busybox or a new Alpine
point release gets a new directory and never mixes with an old one.

Each rootfs provides what the runtime mounts over: the directories ``/proc``, ``/sys``,
``/dev``, ``/tmp`` and the regular files ``/etc/resolv.conf``, ``/etc/hostname`` and
``/etc/hosts``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.api.spec import RootfsRef
from runtime.errors import ArchiveError, FetchError, HostSetupError, LayerNotFound
from runtime.images.extract import publish_tree, remove_tree, unpack_download
from runtime.images.fetch import download, fetch_bytes
from runtime.settings import DEFAULT_ALPINE_MIRROR

__all__ = (
    "ALPINE_MIRROR_ENV",
    "DEFAULT_ALPINE_MIRROR",
    "alpine_rootfs",
    "busybox_rootfs",
    "elf_is_static",
    "find_host_busybox",
    "resolve_rootfs",
)

log = logging.getLogger(__name__)

ALPINE_MIRROR_ENV = "SQUISH_ALPINE_MIRROR"
"""The variable that names the mirror (read by ``RuntimeSettings``), for messages."""
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))

_INSTALL_BUSYBOX = "install a statically linked busybox (Debian/Ubuntu: apt install busybox-static)"
_MOUNT_POINT_DIRS = ("proc", "sys", "dev", "tmp")
_MOUNT_POINT_FILES = ("etc/resolv.conf", "etc/hostname", "etc/hosts")
_APPLET_PATTERN = re.compile(r"[A-Za-z0-9_.\[\]-]+")
_ALPINE_VERSION_PATTERN = re.compile(r"(?P<branch>\d+\.\d+)(?:\.\d+)?|edge")
_FILE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_PT_INTERP = 3
_MAX_INDEX_BYTES = 1024 * 1024

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def resolve_rootfs(ref: RootfsRef, cache: Path, *, mirror: str = DEFAULT_ALPINE_MIRROR) -> Path:
    """The directory of the root filesystem ``ref`` names, building it if needed (an
    Alpine one from ``mirror``, ``RuntimeSettings.alpine_mirror``)."""
    if ref.kind == "busybox":
        if ref.version != "builtin":
            raise LayerNotFound("busybox", ref.version, "the builtin rootfs (only 'builtin')")
        return busybox_rootfs(cache)
    return alpine_rootfs(ref.version, cache, mirror=mirror)


# --- busybox -------------------------------------------------------------------------


def find_host_busybox() -> Path:
    """The host's busybox binary, or :class:`HostSetupError` if there is none."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("busybox")
    if found:
        return Path(found)
    raise HostSetupError("no busybox binary found on this host", fix=_INSTALL_BUSYBOX)


def elf_is_static(path: Path) -> bool:
    """Whether the ELF executable at ``path`` has no program interpreter (``PT_INTERP``)."""
    with path.open("rb") as binary:
        ident = binary.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
            raise HostSetupError(f"{path} is not an ELF executable", fix=_INSTALL_BUSYBOX)
        order = "<" if ident[5] == 1 else ">"
        is_64bit = ident[4] == 2
        header_format = f"{order}HHIQQQIHHH" if is_64bit else f"{order}HHIIIIIHHH"
        header = binary.read(struct.calcsize(header_format))
        try:
            fields = struct.unpack(header_format, header)
        except struct.error:
            raise HostSetupError(f"{path}: truncated ELF header", fix=_INSTALL_BUSYBOX) from None
        program_offset, entry_size, entry_count = fields[4], fields[8], fields[9]
        for index in range(entry_count):
            binary.seek(program_offset + index * entry_size)
            raw_type = binary.read(4)
            if len(raw_type) < 4:
                break
            if struct.unpack(f"{order}I", raw_type)[0] == _PT_INTERP:
                return False
    return True


def busybox_rootfs(cache: Path, *, busybox: Path | None = None) -> Path:
    """A minimal rootfs made of the host's static busybox; built once per busybox binary."""
    binary = busybox if busybox is not None else find_host_busybox()
    if not elf_is_static(binary):
        raise HostSetupError(
            f"{binary} is dynamically linked and cannot run inside a container rootfs",
            fix=_INSTALL_BUSYBOX,
        )
    binary_hash = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
    final = cache / "rootfs" / f"busybox-builtin-{binary_hash}"
    if final.is_dir():
        return final
    applets = _busybox_applets(binary)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".building", dir=final.parent))
    try:
        _populate_busybox_tree(staging, binary, applets, _busybox_banner(binary))
        staging.chmod(0o755)
        publish_tree(staging, final)
    except FileExistsError:
        remove_tree(staging)
        if not final.is_dir():
            raise
    except BaseException:
        remove_tree(staging)
        raise
    return final


def _busybox_applets(binary: Path) -> list[str]:
    try:
        listing = subprocess.run(
            [str(binary), "--list"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise HostSetupError(
            f"cannot list the applets of {binary}: {exc}", fix=_INSTALL_BUSYBOX
        ) from exc
    applets = sorted(
        {
            name
            for name in listing.split()
            if _APPLET_PATTERN.fullmatch(name) and name not in ("busybox", ".", "..")
        }
    )
    if "sh" not in applets:
        raise HostSetupError(f"{binary} has no 'sh' applet", fix=_INSTALL_BUSYBOX)
    return applets


def _busybox_banner(binary: Path) -> str:
    """``BusyBox v1.36.1 (...)``: the first line of ``busybox --help``, if any."""
    try:
        result = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "BusyBox"
    first_line = (result.stdout or result.stderr).strip().splitlines()[:1]
    return first_line[0].removesuffix(" multi-call binary.") if first_line else "BusyBox"


def _populate_busybox_tree(root: Path, binary: Path, applets: Sequence[str], banner: str) -> None:
    bin_dir = root / "bin"
    bin_dir.mkdir(mode=0o755)
    shutil.copyfile(binary, bin_dir / "busybox")
    (bin_dir / "busybox").chmod(0o755)
    for applet in applets:
        (bin_dir / applet).symlink_to("busybox")
    (root / "sbin").symlink_to("bin")
    (root / "usr").mkdir(mode=0o755)
    (root / "usr" / "bin").symlink_to("../bin")
    (root / "usr" / "sbin").symlink_to("../bin")
    for directory in ("proc", "sys", "dev", "root", "var/www", "run", "etc"):
        (root / directory).mkdir(mode=0o755, parents=True)
    (root / "root").chmod(0o700)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    os_release = (
        'NAME="squish busybox"\n'
        "ID=squish-busybox\n"
        "VERSION_ID=builtin\n"
        f'PRETTY_NAME="squish busybox builtin ({banner})"\n'
    )
    files = {
        "etc/passwd": _PASSWD,
        "etc/group": _GROUP,
        "etc/hosts": _HOSTS,
        "etc/os-release": os_release,
        "etc/resolv.conf": "",
        "etc/hostname": "",
    }
    for relative, content in files.items():
        target = root / relative
        target.write_text(content, encoding="utf-8")
        target.chmod(0o644)


# --- alpine --------------------------------------------------------------------------


def alpine_rootfs(
    version: str,
    cache: Path,
    *,
    mirror: str | None = None,
    arch: str = "x86_64",
    progress: bool | None = None,
) -> Path:
    """Alpine's minirootfs of ``version`` ("3.20", "3.20.3" or "edge"), downloaded once.

    ``mirror`` defaults to the official CDN (the runtime passes
    ``RuntimeSettings.alpine_mirror``, ``$SQUISH_ALPINE_MIRROR``). If the mirror
    cannot be reached but a rootfs of that version is cached, that one is used.
    """
    match = _ALPINE_VERSION_PATTERN.fullmatch(version)
    if match is None:
        raise LayerNotFound("alpine", version, "Alpine releases (expected like 3.20 or edge)")
    base_mirror = mirror or DEFAULT_ALPINE_MIRROR
    base_mirror = base_mirror.rstrip("/")
    branch = "edge" if version == "edge" else f"v{match['branch']}"
    release_dir = f"{base_mirror}/{branch}/releases/{arch}"
    index_url = f"{release_dir}/latest-releases.yaml"
    try:
        index = fetch_bytes(index_url, max_bytes=_MAX_INDEX_BYTES)
    except FetchError as exc:
        cached = _cached_alpine(cache, version)
        if cached is not None:
            log.warning("%s; using the cached %s", exc, cached.name)
            return cached
        raise FetchError(
            exc.url,
            (
                f"{exc.reason}. The Alpine mirror {base_mirror} is unreachable or has no "
                f"{branch}/{arch} release: set {ALPINE_MIRROR_ENV} to a reachable mirror, "
                'or use busybox = "builtin"'
            ),
        ) from exc
    file_name, sha256 = _pick_minirootfs(index, index_url, version, arch)
    final = cache / "rootfs" / f"alpine-{version}-{sha256[:12]}"
    if final.is_dir():
        return final
    archive = download(
        f"{release_dir}/{file_name}",
        cache / "downloads" / file_name,
        sha256=sha256,
        progress=progress,
    )
    unpack_download(archive, final, before_publish=_add_mount_points)
    return final


def _cached_alpine(cache: Path, version: str) -> Path | None:
    rootfs_dir = cache / "rootfs"
    if not rootfs_dir.is_dir():
        return None
    candidates = [
        entry
        for entry in rootfs_dir.glob(f"alpine-{version}-*")
        if entry.is_dir() and re.fullmatch(r"[0-9a-f]{12}", entry.name.rsplit("-", 1)[-1])
    ]
    return max(candidates, key=lambda entry: entry.stat().st_mtime, default=None)


def _pick_minirootfs(index: bytes, index_url: str, version: str, arch: str) -> tuple[str, str]:
    """The ``(file, sha256)`` of the minirootfs entry of a ``latest-releases.yaml``."""
    import yaml  # only an Alpine release's index is YAML: not at every command's start

    try:
        releases: Any = yaml.safe_load(index)
    except yaml.YAMLError as exc:
        raise FetchError(index_url, f"not a valid latest-releases.yaml: {exc}") from exc
    if not isinstance(releases, list):
        raise FetchError(index_url, "not a valid latest-releases.yaml: expected a list")
    for release in releases:
        if not isinstance(release, dict) or release.get("flavor") != "alpine-minirootfs":
            continue
        if release.get("arch", arch) != arch:
            continue
        if version.count(".") == 2 and str(release.get("version")) != version:
            continue
        file_name, sha256 = str(release.get("file", "")), str(release.get("sha256", ""))
        if not _FILE_NAME_PATTERN.fullmatch(file_name) or not _SHA256_PATTERN.fullmatch(sha256):
            raise FetchError(
                index_url, f"bad minirootfs entry (file={file_name!r}, sha256={sha256!r})"
            )
        return file_name, sha256
    raise LayerNotFound("alpine-minirootfs", version, index_url)


def _add_mount_points(root: Path) -> None:
    """Create the directories and files the runtime mounts over, if the tree lacks them."""
    for directory in _MOUNT_POINT_DIRS:
        path = root / directory
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(mode=0o755, exist_ok=True)
    etc = root / "etc"
    if etc.is_symlink() or (etc.exists() and not etc.is_dir()):
        # Writing through a symlinked /etc would write on the host: refuse the tree.
        raise ArchiveError(str(root), "etc", "is a symlink or not a directory")
    etc.mkdir(mode=0o755, exist_ok=True)
    for relative in _MOUNT_POINT_FILES:
        path = root / relative
        if path.is_symlink():
            path.unlink()  # a bind mount onto a symlink would follow it: use a real file
        if not path.exists():
            path.write_text(_HOSTS if relative == "etc/hosts" else "", encoding="utf-8")
            path.chmod(0o644)
