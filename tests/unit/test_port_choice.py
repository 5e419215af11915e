"""External ports are unpredictable when the preserved one is taken (issue 14, finding 4).

RFC 6056: port randomisation is a defence against off-path attacks. The table used to fall back
to `random.Random(0)`, so every start handed out 56364, 26271, 50696, 59367, 28586 in that order.
"""

import random
from socket import inet_aton

from appliance.config import ApplianceConfig
from appliance.flows import FlowTable, PortAllocator
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
