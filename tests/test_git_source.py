"""The git source with real git (no mock of git): repositories made in the test, fetched
over file://, over ``git daemon`` and over https (``git http-backend`` with a certificate
made in the test) on 127.0.0.1; the converge part with a fake runtime."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from reconciler.cli import main
from reconciler.control.converge import Converger
from reconciler.control.loop import Reconciler
from reconciler.control.status import status_document
from reconciler.desired import git as git_module
from reconciler.desired.git import GitSource, resume, suspend
from reconciler.desired.gitrepo import TARGET, GitError, public_url
from reconciler.desired.source import FolderSource
from reconciler.desired.types import LABEL_FOLDER, DesiredState
from reconciler.gitops import source_line
from reconciler.planning.plan import plan
from reconciler.settings import BadSetting, GitSettings, Settings, parse_interval
from tests.fakes import FakeRuntime
from tests.gitrepos import (
    Certificate,
    Origin,
    SigningKey,
    basic_auth_config,
    git,
    git_daemon,
    git_https,
    web_toml,
)
from tests.support import children_of, free_port


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path / "origin")


def source_of(tmp_path: Path, url: str, **options: object) -> GitSource:
    git = GitSettings(url=url, **options)  # type: ignore[arg-type]
    return GitSource(Settings(git=git), tmp_path / "state")


def greetings(desired: DesiredState) -> dict[str, str]:
    return {name: c.spec.env["GREETING"] for name, c in desired.containers.items()}


# -- following the origin -------------------------------------------------------------------


def test_a_new_commit_is_loaded_in_the_same_folder(tmp_path: Path, origin: Origin) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    source = source_of(tmp_path, origin.url)
    assert source.sync()
    before = source.load()
    assert (before.revision, greetings(before.desired)) == (first, {"web": "one"})

    second = origin.commit({"web.toml": web_toml("two")}, "two")
    assert source.sync()
    after = source.load()
    assert (after.revision, greetings(after.desired)) == (second, {"web": "two"})
    assert before.desired.folder == after.desired.folder == source.folder
    label = after.desired.containers["web"].spec.labels[LABEL_FOLDER]
    assert label == str(source.folder)  # not the revision's own folder: nothing is relabelled
    assert not source.sync()  # nothing new
    when = int(git(origin.path, "log", "-1", "--format=%ct", second))
    assert source.describe()["applied"] == {"commit": second, "subject": "two", "time": when}


SITE = '[layers]\nbusybox = "builtin"\nsite = "./site"\n[run]\ncommand = "httpd"\n'


def test_a_file_using_the_checkout_is_read_from_each_new_revision(
    tmp_path: Path, origin: Origin
) -> None:
    """Found probing the git source: an unchanged squishfile kept what it loaded from
    the revision it was first read in (its ``./site`` there), so a change of the site
    alone was never applied, and once that revision was removed (two are kept) the
    container's bind source was gone."""
    first = origin.commit({"web.toml": SITE, "site/index.html": "one"}, "one")
    source = source_of(tmp_path, origin.url)
    source.sync()
    [bind] = source.load().desired.containers["web"].spec.binds
    assert Path(bind.source) == source.home / "revs" / first / "site"
    origin.commit({"README": "x"}, "readme")
    third = origin.commit({"site/index.html": "three"}, "three")
    for _ in range(2):
        source.sync()
        source.load()
    [bind] = source.load().desired.containers["web"].spec.binds
    assert Path(bind.source) == source.home / "revs" / third / "site"
    assert (Path(bind.source) / "index.html").read_text() == "three"


