"""Real traffic through the booted image: the namespace tier's checks, plus GRO aggregates and a
reset."""

import pytest

from tests.support import checks, traffic
from tests.support.routers import Nat, VmAppliance
from tests.support.services import Services
from tests.support.topology import Topology

pytestmark = pytest.mark.vm


def test_tcp_aggregates_translated_whole(
    topology: Topology, nat: VmAppliance, services: Services
) -> None:
    # The guest's GRO merges the download's segments; the appliance translates the aggregates.
    traffic.check_aggregates_translated_whole(topology, services, lambda: nat.counter("aggregates"))


@checks.parametrize(checks.ALL)
def test_check(check: checks.Check, nat: Nat, request: pytest.FixtureRequest) -> None:
    check.run(request)


def test_works_again_after_reset(topology: Topology, nat: VmAppliance) -> None:
    """A hardware reset reboots the guest; once it says READY again, NAT works again."""
    boots = nat.boots()
    nat.reset()
    nat.wait_ready(boots + 1)
    traffic.check_ping_lan_to_wan(topology)
    traffic.check_udp_endpoint_independent_mapping(topology)
