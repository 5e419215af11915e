"""Bulk TCP with offloads on: the hosts' veths do checksum offload, TSO and GSO, and the
appliance's interfaces GRO, so the appliance reads TCP aggregates of up to 64 KiB with partial
checksums (virtio_net_hdr) and hands them back for the kernel to segment. Its own topology:
the rest of the tier keeps offloads off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import traffic
from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.routers import HostAppliance, Nat, host_mode_nat
from tests.support.services import Services
from tests.support.topology import Attach, Topology

pytestmark = pytest.mark.netns

topology = topology_fixture("module", "o", Attach.VETH, offloads=True)
services = services_fixture("module")


@pytest.fixture(scope="module")
def nat(topology: Topology) -> Iterator[Nat]:
    with host_mode_nat(topology) as router:
        yield router
    output = "\n".join(router.output())
    if router.kind == "appliance":
        assert " tx_errors=0" in output, output


def test_bulk_download_with_offloads(topology: Topology, nat: Nat, services: Services) -> None:
    if isinstance(nat, HostAppliance):
        counter = nat.counter
        traffic.check_aggregates_translated_whole(topology, services, lambda: counter("aggregates"))
    else:  # Linux's NAT has no such counter
        traffic.check_http_bulk_download(topology, services)


def test_bulk_upload_with_offloads(topology: Topology, nat: Nat) -> None:
    traffic.check_tcp_bulk_upload(topology)


def test_ping_with_offloads(topology: Topology, nat: Nat) -> None:
    # (Not check_http_fetch: its capture would see the senders' partial checksums.)
    traffic.check_ping_lan_to_wan(topology)