@pytest.mark.parametrize("state", ["state", "link/state"])
def test_a_revision_a_running_container_binds_stays_on_disk(
    tmp_path: Path, origin: Origin, state: str
) -> None:
    """Found probing the git source: two revisions were kept, whatever ran from older
    ones. A container whose file broke keeps its last good spec, which binds the
    checkout that spec was read from: removing it emptied the container's /app/site."""
    first = origin.commit({"web.toml": SITE, "site/index.html": "one"}, "one")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")  # a state folder reached through one
    source = GitSource(Settings(git=GitSettings(url=origin.url)), tmp_path / state)
    source.sync()
    [bind] = source.load().desired.containers["web"].spec.binds
    running = [bind.source]  # what the folder's running container binds (a real path)
    source.in_use = lambda: running
    for files in ({"web.toml": SITE + "typo = 1\n"}, {"README": "x"}, {"README": "y"}):
        origin.commit(files, "broken, then others")  # each applied: three revisions on
        assert source.sync()
    assert (Path(bind.source) / "index.html").read_text() == "one"
    running.clear()  # it runs from a newer revision now (or is gone)
    origin.commit({"README": "z"}, "last")
    source.sync()
    assert not (source.home / "revs" / first).exists()


def test_a_branch_a_tag_and_a_subfolder_are_followed(tmp_path: Path, origin: Origin) -> None:
    origin.commit({"apps/web.toml": web_toml("main"), "web.toml": web_toml("top")}, "main")
    tagged = origin.commit({"apps/web.toml": web_toml("tagged")}, "tagged")
    git(origin.path, "tag", "v1")
    git(origin.path, "checkout", "--quiet", "-b", "next")
    origin.commit({"apps/web.toml": web_toml("next")}, "next")
    git(origin.path, "checkout", "--quiet", "main")
    cases = {"branch": ("next", "next"), "tag": ("v1", "tagged"), "rev": (tagged[:10], "tagged")}
    for option, (value, greeting) in cases.items():
        source = source_of(tmp_path / option, origin.url, path="apps/", **{option: value})
        assert source.sync(), source.describe()
        assert greetings(source.load().desired) == {"web": greeting}
        assert source.folder.name == "apps"


def test_a_pinned_sha_is_never_a_branch_named_like_it(tmp_path: Path, origin: Origin) -> None:
    """Found probing the git source: ``--rev`` fetches every branch and tag, and git
    takes a ref over an abbreviated sha of the same name. A branch pushed under the
    pinned sha's name moved the pin, and stayed after it was deleted (nothing pruned)."""
    pinned = origin.commit({"web.toml": web_toml("pinned")}, "pinned")
    source = source_of(tmp_path, origin.url, rev=pinned[:10])
    assert source.sync()
    git(origin.path, "checkout", "--quiet", "-b", pinned[:10])  # a branch named like it
    origin.commit({"web.toml": web_toml("hijacked")}, "hijack")
    git(origin.path, "checkout", "--quiet", "main")
    assert not source.sync()  # refused: the name is a branch's and the pinned sha's
    assert "is both a branch or tag" in str(source.describe()["fetch_error"])
    assert greetings(source.load().desired) == {"web": "pinned"}
    git(origin.path, "branch", "--quiet", "--delete", "--force", pinned[:10])
    grind = origin.commit({"web.toml": web_toml("ground")}, "a sha ground to a tag's name")
    git(origin.path, "tag", grind[:6], pinned)  # a tag named like the start of another sha
    with pytest.raises(GitError, match="is both a branch or tag"):
        source._fetch(grind[:6], TARGET)
    git(origin.path, "tag", "--delete", grind[:6])

    git(origin.path, "tag", "2024", pinned)  # hex, and no commit starts with it: a tag
    assert source._fetch("2024", TARGET) == pinned
    git(origin.path, "tag", "gone", pinned)
    assert source._fetch("gone", TARGET) == pinned  # every tag is fetched for a rev
    git(origin.path, "tag", "--delete", "gone")
    with pytest.raises(GitError, match="no such commit"):  # and pruned with the origin's
        source._fetch("gone", TARGET)


