"""Fixtures shared by the namespace and VM tiers.

Each tier's own conftest provides ``topology`` (how the appliance is attached), ``nat`` (what
forwards: the appliance as a host process, the VM, or the kernel reference) and ``services`` (the
servers of ``tests.support.services`` in that topology); ``topology`` and ``services`` come from
the factories of ``tests.support.fixtures``. They are per tier, not here: a session fixture here
would be built once, for whichever tier asked first, and handed to the other tier too.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before the first import from it: the support package's asserts (the traffic checks') say what
# they compared, as a test's own do.
pytest.register_assert_rewrite("tests.support")

from tests.support.routers import Nat  # noqa: E402
from tests.support.topology import session_prefix  # noqa: E402

TOOLS = ("ip", "ethtool", "nft", "ping", "curl", "dig", "dnsmasq", "traceroute", "iperf3", "ss")
ROOT_TIERS = ("netns", "vm", "xen", "libvirt")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: builds network namespaces")
    for item in items:
        if any(item.get_closest_marker(tier) for tier in ROOT_TIERS):
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if it left one of its namespaces behind."""
    run_dir = Path("/run/netns")
    left = sorted(p.name for p in run_dir.glob(f"{session_prefix()}*")) if run_dir.is_dir() else []
    if left:
        print(f"\nnamespaces left behind: {left}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def required_tools() -> None:
    """A tier that needs a tool fails without it: a skipped tier would hide a broken setup."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (install them as .ci/run does)")


@pytest.fixture(autouse=True)
def nat_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every traffic test (netns or vm tier) starts and ends with what forwards alive; a death
    is blamed on the test that saw it."""
    if "nat" not in request.fixturenames:
        yield
        return
    nat: Nat = request.getfixturevalue("nat")
    assert nat.alive(), f"the NAT ({nat.kind}) was dead before this test"
    yield
    tail = "\n".join(nat.output()[-20:])
    assert nat.alive(), f"the NAT ({nat.kind}) died during this test; its last output:\n{tail}"
