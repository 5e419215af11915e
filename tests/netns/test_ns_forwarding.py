"""LAN to WAN through the NAT: echo, TCP (small and bulk), UDP, TTL expiry, ICMP errors."""

import pytest

from tests.support import traffic
from tests.support.services import Services
from tests.support.topology import Topology

pytestmark = pytest.mark.netns


def test_ping_lan_to_wan(topology: Topology, nat: object) -> None:
    traffic.check_ping_lan_to_wan(topology)


def test_http_fetch(topology: Topology, nat: object, services: Services) -> None:
    traffic.check_http_fetch(topology, services)


def test_http_bulk_download(topology: Topology, nat: object, services: Services) -> None:
    traffic.check_http_bulk_download(topology, services)


def test_iperf_bulk_upload(topology: Topology, nat: object, services: Services) -> None:
    traffic.check_iperf_bulk_upload(topology, services)


def test_tcp_bulk_upload(topology: Topology, nat: object) -> None:
    traffic.check_tcp_bulk_upload(topology)


def test_dns_query(topology: Topology, nat: object, services: Services) -> None:
    traffic.check_dns_query(topology, services)


def test_udp_endpoint_independent_mapping(topology: Topology, nat: object) -> None:
    traffic.check_udp_endpoint_independent_mapping(topology)


def test_udp_address_dependent_filtering(
    topology: Topology, nat: object, appliance_only: None
) -> None:
    traffic.check_udp_address_dependent_filtering(topology)


def test_ttl_expiry(topology: Topology, nat: object) -> None:
    traffic.check_ttl_expiry(topology)


def test_traceroute(topology: Topology, nat: object) -> None:
    traffic.check_traceroute(topology)


def test_udp_port_unreachable(topology: Topology, nat: object) -> None:
    traffic.check_udp_port_unreachable(topology)
