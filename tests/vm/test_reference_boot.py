"""The kernel-NAT reference image (`invoke build --reference`, its /init image/reference.py):
Linux forwards and translates inside the VM, the baseline of `invoke bench --vm`. One boot."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from image.build import Build
from tests.support.imagebuild import build_image
from tests.support.routers import VmAppliance, tier_machine
from tests.support.topology import SERVER_A, Attach, Topology, session_prefix, topology

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build_image(tmp_path_factory.mktemp("reference"), reference=True)


# Namespaces of its own: the taps of the traffic tests' VM are taken for the whole session.
@pytest.fixture(scope="module")
def wired() -> Iterator[Topology]:
    with topology(session_prefix() + "ref-", Attach.TAP) as built:
        yield built


def test_reference_image_forwards_a_ping_with_linux_nat(
    wired: Topology, reference_image: Build, accel: str, tmp_path: Path
) -> None:
    machine = tier_machine(reference_image.out, wired, accel, no_reboot=True)
    vm = VmAppliance(wired, machine, tmp_path / "monitor.sock")
    try:
        vm.start()
        assert any("kernel NAT reference" in line for line in vm.output())
        # The WAN host has no route to the LAN: a reply proves the VM masqueraded the ping.
        wired.run(wired.lan_a.ns, "ping", "-c", "2", "-W", "10", SERVER_A)
    finally:
        vm.stop()
