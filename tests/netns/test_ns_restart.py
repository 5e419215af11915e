"""Flows survive a restart (issue 14, point 2; finding 3's regression test).

The appliance is killed with SIGKILL in the middle of a download that a LAN host started and
whose LAN side has nothing to send (`iperf3 -R`: the client only acknowledges what arrives), and
started again with the same state directory. Its predecessor filtered the server's
retransmissions after a restart, as it knew no mapping for them, and the client, with nothing to
say, never made one: the download stalled for good. Now the restarted appliance restores the
mapping and the download goes on after a stall. Its own topology and appliances.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import CONFIG
from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.routers import HostAppliance
from tests.support.services import Services
from tests.support.topology import SERVER_A, Attach, Topology, wait_for

pytestmark = pytest.mark.netns

topology = topology_fixture("module", "r", Attach.VETH)
services = services_fixture("module")

SIZE = 24 << 20  # bytes, sent at RATE: about 5 s, so the kill lands mid-transfer
RATE = "40M"
KILLED_FOR = 1.0  # seconds without an appliance: the client's last ACK is long gone
IDLE_LIMIT_MS = 20_000  # iperf3 gives up after this long without data: the old stall


def appliance_keeping_flows(topology: Topology, state: Path) -> HostAppliance:
    appliance = HostAppliance(topology, CONFIG)
    appliance.command += ["--state-dir", str(state)]
    appliance.start()
    return appliance


def test_a_download_goes_on_after_the_appliance_is_killed(
    topology: Topology, services: Services, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = appliance_keeping_flows(topology, state)
    client = topology.spawn(
        topology.lan_a.ns,
        "iperf3", "-c", SERVER_A, "-p", str(services.iperf_port), "-R", "-b", RATE,
        "-n", str(SIZE), "-J", "--connect-timeout", "5000", "--rcv-timeout", str(IDLE_LIMIT_MS),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for(lambda: first.counter("wan_in") > 500, "the download to start", 10.0)
    first.kill()
    killed_at = time.monotonic()
    time.sleep(KILLED_FOR)
    second = appliance_keeping_flows(topology, state)
    ready_after = time.monotonic() - killed_at
    try:
        out, _ = client.communicate(timeout=90)
    finally:
        client.kill()
        assert second.stop() == 0, "\n".join(second.output())
    restored = [line for line in second.output() if line.startswith("flows: restored")]
    assert restored and not restored[0].startswith("flows: restored 0 "), second.output()
    assert client.returncode == 0, out.decode(errors="replace")[-2000:]
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] >= SIZE, end["sum_received"]
    print(f"restarted READY {ready_after:.2f} s after the kill; {restored[0]}")
