"""The NAT engine's behaviours, one or more tests each, with scapy frames and scapy as the oracle.

Every frame the harness gets back has had all its checksums (inner ones too) checked against
scapy's recomputation (conftest.assert_checksums_valid).
"""

from socket import inet_aton

import pytest
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    ICMPerror,
    IPerror,
    IPOption_LSRR,
    IPOption_RR,
    TCPerror,
    UDPerror,
    fragment,
)
from scapy.layers.l2 import ARP, Ether

from appliance.checksum import ones_sum
from appliance.config import ApplianceConfig, Filtering, Timeouts
from appliance.engine import Offload, Side
from tests.unit.nat_harness import (
    GATEWAY,
    GATEWAY_MAC,
    HOST,
    HOST2,
    HOST_MACS,
    LAN_IP,
    LAN_MAC,
    SERVER,
    SERVER2,
    WAN_IP,
    WAN_MAC,
    Harness,
    assert_checksums_valid,
    make_harness,
)

LAN, WAN = Side.LAN, Side.WAN


def udp_out(
    harness: Harness, sport: int = 5000, dst: str = SERVER, dport: int = 53, host: str = HOST
) -> Ether:
    return harness.one(LAN, IP(src=host, dst=dst) / UDP(sport=sport, dport=dport) / b"q", WAN)


# -- ARP and the appliance's own addresses ---------------------------------------------------


@pytest.mark.parametrize(
    ("side", "own_ip", "own_mac", "peer", "peer_mac"),
    [
        (LAN, LAN_IP, LAN_MAC, HOST, HOST_MACS[HOST]),
        (WAN, WAN_IP, WAN_MAC, GATEWAY, GATEWAY_MAC),
    ],
)
def test_answers_arp_for_its_own_address(
    harness: Harness, side: Side, own_ip: str, own_mac: str, peer: str, peer_mac: str
) -> None:
    request = Ether(dst="ff:ff:ff:ff:ff:ff", src=peer_mac) / ARP(
        op=1, hwsrc=peer_mac, psrc=peer, pdst=own_ip
    )
    reply = harness.one(side, request, side)
    assert reply[ARP].op == 2 and reply[ARP].psrc == own_ip and reply[ARP].hwsrc == own_mac
    assert reply.dst == peer_mac and reply[ARP].pdst == peer


def test_ignores_arp_for_other_addresses(harness: Harness) -> None:
    request = Ether(dst="ff:ff:ff:ff:ff:ff", src=HOST_MACS[HOST]) / ARP(
        op=1, hwsrc=HOST_MACS[HOST], psrc=HOST, pdst=HOST2
    )
    harness.nothing(LAN, request)
    assert harness.dropped("arp-not-for-us") == 1


def test_resolves_next_hop_holds_packets_and_retries(demo_config: ApplianceConfig) -> None:
    harness = Harness(demo_config)
    harness.nat.neighbours[WAN]._cache.clear()
    out = harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2))
    assert [(side, frame[ARP].pdst) for side, frame in out] == [(WAN, GATEWAY)]
    harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=3))  # queued, no new request
    retries = [Ether(f) for _, f in harness.nat.tick(harness.now + 1.5)]
    assert [frame[ARP].pdst for frame in retries] == [GATEWAY]
    reply = Ether(dst=WAN_MAC, src=GATEWAY_MAC) / ARP(
        op=2, hwsrc=GATEWAY_MAC, psrc=GATEWAY, hwdst=WAN_MAC, pdst=WAN_IP
    )
    flushed = harness.send(WAN, reply)
    assert [frame[UDP].dport for _, frame in flushed] == [2, 3]
    assert all(frame.dst == GATEWAY_MAC for _, frame in flushed)


def test_gives_up_on_a_silent_next_hop(demo_config: ApplianceConfig) -> None:
    harness = Harness(demo_config)
    harness.nat.neighbours[WAN]._cache.clear()
    harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2))
    for second in range(1, 6):
        harness.nat.tick(harness.now + second)
    assert harness.dropped("arp-unresolved") == 1


def test_counts_packets_beyond_a_full_arp_queue(demo_config: ApplianceConfig) -> None:
    harness = Harness(demo_config)
    harness.nat.neighbours[WAN]._cache.clear()
    for dport in range(10):  # 8 wait for the gateway's MAC
        harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=dport))
    assert harness.dropped("arp-queue-full") == 2


def test_stale_neighbours_are_asked_again_and_forgotten_if_silent(harness: Harness) -> None:
    harness.now += 301
    still_used = harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2))
    assert [frame.dst for _, frame in still_used] == [GATEWAY_MAC]
    probes = [Ether(frame) for _, frame in harness.nat.tick(harness.now)]
    assert GATEWAY in [frame[ARP].pdst for frame in probes if ARP in frame]
    harness.now += 4
    out = harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2))
    assert [frame[ARP].pdst for _, frame in out] == [GATEWAY]


def test_answers_ping_on_its_lan_address(harness: Harness) -> None:
    reply = harness.one(LAN, IP(src=HOST, dst=LAN_IP) / ICMP(id=9, seq=3) / b"abc", LAN)
    assert reply[IP].src == LAN_IP and reply[IP].dst == HOST
    assert reply[ICMP].type == 0 and (reply[ICMP].id, reply[ICMP].seq) == (9, 3)
    assert bytes(reply[ICMP].payload) == b"abc"


