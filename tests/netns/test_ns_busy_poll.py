"""`busy_poll_us`: after a frame the appliance keeps polling instead of sleeping, for as long as
configured, and then sleeps again. Its own topology and appliance (the setting is per process).
What it buys (no wake-up latency) is a figure for `invoke bench --busy-poll`, not a test."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, traffic
from tests.support.fixtures import topology_fixture
from tests.support.routers import HostAppliance
from tests.support.topology import Attach, Topology

pytestmark = pytest.mark.netns

BUSY_POLL_S = 1.0  # the longest the setting allows

topology = topology_fixture("module", "p", Attach.VETH)


@pytest.fixture(scope="module")
def busy_appliance(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    document = json.loads((REPO / "ops-config.json").read_text())
    document["ManifestPassthrough"]["nat"]["busy_poll_us"] = int(BUSY_POLL_S * 1e6)
    config = Path(tmp_path_factory.mktemp("busy-poll")) / "config.json"
    config.write_text(json.dumps(document))
    appliance = HostAppliance(topology, config)
    appliance.start()
    assert appliance.pid is not None
    yield appliance.pid
    assert appliance.stop() == 0, "\n".join(appliance.output())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def test_busy_polls_after_traffic_then_sleeps(topology: Topology, busy_appliance: int) -> None:
    traffic.check_ping_lan_to_wan(topology)
    # Right after a frame the loop does not sleep: about one CPU (at least half of one,
    # whatever else the machine runs); once the window has passed, nearly nothing.
    out = topology.run(topology.lan_a.ns, "ping", "-c", "1", "-W", "2", traffic.SERVER_A)
    assert " 0% packet loss" in out.stdout, out.stdout
    assert cpu_share(busy_appliance, BUSY_POLL_S / 2) > 0.5
    time.sleep(BUSY_POLL_S)
    assert cpu_share(busy_appliance, 1.0) < 0.2
