"""Networks in squishfiles and ``NAME.network.toml`` files: what they become in the spec,
and every bad input reported at its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.desired.folder import load_desired
from reconciler.desired.validation import validate_files
from reconciler.problems import Problem, SquishfileError
from reconciler.squishfile import load_network_file, load_squishfile, model
from reconciler.squishfile.networks import (
    local_network_name,
    network_prefix,
    runtime_network_name,
)
from runtime.api import NETWORK_NAME, NetworkAttachment
from tests.test_squishfile import write

BASE = '[layers]\nbusybox = "builtin"\n[run]\ncommand = "sh"\n'


def marked_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.endswith("# <-"))


def problems(path: Path, loader: object = load_squishfile) -> tuple[Problem, ...]:
    assert callable(loader)
    with pytest.raises(SquishfileError) as caught:
        loader(path)
    return caught.value.problems


# -- what a squishfile joins ------------------------------------------------------------------


def test_no_network_written_joins_the_folder_network(tmp_path: Path) -> None:
    spec = load_squishfile(write(tmp_path, BASE)).to_spec()
    assert spec.network == "bridge"
    assert spec.networks == (NetworkAttachment(network=runtime_network_name(tmp_path, "default")),)


@pytest.mark.parametrize(("written", "network"), [("isolated", "slirp4netns"), ("none", "none")])
def test_isolated_and_none_join_no_network(tmp_path: Path, written: str, network: str) -> None:
    spec = load_squishfile(write(tmp_path, f'network = "{written}"\n' + BASE)).to_spec()
    assert (spec.network, spec.networks) == (network, ())


def test_the_former_name_of_isolated_still_means_it(tmp_path: Path) -> None:
    spec = load_squishfile(write(tmp_path, 'network = "slirp4netns"\n' + BASE)).to_spec()
    assert (spec.network, spec.networks) == ("slirp4netns", ())


def test_named_networks_are_joined_in_the_order_written(tmp_path: Path) -> None:
    spec = load_squishfile(write(tmp_path, 'networks = ["front", "back"]\n' + BASE)).to_spec()
    assert [a.network for a in spec.networks] == [
        runtime_network_name(tmp_path, "front"),
        runtime_network_name(tmp_path, "back"),
    ]


def test_tables_give_aliases_and_default_names_the_folder_network(tmp_path: Path) -> None:
    text = BASE + '[networks.back]\naliases = ["db", "database"]\n[networks.default]\n'
    spec = load_squishfile(write(tmp_path, text)).to_spec()
    assert spec.networks == (
        NetworkAttachment(
            network=runtime_network_name(tmp_path, "back"), aliases=("db", "database")
        ),
        NetworkAttachment(network=runtime_network_name(tmp_path, "default")),
    )


def test_two_folders_of_one_name_have_networks_apart(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "desired", tmp_path / "b" / "desired"
    assert runtime_network_name(one, "back") != runtime_network_name(two, "back")
    assert network_prefix(one).startswith("sq-desired-")


def test_runtime_names_fit_the_runtime_and_map_back(tmp_path: Path) -> None:
    folder = tmp_path / ("A Very Long Folder Name, With Spaces" * 3)
    name = "n" * 32
    runtime_name = runtime_network_name(folder, name)
    assert NetworkAttachment(network=runtime_name).network == runtime_name  # NETWORK_NAME
    assert local_network_name(folder, runtime_name) == name
    assert local_network_name(tmp_path, runtime_name) is None
    assert NETWORK_NAME.startswith("^")


# -- bad squishfiles, at their line -----------------------------------------------------------

SQUISHFILE_ERRORS = [
    ('networks = ["back", "Back"]  # <-\n' + BASE, "networks[1]", "not a valid network name"),
    ('networks = ["back", "back"]  # <-\n' + BASE, "networks[1]", "already joined by networks[0]"),
    ('networks = ["' + "n" * 33 + '"]  # <-\n' + BASE, "networks[0]", "1 to 32"),
    ("networks = 5  # <-\n" + BASE, "networks", "must be an array of network names"),
    (
        'network = "isolated"\nnetworks = ["back"]  # <-\n' + BASE,
        "networks",
        'network = "isolated" joins no networks',
    ),
    ('network = "bridge"  # <-\n' + BASE, "network", '"isolated", "none"'),
    (BASE + '[networks.back]\naliases = ["-db"]  # <-\n', "networks.back.aliases[0]", "DNS label"),
    (BASE + '[networks.back]\naliases = ["d_b"]  # <-\n', "networks.back.aliases[0]", "DNS label"),
    (BASE + "[networks.back]\nalias = []  # <-\n", "networks.back.alias", 'did you mean "aliases"'),
    (BASE + "[networks.Back]  # <-\n", "networks.Back", "not a valid network name"),
    (BASE + '[networks.back]\naliases = "db"  # <-\n', "networks.back.aliases", "must be an array"),
]


@pytest.mark.parametrize(
    ("text", "field", "message"), SQUISHFILE_ERRORS, ids=[c[1] for c in SQUISHFILE_ERRORS]
)
def test_a_bad_network_entry_is_reported_at_its_line(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    path = write(tmp_path, text)
    found = [p for p in problems(path) if p.field == field]
    assert found, f"no problem on {field}: {[str(p) for p in problems(path)]}"
    assert message in found[0].message
    assert (found[0].file, found[0].line) == (str(path), marked_line(text))


# -- network files ----------------------------------------------------------------------------


def test_a_network_file_sets_subnet_internal_and_dns(tmp_path: Path) -> None:
    text = 'subnet = "10.89.7.0/24"\ninternal = true\ndns = false\n'
    settings = load_network_file(write(tmp_path, text, "back.network.toml"))
    assert (settings.subnet, settings.internal, settings.dns) == ("10.89.7.0/24", True, False)


def test_an_empty_network_file_gives_the_defaults(tmp_path: Path) -> None:
    settings = load_network_file(write(tmp_path, "", "back.network.toml"))
    assert (settings.subnet, settings.internal, settings.dns) == (None, False, True)


NETWORK_FILE_ERRORS = [
    ('subnet = "10.89.7.1/24"  # <-\n', "subnet", "host bits set"),
    ('subnet = "10.0.0.0/8"  # <-\n', "subnet", "use a /16 to /29"),
    ('subnet = "10.89.7.0/30"  # <-\n', "subnet", "is a /30"),
    ('subnet = "fd00::/64"  # <-\n', "subnet", "not an IPv4 subnet"),
    ('subnet = "ten"  # <-\n', "subnet", "not an IPv4 subnet"),
    # addresses a bridge cannot have: slirp4netns' own network in the shared namespace,
    # the loopback's, multicast, the unspecified and link-local ranges
    ('subnet = "10.0.2.0/24"  # <-\n', "subnet", "slirp4netns' network 10.0.2.0/24"),
    ('subnet = "10.0.0.0/16"  # <-\n', "subnet", "slirp4netns' network 10.0.2.0/24"),
    ('subnet = "127.0.0.0/24"  # <-\n', "subnet", "a loopback range"),
    ('subnet = "224.0.0.0/24"  # <-\n', "subnet", "a multicast range"),
    ('subnet = "0.0.0.0/16"  # <-\n', "subnet", "the unspecified range"),
    ('subnet = "169.254.0.0/16"  # <-\n', "subnet", "a link-local range"),
    ('subnet = "240.0.0.0/24"  # <-\n', "subnet", "a reserved range"),
    ("subnet = 10  # <-\n", "subnet", "must be a string"),
    ('internal = "yes"  # <-\n', "internal", "must be true or false"),
    ("dns = 1  # <-\n", "dns", "must be true or false"),
    ("dsn = false  # <-\n", "dsn", 'did you mean "dns"'),
    ("[aliases]  # <-\n", "aliases", "unknown key"),
    ("subnet = = 1  # <-\n", "<syntax>", ""),
]


@pytest.mark.parametrize(
    ("text", "field", "message"),
    NETWORK_FILE_ERRORS,
    ids=[c[2] or c[1] for c in NETWORK_FILE_ERRORS],
)
def test_a_bad_network_file_is_reported_at_its_line(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    path = write(tmp_path, text, "back.network.toml")
    found = [p for p in problems(path, load_network_file) if p.field == field]
    assert found and message in found[0].message
    assert (found[0].file, found[0].line) == (str(path), marked_line(text))


def test_a_network_file_named_badly_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, 'subnet = "10.89.7.0/24"\n', "Back.network.toml")
    (problem,) = problems(path, load_network_file)
    assert (problem.field, problem.line) == ("<file>", None)
    assert '"Back" is not a valid network name' in problem.message


def test_the_examples_in_desired_are_a_pair_on_one_network() -> None:
    desired = load_desired(Path(__file__).resolve().parents[1] / "desired")
    web, db = desired.containers["web"].spec, desired.containers["db"].spec
    assert [a.network for a in web.networks] == [a.network for a in db.networks]
    assert db.networks[0].aliases == ("database",) and not db.ports
    assert web.env["DATABASE"] == "db:5432"


def test_overlapping_subnets_are_refused_at_the_later_file(tmp_path: Path) -> None:
    write(tmp_path, 'subnet = "10.89.40.0/24"\n', "a.network.toml")
    write(tmp_path, 'internal = true\nsubnet = "10.89.0.0/16"  # <-\n', "b.network.toml")
    desired = load_desired(tmp_path)
    assert [n.name for n in desired.networks.values()] == ["a"]
    (error,) = desired.network_errors
    (problem,) = error.problems
    assert (error.name, problem.field, problem.line) == ("b", "subnet", 2)
    assert problem.message == "10.89.0.0/16 overlaps 10.89.40.0/24 of a.network.toml"


def test_validate_refuses_the_overlapping_subnet_the_loop_refuses(tmp_path: Path) -> None:
    a = write(tmp_path, 'subnet = "10.89.40.0/24"\n', "a.network.toml")
    b = write(tmp_path, 'internal = true\nsubnet = "10.89.0.0/16"\n', "b.network.toml")
    results = dict(validate_files([a, b]))
    assert results[a] is None
    error = results[b]
    assert error is not None
    (problem,) = error.problems
    assert (problem.file, problem.field, problem.line) == (str(b), "subnet", 2)
    assert problem.message == "10.89.0.0/16 overlaps 10.89.40.0/24 of a.network.toml"


def test_the_default_can_be_flipped_back_to_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "DEFAULT_NETWORK", "isolated")
    spec = load_squishfile(write(tmp_path, BASE)).to_spec()
    assert (spec.network, spec.networks) == ("slirp4netns", ())
    named = load_squishfile(write(tmp_path, 'networks = ["back"]\n' + BASE)).to_spec()
    assert [a.network for a in named.networks] == [runtime_network_name(tmp_path, "back")]