def test_answers_ping_on_its_wan_address_only_if_configured(demo_config: ApplianceConfig) -> None:
    probe = IP(src=SERVER, dst=WAN_IP) / ICMP(id=1)
    assert Harness(demo_config).one(WAN, probe, WAN)[IP].src == WAN_IP
    closed = make_harness(demo_config, ping_on_wan=False)
    closed.nothing(WAN, probe)
    assert closed.dropped("ping-on-wan-disabled") == 1


def test_other_traffic_to_the_appliance_is_dropped(harness: Harness) -> None:
    harness.nothing(LAN, IP(src=HOST, dst=LAN_IP) / TCP(sport=1, dport=22, flags="S"))
    assert harness.dropped("to-appliance") == 1


# -- translation ------------------------------------------------------------------------------


def test_udp_outbound_rewrites_source_and_reply_is_restored(harness: Harness) -> None:
    out = udp_out(harness)
    assert (out[IP].src, out[IP].dst, out[UDP].sport, out[UDP].dport) == (WAN_IP, SERVER, 5000, 53)
    assert out.dst == GATEWAY_MAC and out.src == WAN_MAC
    back = harness.one(WAN, IP(src=SERVER, dst=WAN_IP) / UDP(sport=53, dport=5000) / b"a", LAN)
    assert (back[IP].src, back[IP].dst, back[UDP].sport, back[UDP].dport) == (
        SERVER,
        HOST,
        53,
        5000,
    )
    assert back.dst == HOST_MACS[HOST] and back.src == LAN_MAC
    assert harness.nat.counters.translated["udp"] == 2


def test_ttl_is_decremented_both_ways(harness: Harness) -> None:
    out = harness.one(LAN, IP(src=HOST, dst=SERVER, ttl=9) / UDP(sport=1, dport=2), WAN)
    assert out[IP].ttl == 8
    reply = IP(src=SERVER, dst=WAN_IP, ttl=5) / UDP(sport=2, dport=out[UDP].sport)
    back = harness.one(WAN, reply, LAN)
    assert back[IP].ttl == 4


def test_tcp_translation_and_reply(harness: Harness) -> None:
    syn = harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=40000, dport=80, flags="S"), WAN)
    assert (syn[IP].src, syn[TCP].sport) == (WAN_IP, 40000)
    synack = IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=40000, flags="SA")
    assert harness.one(WAN, synack, LAN)[TCP].dport == 40000


def test_icmp_echo_id_is_translated(harness: Harness) -> None:
    harness.one(LAN, IP(src=HOST2, dst=SERVER) / ICMP(id=2000), WAN)
    out = harness.one(LAN, IP(src=HOST, dst=SERVER) / ICMP(id=2000, seq=1) / b"x", WAN)
    assert out[IP].src == WAN_IP and out[ICMP].id != 2000  # the id was taken by HOST2
    reply = IP(src=SERVER, dst=WAN_IP) / ICMP(type=0, id=out[ICMP].id, seq=1) / b"x"
    back = harness.one(WAN, reply, LAN)
    assert (back[IP].dst, back[ICMP].id) == (HOST, 2000)


def test_endpoint_independent_mapping(harness: Harness) -> None:
    first = udp_out(harness, sport=6000, dst=SERVER)
    second = udp_out(harness, sport=6000, dst=SERVER2, dport=123)
    assert first[UDP].sport == second[UDP].sport


def test_no_port_overloading_and_parity_kept(harness: Harness) -> None:
    ports = {udp_out(harness, sport=7001, host=host)[UDP].sport for host in (HOST, HOST2)}
    assert len(ports) == 2 and 7001 in ports
    assert all(port % 2 == 1 for port in ports)


def test_port_preservation_when_free(harness: Harness) -> None:
    assert udp_out(harness, sport=33333)[UDP].sport == 33333


def test_low_ports_map_into_the_configured_range(harness: Harness) -> None:
    port = udp_out(harness, sport=123)[UDP].sport
    assert 1024 <= port <= 65535 and port % 2 == 1


def test_configured_port_range(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, port_first=20000, port_last=20009)
    ports = {udp_out(harness, sport=5000 + i)[UDP].sport for i in range(10)}
    assert ports == set(range(20000, 20010))
    out = harness.send(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=6000, dport=53))
    assert [frame[ICMP].code for _, frame in out] == [13]
    assert harness.nat.counters.refused == {"no-free-port": 1}


# -- filtering --------------------------------------------------------------------------------


def test_unsolicited_inbound_is_dropped(harness: Harness) -> None:
    harness.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=1234, dport=40000, flags="S"))
    harness.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / UDP(sport=1234, dport=5000))
    harness.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / ICMP(type=0, id=5))
    assert harness.dropped("filtered") == 3


def _reply_from(harness: Harness, src: str, sport: int) -> list[tuple[Side, Ether]]:
    return harness.send(WAN, IP(src=src, dst=WAN_IP) / UDP(sport=sport, dport=5000))


