"""The git command-line client, one small function per command, each bounded in time.

git itself does the work (``subprocess``, ``GIT_TERMINAL_PROMPT=0``): every transport
it knows (``file://``, ``https://``, ``ssh://``, ``git://``), the user's own config,
credential helpers and ssh keys, and signature checks come with it. A command that
runs longer than the timeout is killed with every process it started (ssh, a remote
helper): its own process group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ("TARGET", "Commit", "GitError", "Mirror", "public_url", "without_secret")

TARGET = "refs/squish/target"
"""Where a fetch puts the ref followed (a branch, a tag or the remote's HEAD)."""


class GitError(Exception):
    """A git command failed or took too long; the message says which and why."""


@dataclass(frozen=True)
class Commit:
    """A commit as status shows it."""

    sha: str
    subject: str
    time: int
    """The committer's time, seconds since the epoch."""

    def as_json(self) -> dict[str, object]:
        return {"commit": self.sha, "subject": self.subject, "time": self.time}


@dataclass(frozen=True)
class _Done:
    code: int
    out: bytes
    err: str


def public_url(url: str) -> str:
    """``url`` without its user and password, as status and metrics show it (they may
    be read by other local accounts); one with no ``//host`` part (``git@host:path``)
    carries no password and is shown as it is."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def without_secret(text: str, url: str) -> str:
    """``text`` (git's message about ``url``) with ``url``'s password left out."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


_ABBREVIATED = re.compile(r"[0-9a-f]{4,39}")
"""A rev that can be an abbreviated sha (a full one is always the object itself)."""


@dataclass(frozen=True)
class Mirror:
    """A bare repository that fetches hold; revisions are checked out of it."""

    path: Path
    timeout: float

    def ensure(self) -> None:
        """Create the bare repository if it is not there yet."""
        if not (self.path / "HEAD").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._git(("init", "--quiet", "--bare", str(self.path)), git_dir=False)

    def fetch(self, url: str, refspecs: Sequence[str], *, prune: bool = False) -> None:
        """Fetch ``refspecs`` from ``url``; with ``prune``, the refs they cover that the
        origin no longer has are deleted here too."""
        # after "--", a URL or ref that starts with "-" is never taken for an option
        options = ("--quiet", "--no-tags", "--no-write-fetch-head", *(("--prune",) * prune))
        self._git(("fetch", *options, "--", url, *refspecs))

    def resolve(self, name: str) -> str:
        """The commit ``name`` (a ref, a tag, a full or abbreviated sha) stands for. A hex
        name that both starts a fetched commit's sha and names a branch or tag is
        refused: either could be pushed to move the other (git would take the ref).
        One that starts a commit's sha and names no ref is that commit; one no commit
        starts with is a ref (a tag ``2024``)."""
        if _ABBREVIATED.fullmatch(name) and (commit := self._commit_by_prefix(name)):
            if self._names_a_ref(name):
                raise GitError(
                    f"{name} is both a branch or tag and the start of commit {commit[:12]}: "
                    "give the full sha, or refs/tags/NAME or refs/heads/NAME"
                )
            return commit
        done = self._run(
            ("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
        )
        if done.code != 0:
            raise GitError(f"{name}: no such commit in what was fetched")
        return done.out.decode().strip()

    def _commit_by_prefix(self, prefix: str) -> str | None:
        """The one commit whose sha starts with ``prefix``; None if none does."""
        done = self._run(("rev-parse", f"--disambiguate={prefix}"))
        objects = done.out.decode().split() if done.code == 0 else []
        commits = {sha for sha in objects if self._is_commit(sha)}
        if len(commits) > 1:
            raise GitError(f"{prefix}: {len(commits)} commits start with it; give more of it")
        return commits.pop() if commits else None

    def _names_a_ref(self, name: str) -> bool:
        refs = (f"refs/heads/{name}", f"refs/tags/{name}")
        return any(self._run(("show-ref", "--verify", "--quiet", ref)).code == 0 for ref in refs)

    def _is_commit(self, sha: str) -> bool:
        done = self._run(("cat-file", "-t", sha))
        return done.code == 0 and done.out.strip() == b"commit"

    def commit(self, sha: str) -> Commit:
        out = self._git(("log", "-1", "--format=%H%x00%ct%x00%s", sha)).decode(errors="replace")
        full, when, subject = out.rstrip("\n").split("\0", 2)
        return Commit(full, subject, int(when))

    def refusal(self, sha: str, allowed_signers: str) -> str | None:
        """None when ``sha`` carries an ssh signature of a key in ``allowed_signers``;
        else why it does not."""
        config = (
            *("-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}"),
            # verify-commit follows the signature's own format: an OpenPGP or X.509 one
            # would be checked against the account's keyrings, so those checks must fail
            *("-c", "gpg.program=false", "-c", "gpg.openpgp.program=false"),
            *("-c", "gpg.x509.program=false"),
        )
        done = self._run(("verify-commit", sha), config=config)
        if done.code == 0:
            return None
        return done.err or f"git verify-commit exited with {done.code}"

    def check_out(self, sha: str, into: Path) -> None:
        """Write the files of ``sha`` into the empty folder ``into`` (with a throwaway
        index, so checkouts never share state)."""
        env = {
            "GIT_INDEX_FILE": str(into.parent / f"{into.name}.index"),
            "GIT_WORK_TREE": str(into),
        }
        try:
            self._git(("read-tree", sha), env=env)
            self._git(("checkout-index", "--all", "--force"), env=env)
        finally:
            Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)

    def _git(
        self, args: Sequence[str], *, git_dir: bool = True, env: Mapping[str, str] | None = None
    ) -> bytes:
        done = self._run(args, git_dir=git_dir, env=env)
        if done.code != 0:
            raise GitError(f"git {args[0]} failed (exit code {done.code}): {done.err}")
        return done.out

    def _run(
        self,
        args: Sequence[str],
        *,
        config: Sequence[str] = (),
        git_dir: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> _Done:
        where = ("--git-dir", str(self.path)) if git_dir else ()
        argv = ["git", *config, *where, *args]
        environ = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environ,
                start_new_session=True,  # its own group: a timeout kills ssh and helpers too
            )
        except OSError as exc:
            raise GitError(f"cannot run git: {exc}") from exc
        with process:
            try:
                out, err = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise GitError(f"git {args[0]} took more than {self.timeout:g} s") from None
        return _Done(process.returncode, out, _last_lines(err))


def _last_lines(err: bytes, most: int = 600) -> str:
    """What git said on stderr, on one line, at most ``most`` characters of its end."""
    lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
    said = " / ".join(lines)
    return said if len(said) <= most else "..." + said[-most:]
