"""Bad input on both NICs leaves the appliance alive and forwarding."""

import pytest

from tests.support import REPO, traffic
from tests.support.routers import HostAppliance, Nat
from tests.support.services import Services
from tests.support.topology import Topology

pytestmark = pytest.mark.netns


def test_malformed_burst(topology: Topology, nat: Nat) -> None:
    traffic.check_malformed_burst(topology, nat)


def test_udp_flood(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_udp_flood(topology, nat, services)


def test_missing_interface_is_one_clear_line(
    topology: Topology, nat: Nat, appliance_only: None
) -> None:
    """A missing interface ends the program non-zero with one line naming it, no traceback."""
    assert isinstance(nat, HostAppliance)
    command = [*nat.command]
    command[command.index("--wan") + 1] = "nosuch0"
    result = topology.run(topology.router, *command, check=False, cwd=REPO)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and "nosuch0" in lines[0], lines