@pytest.mark.parametrize(
    ("filtering", "same_address_other_port", "other_address"),
    [
        (Filtering.ENDPOINT_INDEPENDENT, True, True),
        (Filtering.ADDRESS_DEPENDENT, True, False),
        (Filtering.ADDRESS_AND_PORT_DEPENDENT, False, False),
    ],
)
def test_filtering_modes(
    demo_config: ApplianceConfig,
    filtering: Filtering,
    same_address_other_port: bool,
    other_address: bool,
) -> None:
    harness = make_harness(demo_config, filtering=filtering)
    udp_out(harness, sport=5000, dst=SERVER, dport=53)
    assert len(_reply_from(harness, SERVER, 53)) == 1
    assert len(_reply_from(harness, SERVER, 9999)) == int(same_address_other_port)
    assert len(_reply_from(harness, SERVER2, 53)) == int(other_address)


def test_inbound_tcp_needs_a_syn_to_open_a_session(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, filtering=Filtering.ENDPOINT_INDEPENDENT)
    harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=41000, dport=80, flags="S"), WAN)
    harness.nothing(WAN, IP(src=SERVER2, dst=WAN_IP) / TCP(sport=80, dport=41000, flags="A"))
    # Simultaneous open / hole punching from another peer (RFC 5382 REQ-2): a SYN may open.
    harness.one(WAN, IP(src=SERVER2, dst=WAN_IP) / TCP(sport=80, dport=41000, flags="S"), LAN)


# -- timeouts and expiry ----------------------------------------------------------------------


def _alive(harness: Harness, at: float) -> bool:
    harness.advance(at)
    return len(_reply_from(harness, SERVER, 53)) == 1


def test_udp_mapping_lives_300_seconds_after_last_outbound(harness: Harness) -> None:
    start = harness.now
    udp_out(harness)
    harness.nat.tick(start + 299)
    assert len(harness.nat.table) == 1
    harness.nat.tick(start + 301)
    assert len(harness.nat.table) == 0
    harness.now = start + 301
    assert _reply_from(harness, SERVER, 53) == []


def test_outbound_traffic_refreshes(harness: Harness) -> None:
    start = harness.now
    udp_out(harness)
    harness.now = start + 200
    udp_out(harness)
    assert _alive(harness, start + 450)


def test_icmp_errors_do_not_refresh(harness: Harness) -> None:
    start = harness.now
    out = udp_out(harness)
    harness.now = start + 250
    error = IP(src=GATEWAY, dst=WAN_IP) / ICMP(type=3, code=1) / bytes(out[IP])[:28]
    harness.one(WAN, error, LAN)
    harness.nat.tick(start + 301)
    assert len(harness.nat.table) == 0


def test_tcp_timeouts_follow_state(harness: Harness) -> None:
    def tcp(side: Side, flags: str) -> None:
        if side is LAN:
            harness.send(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=42000, dport=80, flags=flags))
        else:
            harness.send(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=42000, flags=flags))

    start = harness.now
    tcp(LAN, "S")
    harness.advance(start + 239)
    assert len(harness.nat.table) == 1, "a half-open connection lives the transitory 240 s"
    tcp(WAN, "SA")
    tcp(LAN, "A")
    harness.advance(start + 239 + 7439)
    assert len(harness.nat.table) == 1, "an established connection lives 2 h 4 min"
    tcp(LAN, "FA")
    tcp(WAN, "FA")
    harness.nat.tick(harness.now + 241)
    assert len(harness.nat.table) == 0, "a closed connection goes after 240 s"


def test_rst_makes_a_connection_transitory(harness: Harness) -> None:
    harness.send(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=42001, dport=80, flags="S"))
    harness.send(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=42001, flags="SA"))
    harness.send(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=42001, flags="R"))
    harness.nat.tick(harness.now + 241)
    assert len(harness.nat.table) == 0


def test_configured_timeouts(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, timeouts=Timeouts(udp=600.0))
    udp_out(harness)
    harness.nat.tick(harness.now + 599)
    assert len(harness.nat.table) == 1


def test_freed_port_rests_before_reuse(harness: Harness) -> None:
    start = harness.now
    udp_out(harness, sport=34000)
    harness.advance(start + 301)
    assert udp_out(harness, sport=34000, host=HOST2)[UDP].sport != 34000
    harness.advance(start + 301 + 121)
    assert udp_out(harness, sport=34000, host=HOST)[UDP].sport == 34000


# -- routing: TTL, MTU, fragments -------------------------------------------------------------


def test_ttl_expiry_answered_with_time_exceeded(harness: Harness) -> None:
    probe = IP(src=HOST, dst=SERVER, ttl=1) / UDP(sport=33434, dport=33435)
    error = harness.one(LAN, probe, LAN)
    assert (error[IP].src, error[IP].dst, error[ICMP].type, error[ICMP].code) == (
        LAN_IP,
        HOST,
        11,
        0,
    )
    assert error[IPerror].src == HOST and error[UDPerror].sport == 33434
    assert len(harness.nat.table) == 0


def test_inbound_ttl_expiry_answered_from_wan_address(harness: Harness) -> None:
    udp_out(harness)
    error = harness.one(WAN, IP(src=SERVER, dst=WAN_IP, ttl=1) / UDP(sport=53, dport=5000), WAN)
    assert (error[IP].src, error[ICMP].type) == (WAN_IP, 11)


