"""Namespace tier: the appliance as a host process in the router namespace, on veth pairs.

``NATVM_TEST_REFERENCE=kernel`` puts Linux's own NAT there instead (see ``routers.KernelNat``):
that validates the topology and the tests, not the appliance.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.routers import Nat, host_mode_nat
from tests.support.topology import Attach, Topology

topology = topology_fixture("session", "", Attach.VETH)
services = services_fixture("session")


@pytest.fixture(scope="session")
def nat(topology: Topology) -> Iterator[Nat]:
    """What forwards for the whole session (see routers.host_mode_nat)."""
    with host_mode_nat(topology) as router:
        yield router


@pytest.fixture
def appliance_only(nat: Nat) -> None:
    """Skip what only the appliance does, when the kernel reference forwards instead."""
    if nat.kind == "kernel":
        pytest.skip("the kernel reference: filtering address-and-port-dependent, no CLI")
