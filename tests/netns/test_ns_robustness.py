"""Bad input on both NICs leaves the appliance alive and forwarding."""

import pytest
import traffic
from routers import Nat
from topology import Topology

pytestmark = pytest.mark.netns


def test_malformed_burst(topology: Topology, nat: Nat) -> None:
    traffic.check_malformed_burst(topology, nat)
