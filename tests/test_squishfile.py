"""The squishfile format: parsing, validation, error reports and translation to a spec."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest

from reconciler.desired.validation import validate_files
from reconciler.problems import Problem, SquishfileError, field_path
from reconciler.squishfile import Squishfile, load_squishfile
from reconciler.squishfile.networks import runtime_network_name
from runtime.api.spec import (
    BindMount,
    ContainerSpec,
    NetworkAttachment,
    PortMapping,
    RootfsRef,
    SdkLayer,
)
from runtime.security.seccomp import compile_profile

SHA = "0123456789abcdef" * 4
MINIMAL = '[layers]\nbusybox = "builtin"\n\n[run]\ncommand = "httpd"\n'

FULL = textwrap.dedent(
    f"""\
    network = "slirp4netns"

    [layers]
    busybox = "builtin"
    site = "./site"
    data = {{ path = "./data", target = "/data", rw = true }}
    python = "3.12"
    node = {{ url = "https://example.test/node.tar.gz", sha256 = "{SHA.upper()}" }}

    [run]
    command = "httpd"
    args = ["-f", "-p", "80"]
    workdir = "/srv"
    stop_timeout = 5

    [env]
    GREETING = "hello"
    _lower_1 = "x"

    [[ports]]
    container = 80
    host = 8080

    [[ports]]
    container = 53
    host = 5353
    protocol = "udp"
    host_addr = "::1"
    """
)


def write(folder: Path, text: str, name: str = "web.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> tuple[Problem, ...]:
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(path)
    assert caught.value.path == path
    return caught.value.problems


# -- translation to a spec -----------------------------------------------------------------


def test_full_file_becomes_the_expected_spec(tmp_path: Path) -> None:
    path = write(tmp_path / "desired", FULL)
    spec = load_squishfile(path).to_spec()
    folder = str(tmp_path / "desired")
    assert spec == ContainerSpec(
        name="web",
        rootfs=RootfsRef(kind="busybox", version="builtin"),
        sdks=(
            SdkLayer(name="node", url="https://example.test/node.tar.gz", sha256=SHA),
            SdkLayer(name="python", version="3.12"),
        ),
        binds=(
            BindMount(source=f"{folder}/site", target="/app/site"),
            BindMount(source=f"{folder}/data", target="/data", rw=True),
        ),
        argv=("httpd", "-f", "-p", "80"),
        env={"GREETING": "hello", "_lower_1": "x"},
        workdir="/srv",
        ports=(
            PortMapping(container=80, host=8080),
            PortMapping(container=53, host=5353, protocol="udp", host_addr="::1"),
        ),
        network="slirp4netns",
        hostname="web",
        stop_timeout=5.0,
    )


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    squishfile = load_squishfile(write(tmp_path, MINIMAL, "my-app.toml"))
    assert squishfile.name == "my-app"
    assert squishfile.source == tmp_path / "my-app.toml"
    spec = squishfile.to_spec()
    assert (spec.name, spec.hostname, spec.argv, spec.workdir) == (
        "my-app",
        "my-app",
        ("httpd",),
        "/",
    )
    assert (spec.network, spec.stop_timeout, spec.env, spec.ports) == ("bridge", 10.0, {}, ())
    assert spec.networks == (NetworkAttachment(network=runtime_network_name(tmp_path, "default")),)
    assert (spec.sdks, spec.binds) == ((), ())


def test_explicit_name_hostname_and_no_network(tmp_path: Path) -> None:
    text = 'name = "api"\nhostname = "api-host"\nnetwork = "none"\n' + MINIMAL
    spec = load_squishfile(write(tmp_path, text)).to_spec()
    assert (spec.name, spec.hostname, spec.network) == ("api", "api-host", "none")


@pytest.mark.parametrize("version", ["3.20", "3.9", "edge"])
def test_alpine_rootfs(tmp_path: Path, version: str) -> None:
    text = f'[layers]\nalpine = "{version}"\n[run]\ncommand = "sh"\n'
    assert load_squishfile(write(tmp_path, text)).to_spec().rootfs == RootfsRef(
        kind="alpine", version=version
    )


def test_port_defaults_and_explicit_wildcard(tmp_path: Path) -> None:
    text = MINIMAL + '[[ports]]\ncontainer = 80\nhost = 80\nhost_addr = "0.0.0.0"\n'
    text += "[[ports]]\ncontainer = 81\nhost = 81\n"
    ports = load_squishfile(write(tmp_path, text)).to_spec().ports
    assert [(p.host_addr, p.protocol) for p in ports] == [("0.0.0.0", "tcp"), ("127.0.0.1", "tcp")]


def test_ipv6_host_addr_is_normalised(tmp_path: Path) -> None:
    text = MINIMAL + '[[ports]]\ncontainer = 80\nhost = 80\nhost_addr = "0:0::0:1"\n'
    assert load_squishfile(write(tmp_path, text)).ports[0].host_addr == "::1"


def test_same_container_port_may_be_forwarded_twice(tmp_path: Path) -> None:
    text = (
        MINIMAL + "[[ports]]\ncontainer = 80\nhost = 8080\n[[ports]]\ncontainer = 80\nhost = 8081\n"
    )
    text += '[[ports]]\ncontainer = 80\nhost = 8080\nprotocol = "udp"\n'
    text += '[[ports]]\ncontainer = 80\nhost = 8080\nhost_addr = "127.0.0.2"\n'
    assert len(load_squishfile(write(tmp_path, text)).to_spec().ports) == 4


def test_local_paths_resolve_against_the_squishfile_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/tester")
    text = MINIMAL.replace(
        'busybox = "builtin"\n',
        'busybox = "builtin"\nup = "../shared/"\nabs = "/opt/x/../y"\nhome = "~/notes"\n'
        'tilde = "./~x"\n'
        'dot = { path = ".", target = "/here" }\n',
    )
    path = write(tmp_path, text, "desired/web.toml")
    monkeypatch.chdir("/")  # the current directory must not matter
    spec = load_squishfile(Path(os.path.relpath(path))).to_spec()
    assert not any(bind.rw for bind in spec.binds)  # read-only unless rw = true
    assert {bind.target: bind.source for bind in spec.binds} == {
        "/app/shared": str(tmp_path / "shared"),
        "/app/y": "/opt/y",
        "/app/notes": "/home/tester/notes",
        "/here": str(tmp_path / "desired"),
        "/app/~x": str(tmp_path / "desired" / "~x"),
    }


def test_a_symlink_above_the_squishfile_folder_is_resolved_once(tmp_path: Path) -> None:
    (tmp_path / "usr" / "home" / "u").mkdir(parents=True)
    (tmp_path / "home").symlink_to(tmp_path / "usr" / "home")
    text = MINIMAL.replace('"builtin"\n', '"builtin"\nsite = "./site"\nup = "../shared"\n')
    spec = load_squishfile(write(tmp_path / "home" / "u", text)).to_spec()
    assert [bind.source for bind in spec.binds] == [
        str(tmp_path / "usr" / "home" / "shared"),
        str(tmp_path / "usr" / "home" / "u" / "site"),
    ]


def test_a_symlink_above_the_home_folder_is_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "usr" / "home" / "u").mkdir(parents=True)
    (tmp_path / "home").symlink_to(tmp_path / "usr" / "home")
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "u"))
    text = MINIMAL.replace('"builtin"\n', '"builtin"\nnotes = "~/notes"\n')
    spec = load_squishfile(write(tmp_path, text)).to_spec()
    assert spec.binds[0].source == str(tmp_path / "usr" / "home" / "u" / "notes")


def test_symlinks_in_local_paths_are_not_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    text = MINIMAL.replace('"builtin"\n', '"builtin"\nsite = "./link"\n')
    spec = load_squishfile(write(tmp_path, text)).to_spec()
    assert spec.binds[0].source == str(tmp_path / "link")


def test_spec_does_not_depend_on_the_order_of_the_file(tmp_path: Path) -> None:
    reordered = textwrap.dedent(
        f"""\
        network = "slirp4netns"
        [[ports]]
        container = 53
        host = 5353
        protocol = "udp"
        host_addr = "::1"

        [[ports]]
        host = 8080
        container = 80

        [env]
        _lower_1 = "x"
        GREETING = "hello"

        [run]
        stop_timeout = 5.0
        workdir = "/srv"
        args = ["-f", "-p", "80"]
        command = "httpd"

        [layers]
        node = {{ sha256 = "{SHA}", url = "https://example.test/node.tar.gz" }}
        python = "3.12"
        data = {{ rw = true, target = "/data", path = "./data" }}
        site = "./site"
        busybox = "builtin"
        """
    )
    first = load_squishfile(write(tmp_path / "a", FULL)).to_spec()
    second = load_squishfile(write(tmp_path / "a", reordered, "web2.toml"))
    second_spec = second.to_spec().model_copy(update={"name": "web", "hostname": "web"})
    assert first.model_dump_json() == second_spec.model_dump_json()
    assert (
        first.model_dump_json()
        == load_squishfile(tmp_path / "a" / "web.toml").to_spec().model_dump_json()
    )


def test_dotted_keys_and_sub_tables_are_the_same_file(tmp_path: Path) -> None:
    text = (
        'layers.busybox = "builtin"\nrun.command = "sh"\n[layers.data]\npath = "./d"\nrw = true\n'
    )
    spec = load_squishfile(write(tmp_path, text)).to_spec()
    assert spec.binds == (BindMount(source=str(tmp_path / "d"), target="/app/d", rw=True),)


def test_squishfile_is_frozen(tmp_path: Path) -> None:
    squishfile = load_squishfile(write(tmp_path, MINIMAL))
    with pytest.raises(pydantic.ValidationError):
        squishfile.name = "other"
    assert isinstance(squishfile.run.args, tuple)


def test_validating_without_a_source_needs_a_name() -> None:
    data = {"layers": {"busybox": "builtin", "site": "./site"}, "run": {"command": "sh"}}
    with pytest.raises(pydantic.ValidationError):
        Squishfile.model_validate(data)
    squishfile = Squishfile.model_validate({**data, "name": "x"})
    assert squishfile.source is None
    with pytest.raises(ValueError, match="cannot make"):
        squishfile.to_spec()


@pytest.mark.parametrize(
    "target", ["//proc", "//sys", "//dev", "//", "//proc/self", "/proc/../proc", "/./proc"]
)
def test_a_spec_made_without_a_squishfile_refuses_a_target_over_the_kernel_files(
    target: str,
) -> None:
    with pytest.raises(pydantic.ValidationError, match="may not"):
        BindMount(source="/srv", target=target)


def test_a_bind_target_is_recorded_normalised() -> None:
    assert BindMount(source="/srv", target="//app//site/").target == "/app/site"


# -- problems: one table, each case marks its expected line with `# <-` ----------------------

LAYERS_RUN = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "sh"\n'


def layer(*lines: str) -> str:
    """A file whose [layers] has busybox plus ``lines``."""
    return '[layers]\nbusybox = "builtin"\n' + "\n".join(lines) + '\n[run]\ncommand = "sh"\n'


def rootfs(line: str) -> str:
    """A file whose only layer is ``line``."""
    return f'[layers]\n{line}\n[run]\ncommand = "sh"\n'


def run(*lines: str) -> str:
    """A file whose [run] has command = "sh" plus ``lines``."""
    return LAYERS_RUN + "\n".join(lines) + "\n"


def port(*lines: str) -> str:
    """A file with one [[ports]] table made of ``lines``."""
    return LAYERS_RUN + "[[ports]]\n" + "\n".join(lines) + "\n"


URL = "https://example.test/n.tgz"
ERROR_CASES = [
    # unknown keys anywhere, with their line
    ('colour = "red"  # <-\n' + LAYERS_RUN, "colour", 'unknown key "colour"'),
    ("[labels]  # <-\na = 'b'\n" + LAYERS_RUN, "labels", 'unknown key "labels"'),
    (run("comand = 'x'  # <-"), "run.comand", 'did you mean "command"?'),
    (LAYERS_RUN + "[logs]\nmax_sise = 1  # <-\n", "logs.max_sise", 'did you mean "max_size"?'),
    (port("container = 1", "host = 1", "protocl = 'tcp'  # <-"), "ports[0].protocl", "protocol"),
    (layer('d = { path = "./d", rww = true }  # <-'), "layers.d.rww", 'did you mean "rw"?'),
    (run("[layers.d]", 'path = "./d"', 'mode = "ro"  # <-'), "layers.d.mode", "unknown key"),
    # wrong types: nothing is coerced
    (port("container = 80", 'host = "8080"  # <-'), "ports[0].host", 'not the string "8080"'),
    (port("container = 80", 'host = "8080"  # <-'), "ports[0].host", "must be an integer"),
    (run('args = "x"  # <-'), "run.args", 'must be an array, not the string "x"'),
    (run("args = ['a', 1]  # <-"), "run.args[1]", "must be a string, not the integer 1"),
    (run('stop_timeout = "5"  # <-'), "run.stop_timeout", "must be a number"),
    (run("stop_timeout = true  # <-"), "run.stop_timeout", "not the boolean true"),
    (LAYERS_RUN.replace('"sh"', "5  # <-"), "run.command", "must be a string"),
    (layer('d = { path = "./d", rw = "yes" }  # <-'), "layers.d.rw", "must be true or false"),
    (run("[env]", "N = 5  # <-"), "env.N", "must be a string"),
    ('run = "sh"  # <-\n[layers]\nbusybox = "builtin"\n', "run", "must be a table"),
    ("name = 1979-05-27  # <-\n" + LAYERS_RUN, "name", "not the date/time 1979-05-27"),
    # ranges and choices
    (port("container = 80", "host = 70000  # <-"), "ports[0].host", "must be ≤ 65535"),
    (port("container = 0  # <-", "host = 80"), "ports[0].container", "must be ≥ 1"),
    (port("container = 1", "host = 1", 'protocol = "sctp"  # <-'), "ports[0].protocol", "tcp"),
    (
        port("container = 1", "host = 1", 'host_addr = "localhost"  # <-'),
        "ports[0].host_addr",
        "IPv6",
    ),
    (
        'network = "bridge"  # <-\n' + LAYERS_RUN,
        "network",
        'must be "isolated", "none" or "slirp4netns"',
    ),
    (run("stop_timeout = -1  # <-"), "run.stop_timeout", "must be ≥ 0"),
    (run("stop_timeout = 3601  # <-"), "run.stop_timeout", "must be ≤ 3600"),
    (run("stop_timeout = inf  # <-"), "run.stop_timeout", "finite"),
    (LAYERS_RUN.replace('"sh"', '""  # <-'), "run.command", "may not be empty"),
    (run('args = ["a\\u0000b"]  # <-'), "run.args[0]", "NUL"),
    (run('workdir = "srv"  # <-'), "run.workdir", "absolute"),
    (run('workdir = "/srv/../etc"  # <-'), "run.workdir", "'..'"),
    # names
    ('name = "my web"  # <-\n' + LAYERS_RUN, "name", "not a valid name"),
    ('hostname = "-x"  # <-\n' + LAYERS_RUN, "hostname", "not a valid name"),
    (layer('"my layer" = "./x"  # <-'), 'layers."my layer"', "not a valid name"),
    (run("[env]", '"1X" = "a"  # <-'), "env.1X", "not a valid variable name"),
    (run("[env]", '"A-B" = "a"  # <-'), "env.A-B", "not a valid variable name"),
    # the rootfs
    (rootfs('site = "./site"').replace("]", "]  # <-", 1), "layers", "needs a rootfs layer"),
    (layer('alpine = "3.20"').replace("]", "]  # <-", 1), "layers", "2 rootfs layers"),
    (rootfs('busybox = "latest"  # <-'), "layers.busybox", 'busybox = "builtin"'),
    (rootfs('alpine = "3"  # <-'), "layers.alpine", 'like "3.20" or "edge"'),
    (rootfs('alpine = "3.20.1"  # <-'), "layers.alpine", 'like "3.20"'),
    (rootfs('alpine = { path = "./rootfs" }  # <-'), "layers.alpine", 'like "3.20"'),
    # local layers
    (layer('d = { path = "./d", target = "data" }  # <-'), "layers.d.target", "absolute"),
    (layer('d = { path = "./d", target = "/a/../b" }  # <-'), "layers.d.target", "'..'"),
    (layer('d = { path = "./d", target = "/proc/x" }  # <-'), "layers.d.target", "/proc"),
    (layer('d = { path = "./d", target = "/sys" }  # <-'), "layers.d.target", "/sys"),
    (layer('d = { path = "./d", target = "/dev/" }  # <-'), "layers.d.target", "/dev"),
    (layer('d = { path = "./d", target = "/" }  # <-'), "layers.d.target", "'/'"),
    (layer('d = { path = "./d", target = "//proc" }  # <-'), "layers.d.target", "/proc"),
    (layer('d = { path = "./d", target = "//sys/x" }  # <-'), "layers.d.target", "/sys"),
    (layer('d = { path = "./d", target = "//dev" }  # <-'), "layers.d.target", "/dev"),
    (layer('d = { path = "./d", target = "//" }  # <-'), "layers.d.target", "'/'"),
    (layer('d = { path = "./d", target = "/proc/../proc" }  # <-'), "layers.d.target", "'..'"),
    (layer('d = { path = "./d", target = "/./proc" }  # <-'), "layers.d.target", "'.'"),
    (layer('d = { path = "d" }  # <-'), "layers.d.path", "not a local path"),
    (layer('d = "./"  # <-'), "layers.d", "cannot name a mount point"),
    (layer('d = { path = "~" }  # <-'), "layers.d", "cannot name a mount point"),
    (layer('d = ".."  # <-'), "layers.d", "cannot name a mount point"),
    (layer('d = "~/."  # <-'), "layers.d", "cannot name a mount point"),
    (layer('d = "~user/"  # <-'), "layers.d", "cannot name a mount point"),
    (layer('d = "site/x"  # <-'), "layers.d", "start local paths with ./"),
    (
        layer('site = "./site"', 'd = { path = "./d", target = "/app/site/" }  # <-'),
        "layers.d.target",
        "target /app/site is also used by layers.site",
    ),
    (layer('a = "./x/site"', 'b = "../site"  # <-'), "layers.b", "also used by layers.a"),
    (
        layer('python = "3.12"', 'p = { path = "./py", target = "/sdk/python" }  # <-'),
        "layers.p.target",
        "also used by layers.python",
    ),
    # SDK layers
    (layer(f'node = {{ url = "{URL}" }}  # <-'), "layers.node.sha256", "required"),
    (layer(f'node = {{ sha256 = "{SHA}" }}  # <-'), "layers.node.url", "required"),
    (layer(f'n = {{ url = "ftp://x/n", sha256 = "{SHA}" }}  # <-'), "layers.n.url", "http"),
    (layer(f'n = {{ url = "{URL}", sha256 = "abc" }}  # <-'), "layers.n.sha256", "64 hexadecimal"),
    (
        layer(f'node = {{ path = "./n", url = "{URL}", sha256 = "{SHA}" }}  # <-'),
        "layers.node",
        "either path or url",
    ),
    (layer('node = { target = "/n" }  # <-'), "layers.node", "either path or url"),
    (layer("node = 18  # <-"), "layers.node", 'a version like "3.12"'),
    # found probing as a user: pydantic's report of a layer's model, and NULs let through
    (layer('site = "~nosuchuser/x"  # <-'), "layers.site", "names a home folder that does not"),
    (layer('x = { path = "./x", target = "/a\\u0000" }  # <-'), "layers.x.target", "a NUL"),
    (
        layer(f'x = {{ url = "http://a/\\u0000", sha256 = "{"a" * 64}" }}  # <-'),
        "layers.x.url",
        "not an http",
    ),
    (rootfs('alpine = "\u0663.\u0662\u0660"  # <-'), "layers.alpine", 'a release like "3.20"'),
    (layer('node = "18 lts"  # <-'), "layers.node", "neither a version"),
    # ports against each other and the network
    (
        port("container = 80", "host = 8080", "[[ports]]", "container = 81", "host = 8080  # <-"),
        "ports[1].host",
        "127.0.0.1:8080/tcp is already forwarded by ports[0]",
    ),
    (
        port("container = 1", "host = 80", 'host_addr = "::1"', "[[ports]]", "container = 2")
        + 'host = 80  # <-\nhost_addr = "0::1"\n',
        "ports[1].host",
        "[::1]:80/tcp",
    ),
    (  # a wildcard takes every address: the two would need one host socket
        port("container = 1", "host = 80", 'host_addr = "0.0.0.0"', "[[ports]]", "container = 2")
        + "host = 80  # <-\n",
        "ports[1].host",
        "127.0.0.1:80/tcp is already forwarded by ports[0] (0.0.0.0:80/tcp)",
    ),
    # the names a start-first replacement runs its containers under
    ('name = "web.next"  # <-\n' + LAYERS_RUN, "name", "ends in .next, reserved for"),
    ('name = "web.old"  # <-\n' + LAYERS_RUN, "name", "ends in .old, reserved for"),
    (
        'name = "x"\nhostname = "\\u001b]0;t\\u0007"  # <-\n' + LAYERS_RUN,
        "hostname",
        '"\\u001b]0;t\\u0007"',
    ),
    (
        'network = "none"\n' + port("container = 80", "host = 80").replace("]]", "]]  # <-"),
        "ports",
        'network = "none" cannot forward ports',
    ),
    # missing tables and keys
    (
        LAYERS_RUN.replace('[run]\ncommand = "sh"', '[run]  # <-\nargs = ["x"]'),
        "run.command",
        "required",
    ),
    ('[layers]\nbusybox = "builtin"\n', "run", "required"),
    ('[run]\ncommand = "sh"\n', "layers", "required"),
]


def _marked_line(text: str) -> int | None:
    return next((n for n, line in enumerate(text.splitlines(), 1) if "# <-" in line), None)


@pytest.mark.parametrize(
    ("text", "field", "message"), ERROR_CASES, ids=[f"{c[1]}: {c[2]}" for c in ERROR_CASES]
)
def test_problem_is_reported_with_file_line_and_field(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    matching = [p for p in problems if p.field == field]
    assert matching, f"no problem on {field}: {[str(p) for p in problems]}"
    assert message in matching[0].message
    assert matching[0].file == str(path)
    assert matching[0].line == _marked_line(text)
    assert "Input should" not in matching[0].message  # pydantic's wording is rewritten
    assert "validation error" not in matching[0].message


def test_a_broken_rootfs_layer_is_its_only_problem(tmp_path: Path) -> None:
    """Not also "needs a rootfs layer": the file has one, written wrong."""
    path = write(tmp_path, 'name = "x"\n' + rootfs('alpine = "3.20\\n"'))
    assert [p.field for p in problems_of(path)] == ["layers.alpine"]


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = (
        "colour = 1\n" + LAYERS_RUN.replace('"sh"', "5") + '[[ports]]\ncontainer = 0\nhost = "x"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(path)
    assert [(p.line, p.field) for p in caught.value.problems] == [
        (1, "colour"),
        (5, "run.command"),
        (7, "ports[0].container"),
        (8, "ports[0].host"),
    ]
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]


def test_name_from_a_bad_file_name_says_where_it_came_from(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL, "my web.toml"))
    assert (problem.line, problem.field) == (None, "name")
    assert "taken from the file name" in problem.message
    assert str(problem).startswith(f"{tmp_path / 'my web.toml'}: name: ")


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b'name = "web"\nname = "x"\n', 2, "invalid TOML: Cannot overwrite a value"),
        (b"[layers\n", 1, "invalid TOML"),
        (b'name = "web"\nhostname = "\xff"\n', 2, "not valid UTF-8"),
    ],
)
def test_unparseable_file_is_one_syntax_problem(
    tmp_path: Path, content: bytes, line: int, message: str
) -> None:
    path = tmp_path / "web.toml"
    path.write_bytes(content)
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (line, "<syntax>")
    assert message in problem.message


def test_a_byte_order_mark_is_not_part_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_squishfile(path).run.command == "httpd"


def test_after_a_byte_order_mark_lines_and_columns_are_the_files(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b"name = @\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (1, "<syntax>")
    assert problem.message.endswith("(column 8)")


def test_a_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_bytes(MINIMAL.encode())
    os.truncate(path, 50 << 20)  # 50 MB, sparse
    (problem,) = problems_of(path)
    assert (problem.file, problem.line, problem.field) == (str(path), None, "<file>")
    assert problem.message == "larger than 1 MiB, the limit for a squishfile"
    path.write_bytes(MINIMAL.encode() + b"#" * ((1 << 20) - len(MINIMAL)))  # exactly the limit
    assert load_squishfile(path).run.command == "httpd"


@pytest.mark.parametrize(
    "make", [lambda p: None, lambda p: p.mkdir()], ids=["missing", "directory"]
)
def test_unreadable_file_is_one_file_problem(
    tmp_path: Path, make: Callable[[Path], object]
) -> None:
    path = tmp_path / "web.toml"
    make(path)
    (problem,) = problems_of(path)
    assert (problem.file, problem.line, problem.field) == (str(path), None, "<file>")
    assert problem.message.startswith("cannot read: ")


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (
            Problem("desired/web.toml", 12, "ports[0].host", "must be ≤ 65535"),
            "desired/web.toml:12: ports[0].host: must be ≤ 65535",
        ),
        (Problem("web.toml", None, "name", "bad"), "web.toml: name: bad"),
    ],
)
def test_problem_str(problem: Problem, text: str) -> None:
    assert str(problem) == text


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("ports", 1, "host"), "ports[1].host"),
        (("layers", "data", "target"), "layers.data.target"),
        (("env", "A B"), 'env."A B"'),
        ((), ""),
    ],
)
def test_field_path(loc: tuple[str | int, ...], text: str) -> None:
    assert field_path(loc) == text


def test_squishfile_error_orders_problems_and_pickles() -> None:
    late = Problem("w.toml", 9, "b", "late")
    early = Problem("w.toml", 2, "a", "early")
    nowhere = Problem("w.toml", None, "name", "no line")
    error = SquishfileError(Path("w.toml"), [nowhere, late, early])
    assert isinstance(error, ValueError)
    assert error.problems == (early, late, nowhere)
    assert str(error) == "w.toml:2: a: early\nw.toml:9: b: late\nw.toml: name: no line"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.problems, str(copy)) == (error.path, error.problems, str(error))
    with pytest.raises(ValueError, match="at least one problem"):
        SquishfileError(Path("w.toml"), [])


def test_the_example_in_the_format_reference_is_valid(tmp_path: Path) -> None:
    reference = Path(__file__).parents[1] / "docs" / "squishfile.md"
    example = reference.read_text(encoding="utf-8").split("```toml\n", 1)[1].split("```", 1)[0]
    spec = load_squishfile(write(tmp_path, example)).to_spec()
    assert [bind.target for bind in spec.binds] == ["/app/site", "/data"]
    assert [sdk.name for sdk in spec.sdks] == ["node", "python"]


# -- [restart], [update], [health] --------------------------------------------------------------


def test_update_and_health_sections_are_read_and_checked(tmp_path: Path) -> None:
    base = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "httpd"\n'
    good = tmp_path / "good.toml"
    good.write_text(base + '[update]\nstrategy = "start-first"\n[health]\ntcp = 80\nretries = 5\n')
    loaded = load_squishfile(good)
    assert loaded.update.strategy == "start-first"
    assert loaded.health is not None and (loaded.health.tcp, loaded.health.retries) == (80, 5)
    bad = tmp_path / "bad.toml"
    bad.write_text(base + '[update]\nstrategy = "sideways"\n[health]\ntcp = 0\nprobe = 1\n')
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(bad)
    found = {(p.line, p.field) for p in caught.value.problems}
    assert found == {(6, "update.strategy"), (8, "health.tcp"), (9, "health.probe")}


@pytest.mark.parametrize(
    ("tables", "strategy"),
    [
        ("", "stop-first"),  # nothing to wait for: the old container goes first
        ("[health]\ntcp = 80\n", "start-first"),  # the old one keeps its ports until then
        ("[update]\ndrain = 1\n[health]\ntcp = 80\n", "start-first"),
        ('[update]\nstrategy = "stop-first"\n[health]\ntcp = 80\n', "stop-first"),  # said so
        ('[update]\nstrategy = "start-first"\n', "start-first"),
    ],
)
def test_a_health_check_makes_start_first_the_default_strategy(
    tmp_path: Path, tables: str, strategy: str
) -> None:
    base = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "httpd"\n'
    assert load_squishfile(write(tmp_path, base + tables)).update.strategy == strategy


def problems_in_table(folder: Path, table: str, body: str) -> list[Problem]:
    """The problems of a minimal squishfile whose ``[table]`` (line 5) holds ``body``."""
    path = write(folder, f'[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n[{table}]\n{body}')
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(path)
    return list(caught.value.problems)


def test_a_health_command_is_an_array_or_a_shell_string(tmp_path: Path) -> None:
    base = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "httpd"\n[health]\n'
    array = write(tmp_path, base + 'command = ["test", "-f", "/tmp/ready"]\ntimeout = 2.5\n')
    health = load_squishfile(array).health
    assert health is not None
    assert (health.command, health.tcp, health.timeout) == (("test", "-f", "/tmp/ready"), None, 2.5)
    shell = write(tmp_path, base + 'command = "wget -q -O /dev/null http://127.0.0.1/"\n')
    health = load_squishfile(shell).health
    assert health is not None
    assert health.command == ("/bin/sh", "-c", "wget -q -O /dev/null http://127.0.0.1/")


@pytest.mark.parametrize(
    ("table", "line", "field"),
    [
        ("interval = 1\n", 5, "health"),  # neither tcp nor command
        ('tcp = 80\ncommand = "true"\n', 5, "health"),  # both
        ("command = []\n", 6, "health.command"),
        ("command = [1]\n", 6, "health.command[0]"),
        ('command = "true"\ntimeout = 0\n', 7, "health.timeout"),
    ],
)
def test_a_bad_health_table_names_its_line_and_field(
    tmp_path: Path, table: str, line: int, field: str
) -> None:
    problems = problems_in_table(tmp_path, "health", table)
    assert [(p.line, p.field) for p in problems] == [(line, field)]


def test_an_unknown_home_folder_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "home.toml"
    path.write_text(
        '[layers]\nbusybox = "builtin"\nsite = "~no-such-user-here/site"\n[run]\ncommand = "x"\n'
    )
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (3, "layers.site")
    assert "home folder that does not exist" in problem.message


# -- [security] ---------------------------------------------------------------------------------

_BASE = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n[security]\n'
_PROFILE = (
    '{"defaultAction": "SCMP_ACT_ALLOW", '
    '"syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]}'
)


def test_seccomp_defaults_to_dockers_and_may_be_switched_off(tmp_path: Path) -> None:
    plain = write(tmp_path, '[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n')
    assert load_squishfile(plain).to_spec().seccomp == "default"
    off = write(tmp_path, _BASE + 'seccomp = "unconfined"\n')
    assert load_squishfile(off).to_spec().seccomp == "unconfined"


def test_a_seccomp_profile_file_is_read_relative_to_the_squishfile(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tight.json").write_text(_PROFILE)
    path = write(tmp_path, _BASE + 'seccomp = "./profiles/tight.json"\n')
    squishfile = load_squishfile(path)
    spec = squishfile.to_spec()
    assert isinstance(spec.seccomp, dict)
    assert spec.seccomp["syscalls"][0]["names"] == ["getcwd"]
    [(used, digest)] = squishfile.security.inputs
    assert used == tmp_path / "profiles" / "tight.json" and len(digest) == 16


@pytest.mark.parametrize(
    ("value", "contents", "message"),
    [
        ('"strict"', None, 'must be "default", "unconfined" or a path'),
        ('"./missing.json"', None, "cannot read"),
        ('"./p.json"', "{not json", "is not JSON"),
        ('"./p.json"', '{"defaultAction": "SCMP_ACT_NOPE"}', "unknown action 'SCMP_ACT_NOPE'"),
        (
            '"./p.json"',
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["get pid"], '
            '"action": "SCMP_ACT_ERRNO"}]}',
            "'get pid' is not a syscall name",
        ),
    ],
)
def test_a_bad_seccomp_setting_names_its_line_and_field(
    tmp_path: Path, value: str, contents: str | None, message: str
) -> None:
    if contents is not None:
        (tmp_path / "p.json").write_text(contents)
    [problem] = problems_in_table(tmp_path, "security", f"seccomp = {value}\n")
    assert (problem.line, problem.field) == (6, "security.seccomp")
    assert message in problem.message


_UNKNOWN_SYSCALL = (
    '{"defaultAction": "SCMP_ACT_ALLOW", '
    '"syscalls": [{"names": ["frobnicate"], "action": "SCMP_ACT_ERRNO"}]}'
)


def test_the_model_checks_a_profiles_structure_and_its_caller_compiles_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "p.json").write_text(_UNKNOWN_SYSCALL)
    path = write(tmp_path, _BASE + 'seccomp = "./p.json"\n')
    spec = load_squishfile(path).to_spec()  # well formed: only libseccomp knows better
    assert isinstance(spec.seccomp, dict)
    with pytest.raises(SquishfileError) as caught:
        load_squishfile(path, check_profile=compile_profile)
    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (6, "security.seccomp")
    assert "unknown syscall 'frobnicate'" in problem.message
    [(_, error)] = validate_files([path], check_profile=compile_profile)
    assert error is not None and error.problems == caught.value.problems


def test_loading_squishfiles_loads_no_ffi(tmp_path: Path) -> None:
    """What the import contract says, at run time: validating a squishfile that names a
    profile loads neither ctypes nor libseccomp's wrapper."""
    (tmp_path / "p.json").write_text(_PROFILE)
    path = write(tmp_path, _BASE + 'seccomp = "./p.json"\n')
    script = (
        "import sys; from pathlib import Path; "
        "from reconciler.squishfile import load_squishfile; "
        f"load_squishfile(Path({str(path)!r})).to_spec(); "
        "print(sorted({'ctypes', 'runtime.security.seccomp'} & set(sys.modules)))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert found.stdout.strip() == "[]"


# -- [resources] --------------------------------------------------------------------------------


def test_resources_are_read_with_docker_units(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n[resources]\n'
        'memory = "256M"\nmemory_swap = "0"\ncpus = 0.5\ncpu_weight = 100\npids = 128\n',
    )
    resources = load_squishfile(path).to_spec().resources
    assert resources is not None
    assert resources.model_dump() == {
        "memory": 256 * 1024**2,
        "memory_swap": 0,
        "cpus": 0.5,
        "cpu_weight": 100,
        "pids": 128,
    }
    plain = write(tmp_path, '[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n', "p.toml")
    assert load_squishfile(plain).to_spec().resources is None
    assert load_squishfile(path).to_spec().proc_view is True  # on unless turned off


def test_proc_view_false_turns_the_proc_view_off(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[layers]\nbusybox = "builtin"\n[run]\ncommand = "x"\n[resources]\nproc_view = false\n',
    )
    spec = load_squishfile(path).to_spec()
    assert (spec.proc_view, spec.resources) == (False, None)


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('memory = "lots"', "resources.memory", "is not a size"),
        ('memory = "12"', "resources.memory", "≥ 1048576"),
        ("memory = 9999999999999999999", "resources.memory", "≤ 1125899906842624"),
        (f'memory = "{"9" * 400}"', "resources.memory", "≤ 1125899906842624"),
        (f'memory_swap = "{"9" * 400}k"', "resources.memory_swap", "≤ 1125899906842624"),
        ("cpus = 0", "resources.cpus", "> 0"),
        ("pids = 0", "resources.pids", "≥ 1"),
        ("cpu_weight = 20000", "resources.cpu_weight", "≤ 10000"),
        ("swap = 1", "resources.swap", 'unknown key "swap"'),
        ('proc_view = "no"', "resources.proc_view", "must be true or false"),
    ],
)
def test_a_bad_resource_names_its_line_and_field(
    tmp_path: Path, line: str, field: str, message: str
) -> None:
    [problem] = problems_in_table(tmp_path, "resources", line)
    assert (problem.line, problem.field) == (6, field)
    assert message in problem.message
