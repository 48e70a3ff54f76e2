"""The squishfile's JSON Schema: committed as generated, valid draft-07, true to the docs'
examples, and in agreement with the model on what it accepts and refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.cli import main
from reconciler.problems import SquishfileError
from reconciler.squishfile import load_network_file, load_squishfile
from reconciler.squishfile.schema import (
    SCHEMA_FILES,
    network_file_schema,
    schema_text,
    squishfile_schema,
)
from reconciler.squishfile.tomlpos import parse_toml

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'
BASE: dict[str, Any] = {"layers": {"busybox": "builtin"}, "run": {"command": "httpd"}}
"""What a documented fragment (``[health]`` alone) is checked inside of."""
SHA = "0123456789abcdef" * 4


def _schema_errors(schema: dict[str, Any], data: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [error.message for error in validator.iter_errors(data)]


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_the_committed_schema_is_the_one_the_model_gives(kind: str) -> None:
    committed = json.loads(SCHEMA_FILES[kind].read_text(encoding="utf-8"))
    assert committed == json.loads(schema_text(kind)), (  # 0 == 0.0, as pydantic may say
        f"{SCHEMA_FILES[kind].name} is out of date: reconciler schema {kind} > "
        f"{SCHEMA_FILES[kind].relative_to(ROOT)}"
    )


@pytest.mark.parametrize("schema", [squishfile_schema(), network_file_schema()])
def test_the_schemas_are_valid_draft_7(schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    assert "$defs" not in json.dumps(schema)  # draft-07 names them definitions


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_reconciler_schema_prints_it(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", kind]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(schema_text(kind))


def _toml_blocks(markdown: Path) -> list[tuple[str, str]]:
    """Each ```toml block of a document, split where a comment names another file
    (``# desired/api.toml``), with where it starts."""
    blocks = re.findall(r"^```toml\n(.*?)^```", markdown.read_text(), re.S | re.M)
    found = []
    for number, block in enumerate(blocks):
        parts = re.split(r"^(?=# \S+\.toml\b)", block, flags=re.M)
        found += [(f"{markdown.name} block {number} part {i}", p) for i, p in enumerate(parts)]
    return [(where, part) for where, part in found if part.strip()]


def _documented() -> list[tuple[str, str]]:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [block for document in documents for block in _toml_blocks(document)]


_SETTINGS_TABLES = {"git", "host", "network"}  # the reconciler's settings file


def test_the_docs_have_squishfile_examples() -> None:
    kinds = [_kind(parse_toml(text)) for _, text in _documented()]
    assert kinds.count("squishfile") >= 8 and "network" in kinds and "settings" in kinds


def _kind(data: dict[str, Any]) -> str:
    if data and set(data) <= _SETTINGS_TABLES:
        return "settings"
    if data and set(data) <= set(network_file_schema()["properties"]):
        return "network"
    return "squishfile"


@pytest.mark.parametrize(("where", "text"), _documented())
def test_every_documented_example_is_valid(where: str, text: str) -> None:
    data = parse_toml(text)
    kind = _kind(data)
    if kind == "settings":
        return
    if kind == "network":
        assert _schema_errors(network_file_schema(), data) == [], where
        return
    assert _schema_errors(squishfile_schema(), {**BASE, **data}) == [], where


@pytest.mark.parametrize("path", sorted((ROOT / "desired").glob("*.toml")), ids=str)
def test_the_example_folder_is_valid(path: Path) -> None:
    assert _schema_errors(squishfile_schema(), parse_toml(path.read_text())) == []


VALID = {
    "minimal": MINIMAL,
    "everything": f"""
name = "web"
hostname = "web-1"
networks = ["default", "back"]
[layers]
alpine = "3.20"
site = "./site"
data = {{ path = "./site", target = "/data", rw = true }}
python = "3.12"
node = {{ url = "https://example.org/node.tar.gz", sha256 = "{SHA}" }}
[run]
command = "httpd"
args = ["-f"]
workdir = "/app"
stop_timeout = 5
[env]
GREETING = "hello"
[[ports]]
container = 80
host = 8080
protocol = "udp"
host_addr = "::1"
[restart]
policy = "on-failure"
[update]
strategy = "start-first"
drain = 0.5
[health]
command = "true"
[resources]
memory = "256M"
memory_swap = 0
cpus = 0.5
cpu_weight = 100
pids = 64
[logs]
max_size = "10M"
max_files = 2
[security]
seccomp = "unconfined"
[placement]
hosts = ["web-*"]
labels = {{ zone = "a" }}
""",
    "network table": MINIMAL + '[networks.default]\naliases = ["database"]\n',
    "health array": MINIMAL + '[health]\ncommand = ["/bin/true"]\n',
    "isolated with ports": 'network = "isolated"\n'
    + MINIMAL
    + "[[ports]]\ncontainer = 80\nhost = 8080\n",
}

INVALID = {
    "no run": '[layers]\nbusybox = "builtin"\n',
    "no layers": '[run]\ncommand = "httpd"\n',
    "no rootfs": '[layers]\npython = "3.12"\n[run]\ncommand = "x"\n',
    "two rootfs": '[layers]\nbusybox = "builtin"\nalpine = "3.20"\n[run]\ncommand = "x"\n',
    "busybox version": '[layers]\nbusybox = "latest"\n[run]\ncommand = "x"\n',
    "alpine version": '[layers]\nalpine = "3"\n[run]\ncommand = "x"\n',
    "unknown key": 'image = "x"\n' + MINIMAL,
    "unknown run key": MINIMAL + 'user = "root"\n',
    "bad name": 'name = "-web"\n' + MINIMAL,
    "bad hostname": 'hostname = "a b"\n' + MINIMAL,
    "bad layer name": MINIMAL.replace("[run]", 'x = "3.12"\n"-x" = "3.12"\n[run]'),
    "bad layer text": MINIMAL.replace("[run]", 'python = "3.12 beta"\n[run]'),
    "path and url": MINIMAL.replace(
        "[run]", f'x = {{ path = "./a", url = "https://a.b/c", sha256 = "{SHA}" }}\n[run]'
    ),
    "short sha256": MINIMAL.replace(
        "[run]", 'x = { url = "https://a.b/c", sha256 = "abc" }\n[run]'
    ),
    "ftp url": MINIMAL.replace("[run]", f'x = {{ url = "ftp://a.b/c", sha256 = "{SHA}" }}\n[run]'),
    "relative target": MINIMAL.replace("[run]", 'x = { path = "./a", target = "a" }\n[run]'),
    "empty command": '[layers]\nbusybox = "builtin"\n[run]\ncommand = ""\n',
    "args as text": MINIMAL + 'args = "-f"\n',
    "relative workdir": MINIMAL + 'workdir = "app"\n',
    "negative stop timeout": MINIMAL + "stop_timeout = -1\n",
    "bad env name": MINIMAL + '[env]\n1X = "y"\n',
    "env number": MINIMAL + "[env]\nX = 1\n",
    "port too high": MINIMAL + "[[ports]]\ncontainer = 80\nhost = 70000\n",
    "port protocol": MINIMAL + '[[ports]]\ncontainer = 80\nhost = 80\nprotocol = "sctp"\n',
    "port as text": MINIMAL + '[[ports]]\ncontainer = 80\nhost = "8080"\n',
    "ports without network": 'network = "none"\n'
    + MINIMAL
    + "[[ports]]\ncontainer = 1\nhost = 2\n",
    "bad network": 'network = "host"\n' + MINIMAL,
    "network and networks": 'network = "none"\nnetworks = ["back"]\n' + MINIMAL,
    "networks twice": 'networks = ["back", "back"]\n' + MINIMAL,
    "network upper case": 'networks = ["Back"]\n' + MINIMAL,
    "bad alias": MINIMAL + '[networks.back]\naliases = ["-x"]\n',
    "restart policy": MINIMAL + '[restart]\npolicy = "sometimes"\n',
    "update strategy": MINIMAL + '[update]\nstrategy = "blue-green"\n',
    "two probes": MINIMAL + '[health]\ntcp = 80\ncommand = "true"\n',
    "no probe": MINIMAL + "[health]\ntimeout = 2\n",
    "empty probe": MINIMAL + "[health]\ncommand = []\n",
    "zero interval": MINIMAL + "[health]\ntcp = 80\ninterval = 0\n",
    "size words": MINIMAL + '[resources]\nmemory = "lots"\n',
    "size too small": MINIMAL + "[resources]\nmemory = 1024\n",
    "size true": MINIMAL + "[resources]\nmemory = true\n",
    "zero cpus": MINIMAL + "[resources]\ncpus = 0\n",
    "log files": MINIMAL + "[logs]\nmax_files = 0\n",
    "seccomp word": MINIMAL + '[security]\nseccomp = "strict"\n',
    "no hosts": MINIMAL + "[placement]\nhosts = []\n",
    "label number": MINIMAL + "[placement]\nlabels = { zone = 1 }\n",
}

MODEL_ONLY = {
    "workdir with ..": MINIMAL + 'workdir = "/a/../b"\n',
    "host port twice": MINIMAL + "[[ports]]\ncontainer = 1\nhost = 2\n"
    "[[ports]]\ncontainer = 3\nhost = 2\n",
    "host_addr not an address": MINIMAL + '[[ports]]\ncontainer = 1\nhost = 2\nhost_addr = "x"\n',
    "size below the floor": MINIMAL + '[resources]\nmemory = "1k"\n',
    "two layers at one target": MINIMAL.replace(
        "[run]", 'a = { path = "./a", target = "/x" }\nb = { path = "./b", target = "/x" }\n[run]'
    ),
    "seccomp profile missing": MINIMAL + '[security]\nseccomp = "./missing.json"\n',
    "a path with no name to mount it under": MINIMAL.replace("[run]", 'x = "."\n[run]'),
    "a home folder that is not there": MINIMAL.replace(
        "[run]", 'x = "~no-such-account-here/a"\n[run]'
    ),
    "a NUL in an argument": MINIMAL + 'args = ["a\\u0000b"]\n',
}
"""What only the model refuses (docs/squishfile.md, "Editors", lists them)."""


def _model_accepts(tmp_path: Path, text: str) -> bool:
    (tmp_path / "site").mkdir(exist_ok=True)
    path = tmp_path / "web.toml"
    path.write_text(text)
    try:
        load_squishfile(path)
    except SquishfileError:
        return False
    return True


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_both_accept(tmp_path: Path, text: str) -> None:
    assert _model_accepts(tmp_path, text)
    assert _schema_errors(squishfile_schema(), parse_toml(text)) == []


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_both_refuse(tmp_path: Path, text: str) -> None:
    assert not _model_accepts(tmp_path, text)
    assert _schema_errors(squishfile_schema(), parse_toml(text)) != []


@pytest.mark.parametrize("text", MODEL_ONLY.values(), ids=MODEL_ONLY.keys())
def test_what_only_the_model_refuses(tmp_path: Path, text: str) -> None:
    assert not _model_accepts(tmp_path, text)
    assert _schema_errors(squishfile_schema(), parse_toml(text)) == []


NETWORK_FILES = {
    "empty": ("", True),
    "everything": ('subnet = "10.89.40.0/24"\ninternal = true\ndns = false\n', True),
    "a /8": ('subnet = "10.0.0.0/8"\n', False),
    "not a subnet": ('subnet = "backend"\n', False),
    "internal as text": ('internal = "yes"\n', False),
    "unknown key": ('gateway = "10.89.40.1"\n', False),
}
NETWORK_MODEL_ONLY = {"host bits set": 'subnet = "10.89.40.1/24"\n'}


@pytest.mark.parametrize(("text", "valid"), NETWORK_FILES.values(), ids=NETWORK_FILES.keys())
def test_network_files_agree(tmp_path: Path, text: str, valid: bool) -> None:
    path = tmp_path / "back.network.toml"
    path.write_text(text)
    try:
        load_network_file(path)
        accepted = True
    except SquishfileError:
        accepted = False
    assert accepted is valid
    assert (_schema_errors(network_file_schema(), parse_toml(text)) == []) is valid


@pytest.mark.parametrize("text", NETWORK_MODEL_ONLY.values(), ids=NETWORK_MODEL_ONLY.keys())
def test_what_only_the_network_model_refuses(tmp_path: Path, text: str) -> None:
    path = tmp_path / "back.network.toml"
    path.write_text(text)
    with pytest.raises(SquishfileError):
        load_network_file(path)
    assert _schema_errors(network_file_schema(), parse_toml(text)) == []
