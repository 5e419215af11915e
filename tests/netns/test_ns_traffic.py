"""LAN to WAN through the NAT: echo, TCP (small and bulk), UDP, TTL expiry, ICMP errors; and
WAN to LAN: filtering, port forwards, hairpinning, and the appliance's own addresses."""

import pytest

from tests.support import checks
from tests.support.routers import Nat

pytestmark = pytest.mark.netns
# The kernel reference filters address-and-port-dependent, so these skip under it.
APPLIANCE_ONLY = {"udp_address_dependent_filtering"}


@checks.parametrize(checks.LAN_TO_WAN + checks.WAN_TO_LAN)
def test_check(check: checks.Check, nat: Nat, request: pytest.FixtureRequest) -> None:
    if check.name in APPLIANCE_ONLY:
        request.getfixturevalue("appliance_only")
    check.run(request)
