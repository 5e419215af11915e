"""External ports are unpredictable when the preserved one is taken (issue 14, finding 4).

RFC 6056: port randomisation is a defence against off-path attacks. The table used to fall back
to `random.Random(0)`, so every start handed out 56364, 26271, 50696, 59367, 28586 in that order.
"""

import random
from collections import Counter
from socket import inet_aton

import pytest

from appliance.config import ApplianceConfig
from appliance.flows import FlowTable, PortAllocator, SystemRandomSource
from appliance.packet import UDP

SERVER = inet_aton("198.51.100.10")


def replacement_ports(table: FlowTable, count: int = 5) -> list[int]:
    """The external ports of `count` hosts that all want internal port 5000 (the first keeps it)."""
    ports = []
    for host in range(count + 1):
        session = table.outbound(UDP, inet_aton(f"10.77.0.{10 + host}"), 5000, SERVER, 53, 0.0)
        ports.append(session.mapping.ext_port)
    assert ports[0] == 5000, "the first host keeps its port (port preservation)"
    return ports[1:]


def test_each_start_chooses_other_ports(demo_config: ApplianceConfig) -> None:
    first = replacement_ports(FlowTable(demo_config.nat))
    second = replacement_ports(FlowTable(demo_config.nat))
    assert first != second  # equal by chance: about one in 10**22
    assert first != [56364, 26271, 50696, 59367, 28586]


def test_an_injected_allocator_makes_the_choice_repeatable(demo_config: ApplianceConfig) -> None:
    def table() -> FlowTable:
        nat = demo_config.nat
        return FlowTable(nat, PortAllocator(nat.port_first, nat.port_last, random.Random(7)))

    assert replacement_ports(table()) == replacement_ports(table())


@pytest.mark.parametrize("stop", [1, 2, 3, 255, 256, 257, 65536])
def test_the_system_source_draws_every_value_below_stop_and_none_above(stop: int) -> None:
    source = SystemRandomSource()
    drawn = {source.randrange(stop) for _ in range(20 * stop if stop < 300 else 20000)}
    assert min(drawn) >= 0 and max(drawn) < stop
    if stop < 300:
        assert drawn == set(range(stop))  # each value missed in 20*stop draws: < 1e-6


def test_the_system_source_is_uniform_where_a_modulo_would_not_be() -> None:
    # Below 3 from 2 bits by modulo, 0 would come twice as often as 1 or 2. Each count's
    # standard deviation is about 67: 600 off is nine of them.
    counts = Counter(SystemRandomSource().randrange(3) for _ in range(20000))
    assert all(abs(counts[value] - 20000 / 3) < 600 for value in range(3)), counts