@pytest.mark.parametrize("link", ["web.toml", "apps"])
def test_a_commit_with_a_link_out_of_the_repository_is_refused(
    tmp_path: Path, origin: Origin, link: str
) -> None:
    """Found probing the git source: a squishfile committed as a symbolic link to a file
    elsewhere on the host (another folder's, with its secrets), or the followed folder
    as a link to a host folder, was read as the repository's own."""
    applied = origin.commit({"apps/web.toml": web_toml("mine")}, "mine")
    source = source_of(tmp_path, origin.url, path="apps")
    assert source.sync()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "web.toml").write_text(web_toml("not the repository's"))
    if link == "apps":
        shutil.rmtree(origin.path / "apps")
        (origin.path / "apps").symlink_to(elsewhere)
    else:
        (origin.path / "apps" / "web.toml").unlink()
        (origin.path / "apps" / "web.toml").symlink_to(elsewhere / "web.toml")
    refused = origin.commit({}, "a link out")
    assert not source.sync()
    attempted = source.describe()["attempted"]
    assert isinstance(attempted, dict) and attempted["commit"] == refused
    assert "a symbolic link out of the repository" in str(attempted["error"])
    assert source.load().revision == applied
    assert greetings(source.load().desired) == {"web": "mine"}


HOST_PATHS = {
    "home": ('home = { path = "~", target = "/h", rw = true }', "layers.home"),
    "root": ('root = { path = "/", target = "/r", rw = true }', "layers.root"),
    "up": ('up = { path = "../../../..", target = "/s", rw = true }', "layers.up"),
    "dotted": ('"my.home" = { path = "~", target = "/h" }', "layers.my.home"),
    "profile": ("", "security.seccomp"),
}


@pytest.mark.parametrize("case", HOST_PATHS, ids=HOST_PATHS)
def test_a_repository_s_file_reaches_only_the_repository(
    tmp_path: Path, origin: Origin, case: str
) -> None:
    """Found probing the git source: whoever could push to the repository could bind
    the account's home, / or the state folder read-write (``../../../..`` from a
    checkout is the state folder), and take the account. A git source's local layers
    and profiles stay inside its repository unless the host allows more."""
    layer, field = HOST_PATHS[case]
    text = web_toml("x").replace("[run]", f"{layer}\n[run]")
    if case == "profile":
        profile = tmp_path / "profile.json"  # on the host, outside the repository
        profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
        text += f'[security]\nseccomp = "{profile}"\n'
    origin.commit({"web.toml": text}, "reach out")
    source = source_of(tmp_path, origin.url)
    assert source.sync()
    [error] = source.load().desired.errors
    [problem] = error.problems
    assert problem.field == field
    assert "inside the repository" in problem.message
    written = layer or "seccomp ="
    assert problem.line == next(n for n, t in enumerate(text.splitlines(), 1) if written in t)
    allowed = source_of(tmp_path / "allowed", origin.url, host_paths=True)
    assert allowed.sync()
    desired = allowed.load().desired
    assert desired.errors == () and "web" in desired.containers


def test_a_path_outside_the_repository_is_refused(tmp_path: Path, origin: Origin) -> None:
    with pytest.raises(BadSetting, match="inside the repository"):
        source_of(tmp_path, origin.url, path="../elsewhere")


@pytest.mark.anyio
async def test_a_poke_fetches_at_once_over_git_daemon(tmp_path: Path, origin: Origin) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    (origin.path / ".git" / "git-daemon-export-ok").touch()
    with git_daemon(tmp_path) as prefix:
        source = source_of(tmp_path, f"{prefix}/origin", interval=3600.0)
        changes: list[str] = []
        seen = anyio.Event()

        def changed(reason: str) -> None:
            changes.append(reason)
            seen.set()

        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(source.watch, changed, stop)
            await seen.wait()
            assert greetings(source.load().desired) == {"web": "one"}
            second = origin.commit({"web.toml": web_toml("two")}, "two")
            seen = anyio.Event()
            threading.Thread(target=source.poke, args=("webhook",)).start()  # any thread
            await seen.wait()
            stop.set()
    assert changes == [f"revision {first[:12]} (start)", f"revision {second[:12]} (webhook)"]
    assert greetings(source.load().desired) == {"web": "two"}


# -- over https --------------------------------------------------------------------------


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Certificate:
    """The server's certificate, trusted the way a git user would: ``GIT_SSL_CAINFO``."""
    certificate = Certificate(tmp_path, "server")
    monkeypatch.setenv("GIT_SSL_CAINFO", str(certificate.path))
    return certificate


