"""Fixtures for tests that run real rootless containers.

Those tests need an unprivileged account (the runtime refuses uid 0): ``make test`` run
as root creates one and drops to it. Run directly as root, they are skipped with that
reason rather than failing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from runtime.client.linux import LinuxRuntime
from tests.support import processes_mentioning, remove_everything

# Property tests: the same examples every run (CI must not flake), none stored on disk.
settings.register_profile("squish", database=None, derandomize=True)
settings.load_profile("squish")

ROOTLESS_REASON = (
    "needs an unprivileged account: the runtime refuses uid 0 (run `make test`, which drops to one)"
)
rootless = pytest.mark.skipif(os.geteuid() == 0, reason=ROOTLESS_REASON)


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio only (the project's own event loop)."""
    return "asyncio"


@pytest.fixture(scope="session")
def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One download and rootfs cache for the whole run (the busybox rootfs is built once)."""
    return tmp_path_factory.mktemp("cache")


@contextlib.contextmanager
def short_folder(prefix: str) -> Iterator[Path]:
    """A new folder with a short path (unix socket paths are limited to 107 bytes),
    removed afterwards."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/tmp")
    path = base / f"{prefix}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def state_path() -> Iterator[Path]:
    """A short state folder."""
    with short_folder("sqt") as path:
        yield path


@pytest.fixture(scope="session")
def session_runtime(state_path: Path, cache_path: Path) -> Iterator[LinuxRuntime]:
    if os.geteuid() == 0:
        pytest.skip(ROOTLESS_REASON)
    runtime = LinuxRuntime(state=state_path, cache=cache_path)
    yield runtime
    runtime.shutdown()
    leaked = processes_mentioning(str(state_path))
    assert not leaked, f"processes outlived the test run: {leaked}"


@pytest.fixture
def rt(session_runtime: LinuxRuntime) -> Iterator[LinuxRuntime]:
    """The shared runtime; containers a test leaves behind are removed after it."""
    yield session_runtime
    for info in session_runtime.list():
        session_runtime.remove(info.name, force=True)


@pytest.fixture
def nets(rt: LinuxRuntime) -> Iterator[LinuxRuntime]:
    """The runtime; every container and network removed after the test."""
    yield rt
    remove_everything(rt)


@pytest.fixture
def started_here() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts itself; each is killed (by its pid) after the test."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()
