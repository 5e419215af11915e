"""Bulk TCP with offloads on: the hosts' veths do checksum offload, TSO and GSO, and the
appliance's interfaces GRO, so the appliance reads TCP aggregates of up to 64 KiB with partial
checksums (virtio_net_hdr) and hands them back for the kernel to segment. Its own topology:
the rest of the tier keeps offloads off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import traffic
from routers import HostAppliance, Nat, host_mode_nat
from services import Services, running_services
from topology import Attach, Topology, session_prefix
from topology import topology as built_topology

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def topology(required_tools: None) -> Iterator[Topology]:
    with built_topology(session_prefix() + "o", Attach.VETH, offloads=True) as topo:
        yield topo


@pytest.fixture(scope="module")
def services(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(topology, tmp_path_factory.mktemp("offload-services")) as started:
        yield started


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
