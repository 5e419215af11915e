"""natvm in the smallest guest it boots in: it forwards, and it survives the VM tier's UDP
floods both ways (issue 13). The figure is bisected with this file: in a guest 2 MiB smaller the
kernel cannot unpack the initramfs (its files, 13.8 MB, and the compressed archive must fit at
once), and Python finds half its standard library missing."""

from pathlib import Path

import pytest

from image.build import Build
from tests.support import traffic
from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.routers import VmAppliance, tier_machine
from tests.support.services import Services
from tests.support.topology import Attach, Topology

pytestmark = pytest.mark.vm

topology = topology_fixture("module", "small-", Attach.TAP)
services = services_fixture("module")

SMALLEST_GUEST_MIB = 48


def test_the_smallest_guest_boots_forwards_and_takes_udp_floods(
    topology: Topology, services: Services, image: Build, accel: str, tmp_path: Path
) -> None:
    machine = tier_machine(
        image.out, topology, accel, no_reboot=True, memory_mib=SMALLEST_GUEST_MIB
    )
    vm = VmAppliance(topology, machine, tmp_path / "monitor.sock")
    try:
        vm.start()
        memory = [line for line in vm.output() if line.startswith("natvm: memory: ")]
        print(f"-m {SMALLEST_GUEST_MIB}: " + " | ".join(memory))
        traffic.check_ping_lan_to_wan(topology)
        traffic.check_udp_flood(topology, vm, services)
        assert not [line for line in vm.output() if "restart" in line], vm.output()[-10:]
    finally:
        vm.stop()