def test_df_packet_over_mtu_gets_fragmentation_needed(harness: Harness) -> None:
    big = IP(src=HOST, dst=SERVER, flags="DF") / UDP(sport=1, dport=2) / (b"x" * 1600)
    error = harness.one(LAN, big, LAN)
    assert (error[ICMP].type, error[ICMP].code, error[ICMP].nexthopmtu) == (3, 4, 1500)


def test_packet_over_mtu_without_df_is_fragmented(harness: Harness) -> None:
    big = IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2) / (b"y" * 3000)
    out = harness.send(LAN, big)
    assert len(out) == 3 and all(len(f[IP]) <= 1500 and side is WAN for side, f in out)
    assert _reassembled_payload([f for _, f in out]) == b"y" * 3000


def _reassembled_payload(frames: list[Ether]) -> bytes:
    pieces = sorted((f[IP].frag * 8, bytes(f[IP].payload)) for f in frames)
    whole = b"".join(p for _, p in pieces)
    return whole[8:]  # past the UDP header


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_fragments_translated_in_any_order(harness: Harness, order: list[int]) -> None:
    datagram = IP(src=HOST, dst=SERVER, id=77) / UDP(sport=5000, dport=53) / (b"z" * 2000)
    pieces = fragment(datagram, fragsize=800)
    out: list[tuple[Side, Ether]] = []
    for index in order:
        out += harness.send(LAN, pieces[index])
    assert out and all(f[IP].src == WAN_IP for _, f in out)
    first = next(f for _, f in out if f[IP].frag == 0)
    assert first[UDP].sport == 5000
    assert _reassembled_payload([f for _, f in out]) == b"z" * 2000
    harness.now += 1
    assert harness.nat.reassemblers[LAN].dropped == 0 and len(harness.nat.reassemblers[LAN]) == 0


def test_inbound_fragments_reassembled_and_restored(harness: Harness) -> None:
    udp_out(harness)
    reply = IP(src=SERVER, dst=WAN_IP, id=5) / UDP(sport=53, dport=5000) / (b"r" * 1400)
    out = []
    for piece in reversed(fragment(reply, fragsize=600)):
        out += harness.send(WAN, piece)
    assert len(out) == 1 and out[0][1][IP].dst == HOST and out[0][1][UDP].dport == 5000


def test_incomplete_fragments_expire(harness: Harness) -> None:
    pieces = fragment(IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2) / (b"q" * 1000), 400)
    harness.send(LAN, pieces[0])
    harness.nat.tick(harness.now + 31)
    assert len(harness.nat.reassemblers[LAN]) == 0 and harness.nat.reassemblers[LAN].dropped == 1


def test_no_gateway_means_net_unreachable(demo_config: ApplianceConfig) -> None:
    config = demo_config._replace(wan=demo_config.wan._replace(gateway=None))
    error = Harness(config).one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2), LAN)
    assert (error[ICMP].type, error[ICMP].code) == (3, 0)


# -- ICMP errors ------------------------------------------------------------------------------


def test_icmp_error_from_wan_restored_for_the_lan_host(harness: Harness) -> None:
    out = udp_out(harness, sport=5000, dport=9)
    quoted = bytes(out[IP])  # the whole translated datagram, as a host would quote it
    error = IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=3) / quoted
    back = harness.one(WAN, error, LAN)
    assert (back[IP].src, back[IP].dst, back[ICMP].type, back[ICMP].code) == (SERVER, HOST, 3, 3)
    assert (back[IPerror].src, back[IPerror].dst) == (HOST, SERVER)
    assert (back[UDPerror].sport, back[UDPerror].dport) == (5000, 9)


def test_icmp_error_about_tcp_restored(harness: Harness) -> None:
    out = harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=43000, dport=81, flags="S"), WAN)
    error = IP(src=GATEWAY, dst=WAN_IP) / ICMP(type=11, code=0) / bytes(out[IP])[:28]
    back = harness.one(WAN, error, LAN)
    assert back[IPerror].src == HOST and back[TCPerror].sport == 43000


def test_icmp_error_with_bad_checksum_is_dropped(harness: Harness) -> None:
    out = udp_out(harness)
    error = IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=3, chksum=0x1234) / bytes(out[IP])
    harness.nothing(WAN, error)
    assert harness.dropped("bad-icmp-checksum") == 1


def test_icmp_error_with_bad_embedded_checksum_is_dropped(harness: Harness) -> None:
    quoted = bytearray(bytes(udp_out(harness)[IP]))
    quoted[10] ^= 0xFF
    harness.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=3) / bytes(quoted))
    assert harness.dropped("bad-embedded-ip-checksum") == 1


def test_icmp_error_for_unknown_flow_is_dropped(harness: Harness) -> None:
    quoted = IP(src=WAN_IP, dst=SERVER) / UDP(sport=9999, dport=53)
    harness.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=3) / bytes(quoted))
    assert harness.dropped("icmp-error-no-mapping") == 1


