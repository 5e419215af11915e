"""The soak's machinery, run for two minutes (issue 14, point 5; `invoke soak` runs it longer).

The appliance under the soak's mixed traffic passes the soak's own verdict (RSS after the first
minute, the counters that must not move), and the samples show that traffic really went through
it: flows in the table, frames both ways, bytes moved by every kind of traffic. Its own topology,
servers and appliance, so that nothing else forwards on its links.
"""

from __future__ import annotations

import pytest

from soak.run import Report, soak_through, summary
from tests.support.fixtures import services_fixture, topology_fixture
from tests.support.services import Services
from tests.support.topology import Attach, Topology

pytestmark = pytest.mark.netns

topology = topology_fixture("module", "s", Attach.VETH)
services = services_fixture("module")

MINUTES = 2
INTERVAL = 5.0


@pytest.fixture(scope="module")
def report(topology: Topology, services: Services) -> Report:
    return soak_through(topology, services, MINUTES, INTERVAL, print)


def test_a_two_minute_soak_passes(report: Report) -> None:
    print("\n".join(summary(report, 60.0)))
    assert report.failures == []
    assert len(report.samples) == MINUTES * 60 / INTERVAL


def test_the_soak_sampled_real_traffic(report: Report) -> None:
    last = report.samples[-1]
    assert max(sample.counter("flows") for sample in report.samples) > 0
    for counter in ("wan_in", "wan_out", "lan_in", "lan_out"):
        assert last.counter(counter) > 10_000, (counter, last.counters)
    for counter in ("nat_tcp", "nat_udp", "nat_icmp"):  # ping: 5 a second
        assert last.counter(counter) > 100, (counter, last.counters)
    for kind, tally in report.traffic.items():
        assert tally.ok > 0, (kind, tally)
    assert report.traffic["iperf-tcp"].bytes > 10 << 20
    assert report.traffic["iperf-udp"].bytes > 1 << 20
    assert last.cpu_seconds > 0
