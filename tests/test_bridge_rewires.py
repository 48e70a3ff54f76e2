"""A connect or disconnect cut short (its client killed between writing the spec and
wiring, or between wiring and releasing the address) is finished by the next sweep: the
state a kill leaves is made here by hand, at the exact step, then swept."""

from __future__ import annotations

from runtime.api.spec import ContainerSpec, NetworkAttachment, RootfsRef
from runtime.client.linux import LinuxRuntime
from runtime.client.networks import REWIRING
from runtime.network.addresses import leases_of, open_book
from tests.conftest import rootless

pytestmark = rootless

BUSYBOX = RootfsRef(kind="busybox", version="builtin")


def sleeper(name: str, *networks: str) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        rootfs=BUSYBOX,
        argv=("sleep", "600"),
        network="bridge",
        networks=tuple(NetworkAttachment(network=n) for n in networks),
    )


def interfaces(rt: LinuxRuntime, name: str) -> list[str]:
    return sorted(rt.exec_command(name, ("/bin/ls", "/sys/class/net")).output.split())


def test_a_connect_cut_after_its_spec_was_written_is_wired_by_the_next_sweep(
    nets: LinuxRuntime,
) -> None:
    before = nets.run(sleeper("cut1", "rw-front"))
    nets.run(sleeper("other1", "rw-back"))  # makes the network
    cdir = nets.containers / "cut1"
    (cdir / REWIRING).touch()  # what connect does first
    with open_book(nets.state) as book:
        book.lease("rw-back", "cut1")
    joined = (*before.spec.networks, NetworkAttachment(network="rw-back"))
    nets._write_spec(cdir, before.spec.model_copy(update={"networks": joined}))
    assert interfaces(nets, "cut1") == ["eth0", "lo"]  # killed here
    nets.sweep()
    after = nets.inspect("cut1")
    assert interfaces(nets, "cut1") == ["eth0", "eth1", "lo"]
    assert set(after.addresses) == {"rw-front", "rw-back"}
    assert (after.pid, after.pid_start_time) == (before.pid, before.pid_start_time)
    assert not (cdir / REWIRING).exists()


def test_a_disconnect_cut_before_its_address_was_released_is_finished_by_the_sweep(
    nets: LinuxRuntime,
) -> None:
    before = nets.run(sleeper("cut2", "rw-front", "rw-back"))
    cdir = nets.containers / "cut2"
    assert interfaces(nets, "cut2") == ["eth0", "eth1", "lo"]
    (cdir / REWIRING).touch()  # what disconnect does first
    left = before.spec.networks[:1]
    nets._write_spec(cdir, before.spec.model_copy(update={"networks": left}))
    nets.sweep()  # killed before it rewired and released: both still to do
    assert interfaces(nets, "cut2") == ["eth0", "lo"]
    assert set(leases_of(nets.state, "cut2")) == {"rw-front"}
    assert not (cdir / REWIRING).exists()
    assert nets.inspect("cut2").pid == before.pid


def test_a_folder_without_the_mark_and_leases_as_its_spec_says_is_left_alone(
    nets: LinuxRuntime,
) -> None:
    nets.run(sleeper("calm", "rw-front"))
    spec_file = nets.containers / "calm" / "spec.json"
    written = spec_file.stat().st_mtime_ns
    nets.sweep()
    assert spec_file.stat().st_mtime_ns == written  # not rewired for nothing
