"""Real traffic through the booted image: the namespace tier's checks, plus a reset."""

import pytest

from tests.support import traffic
from tests.support.routers import Nat, VmAppliance
from tests.support.services import Services
from tests.support.topology import Topology

pytestmark = pytest.mark.vm


def test_ping_lan_to_wan(topology: Topology, nat: Nat) -> None:
    traffic.check_ping_lan_to_wan(topology)


def test_http_fetch(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_http_fetch(topology, services)


def test_http_bulk_download(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_http_bulk_download(topology, services)


def test_tcp_aggregates_translated_whole(
    topology: Topology, nat: VmAppliance, services: Services
) -> None:
    # The guest's GRO merges the download's segments; the appliance translates the aggregates.
    traffic.check_aggregates_translated_whole(topology, services, lambda: nat.counter("aggregates"))


def test_tcp_bulk_upload(topology: Topology, nat: Nat) -> None:
    traffic.check_tcp_bulk_upload(topology)


def test_iperf_bulk_upload(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_iperf_bulk_upload(topology, services)


def test_dns_query(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_dns_query(topology, services)


def test_udp_endpoint_independent_mapping(topology: Topology, nat: Nat) -> None:
    traffic.check_udp_endpoint_independent_mapping(topology)


def test_udp_address_dependent_filtering(topology: Topology, nat: Nat) -> None:
    traffic.check_udp_address_dependent_filtering(topology)


def test_ttl_expiry(topology: Topology, nat: Nat) -> None:
    traffic.check_ttl_expiry(topology)


def test_traceroute(topology: Topology, nat: Nat) -> None:
    traffic.check_traceroute(topology)


def test_udp_port_unreachable(topology: Topology, nat: Nat) -> None:
    traffic.check_udp_port_unreachable(topology)


def test_unsolicited_inbound_dropped(topology: Topology, nat: Nat) -> None:
    traffic.check_unsolicited_inbound_dropped(topology)


def test_port_forward_tcp(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_port_forward_tcp(topology, services)


def test_port_forward_udp(topology: Topology, nat: Nat) -> None:
    traffic.check_port_forward_udp(topology)


def test_hairpin_tcp(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_hairpin_tcp(topology, services)


def test_hairpin_udp(topology: Topology, nat: Nat) -> None:
    traffic.check_hairpin_udp(topology)


def test_udp_flood(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_udp_flood(topology, nat, services)


def test_ping_appliance_addresses(topology: Topology, nat: Nat) -> None:
    traffic.check_ping_appliance_addresses(topology)


def test_malformed_burst(topology: Topology, nat: Nat) -> None:
    traffic.check_malformed_burst(topology, nat)


def test_works_again_after_reset(topology: Topology, nat: VmAppliance) -> None:
    """A hardware reset reboots the guest; once it says READY again, NAT works again."""
    boots = nat.boots()
    nat.reset()
    nat.wait_ready(boots + 1)
    traffic.check_ping_lan_to_wan(topology)
    traffic.check_udp_endpoint_independent_mapping(topology)
