"""Bad input on both NICs leaves the appliance alive and forwarding."""

import pytest

from tests.support import REPO, checks
from tests.support.routers import HostAppliance, Nat
from tests.support.topology import Topology

pytestmark = pytest.mark.netns


@checks.parametrize(checks.BAD_INPUT)
def test_check(check: checks.Check, nat: Nat, request: pytest.FixtureRequest) -> None:
    check.run(request)


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