def test_icmp_error_from_lan_host_about_forwarded_flow(harness: Harness) -> None:
    inbound = harness.one(WAN, IP(src=SERVER, dst=WAN_IP) / UDP(sport=4444, dport=5353), LAN)
    assert (inbound[IP].dst, inbound[UDP].dport) == (HOST, 53)
    error = IP(src=HOST, dst=SERVER) / ICMP(type=3, code=3) / bytes(inbound[IP])
    out = harness.one(LAN, error, WAN)
    assert (out[IP].src, out[IP].dst) == (WAN_IP, SERVER)
    assert (out[IPerror].src, out[IPerror].dst, out[UDPerror].dport) == (SERVER, WAN_IP, 5353)


def test_icmp_error_from_lan_without_mapping_is_dropped(harness: Harness) -> None:
    quoted = IP(src=SERVER, dst=HOST) / UDP(sport=1, dport=2)
    harness.nothing(LAN, IP(src=HOST, dst=SERVER) / ICMP(type=3, code=3) / bytes(quoted))
    assert harness.dropped("icmp-error-no-mapping") == 1


# -- port forwards and hairpinning ------------------------------------------------------------


def test_port_forward_reaches_the_lan_host_and_replies_leave_from_it(harness: Harness) -> None:
    syn = IP(src=SERVER, dst=WAN_IP) / TCP(sport=50000, dport=8080, flags="S")
    inside = harness.one(WAN, syn, LAN)
    assert (inside[IP].dst, inside[TCP].dport, inside[IP].src) == (HOST, 80, SERVER)
    synack = IP(src=HOST, dst=SERVER) / TCP(sport=80, dport=50000, flags="SA")
    outside = harness.one(LAN, synack, WAN)
    assert (outside[IP].src, outside[TCP].sport) == (WAN_IP, 8080)


def test_forwarded_port_is_never_allocated_to_others(harness: Harness) -> None:
    assert udp_out(harness, sport=5353, host=HOST2)[UDP].sport != 5353


def test_hairpinning_to_a_port_forward(harness: Harness) -> None:
    syn = IP(src=HOST2, dst=WAN_IP) / TCP(sport=45000, dport=8080, flags="S")
    arrived = harness.one(LAN, syn, LAN)
    assert (arrived[IP].dst, arrived[TCP].dport) == (HOST, 80)
    assert (arrived[IP].src, arrived[TCP].sport) == (WAN_IP, 45000)  # external address and port
    assert arrived.dst == HOST_MACS[HOST] and arrived[IP].ttl == 63
    synack = IP(src=HOST, dst=WAN_IP) / TCP(sport=80, dport=45000, flags="SA")
    back = harness.one(LAN, synack, LAN)
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (
        WAN_IP,
        8080,
        HOST2,
        45000,
    )


def test_hairpinning_between_two_mappings(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, filtering=Filtering.ENDPOINT_INDEPENDENT)
    port_a = udp_out(harness, sport=6100, host=HOST)[UDP].sport
    arrived = harness.one(LAN, IP(src=HOST2, dst=WAN_IP) / UDP(sport=6200, dport=port_a), LAN)
    assert (arrived[IP].dst, arrived[UDP].dport, arrived[IP].src) == (HOST, 6100, WAN_IP)


def test_hairpinned_icmp_error_reaches_the_sender(harness: Harness) -> None:
    arrived = harness.one(LAN, IP(src=HOST2, dst=WAN_IP) / UDP(sport=46000, dport=5353), LAN)
    error = IP(src=HOST, dst=WAN_IP) / ICMP(type=3, code=3) / bytes(arrived[IP])
    back = harness.one(LAN, error, LAN)
    assert (back[IP].dst, back[IPerror].src, back[UDPerror].sport) == (HOST2, HOST2, 46000)


# -- limits -----------------------------------------------------------------------------------


def test_per_host_limit_refuses_with_admin_prohibited(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, max_flows_per_host=2)
    first = udp_out(harness, sport=1001 + 1024)
    udp_out(harness, sport=1002 + 1024)
    refused = harness.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=3000, dport=53), LAN)
    assert (refused[ICMP].type, refused[ICMP].code, refused[IP].dst) == (3, 13, HOST)
    assert harness.nat.counters.refused == {"host-limit": 1}
    udp_out(harness, host=HOST2)  # other hosts are not affected
    again = udp_out(harness, sport=1001 + 1024)  # existing flows keep working
    assert again[UDP].sport == first[UDP].sport


def test_table_limit_refuses_new_flows_only(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, max_flows=3, max_flows_per_host=3)
    for sport in (2001, 2002, 2003):
        udp_out(harness, sport=sport, host=HOST if sport < 2003 else HOST2)
    refused = harness.send(LAN, IP(src=HOST2, dst=SERVER) / UDP(sport=2004, dport=53))
    assert [frame[ICMP].code for _, frame in refused] == [13]
    assert harness.nat.counters.refused == {"table-full": 1}
    udp_out(harness, sport=2001)
    harness.nat.tick(harness.now + 301)
    udp_out(harness, sport=2004, host=HOST2)


