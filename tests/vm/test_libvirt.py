"""The libvirt tier: a real libvirtd runs natvm's domain from a copy of the build's libvirt.xml.

The VM tier's session image is copied to a folder of its own (so libvirt.xml is shown to work
away from the build directory, and libvirt's QEMU user can read it), defined with that folder's
libvirt-define.sh, as type qemu when KVM is unusable, and started on two bridges in the root
namespace, named as libvirt.xml names them (RunConfig.Nics[].BridgeName). The bridges carry no
address and their only other ports are veths into the test's namespaces: traffic stays there.
A LAN host pings and fetches a page through the domain; then it is destroyed and undefined.

Part of the VM tier (its image and its accelerator probe) and its own marker: ``-m libvirt``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image import deploy
from image.build import Build
from tests.support import checks
from tests.support import topology as wiring
from tests.support.fixtures import services_fixture
from tests.support.libvirt import LibvirtDomain, running_libvirtd
from tests.support.topology import Attach, Topology, session_prefix

pytestmark = [pytest.mark.vm, pytest.mark.libvirt]


# `topology`, `services` and `nat` stand in, for this module, for the VM tier's: the traffic
# checks and the liveness check of tests/conftest.py find them by these names.
@pytest.fixture(scope="module")
def topology(image: Build, required_tools: None) -> Iterator[Topology]:
    """Test namespaces on root-namespace bridges named as the build's libvirt.xml names them."""
    prefix = session_prefix() + "libvirt-"
    with wiring.topology(prefix, Attach.ROOT_BRIDGES, bridges=image.vm.bridges) as wired:
        yield wired


services = services_fixture("module")


@pytest.fixture(scope="module")
def deployed(image: Build) -> Iterator[Path]:
    """The build folder copied elsewhere, where libvirt's QEMU user (not root) can read it:
    pytest's own temporary folders are root's alone."""
    folder = Path(tempfile.mkdtemp(prefix=session_prefix() + "libvirt-"))
    try:
        shutil.copytree(image.out, folder, dirs_exist_ok=True)
        folder.chmod(0o755)  # after the copy, which gives it the build folder's mode
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def nat(
    topology: Topology, deployed: Path, accel: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LibvirtDomain]:
    with running_libvirtd(tmp_path_factory.mktemp("libvirtd")):
        domain = LibvirtDomain(deployed, deploy.LIBVIRT_TYPES[accel])
        try:
            domain.start()
            yield domain
        finally:
            domain.stop()


def _ip_json(*argv: str) -> list[dict[str, Any]]:
    shown = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, check=True)
    return list(json.loads(shown.stdout or "[]"))


def test_domain_runs_on_the_test_bridges_only(
    topology: Topology, nat: LibvirtDomain, accel: str
) -> None:
    """Its NICs are on the test's bridges, whose other ports are veths into the test's
    namespaces; no bridge and no port has an address."""
    print(f"virsh start -> READY {nat.ready_after:.1f} s (domain type {nat.running_type()})")
    assert nat.running_type() == deploy.LIBVIRT_TYPES[accel]
    taps = nat.interfaces()
    assert list(taps.values()) == [topology.appliance_wan, topology.appliance_lan]
    namespaces = {entry["nsid"]: entry["name"] for entry in _ip_json("netns", "list-id")}
    peers = {
        topology.appliance_wan: [topology.wan.ns],
        topology.appliance_lan: [topology.lan_a.ns, topology.lan_b.ns],
    }
    for tap, bridge in taps.items():
        ports = _ip_json("-d", "link", "show", "master", bridge)
        veths = [p for p in ports if p["ifname"] != tap]
        assert len(ports) == len(veths) + 1, bridge
        assert {p["linkinfo"]["info_kind"] for p in veths} == {"veth"}, bridge
        assert sorted(namespaces[p["link_netnsid"]] for p in veths) == sorted(peers[bridge])
        for ifname in (bridge, tap, *(p["ifname"] for p in veths)):
            assert _ip_json("address", "show", "dev", ifname)[0].get("addr_info") == [], ifname


@checks.parametrize(checks.select("ping_lan_to_wan", "http_fetch"))
def test_check(check: checks.Check, nat: LibvirtDomain, request: pytest.FixtureRequest) -> None:
    check.run(request)
