"""A flow that expires leaves nothing behind for the cyclic garbage collector.

The appliance runs for months; its table creates and drops millions of mappings. An object
that refers to itself (a mapping is its own first session's mapping) is freed only by the
cyclic collector, whose full passes are rare: its memory stays taken until then, and the soak
run's resident size grew with it. Reference counting alone must free an expired flow.
"""

import gc
from collections.abc import Iterator
from socket import inet_aton

import pytest

from appliance.config import ApplianceConfig
from appliance.flows import FlowTable, Mapping, Session
from appliance.packet import TCP, UDP

FLOWS = 500


@pytest.fixture
def no_cyclic_collection() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def uncollected_flows() -> int:
    """Mappings and sessions the cyclic collector still tracks: the live ones and garbage."""
    return sum(isinstance(thing, (Mapping, Session)) for thing in gc.get_objects())


@pytest.mark.parametrize("proto", [UDP, TCP])
def test_expired_flows_are_freed_without_the_cyclic_collector(
    demo_config: ApplianceConfig, proto: int, no_cyclic_collection: None
) -> None:
    table = FlowTable(demo_config.nat)
    before = uncollected_flows()
    for n in range(FLOWS):
        host = inet_aton(f"10.77.0.{10 + n % 200}")
        table.outbound(proto, host, 20000 + n, inet_aton("198.51.100.10"), 53, now=0.0)
        # a second remote: a mapping with a session besides its own
        table.outbound(proto, host, 20000 + n, inet_aton("198.51.100.11"), 53, now=0.0)
    assert uncollected_flows() - before >= FLOWS
    table.expire(now=1e9, budget=10 * FLOWS)
    assert table.session_count == 0
    assert uncollected_flows() - before == 0
