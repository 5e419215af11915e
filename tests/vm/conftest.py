"""VM tier: the built image under QEMU in the router namespace, its two NICs on taps.

The same topology and traffic checks as the namespace tier; the image is built once per session
into a directory of the session's own, and one VM serves every traffic test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from image import qemu
from image.build import Build
from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.imagebuild import build_image
from tests.support.routers import Nat, VmAppliance, tier_machine
from tests.support.topology import Attach, Topology

topology = topology_fixture("session", "vm-", Attach.TAP)
services = services_fixture("session")


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def accel(image: Build, request: pytest.FixtureRequest) -> str:
    """KVM if a guest really boots with it, else TCG; said in the test output either way."""
    chosen = qemu.choose_accel(image.out / "vmlinuz")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # setup output is captured otherwise
            reporter.write_line(f"VM tier accelerator: {chosen.upper()}")
    return chosen


@pytest.fixture(scope="session")
def nat(
    topology: Topology, image: Build, accel: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nat]:
    machine = tier_machine(image.out, topology, accel)
    vm = VmAppliance(topology, machine, tmp_path_factory.mktemp("qemu") / "monitor.sock")
    try:
        vm.start()
        yield vm
    finally:
        vm.stop()