# -- anti-spoofing and junk -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "src", "dst"),
    [
        (LAN, "192.168.9.9", SERVER),  # LAN frame from outside the LAN subnet
        (LAN, LAN_IP, SERVER),  # LAN frame claiming the appliance's address
        (WAN, HOST, WAN_IP),  # WAN frame claiming a LAN source
        (WAN, WAN_IP, WAN_IP),  # WAN frame claiming the appliance's address
        (WAN, "127.0.0.1", WAN_IP),
    ],
)
def test_spoofed_sources_are_dropped(harness: Harness, side: Side, src: str, dst: str) -> None:
    harness.nothing(side, IP(src=src, dst=dst) / UDP(sport=1, dport=5353))
    assert harness.dropped("spoofed-source") == 1


def test_wan_traffic_to_lan_addresses_is_not_routed(harness: Harness) -> None:
    harness.nothing(WAN, IP(src=SERVER, dst=HOST) / UDP(sport=1, dport=2))
    assert harness.dropped("not-for-us") == 1


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00" * 10, "truncated-ethernet"),
        (
            bytes.fromhex(LAN_MAC.replace(":", "")) + b"\x00" * 6 + b"\x86\xdd" + b"\x00" * 40,
            "unsupported-ethertype",
        ),
        (bytes(Ether(dst=LAN_MAC) / IP(src=HOST, dst=SERVER, chksum=1) / UDP()), "bad-ip-checksum"),
        (bytes(Ether(dst=LAN_MAC) / IP(src=HOST, dst=SERVER) / UDP(chksum=7)), "bad-udp-checksum"),
        (
            bytes(Ether(dst=LAN_MAC) / IP(src=HOST, dst=SERVER, proto=47) / b"gre!"),
            "unsupported-protocol",
        ),
        (bytes(Ether(dst="02:00:00:00:09:09") / IP(src=HOST, dst=SERVER) / UDP()), "not-our-mac"),
    ],
)
def test_malformed_frames_are_dropped_with_a_reason(
    harness: Harness, frame: bytes, reason: str
) -> None:
    assert harness.nat.handle(LAN, frame, harness.now) == []
    assert harness.dropped(reason) == 1


def test_counters_line_names_everything(harness: Harness) -> None:
    udp_out(harness)
    harness.nat.handle(LAN, b"junk", harness.now)
    line = harness.nat.counters.line(len(harness.nat.table))
    for field in ("lan_in=", "wan_out=1", "flows=1", "nat_udp=1", "drop_truncated-ethernet=1"):
        assert field in line


# -- offloaded frames: partial checksums and TCP aggregates ------------------------------------


def _pseudo_sum(src: str, dst: str, l4_len: int, proto: int = 6) -> int:
    """What a checksum offload leaves in a TCP/UDP header: the pseudo-header sum, not
    complemented."""
    pseudo = inet_aton(src) + inet_aton(dst) + bytes((0, proto)) + l4_len.to_bytes(2, "big")
    return ones_sum(pseudo)


def _needs_csum(packet: IP, dst_mac: str, src_mac: str) -> bytes:
    """A frame as the kernel hands it over with NEEDS_CSUM: the TCP/UDP checksum field
    partial."""
    raw = bytearray(bytes(Ether(dst=dst_mac, src=src_mac) / packet))
    partial = _pseudo_sum(packet.src, packet.dst, len(raw) - 34, packet.proto)
    offset = 50 if packet.proto == 6 else 40
    raw[offset : offset + 2] = partial.to_bytes(2, "big")
    return bytes(raw)


AGGREGATE_PAYLOAD = bytes(range(256)) * 160  # 40960 bytes: a GRO aggregate


def test_needs_csum_aggregate_is_translated_once_and_left_for_the_kernel(
    harness: Harness,
) -> None:
    aggregate = (
        IP(src=HOST, dst=SERVER, flags="DF", id=100, ttl=64)
        / TCP(sport=44000, dport=80, flags="A", seq=1000)
        / AGGREGATE_PAYLOAD
    )
    offload = Offload(needs_csum=True, gso_size=1448, ecn=True)
    frame = _needs_csum(aggregate, LAN_MAC, HOST_MACS[HOST])
    out = harness.nat.handle_offload(LAN, frame, harness.now, offload)
    assert len(out) == 1
    side, sent_bytes, sent_offload = out[0]
    assert (side, sent_offload) == (WAN, offload)
    sent = Ether(sent_bytes)
    assert ones_sum(sent_bytes[14:34]) == 0xFFFF  # the IP header checksum
    assert (sent.dst, sent.src) == (GATEWAY_MAC, WAN_MAC)
    assert (sent[IP].src, sent[IP].dst, sent[IP].ttl, sent[IP].len) == (
        WAN_IP, SERVER, 63, len(aggregate)
    )  # fmt: skip
    ext_port = sent[TCP].sport
    assert (sent[TCP].dport, sent[TCP].seq, bytes(sent[TCP].payload)) == (
        80, 1000, AGGREGATE_PAYLOAD
    )  # fmt: skip
    # Still partial: exactly the pseudo-header sum of the new addresses.
    assert sent[TCP].chksum == _pseudo_sum(WAN_IP, SERVER, len(aggregate) - 20)

    reply = (
        IP(src=SERVER, dst=WAN_IP, flags="DF", ttl=64)
        / TCP(sport=80, dport=ext_port, flags="PA", seq=5000)
        / AGGREGATE_PAYLOAD
    )
    frame = _needs_csum(reply, WAN_MAC, GATEWAY_MAC)
    back = harness.nat.handle_offload(WAN, frame, harness.now, Offload(True, 1448))
    assert len(back) == 1 and back[0][0] is LAN and back[0][2] == Offload(True, 1448)
    restored = Ether(back[0][1])
    assert ones_sum(back[0][1][14:34]) == 0xFFFF
    assert (restored[IP].dst, restored[TCP].dport, restored[IP].ttl) == (HOST, 44000, 63)
    assert restored[TCP].chksum == _pseudo_sum(SERVER, HOST, len(reply) - 20)
    assert harness.dropped("icmp-unreachable") == 0


