"""Whatever a folder holds, loading and planning never raise, and a broken file never
takes its container down (property-based: generated squishfiles and byte mutations)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired.folder import load_desired
from reconciler.planning.plan import ActionKind, plan
from runtime.api.interface import ContainerInfo, ContainerState

VALID = b"""\
name = "web"
[layers]
busybox = "builtin"
site = "./site"
[run]
command = "httpd"
args = ["-f", "-p", "80"]
[env]
GREETING = "hello"
[[ports]]
container = 80
host = 8080
"""

KEYS = [
    "name",
    "network",
    "hostname",
    "layers",
    "run",
    "env",
    "ports",
    "restart",
    "command",
    "args",
    "container",
    "host",
    "protocol",
    "host_addr",
    "policy",
    "busybox",
    "alpine",
    "path",
    "target",
    "rw",
    "url",
    "sha256",
    "[[ports]]",
    "[run]",
    "[layers]",
]
FRAGMENTS = st.sampled_from(
    [
        b"=",
        b"[",
        b"]",
        b"{",
        b"}",
        b'"',
        b"'",
        b"\n",
        b",",
        b".",
        b"0",
        b"-1",
        b"65536",
        b"true",
        b"\x00",
        b"\xff",
        b"\\u0000",
        b"  ",
        b"#",
        *[k.encode() for k in KEYS],
    ]
)


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for position, length, insert in edits:
        at = position % (len(data) + 1)
        data = data[:at] + insert + data[at + length % 4 :]
    return data


def running_from(folder: Path) -> list[ContainerInfo]:
    """The container the valid file made, as the runtime would report it."""
    (folder / "web.toml").write_bytes(VALID)
    (folder / "site").mkdir(exist_ok=True)
    desired = load_desired(folder)
    spec = desired.containers["web"].spec
    return [
        ContainerInfo(
            name="web",
            state=ContainerState.RUNNING,
            spec=spec,
            pid=1,
            slirp_pid=2,
            log_path="/dev/null",
            created_at=0.0,
        )
    ]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 8), FRAGMENTS), max_size=6))
def test_mutated_squishfile_never_crashes_and_never_removes(
    tmp_path: Path, edits: list[tuple[int, int, bytes]]
) -> None:
    actual = running_from(tmp_path)
    (tmp_path / "web.toml").write_bytes(mutate(VALID, edits))
    desired = load_desired(tmp_path)
    result = plan(desired, actual)
    removed = [a for a in result.actions if a.kind is ActionKind.DESTROY and a.name == "web"]
    if "web.toml" in desired.error_files:  # a broken file never takes its container down
        assert removed == []
        assert not [a for a in result.actions if a.name == "web"]
    else:  # a valid edit may rename the container: then and only then is "web" removed
        assert bool(removed) == ("web" not in desired.containers)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_loading_or_planning(tmp_path: Path, data: bytes) -> None:
    actual = running_from(tmp_path)
    (tmp_path / "other.toml").write_bytes(data)
    plan(load_desired(tmp_path), actual)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(KEYS),
        st.one_of(
            st.integers(-5, 70000),
            st.text(max_size=12),
            st.booleans(),
            st.lists(st.text(max_size=5), max_size=3),
        ),
        max_size=6,
    )
)
def test_generated_tables_never_crash(tmp_path: Path, table: dict[str, object]) -> None:
    lines = []
    for key, value in table.items():
        if key.startswith("["):
            lines.append(key)
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        elif isinstance(value, str):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        else:
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    (tmp_path / "gen.toml").write_text("\n".join(lines) + "\n")
    plan(load_desired(tmp_path), [])
