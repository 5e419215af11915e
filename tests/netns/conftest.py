"""Namespace tier: the appliance as a host process in the router namespace, on veth pairs.

``NATVM_TEST_REFERENCE=kernel`` puts Linux's own NAT there instead (see ``routers.KernelNat``):
that validates the topology and the tests, not the appliance.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from routers import Nat, host_mode_nat
from services import Services, running_services
from topology import Attach, Topology, session_prefix
from topology import topology as built_topology


@pytest.fixture(scope="session")
def topology(required_tools: None) -> Iterator[Topology]:
    with built_topology(session_prefix(), Attach.VETH) as topo:
        yield topo


@pytest.fixture(scope="session")
def services(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(topology, tmp_path_factory.mktemp("services")) as started:
        yield started


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
