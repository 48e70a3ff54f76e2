"""The runtime's API for bridge networks: what a spec may say, and the network records
LinuxRuntime keeps (create, conflict, in use, leases freed at remove)."""

from __future__ import annotations

import fcntl
import os

import pytest
from pydantic import ValidationError

from runtime.api.spec import ContainerSpec, NetworkAttachment, NetworkSpec, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.errors import NetworkConflict, NetworkInUse, NetworkNotFound
from runtime.network.addresses import open_book
from tests.conftest import rootless

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def spec(name: str, **fields: object) -> ContainerSpec:
    return ContainerSpec(name=name, rootfs=BUSYBOX, argv=("sleep", "60"), **fields)


def test_bridge_needs_networks_and_networks_need_bridge() -> None:
    with pytest.raises(ValidationError, match="if and only if"):
        spec("a", network="bridge")
    with pytest.raises(ValidationError, match="if and only if"):
        spec("a", networks=(NetworkAttachment(network="n"),))
    joined = spec("a", network="bridge", networks=(NetworkAttachment(network="n"),))
    assert joined.networks[0].aliases == ()


def test_a_network_is_joined_once() -> None:
    twice = (NetworkAttachment(network="n"), NetworkAttachment(network="n", aliases=("x",)))
    with pytest.raises(ValidationError, match="joined twice"):
        spec("a", network="bridge", networks=twice)


@pytest.mark.parametrize("name", ["Upper", "-dash", "a b", "x" * 64])
def test_network_and_alias_names_are_lower_case_labels(name: str) -> None:
    with pytest.raises(ValidationError):
        NetworkSpec(name=name)
    with pytest.raises(ValidationError):
        NetworkAttachment(network="n", aliases=(name,))


@pytest.mark.parametrize("subnet", ["10.0.0.0/8", "10.1.2.0/30", "10.1.2.3/24", "fd00::/64"])
def test_subnets_outside_16_to_29_or_not_ipv4_are_refused(subnet: str) -> None:
    with pytest.raises(ValidationError):
        NetworkSpec(name="n", subnet=subnet)


@rootless
def test_ensure_network_is_idempotent_and_refuses_other_settings(rt: LinuxRuntime) -> None:
    made = rt.ensure_network(NetworkSpec(name="apinet", subnet="10.77.0.0/24"))
    try:
        assert (made.subnet, made.gateway, made.containers) == ("10.77.0.0/24", "10.77.0.1", {})
        assert rt.ensure_network(NetworkSpec(name="apinet", subnet="10.77.0.0/24")) == made
        with pytest.raises(NetworkConflict, match="internal"):
            rt.ensure_network(NetworkSpec(name="apinet", internal=True))
        assert [n.name for n in rt.list_networks()] == ["apinet"]
    finally:
        rt.remove_network("apinet")
    assert rt.list_networks() == []
    rt.remove_network("apinet")  # unknown: no error


@rootless
def test_a_stopped_container_connects_and_holds_its_address_until_removed(
    rt: LinuxRuntime,
) -> None:
    rt.ensure_network(NetworkSpec(name="apinet"))
    rt.create(spec("api1", network="none"))
    with pytest.raises(NetworkNotFound):
        rt.connect("api1", NetworkAttachment(network="nowhere"))
    info = rt.connect("api1", NetworkAttachment(network="apinet", aliases=("one",)))
    assert info.spec.network == "bridge"
    address = info.addresses["apinet"]
    assert rt.list_networks()[0].containers == {"api1": address}
    with pytest.raises(NetworkInUse, match="api1"):
        rt.remove_network("apinet")
    with pytest.raises(ValueError, match="last network"):
        rt.disconnect("api1", "apinet")
    rt.remove("api1")
    assert rt.list_networks()[0].containers == {}
    rt.remove_network("apinet")


@rootless
def test_sweep_frees_the_addresses_a_killed_client_left(rt: LinuxRuntime) -> None:
    rt.ensure_network(NetworkSpec(name="apinet"))
    rt.create(spec("kept", network="bridge", networks=(NetworkAttachment(network="apinet"),)))
    with open_book(rt.state) as book:  # as a create killed after its lease leaves it
        book.lease("apinet", "half-made")
    making = rt.containers / ".new-being-made-abc123de"  # a create under way: locked
    making.mkdir()
    lock = os.open(making / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with open_book(rt.state) as book:
        book.lease("apinet", "being-made")
    rt.sweep()
    assert sorted(rt.list_networks()[0].containers) == ["being-made", "kept"]
    os.close(lock)  # its client was killed: the next sweep takes both
    rt.sweep()
    assert sorted(rt.list_networks()[0].containers) == ["kept"]
    rt.remove("kept")
    rt.remove_network("apinet")
