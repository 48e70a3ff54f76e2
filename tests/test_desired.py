"""Loading a folder of squishfiles: which files count, errors, duplicates, labels, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from reconciler.desired.folder import FileCache, load_desired, settles_in
from reconciler.desired.types import (
    LABEL_FILE,
    LABEL_FOLDER,
    LABEL_HASH,
    LABEL_MANAGED,
    MANAGER,
    FileError,
    is_squishfile,
    spec_hash,
)
from reconciler.squishfile import read_squishfile
from runtime.api.spec import BindMount, ContainerSpec, PortMapping, RootfsRef, SdkLayer
from tests.support import write_anew

MINIMAL = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'


def squishfile(
    name: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    restart: str | None = None,
) -> str:
    text = (f'name = "{name}"\n' if name else "") + MINIMAL
    if env:
        text += "[env]\n" + "".join(f'{k} = "{v}"\n' for k, v in env.items())
    if restart:
        text += f'[restart]\npolicy = "{restart}"\n'
    if port:
        text += f"[[ports]]\ncontainer = 80\nhost = {port}\n"
    return text


def write(folder: Path, file: str, text: str) -> Path:
    path = folder / file
    path.write_text(text, encoding="utf-8")
    return path


# -- which files are squishfiles -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web.toml", True),
        ("my.web.toml", True),
        ("web-2_x.toml", True),
        ("4913.toml", True),
        ("web", False),
        ("web.yaml", False),
        ("web.TOML", False),
        ("web.toml~", False),
        ("web.toml.swp", False),
        ("web.toml.swo", False),
        ("web.toml.swx", False),
        ("web.toml.tmp", False),
        ("web.toml.bak", False),
        ("web.toml.orig", False),
        ("web.toml.rej", False),
        ("web.toml.part", False),
        (".web.toml", False),
        (".web.toml.swp", False),
        (".#web.toml", False),
        ("#web.toml#", False),
        ("4913", False),
        (".toml", False),
    ],
)
def test_is_squishfile(name: str, expected: bool) -> None:
    assert is_squishfile(Path("/srv/squish") / name) is expected


# The lexical rules alone: each of these is ignored whatever is in it.
IGNORED = [
    ".web.toml",
    ".web.toml.swp",
    ".#web.toml",
    "#web.toml#",
    "web.toml~",
    "web.toml.swp",
    "web.toml.tmp",
    "4913",
    "notes.txt",
]


def test_load_ignores_editor_files(tmp_path: Path) -> None:
    write(tmp_path, "web.toml", squishfile())
    for index, file in enumerate(IGNORED):
        # valid squishfiles with their own names: any that were read would show up
        write(tmp_path, file, squishfile(f"ghost{index}"))
    state = load_desired(tmp_path)
    assert state.readable
    assert list(state.containers) == ["web"]
    assert state.errors == ()


def test_an_entry_named_as_a_squishfile_that_is_no_file_is_its_error(tmp_path: Path) -> None:
    """Not skipped in silence: the container its file made stays (tests/test_plan.py),
    and it holds back no other removal, as it cannot name another container."""
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "gone.toml").symlink_to(tmp_path / "nowhere.toml")
    (tmp_path / "other.TOML").write_text(squishfile("other"))
    state = load_desired(tmp_path)
    by_file = {e.file.name: e for e in state.errors}
    assert set(by_file) == {"folder.toml", "gone.toml"}
    assert by_file["folder.toml"].message.endswith("cannot read: Is a directory")
    assert by_file["gone.toml"].message.endswith("cannot read: a symbolic link to nothing")
    assert all(e.name_known for e in state.errors)
    assert [s.file.name for s in state.skipped] == ["other.TOML"]  # said once, as an error


def test_load_ignores_broken_editor_files(tmp_path: Path) -> None:
    for file in IGNORED:
        write(tmp_path, file, "this is [not toml")
    state = load_desired(tmp_path)
    assert state.readable
    assert dict(state.containers) == {}
    assert state.errors == ()


# -- valid files ---------------------------------------------------------------------------


def test_empty_folder(tmp_path: Path) -> None:
    state = load_desired(tmp_path)
    assert state.readable
    assert dict(state.containers) == {}
    assert state.errors == ()
    assert state.folder == tmp_path


def test_load_valid_files(tmp_path: Path) -> None:
    web = write(tmp_path, "web.toml", squishfile(env={"GREETING": "hi"}, port=8080))
    job = write(tmp_path, "batch.toml", squishfile("job", restart="on-failure"))
    state = load_desired(tmp_path)
    assert sorted(state.containers) == ["job", "web"]
    assert state.errors == ()

    entry = state.containers["web"]
    assert entry.file == web
    assert entry.name == "web"
    assert entry.restart == "always"
    assert entry.spec.env == {"GREETING": "hi"}
    assert entry.spec.ports == (PortMapping(container=80, host=8080),)

    batch = state.containers["job"]
    assert batch.file == job
    assert batch.restart == "on-failure"


def test_labels_mark_the_spec_as_ours(tmp_path: Path) -> None:
    write(tmp_path, "batch.toml", squishfile("job", port=8080))
    spec = load_desired(tmp_path).containers["job"].spec
    assert spec.labels == {
        LABEL_MANAGED: MANAGER,
        LABEL_FOLDER: str(tmp_path),
        LABEL_FILE: "batch.toml",
        LABEL_HASH: spec_hash(spec),
    }
    # the hash is of the spec as written, labels left out
    assert spec.labels[LABEL_HASH] == spec_hash(spec.model_copy(update={"labels": {}}))


def test_relative_folder_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "here").mkdir()
    write(tmp_path / "here", "web.toml", squishfile())
    monkeypatch.chdir(tmp_path)
    state = load_desired(Path("here"))
    assert state.folder == tmp_path / "here"
    assert state.folder.is_absolute()
    assert state.containers["web"].spec.labels[LABEL_FOLDER] == str(tmp_path / "here")
    assert state.containers["web"].file == tmp_path / "here" / "web.toml"


@pytest.mark.parametrize("make", ["missing", "a-file"])
def test_missing_or_unusable_folder_is_unreadable(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "desired"
    if make == "a-file":
        folder.write_text(squishfile())
    state = load_desired(folder)
    assert state.readable is False
    assert dict(state.containers) == {}
    assert state.errors == ()


def test_same_content_in_two_folders_differs_only_in_labels(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write(tmp_path / "one", "web.toml", squishfile())
    write(tmp_path / "two", "web.toml", squishfile())
    one = load_desired(tmp_path / "one").containers["web"].spec
    two = load_desired(tmp_path / "two").containers["web"].spec
    assert one.labels[LABEL_FOLDER] != two.labels[LABEL_FOLDER]
    assert one.labels[LABEL_HASH] == two.labels[LABEL_HASH]


# -- invalid files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "claimed"),
    [
        pytest.param("this is [not toml", "web", id="syntax-error-stem"),
        pytest.param('name = "api"\nthis is [not toml', "web", id="syntax-error-ignores-name"),
        pytest.param('name = "api"\n[run]\ncommand = "httpd"\n', "api", id="schema-error-name"),
        pytest.param(MINIMAL.replace("httpd", ""), "web", id="schema-error-no-name-stem"),
        pytest.param("name = 5\n" + MINIMAL, "web", id="name-not-a-string-stem"),
        pytest.param('name = ""\n' + MINIMAL, "web", id="empty-name-stem"),
        pytest.param('name = "bad name!"\n' + MINIMAL, "bad name!", id="invalid-name-claimed"),
        pytest.param(MINIMAL + "[restart]\npolicy = 'sometimes'\n", "web", id="bad-restart"),
        pytest.param(MINIMAL + "[[ports]]\ncontainer = 80\nhost = 0\n", "web", id="bad-port"),
        pytest.param(b"\xff\xfe not utf-8", "web", id="not-utf-8"),
    ],
)
def test_invalid_file_is_a_file_error(tmp_path: Path, text: str | bytes, claimed: str) -> None:
    path = tmp_path / "web.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    write(tmp_path, "ok.toml", squishfile())
    state = load_desired(tmp_path)
    assert list(state.containers) == ["ok"]
    (error,) = state.errors
    assert isinstance(error, FileError)
    assert error.file == path
    assert error.name == claimed
    assert error.kind == "InvalidSpec"
    assert error.problems
    assert "web.toml" in error.message
    assert state.error_files == frozenset({"web.toml"})


def test_errors_come_in_file_order(tmp_path: Path) -> None:
    for stem in ("c", "a", "b"):
        write(tmp_path, f"{stem}.toml", "[broken")
    assert [e.name for e in load_desired(tmp_path).errors] == ["a", "b", "c"]


def test_of_two_files_with_one_name_the_first_keeps_it(tmp_path: Path) -> None:
    first = write(tmp_path, "web.toml", squishfile())
    second = write(tmp_path, "www.toml", squishfile("web", env={"X": "1"}))
    write(tmp_path, "api.toml", squishfile())
    state = load_desired(tmp_path)
    assert sorted(state.containers) == ["api", "web"]
    assert state.containers["web"].file == first
    (error,) = state.errors
    assert (error.file, error.name, error.kind) == (second, "web", "DuplicateName")
    assert error.message == (
        f'{second}:1: name: container name "web" is also declared by web.toml, which sorts first'
    )
    assert error.refused is not None and error.refused.spec.env == {"X": "1"}
    assert state.error_files == frozenset({"www.toml"})


def test_three_way_duplicate_and_an_invalid_claim(tmp_path: Path) -> None:
    for file in ("a.toml", "b.toml", "c.toml"):
        write(tmp_path, file, squishfile("web"))
    write(tmp_path, "d.toml", 'name = "web"\n')
    state = load_desired(tmp_path)
    assert state.containers["web"].file.name == "a.toml"
    kinds = sorted((e.file.name, e.kind) for e in state.errors)
    assert kinds == [
        ("b.toml", "DuplicateName"),
        ("c.toml", "DuplicateName"),
        ("d.toml", "InvalidSpec"),
    ]
    assert {e.name for e in state.errors} == {"web"}


# -- spec_hash -----------------------------------------------------------------------------

BASE = ContainerSpec(
    name="web",
    rootfs=RootfsRef(kind="busybox", version="builtin"),
    argv=("httpd", "-f"),
    env={"A": "1", "B": "2"},
    ports=(PortMapping(container=80, host=8080),),
    labels={"owner": "me"},
)


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"ports": ()}, id="ports-removed"),
        pytest.param(
            {"ports": (PortMapping(container=81, host=9090, protocol="udp"),)}, id="ports"
        ),
        pytest.param({"labels": {}}, id="labels-removed"),
        pytest.param({"labels": {LABEL_HASH: "x", LABEL_FOLDER: "/elsewhere"}}, id="labels"),
        pytest.param({"env": {"B": "2", "A": "1"}}, id="env-reordered"),
    ],
)
def test_spec_hash_ignores(update: dict[str, object]) -> None:
    assert spec_hash(BASE.model_copy(update=update)) == spec_hash(BASE)


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"env": {"A": "1", "B": "3"}}, id="env-value"),
        pytest.param({"env": {"A": "1"}}, id="env-removed"),
        pytest.param({"env": {"A": "1", "B": "2", "C": ""}}, id="env-added"),
        pytest.param({"argv": ("httpd",)}, id="argv-shorter"),
        pytest.param({"argv": ("-f", "httpd")}, id="argv-reordered"),
        pytest.param({"argv": ("httpd", "-v")}, id="argv-value"),
        pytest.param({"name": "web2"}, id="name"),
        pytest.param({"rootfs": RootfsRef(kind="alpine", version="3.20")}, id="rootfs"),
        pytest.param({"workdir": "/srv"}, id="workdir"),
        pytest.param({"network": "none"}, id="network"),
        pytest.param({"hostname": "www"}, id="hostname"),
        pytest.param({"stop_timeout": 3.0}, id="stop-timeout"),
        pytest.param({"binds": (BindMount(source="/data", target="/data"),)}, id="binds"),
        pytest.param({"sdks": (SdkLayer(name="python", version="3.12"),)}, id="sdks"),
        pytest.param({"proc_view": False}, id="proc-view-off"),
    ],
)
def test_spec_hash_changes_with(update: dict[str, object]) -> None:
    assert spec_hash(BASE.model_copy(update=update)) != spec_hash(BASE)


def test_spec_hash_shape_and_stability() -> None:
    digest = spec_hash(BASE)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    rebuilt = ContainerSpec.model_validate(BASE.model_dump())
    assert spec_hash(rebuilt) == digest


def test_port_only_edit_keeps_the_hash_and_env_edit_changes_it(tmp_path: Path) -> None:
    write(tmp_path, "web.toml", squishfile(env={"A": "1"}, port=8080))
    before = load_desired(tmp_path).containers["web"].spec.labels[LABEL_HASH]
    write(tmp_path, "web.toml", squishfile(env={"A": "1"}, port=9090))
    assert load_desired(tmp_path).containers["web"].spec.labels[LABEL_HASH] == before
    write(tmp_path, "web.toml", squishfile(env={"A": "2"}, port=9090))
    assert load_desired(tmp_path).containers["web"].spec.labels[LABEL_HASH] != before


# -- found in review: hostile and unreadable files --------------------------------------------


def test_a_file_nested_too_deeply_is_an_invalid_spec(tmp_path: Path) -> None:
    (tmp_path / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    state = load_desired(tmp_path)
    assert state.containers == {}
    [error] = state.errors
    assert error.file.name == "deep.toml"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_keeps_its_container(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text('name = "site"\n[layers]\nbusybox = "builtin"\n[run]\ncommand = "true"\n')
    cache: FileCache = {}
    assert set(load_desired(tmp_path, cache).containers) == {"site"}
    path.chmod(0)
    try:
        state = load_desired(tmp_path, cache)
    finally:
        path.chmod(0o644)
    [error] = state.errors
    assert (error.name, error.name_known) == ("site", True)  # remembered from its last parse
    assert "cannot read" in error.message


def test_a_broken_file_remembers_the_name_it_had(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('name = "web"\n[layers]\nbusybox = "builtin"\n[run]\ncommand = "true"\n')
    cache: FileCache = {}
    load_desired(tmp_path, cache)
    path.write_text('name = "web"\n[run\n')
    [error] = load_desired(tmp_path, cache).errors
    assert (error.name, error.name_known) == ("web", True)
    [unknown] = load_desired(tmp_path).errors  # no memory of it: the stem is only a guess
    assert (unknown.name, unknown.name_known) == ("site", False)


def test_an_edited_seccomp_profile_changes_the_spec_without_touching_the_squishfile(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "profile.json"
    rule = '{"names": ["%s"], "action": "SCMP_ACT_ERRNO"}'
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [%s]}' % (rule % "getcwd"))
    (tmp_path / "web.toml").write_text(
        '[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n'
        '[security]\nseccomp = "./profile.json"\n'
    )
    cache: FileCache = {}
    first = load_desired(tmp_path, cache).containers["web"].spec.seccomp
    assert load_desired(tmp_path, cache).containers["web"].spec.seccomp == first  # cached
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [%s]}' % (rule % "getpid"))
    second = load_desired(tmp_path, cache).containers["web"].spec.seccomp
    assert isinstance(second, dict) and second["syscalls"][0]["names"] == ["getpid"]


def test_a_profile_that_does_not_compile_is_the_files_error(tmp_path: Path) -> None:
    """The squishfile model only checks a profile's structure; loading the desired state
    compiles it, so a syscall libseccomp does not know keeps the old container too."""
    (tmp_path / "p.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", '
        '"syscalls": [{"names": ["frobnicate"], "action": "SCMP_ACT_ERRNO"}]}'
    )
    write(tmp_path, "web.toml", squishfile("web") + '[security]\nseccomp = "./p.json"\n')
    state = load_desired(tmp_path)
    [error] = state.errors
    [problem] = error.problems
    assert (error.name, problem.field) == ("web", "security.seccomp")
    assert problem.line == squishfile("web").count("\n") + 2
    assert "unknown syscall 'frobnicate'" in problem.message


def test_a_file_grown_past_the_size_limit_keeps_its_container(tmp_path: Path) -> None:
    path = write(tmp_path, "web.toml", squishfile("site"))
    cache: FileCache = {}
    assert set(load_desired(tmp_path, cache).containers) == {"site"}
    os.truncate(path, 50 << 20)
    [error] = load_desired(tmp_path, cache).errors
    assert (error.name, error.name_known) == ("site", True)
    assert error.message == f"{path}: <file>: larger than 1 MiB, the limit for a squishfile"


def test_a_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_bytes(b"\xef\xbb\xbf" + squishfile("site").encode())
    assert set(load_desired(tmp_path).containers) == {"site"}
    (tmp_path / "web.toml").write_bytes(b"\xef\xbb\xbfname = 'api'\n[run]\ncommand = 5\n")
    [error] = load_desired(tmp_path).errors
    assert (error.name, error.name_known) == ("api", True)  # its name is read through the mark


def port_at(folder: Path, cache: FileCache, now: float) -> int:
    """The host port web.toml asks for, loaded at ``now`` with a settle time of 1 s."""
    return load_desired(folder, cache, now=now, settle=1.0).containers["web"].spec.ports[0].host


def applied(folder: Path, port: int) -> tuple[Path, FileCache]:
    """web.toml asking for ``port``, and the cache of a load of it at time 0."""
    path = write(folder, "web.toml", squishfile(port=port))
    cache: FileCache = {}
    load_desired(folder, cache, now=0.0, settle=1.0)
    return path, cache


def test_bytes_written_in_place_count_once_they_stay_unchanged_for_the_settle_time(
    tmp_path: Path,
) -> None:
    path, cache = applied(tmp_path, 8080)
    path.write_text(squishfile(port=8081))  # the same inode: maybe not written to the end
    assert port_at(tmp_path, cache, 5.0) == 8080
    assert settles_in(cache, 5.0, 1.0) == 1.0
    assert port_at(tmp_path, cache, 5.5) == 8080
    assert port_at(tmp_path, cache, 6.0) == 8081
    assert settles_in(cache, 6.0, 1.0) is None


def test_a_file_renamed_into_place_counts_at_once(tmp_path: Path) -> None:
    path, cache = applied(tmp_path, 8080)
    write(tmp_path, ".web.toml.tmp", squishfile(port=8081)).rename(path)
    assert port_at(tmp_path, cache, 0.0) == 8081
    assert settles_in(cache, 0.0, 1.0) is None


def test_bytes_written_in_place_back_to_what_was_applied_wait_for_nothing(
    tmp_path: Path,
) -> None:
    path, cache = applied(tmp_path, 8080)
    path.write_text(MINIMAL)  # half of it
    load_desired(tmp_path, cache, now=1.0, settle=1.0)
    assert settles_in(cache, 1.0, 1.0) == 1.0
    path.write_text(squishfile(port=8080))  # and the rest: the same bytes as before
    assert port_at(tmp_path, cache, 1.5) == 8080
    assert settles_in(cache, 1.5, 1.0) is None


def test_a_file_made_anew_counts_at_once_even_with_the_old_inode_number(tmp_path: Path) -> None:
    """As git checks a file out: unlink it, then create it (O_EXCL) and write it. ext4
    gives the new file the inode number the old one freed; it is a new file all the same
    (its generation tells), not a rewrite in place, and waits for no settle time."""
    path, cache = applied(tmp_path, 8080)
    old = path.stat().st_ino
    write_anew(path, squishfile(port=8081))
    if path.stat().st_ino != old:
        pytest.skip(f"{tmp_path}'s filesystem gave the new file another inode number")
    if read_squishfile(path)[1].generation is None:
        pytest.skip(f"{tmp_path}'s filesystem keeps no inode generation")
    assert port_at(tmp_path, cache, 0.0) == 8081
    assert settles_in(cache, 0.0, 1.0) is None


def test_a_file_deleted_stands_for_what_it_loaded_until_gone_for_the_settle_time(
    tmp_path: Path,
) -> None:
    """git checks a file out by unlink, then create: a load between the two (the
    checkout paused on a loaded machine) must not read as a deletion, or a port edit
    would remove the container and make it anew."""
    path, cache = applied(tmp_path, 8080)
    path.unlink()
    assert port_at(tmp_path, cache, 5.0) == 8080
    assert settles_in(cache, 5.0, 1.0) == 1.0
    assert port_at(tmp_path, cache, 5.5) == 8080
    write_anew(path, squishfile(port=8081))  # made anew: counts at once
    assert port_at(tmp_path, cache, 5.5) == 8081
    assert settles_in(cache, 5.5, 1.0) is None


def test_a_file_gone_for_the_settle_time_is_gone(tmp_path: Path) -> None:
    path, cache = applied(tmp_path, 8080)
    path.unlink()
    load_desired(tmp_path, cache, now=5.0, settle=1.0)
    assert load_desired(tmp_path, cache, now=6.0, settle=1.0).containers == {}
    assert cache == {}
    assert settles_in(cache, 6.0, 1.0) is None
    path, cache = applied(tmp_path, 8080)
    path.unlink()
    assert load_desired(tmp_path, cache, now=5.0).containers == {}  # no settle time: at once


def test_a_file_renamed_to_another_name_hands_its_container_over_at_once(
    tmp_path: Path,
) -> None:
    """``git mv web.toml site.toml``: the file gone claims no name another file has now
    (else it would stand as a duplicate until its settle time is over)."""
    path = write(tmp_path, "web.toml", squishfile("web", port=8080))
    cache: FileCache = {}
    load_desired(tmp_path, cache, now=0.0, settle=1.0)
    path.rename(tmp_path / "site.toml")
    desired = load_desired(tmp_path, cache, now=0.5, settle=1.0)
    assert (desired.containers["web"].file.name, desired.errors) == ("site.toml", ())
    assert settles_in(cache, 0.5, 1.0) is None


def test_spec_hash_of_a_spec_with_the_default_view_is_the_hash_it_had_before_the_switch() -> None:
    data = BASE.model_dump(mode="json", exclude={"ports", "resources", "labels", "networks"})
    data.pop("logs")
    data.pop("proc_view")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert spec_hash(BASE) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
