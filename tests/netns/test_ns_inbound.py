"""WAN to LAN: filtering, port forwards, hairpinning, and the appliance's own addresses."""

import pytest

from tests.support import traffic
from tests.support.services import Services
from tests.support.topology import Topology

pytestmark = pytest.mark.netns


def test_unsolicited_inbound_dropped(topology: Topology, nat: object) -> None:
    traffic.check_unsolicited_inbound_dropped(topology)


def test_port_forward_tcp(topology: Topology, nat: object, services: Services) -> None:
    traffic.check_port_forward_tcp(topology, services)


def test_port_forward_udp(topology: Topology, nat: object) -> None:
    traffic.check_port_forward_udp(topology)


def test_hairpin_tcp(topology: Topology, nat: object, services: Services) -> None:
    traffic.check_hairpin_tcp(topology, services)


def test_hairpin_udp(topology: Topology, nat: object) -> None:
    traffic.check_hairpin_udp(topology)


def test_ping_appliance_addresses(topology: Topology, nat: object) -> None:
    traffic.check_ping_appliance_addresses(topology)
