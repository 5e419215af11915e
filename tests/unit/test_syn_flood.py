"""Half-open TCP connections and SYN floods at a port forward (issue 14, finding 2).

Before: a SYN plus a SYN-ACK made a session ESTABLISHED (7,440 s) without the handshake's last
ACK, and sessions opened through a forward counted against the LAN host's own budget, so 200k
spoofed SYNs at a forward locked the host out for two hours and the forward refused real clients.
"""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from appliance.config import ApplianceConfig
from appliance.engine import Side
from tests.unit.nat_harness import HOST, SERVER, WAN_IP, Harness, make_harness

LAN, WAN = Side.LAN, Side.WAN
FORWARD_PORT, FORWARDED_TO = 8080, 80  # ops-config.json: tcp 8080 -> 10.77.0.10:80
TRANSITORY = 240


def inbound_syn(harness: Harness, client: str, port: int) -> list[tuple[Side, Ether]]:
    syn = IP(src=client, dst=WAN_IP) / TCP(sport=port, dport=FORWARD_PORT, flags="S", seq=1)
    return harness.send(WAN, syn)


def syn_ack_from_host(harness: Harness, client: str, port: int) -> None:
    answer = IP(src=HOST, dst=client) / TCP(sport=FORWARDED_TO, dport=port, flags="SA", ack=2)
    harness.one(LAN, answer, WAN)


def last_ack_from_client(harness: Harness, client: str, port: int) -> None:
    ack = IP(src=client, dst=WAN_IP) / TCP(sport=port, dport=FORWARD_PORT, flags="A")
    harness.one(WAN, ack, LAN)


def spoofed_client(n: int) -> str:
    return f"203.0.113.{n % 250 + 1}"


def syn_flood(harness: Harness, clients: range, first_port: int) -> None:
    """SYNs at the forward from spoofed clients, each from a port of its own."""
    for n in clients:
        inbound_syn(harness, spoofed_client(n), first_port + n)


def test_outbound_syn_and_syn_ack_without_the_last_ack_stays_transitory(harness: Harness) -> None:
    start = harness.now
    harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=42100, dport=80, flags="S"), WAN)
    harness.one(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=42100, flags="SA"), LAN)
    harness.advance(start + TRANSITORY + 1)
    assert len(harness.nat.table) == 0, "a connection without its last ACK is not established"


def test_inbound_handshake_without_the_last_ack_stays_transitory(harness: Harness) -> None:
    start = harness.now
    assert len(inbound_syn(harness, SERVER, 50000)) == 1
    syn_ack_from_host(harness, SERVER, 50000)
    harness.advance(start + TRANSITORY + 1)
    assert len(harness.nat.table) == 0


def test_inbound_handshake_completed_is_established(harness: Harness) -> None:
    start = harness.now
    inbound_syn(harness, SERVER, 50001)
    syn_ack_from_host(harness, SERVER, 50001)
    last_ack_from_client(harness, SERVER, 50001)
    harness.advance(start + TRANSITORY + 1)
    assert len(harness.nat.table) == 1, "the completed handshake gets the established timeout"


def test_syn_flood_at_a_forward_leaves_the_host_its_own_budget(
    demo_config: ApplianceConfig,
) -> None:
    harness = make_harness(demo_config, max_flows_per_host=16)
    for n in range(200):
        inbound_syn(harness, spoofed_client(n), 10000 + n)
        syn_ack_from_host(harness, spoofed_client(n), 10000 + n)
    assert harness.nat.counters.refused == {}
    # The forwarded host still opens connections of its own, up to its whole budget.
    for port in range(16):
        connect = IP(src=HOST, dst=SERVER) / TCP(sport=43000 + port, dport=443, flags="S")
        harness.one(LAN, connect, WAN)
    assert harness.nat.counters.refused == {}


def test_real_client_gets_through_a_forward_under_a_syn_flood(
    demo_config: ApplianceConfig,
) -> None:
    harness = make_harness(demo_config, max_flows_per_host=16)
    syn_flood(harness, range(100), 20000)
    out = inbound_syn(harness, SERVER, 55555)
    assert len(out) == 1 and out[0][0] is LAN, "the real client's SYN reaches the LAN host"
    syn_ack_from_host(harness, SERVER, 55555)
    last_ack_from_client(harness, SERVER, 55555)
    # the flood goes on; the established connection is never evicted
    syn_flood(harness, range(100, 300), 20000)
    data = IP(src=SERVER, dst=WAN_IP) / TCP(sport=55555, dport=FORWARD_PORT, flags="PA") / b"GET"
    assert harness.one(WAN, data, LAN)[TCP].dport == FORWARDED_TO


def test_forward_full_of_established_connections_refuses_with_admin_prohibited(
    demo_config: ApplianceConfig,
) -> None:
    harness = make_harness(demo_config, max_flows_per_host=4)
    for n in range(4):
        client = spoofed_client(n)
        inbound_syn(harness, client, 30000)
        syn_ack_from_host(harness, client, 30000)
        last_ack_from_client(harness, client, 30000)
    refused = inbound_syn(harness, SERVER, 30001)
    assert len(refused) == 1 and refused[0][0] is WAN
    error = refused[0][1]
    assert (error[ICMP].type, error[ICMP].code) == (3, 13)
    assert harness.nat.counters.refused == {"forward-limit": 1}


def test_syn_flood_at_one_forward_leaves_the_hosts_other_forwards_open(
    demo_config: ApplianceConfig,
) -> None:
    """The budget is per host, shared by its forwards: a new flow of any of them, TCP or UDP,
    evicts a half-open connection rather than being refused."""
    harness = make_harness(demo_config, max_flows_per_host=8)
    syn_flood(harness, range(50), 40000)
    query = IP(src=SERVER, dst=WAN_IP) / UDP(sport=40000, dport=5353) / b"q"
    assert harness.one(WAN, query, LAN)[UDP].dport == 53  # udp 5353 -> 10.77.0.10:53
    assert harness.nat.counters.refused == {}
