"""Fixtures shared by the namespace and VM tiers.

Each tier's own conftest provides ``topology`` (how the appliance is attached) and ``nat`` (what
forwards: the appliance as a host process, the VM, or the kernel reference). The servers run in the
topology's namespaces and are the same for both tiers.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("traffic")

from services import Services, running_services  # noqa: E402
from topology import Topology, session_prefix  # noqa: E402

TOOLS = ("ip", "ethtool", "nft", "ping", "curl", "dig", "dnsmasq", "traceroute", "iperf3", "ss")
ROOT_TIERS = ("netns", "vm")


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


@pytest.fixture(scope="session")
def services(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The servers of ``services.py``, for the whole session."""
    with running_services(topology, tmp_path_factory.mktemp("services")) as started:
        yield started
