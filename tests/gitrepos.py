"""Real git repositories for the git source's tests: made with ``git init``, committed to,
signed with keys ``ssh-keygen`` makes, and served over ``git daemon`` on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support import free_port
from tests.test_reconciler_e2e import greeting_toml

__all__ = ("Origin", "SigningKey", "git", "git_daemon", "web_toml")

_IDENTITY = ("-c", "user.name=Tester", "-c", "user.email=tester@example.com")


def web_toml(greeting: str, port: int | None = None) -> str:
    """A squishfile whose spec changes with ``greeting`` (its environment)."""
    return greeting_toml(port, greeting)


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


class SigningKey:
    """An ssh key made for the test, and the allowed-signers line naming it."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.path)],
            check=True,
            timeout=30,
        )
        public = self.path.with_suffix(".pub").read_text().split()
        self.allowed = f'tester@example.com namespaces="git" {public[0]} {public[1]}\n'


class Origin:
    """A repository commits are made in; ``url`` serves it over file://."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--initial-branch=main")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit(
        self, files: Mapping[str, str | None], message: str, *, key: SigningKey | None = None
    ) -> str:
        """Write (None: delete) ``files``, commit them (signed with ``key``); the sha."""
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git(self.path, "add", "--all")
        sign = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key.path}") if key else ()
        git(
            self.path,
            *sign,
            "commit",
            "--quiet",
            "--allow-empty",
            *(["-S"] if key else []),
            "-m",
            message,
        )
        return git(self.path, "rev-parse", "HEAD")


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """``git daemon`` serving the repositories under ``base`` on 127.0.0.1; the URL
    prefix (``git://127.0.0.1:PORT``). Stopped on leaving, with the ``git-daemon`` that
    ``git`` runs as its child (killing ``git`` alone left that one serving)."""
    port = free_port()
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # git runs git-daemon as its child: both end together
    )
    try:
        while True:  # the test's own timeout bounds this
            assert process.poll() is None, "git daemon exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        yield f"git://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the group this function started
        process.wait(timeout=30)