@contextmanager
def served_over_https(tmp_path: Path, certificate: Certificate, **login: str) -> Iterator[str]:
    """``git_https`` over ``tmp_path``; on leaving, no thread and no child it started remain."""
    threads, children = set(threading.enumerate()), set(children_of(os.getpid()))
    with git_https(tmp_path, certificate, **login) as prefix:
        yield prefix
    assert set(threading.enumerate()) <= threads
    assert set(children_of(os.getpid())) <= children


def test_a_commit_is_loaded_and_a_new_one_followed_over_https(
    tmp_path: Path, origin: Origin, trusted: Certificate
) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    with served_over_https(tmp_path, trusted) as prefix:
        source = source_of(tmp_path, f"{prefix}/origin")
        assert source.sync(), source.describe()
        assert (source.load().revision, greetings(source.load().desired)) == (first, {"web": "one"})
        second = origin.commit({"web.toml": web_toml("two")}, "two")
        assert source.sync(), source.describe()
        assert not source.sync()
    assert (source.load().revision, greetings(source.load().desired)) == (second, {"web": "two"})


def test_a_certificate_not_trusted_is_a_fetch_error_and_the_last_good_revision_stays(
    tmp_path: Path, origin: Origin, trusted: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    other = Certificate(tmp_path, "other")
    with served_over_https(tmp_path, trusted) as prefix:
        source = source_of(tmp_path, f"{prefix}/origin")
        assert source.sync(), source.describe()
        second = origin.commit({"web.toml": web_toml("two")}, "two")
        for cainfo in (None, other.path):  # the system's CAs; another self-signed one
            if cainfo is None:
                monkeypatch.delenv("GIT_SSL_CAINFO")
            else:
                monkeypatch.setenv("GIT_SSL_CAINFO", str(cainfo))
            assert not source.sync()
            error = source.describe()["fetch_error"]
            assert isinstance(error, str) and "git fetch failed" in error and prefix in error
            assert "certificate" in error.lower(), error
            assert source.load().revision == first
        monkeypatch.setenv("GIT_SSL_CAINFO", str(trusted.path))
        assert source.sync()
    assert (source.describe()["fetch_error"], source.load().revision) == (None, second)


def test_basic_auth_over_https_takes_the_credentials_git_is_given(
    tmp_path: Path, origin: Origin, trusted: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    with served_over_https(tmp_path, trusted, login="ops:s3cret") as prefix:
        source = source_of(tmp_path, f"{prefix}/origin")
        for given in ({}, basic_auth_config("ops", "wrong")):
            with monkeypatch.context() as env:
                for name, value in given.items():
                    env.setenv(name, value)
                assert not source.sync()  # git asks no one (GIT_TERMINAL_PROMPT=0): it fails
            assert "git fetch failed" in str(source.describe()["fetch_error"])
        for name, value in basic_auth_config("ops", "s3cret").items():
            monkeypatch.setenv(name, value)
        assert source.sync(), source.describe()
    assert source.load().revision == first


def test_a_checkout_is_never_half_seen(tmp_path: Path, origin: Origin) -> None:
    """One thread swaps between two revisions (each many files) as fast as it can while
    another source of the same repository loads: every load is wholly one revision."""
    first = origin.commit({f"a{i}.toml": web_toml("a") for i in range(12)}, "a")
    second = origin.commit(
        {
            **{f"a{i}.toml": None for i in range(12)},
            **{f"b{i}.toml": web_toml("b") for i in range(5)},
        },
        "b",
    )
    expected = {
        first: ({f"a{i}" for i in range(12)}, {"a"}),
        second: ({f"b{i}" for i in range(5)}, {"b"}),
    }
    writers = [source_of(tmp_path, origin.url, rev=sha) for sha in (first, second)]
    reader = source_of(tmp_path, origin.url)
    writers[0].sync()
    done = threading.Event()
    swaps = 0
    failures: list[BaseException] = []

    def swap() -> None:
        nonlocal swaps
        try:
            while not done.is_set():
                assert writers[(swaps + 1) % 2].sync()
                swaps += 1
        except BaseException as exc:
            failures.append(exc)

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen: set[str] = set()
    try:
        while (len(seen) < 2 or swaps < 20) and swapper.is_alive():
            snapshot = reader.load()
            names, values = expected[snapshot.revision]
            assert set(snapshot.desired.containers) == names
            assert set(greetings(snapshot.desired).values()) == values
            assert snapshot.desired.errors == ()
            seen.add(snapshot.revision)
    finally:
        done.set()
        swapper.join()
    assert failures == []
    revs = {p.name for p in (reader.home / "revs").iterdir()}
    assert revs == {first, second}  # no partial checkout left, nothing older kept


# -- keeping the last good revision -------------------------------------------------------


def test_a_failed_fetch_keeps_the_last_good_revision_and_says_why(
    tmp_path: Path, origin: Origin
) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    source = source_of(tmp_path, origin.url)
    assert source.sync()
    moved = origin.path.rename(tmp_path / "moved")
    assert not source.sync()
    error = source.describe()["fetch_error"]
    assert isinstance(error, str) and "git fetch failed" in error and str(origin.path) in error
    assert source.load().revision == first
    moved.rename(origin.path)
    second = origin.commit({"web.toml": web_toml("two")}, "two")
    assert source.sync()
    assert (source.describe()["fetch_error"], source.load().revision) == (None, second)


def test_a_git_command_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        source = source_of(tmp_path, f"git://127.0.0.1:{port}/repo", timeout=0.5)
        assert not source.sync()
    assert "git fetch took more than 0.5 s" in str(source.describe()["fetch_error"])


def test_an_invalid_file_keeps_the_previous_spec_and_status_names_commit_and_line(
    tmp_path: Path, origin: Origin
) -> None:
    origin.commit({"web.toml": web_toml("one"), "api.toml": web_toml("api")}, "one")
    source = source_of(tmp_path, origin.url)
    runtime = FakeRuntime()
    reconciler = Reconciler(source=source, runtime=runtime, converger=Converger(runtime))
    source.sync()
    anyio.run(reconciler.reconcile)
    assert runtime.inspect("web").spec.env["GREETING"] == "one"

    broken = web_toml("two").replace('GREETING = "two"', "GREETING = [")
    bad = origin.commit({"web.toml": broken, "api.toml": web_toml("api2")}, "break web")
    assert source.sync()
    result = anyio.run(reconciler.reconcile)
    assert [a.name for a in result.plan.actions] == ["api"]  # web is left as it runs
    assert runtime.inspect("web").spec.env["GREETING"] == "one"
    assert runtime.inspect("api").spec.env["GREETING"] == "api2"
    problems = source.describe()["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    assert re.search(f"revs/{bad}/web.toml:[0-9]+: <syntax>", problems[0]), problems


# -- signatures -----------------------------------------------------------------------------


def test_only_commits_signed_by_an_allowed_key_are_applied(tmp_path: Path, origin: Origin) -> None:
    allowed, stranger = SigningKey(tmp_path, "allowed"), SigningKey(tmp_path, "stranger")
    signers = tmp_path / "allowed_signers"
    signers.write_text(allowed.allowed)
    source = source_of(tmp_path, origin.url, verify_signatures=True, allowed_signers=str(signers))
    good = origin.commit({"web.toml": web_toml("good")}, "signed", key=allowed)
    assert source.sync()
    for key, subject in ((None, "unsigned"), (stranger, "signed by a stranger")):
        refused = origin.commit({"web.toml": web_toml(subject)}, subject, key=key)
        assert not source.sync()
        facts = source.describe()
        attempted = facts["attempted"]
        assert isinstance(attempted, dict)
        assert attempted["commit"] == refused and attempted["subject"] == subject
        assert attempted["refused"]
        assert isinstance(facts["applied"], dict) and facts["applied"]["commit"] == good
        assert greetings(source.load().desired) == {"web": "good"}
    signed = origin.commit({"web.toml": web_toml("good again")}, "signed again", key=allowed)
    assert source.sync()
    assert source.load().revision == signed


@pytest.fixture
def gpg_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A GnuPG home of the test's own (short: its agent's socket path is bounded), made
    the process's; its agent is stopped after."""
    if shutil.which("gpg") is None or shutil.which("gpgconf") is None:
        pytest.skip("no GnuPG here")
    home = Path(tempfile.mkdtemp(prefix="sqg", dir="/tmp"))
    home.chmod(0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], check=False, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def test_an_openpgp_signature_is_no_ssh_signature(
    tmp_path: Path, origin: Origin, gpg_home: Path
) -> None:
    """Found probing the git source: verify-commit takes the signature's own format, so a
    commit signed with any OpenPGP key in the service account's keyring passed the
    check meant for the ssh keys of allowed_signers."""
    signers = tmp_path / "allowed_signers"
    signers.write_text(SigningKey(tmp_path, "allowed").allowed)
    source = source_of(tmp_path, origin.url, verify_signatures=True, allowed_signers=str(signers))
    batch = ("gpg", "--batch", "--passphrase", "", "--quick-generate-key")
    subprocess.run([*batch, "Nobody <nobody@example.com>", "ed25519", "sign", "never"], check=True)
    git(origin.path, "add", "--all")
    sign = ("-c", "gpg.format=openpgp", "-c", "user.signingkey=nobody@example.com")
    git(origin.path, *sign, "commit", "--quiet", "--allow-empty", "-S", "-m", "openpgp")
    git(origin.path, "verify-commit", "HEAD")  # a good signature, as GnuPG sees it
    assert not source.sync()
    attempted = source.describe()["attempted"]
    assert isinstance(attempted, dict) and attempted["refused"]


def test_verifying_signatures_needs_an_allowed_signers_file() -> None:
    with pytest.raises(BadSetting, match="allowed-signers"):
        GitSettings(url="file:///x", verify_signatures=True)


# -- suspend, resume, plan ------------------------------------------------------------------


def test_a_suspended_source_fetches_nothing_until_resumed(tmp_path: Path, origin: Origin) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    source = source_of(tmp_path, origin.url)
    assert source.sync()
    assert suspend(source.home)
    assert not suspend(source.home)  # already
    second = origin.commit({"web.toml": web_toml("two")}, "two")
    assert not source.sync()
    assert source.describe()["suspended"] is True
    assert source.load().revision == first
    assert resume(source.home)
    assert not resume(source.home)
    assert source.sync()
    assert (source.load().revision, source.describe()["suspended"]) == (second, False)


@pytest.mark.anyio
async def test_resuming_wakes_a_waiting_watch(tmp_path: Path, origin: Origin) -> None:
    origin.commit({"web.toml": web_toml("one")}, "one")
    source = source_of(tmp_path, origin.url, interval=3600.0)
    suspend(source.home)
    told = anyio.Event()
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(source.watch, lambda reason: told.set(), stop)
        await anyio.to_thread.run_sync(source.sync)  # what the watch did: nothing
        assert source.load().revision == "git:none"
        resume(source.home)
        await told.wait()  # without waiting out the hour
        stop.set()
    assert greetings(source.load().desired) == {"web": "one"}


def test_a_preview_loads_another_revision_without_moving_current(
    tmp_path: Path, origin: Origin
) -> None:
    first = origin.commit({"web.toml": web_toml("one")}, "one")
    second = origin.commit({"web.toml": web_toml("two"), "api.toml": web_toml("api")}, "two")
    source = source_of(tmp_path, origin.url)
    assert source.sync()
    with source.previewing("main~1") as commit:
        snapshot = source.load()
        assert (commit.sha, commit.subject) == (first, "one")
        assert (snapshot.revision, greetings(snapshot.desired)) == (first, {"web": "one"})
        assert snapshot.desired.folder == source.folder
    assert source.load().revision == second
    assert os.listdir(source.home / "previews") == []
    with pytest.raises(GitError, match="no such commit"), source.previewing("0" * 40):
        pass


def test_intervals_are_read_with_their_unit() -> None:
    assert [parse_interval(t) for t in ("30s", "2m", "1h", "500ms", "7")] == [
        30.0,
        120.0,
        3600.0,
        0.5,
        7.0,
    ]
    for bad in ("soon", "0s", "-1m"):
        with pytest.raises(BadSetting):
            parse_interval(bad)


def test_a_folder_and_a_repository_together_are_refused(
    tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(tmp_path), "--git", origin.url]) == 1
    assert "give a folder or --git URL, not both" in capsys.readouterr().err
    assert main(["status", "--git", origin.url, "--verify-signatures"]) == 1
    assert "needs --allowed-signers FILE" in capsys.readouterr().err


def test_status_json_gains_the_source_key_only_for_a_source_that_describes_itself(
    tmp_path: Path, origin: Origin
) -> None:
    sha = origin.commit({"web.toml": web_toml("one")}, "one")
    source = source_of(tmp_path, origin.url)
    source.sync()
    desired = source.load().desired
    todo = plan(desired, [], now=0.0)
    document = status_document(desired, [], todo, {}, source=source)
    assert document["source"]["kind"] == "git"
    assert document["source"]["applied"]["commit"] == sha
    folder = status_document(desired, [], todo, {}, source=FolderSource(tmp_path))
    assert "source" not in folder
    assert set(document) - set(folder) == {"source"}


def test_the_source_line_shows_control_characters_and_does_not_obey_them() -> None:
    """Found probing the git source: a committed file named with an escape sequence
    reached the terminal raw through status's source line (a cleared screen, a
    forged line)."""
    forged = "x\x1b[2J\x1b[31mOWNED\x1b[0m\nfake line.toml:1: name: ok"
    line = source_line(
        {
            "url": "file:///r",
            "ref": "HEAD",
            "attempted": {"commit": "0" * 40, "error": f"{forged}: a symbolic link out"},
            "problems": [f"/s/revs/abc/{forged}"],
        }
    )
    assert "\x1b" not in line
    assert "\\x1b[2J" in line
    assert line.count("\n") == 1  # the one problem's line, no forged one


def test_status_shows_the_url_without_its_credentials(tmp_path: Path, origin: Origin) -> None:
    """Found probing the endpoint: /status (served to every local account on the
    loopback) showed a git URL's user and password; metrics already left them out."""
    port = free_port()  # nothing listens: the fetch fails, and git's message says why
    secret_url = f"https://bot:ghp_SECRET@127.0.0.1:{port}/ops.git"
    source = source_of(tmp_path, secret_url, timeout=5)
    source.sync()
    facts = source.describe()
    assert facts["fetch_error"]
    assert facts["url"] == f"https://127.0.0.1:{port}/ops.git"
    assert "ghp_SECRET" not in json.dumps(facts)
    assert public_url("https://u:p@[::1]:8443/a.git") == "https://[::1]:8443/a.git"
    assert public_url("git@github.com:org/ops.git") == "git@github.com:org/ops.git"


def test_a_flood_of_pokes_fetches_at_most_once_a_gap(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found probing the endpoint: one signed delivery replayed in a loop made the source
    fetch back to back (1,415 fetches in 11 s against the origin). Pokes that come
    within ``POKE_GAP`` of the last fetch wait for it, and are taken as one."""
    origin.commit({"web.toml": web_toml("one")}, "one")
    gap = 0.3  # shorter than the flood: several fetches, each a gap after the last
    monkeypatch.setattr(git_module, "POKE_GAP", gap)
    source = source_of(tmp_path, origin.url, interval=600)
    fetched: list[float] = []
    sync = source.sync

    def counted() -> bool:
        fetched.append(time.monotonic())
        return sync()

    source.sync = counted  # type: ignore[method-assign]

    async def flood() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(source.watch, lambda _why: None, stop)
            for _ in range(300):  # 1.5 s of pokes, one every 5 ms
                source.poke("replayed")
                await anyio.sleep(0.005)
            stop.set()
            source.poke("to end the wait")

    anyio.run(flood)
    gaps = [later - earlier for earlier, later in itertools.pairwise(fetched)]
    assert len(fetched) >= 3, fetched
    assert all(between >= gap for between in gaps), gaps