def _forget_gateway(harness: Harness) -> None:
    """The WAN side's neighbour cache emptied: the next frame out waits for ARP."""
    neighbours = harness.nat.neighbours[WAN]
    harness.nat.neighbours[WAN] = type(neighbours)(
        neighbours.mac, neighbours.ip, neighbours.subnet, neighbours.count_drop
    )


def _after_arp_reply(harness: Harness) -> list[IP]:
    """The packets that were waiting for the gateway's MAC, once it answers."""
    resolved = harness.nat.neighbours[WAN].learn(
        inet_aton(GATEWAY), bytes.fromhex(GATEWAY_MAC.replace(":", "")), harness.now
    )
    return [IP(packet) for _, packet in resolved]


def test_needs_csum_frame_waiting_for_arp_is_completed_in_software(harness: Harness) -> None:
    """A queued frame cannot keep its offload (the kernel sees it only later, as a plain
    frame): its partial checksum is finished in software."""
    _forget_gateway(harness)
    packet = IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53) / b"offloaded"
    frame = _needs_csum(packet, LAN_MAC, HOST_MACS[HOST])
    out = harness.nat.handle_offload(LAN, frame, harness.now, Offload(True))
    assert [offload for _, _, offload in out] == [None]  # the ARP request
    [sent] = _after_arp_reply(harness)
    assert_checksums_valid(sent)
    assert (sent.src, bytes(sent[UDP].payload)) == (WAN_IP, b"offloaded")


def test_tcp_aggregate_waiting_for_arp_is_cut_into_mtu_sized_segments(harness: Harness) -> None:
    _forget_gateway(harness)
    payload = bytes(range(256)) * 40  # 10240 bytes: a GSO super-segment
    aggregate = (
        IP(src=HOST, dst=SERVER, flags="DF", id=100)
        / TCP(sport=44000, dport=80, flags="PA", seq=1000)
        / payload
    )
    frame = _needs_csum(aggregate, LAN_MAC, HOST_MACS[HOST])
    out = harness.nat.handle_offload(LAN, frame, harness.now, Offload(True, 1460))
    assert [offload for _, _, offload in out] == [None]  # the ARP request
    segments = _after_arp_reply(harness)
    assert len(segments) == 8
    for segment in segments:
        assert_checksums_valid(segment)
        assert len(segment) <= 1500 and segment.src == WAN_IP
    assert [s[TCP].seq for s in segments] == [1000 + 1460 * i for i in range(8)]
    assert b"".join(bytes(s[TCP].payload) for s in segments) == payload
    assert [str(s[TCP].flags) for s in segments] == ["A"] * 7 + ["PA"]


def test_data_valid_frames_skip_the_l4_checksum_check(harness: Harness) -> None:
    packet = IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53, chksum=0x1234) / b"query"
    frame = bytes(Ether(dst=LAN_MAC, src=HOST_MACS[HOST]) / packet)
    assert harness.nat.handle(LAN, frame, harness.now) == []
    assert harness.dropped("bad-udp-checksum") == 1
    for _ in range(2):  # the full path (a new flow), then the fast path
        out = harness.nat.handle(LAN, frame, harness.now, l4_verified=True)
        assert len(out) == 1 and Ether(out[0][1])[IP].src == WAN_IP


def test_full_sized_df_tcp_without_offload_still_gets_fragmentation_needed(
    harness: Harness,
) -> None:
    big = IP(src=HOST, dst=SERVER, flags="DF") / TCP(sport=1, dport=2) / (b"x" * 1600)
    assert harness.one(LAN, big, LAN)[ICMP].code == 4


# -- from the conformance review ------------------------------------------------------------


def test_port_unreachable_about_tcp_restored(harness: Harness) -> None:
    out = harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=43100, dport=7, flags="S"), WAN)
    error = IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=3) / bytes(out[IP])
    back = harness.one(WAN, error, LAN)
    assert (back[ICMP].type, back[ICMP].code) == (3, 3)
    assert (back[IPerror].src, back[TCPerror].sport, back[TCPerror].dport) == (HOST, 43100, 7)


def test_icmp_error_with_embedded_ip_options_restored(harness: Harness) -> None:
    out = harness.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=9) / b"o", WAN)
    quoted = IP(bytes(out[IP]))
    quoted.options = [IPOption_RR(routers=["192.0.2.1"])]
    quoted.ihl = quoted.len = quoted.chksum = None
    error = IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=3) / bytes(IP(bytes(quoted)))
    back = harness.one(WAN, error, LAN)
    assert (back[IPerror].src, back[UDPerror].sport) == (HOST, 5000)


def test_icmp_error_about_an_echo_restored_and_does_not_refresh(harness: Harness) -> None:
    start = harness.now
    out = harness.one(LAN, IP(src=HOST, dst=SERVER) / ICMP(id=4242, seq=1), WAN)
    harness.now = start + 50
    error = IP(src=GATEWAY, dst=WAN_IP) / ICMP(type=11, code=0) / bytes(out[IP])
    back = harness.one(WAN, error, LAN)
    assert back[IPerror].src == HOST and back[ICMPerror].id == 4242
    harness.nat.tick(start + 61)
    assert len(harness.nat.table) == 0, "the echo mapping ran out 60 s after the request"


def test_inbound_traffic_refreshes_too(harness: Harness) -> None:
    start = harness.now
    udp_out(harness)
    harness.now = start + 250
    assert len(_reply_from(harness, SERVER, 53)) == 1
    harness.nat.tick(start + 450)
    assert len(harness.nat.table) == 1


def test_hairpin_source_is_the_external_port_not_the_internal_one(
    demo_config: ApplianceConfig,
) -> None:
    harness = make_harness(demo_config, filtering=Filtering.ENDPOINT_INDEPENDENT)
    udp_out(harness, sport=6300, host=HOST2)  # takes external port 6300
    port_b = udp_out(harness, sport=6300, host=HOST)[UDP].sport
    assert port_b != 6300
    arrived = harness.one(LAN, IP(src=HOST, dst=WAN_IP) / UDP(sport=6300, dport=6300), LAN)
    assert (arrived[IP].dst, arrived[IP].src, arrived[UDP].sport) == (HOST2, WAN_IP, port_b)


def test_wan_fragment_flood_does_not_evict_lan_datagrams(harness: Harness) -> None:
    udp_out(harness)
    lan_pieces = fragment(
        IP(src=HOST, dst=SERVER, id=9) / UDP(sport=5000, dport=53) / (b"l" * 900), 400
    )
    harness.send(LAN, lan_pieces[0])
    for ident in range(200):  # partial datagrams from many WAN senders, never completed
        flood = IP(src=f"203.0.113.{ident % 200 + 1}", dst=WAN_IP, id=ident, flags="MF")
        harness.send(WAN, flood / UDP(sport=53, dport=5000) / (b"f" * 16))
    out: list[tuple[Side, Ether]] = []
    for piece in lan_pieces[1:]:
        out += harness.send(LAN, piece)
    assert out and all(f[IP].src == WAN_IP for _, f in out)


def test_one_sender_cannot_hold_every_reassembly_slot(harness: Harness) -> None:
    for ident in range(100):
        flood = IP(src=SERVER, dst=WAN_IP, id=ident, flags="MF") / (b"f" * 16)
        harness.send(WAN, flood)
    assert len(harness.nat.reassemblers[WAN]) == harness.nat.reassemblers[WAN].max_per_source


def test_duplicate_fragment_is_ignored(harness: Harness) -> None:
    pieces = fragment(
        IP(src=HOST, dst=SERVER, id=11) / UDP(sport=5000, dport=53) / (b"d" * 900), 400
    )
    out: list[tuple[Side, Ether]] = []
    for piece in [pieces[0], pieces[0], *pieces[1:]]:
        out += harness.send(LAN, piece)
    assert out and harness.nat.reassemblers[LAN].dropped == 0


def test_refused_port_forward_flow_gets_admin_prohibited(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, max_flows=1, max_flows_per_host=1)
    udp_out(harness, host=HOST2)
    refused = harness.one(
        WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=1, dport=8080, flags="S"), WAN
    )
    assert (refused[ICMP].type, refused[ICMP].code, refused[IP].src) == (3, 13, WAN_IP)
    assert harness.nat.counters.refused == {"table-full": 1}


def test_mid_stream_pickup_is_transitory_until_answered(harness: Harness) -> None:
    start = harness.now
    harness.send(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=43200, dport=80, flags="A"))
    harness.nat.tick(start + 241)
    assert len(harness.nat.table) == 0
    harness.now = start + 300
    out = harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=43200, dport=80, flags="A"), WAN)
    answer = IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=out[TCP].sport, flags="A")
    harness.one(WAN, answer, LAN)
    harness.nat.tick(start + 300 + 7000)
    assert len(harness.nat.table) == 1


def test_parity_gives_way_before_a_flow_is_refused(demo_config: ApplianceConfig) -> None:
    harness = make_harness(demo_config, port_first=20000, port_last=20003)
    ports = {udp_out(harness, sport=5001 + 2 * i)[UDP].sport for i in range(4)}
    assert ports == {20000, 20001, 20002, 20003}


def test_expiring_probe_at_a_closed_port_meets_silence(harness: Harness) -> None:
    harness.nothing(WAN, IP(src=SERVER, dst=WAN_IP, ttl=1) / UDP(sport=53, dport=33333))
    assert harness.dropped("filtered") == 1


def test_source_routed_packets_are_dropped(harness: Harness) -> None:
    routed = IP(src=HOST, dst=SERVER, options=[IPOption_LSRR(routers=[SERVER2])])
    harness.nothing(LAN, routed / UDP(sport=5000, dport=53))
    assert harness.dropped("source-routed") == 1
