"""The engine in netvm mode (appliance/netvm.py): clients on ports of their own, with scapy frames
and scapy as the checksum oracle (every frame that comes out has all its checksums checked)."""

import random
from ipaddress import IPv4Address

import pytest
from scapy.layers.dns import DNS, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from appliance.config import ApplianceConfig, apply_overrides
from appliance.engine import Offload
from appliance.flows import PortAllocator
from appliance.frames import LAN, WAN
from appliance.netvm import ClientError, NetVm
from appliance.packet import TCP as TCP_PROTO
from appliance.packet import UDP as UDP_PROTO
from appliance.rules import Action, RuleSet, parse_rule_set
from tests.unit.nat_harness import (
    GATEWAY_MAC,
    SERVER,
    SERVER2,
    WAN_IP,
    WAN_MAC,
    assert_checksums_valid,
    mac_bytes,
)

GW = "10.137.0.1"  # the gateway address clients use (Qubes' /qubes-netvm-gateway)
PORT_MAC = "fe:ff:ff:ff:ff:ff"  # netback's vif MAC
DNS1, DNS2 = "198.51.100.53", "203.0.113.53"
A, B, C = "vif1.0", "vif2.0", "vif3.0"
CLIENTS = {
    A: ("10.137.0.10", "00:16:3e:5e:6c:0a"),
    B: ("10.137.0.11", "00:16:3e:5e:6c:0b"),
    C: ("10.138.0.12", "00:16:3e:5e:6c:0c"),  # a disposable's address, same subnet
}


@pytest.fixture(scope="module")
def netvm_config(demo_config: ApplianceConfig) -> ApplianceConfig:
    words = {
        "natvm.netvm": ["1"],
        "natvm.lan.ip": [f"{GW}/14"],  # 10.136.0.0-10.139.255.255: Qubes' 10.137 and 10.138
        "natvm.dns": [f"{DNS1},{DNS2}"],
        "natvm.forward": ["tcp:8080:10.137.0.10:80"],
    }
    return apply_overrides(demo_config, words)


class Clients:
    """A NetVm with the WAN gateway resolved and the clients attached, spoken to in scapy."""

    def __init__(self, config: ApplianceConfig, attach: tuple[str, ...] = (A, B, C)) -> None:
        ports = PortAllocator(config.nat.port_first, config.nat.port_last, random.Random(7))
        self.netvm = NetVm(config, mac_bytes(WAN_MAC), ports)
        self.now = 1000.0
        gateway = config.wan.gateway
        assert gateway is not None
        reply = Ether(dst=WAN_MAC, src=GATEWAY_MAC) / ARP(
            op=2,
            hwsrc=GATEWAY_MAC,
            psrc=str(gateway),
            hwdst=WAN_MAC,
            pdst=str(config.wan.address.ip),
        )
        assert self.netvm.handle(WAN, bytes(reply), self.now) == []
        for port in attach:
            self.attach(port)

    def attach(self, port: str) -> None:
        ip, mac = CLIENTS[port]
        out = self.netvm.attach_client(
            port, IPv4Address(ip), mac_bytes(mac), mac_bytes(PORT_MAC), self.now
        )
        assert out == []

    def send(self, port: str, packet: Packet) -> list[tuple[str, Ether]]:
        if not isinstance(packet, Ether):
            src = CLIENTS.get(port, ("", "00:16:3e:00:00:99"))[1] if port != WAN else GATEWAY_MAC
            packet = Ether(dst=PORT_MAC if port != WAN else WAN_MAC, src=src) / packet
        out = [(p, Ether(f)) for p, f in self.netvm.handle(port, bytes(packet), self.now)]
        for _, frame in out:
            assert_checksums_valid(frame)
        return out

    def one(self, port: str, packet: Packet, expect: str) -> Ether:
        out = self.send(port, packet)
        assert len(out) == 1, f"expected one frame, got {out}; drops {self.netvm.counters.drops}"
        assert out[0][0] == expect
        return out[0][1]

    def nothing(self, port: str, packet: Packet) -> None:
        out = self.send(port, packet)
        assert out == [], f"expected a drop, got {[f.summary() for _, f in out]}"

    def dropped(self, reason: str, port: str | None = None) -> int:
        if port is None:
            return self.netvm.counters.drops.get(reason, 0)
        return self.netvm.clients[port].drops.get(reason, 0)


@pytest.fixture
def clients(netvm_config: ApplianceConfig) -> Clients:
    return Clients(netvm_config)


def ip_of(port: str) -> str:
    return CLIENTS[port][0]


def udp_out(clients: Clients, port: str, sport: int = 5000, dst: str = SERVER) -> Ether:
    return clients.one(port, IP(src=ip_of(port), dst=dst) / UDP(sport=sport, dport=7) / b"q", WAN)


# -- forwarding ----------------------------------------------------------------------------


def test_a_client_reaches_the_wan_through_the_nat(clients: Clients) -> None:
    out = udp_out(clients, A)
    assert out[IP].src == WAN_IP and out[IP].dst == SERVER and out[IP].ttl == 63
    assert out.src == WAN_MAC and out.dst == GATEWAY_MAC


def test_replies_go_to_the_port_of_the_client_whose_flow_it_is(clients: Clients) -> None:
    ext = {
        port: udp_out(clients, port, sport=5000 + i)[UDP].sport for i, port in enumerate(CLIENTS)
    }
    for port, ext_port in ext.items():
        reply = IP(src=SERVER, dst=WAN_IP) / UDP(sport=7, dport=ext_port) / b"a"
        back = clients.one(WAN, reply, port)
        assert back[IP].dst == ip_of(port) and back.dst == CLIENTS[port][1]
        assert back.src == PORT_MAC  # from the port's own MAC, not the NAT's inner one


def test_a_client_pings_its_gateway(clients: Clients) -> None:
    reply = clients.one(A, IP(src=ip_of(A), dst=GW) / ICMP(id=9, seq=1), A)
    assert reply[IP].src == GW and reply[ICMP].type == 0 and reply.dst == CLIENTS[A][1]


def test_a_port_forward_leads_to_its_client(clients: Clients) -> None:
    syn = IP(src=SERVER, dst=WAN_IP) / TCP(sport=4000, dport=8080, flags="S")
    inside = clients.one(WAN, syn, A)
    assert inside[IP].dst == ip_of(A) and inside[TCP].dport == 80


def test_another_client_reaches_a_forward_through_the_wan_address(clients: Clients) -> None:
    syn = IP(src=ip_of(B), dst=WAN_IP) / TCP(sport=4000, dport=8080, flags="S")
    inside = clients.one(B, syn, A)  # hairpinned: the forward is an explicit rule
    assert inside[IP].src == WAN_IP and inside[IP].dst == ip_of(A)


def test_a_partial_checksum_from_a_client_leaves_partial(clients: Clients) -> None:
    packet = IP(src=ip_of(A), dst=SERVER) / UDP(sport=5000, dport=7) / b"q"
    frame = bytes(Ether(dst=PORT_MAC, src=CLIENTS[A][1]) / packet)
    out = clients.netvm.handle_offload(A, frame, clients.now, Offload(needs_csum=True))
    assert [(port, offload) for port, _, offload in out] == [(WAN, Offload(needs_csum=True))]
    assert IP(out[0][1][14:]).src == WAN_IP


# -- anti-spoofing ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", [ip_of(B), "10.137.0.99", SERVER, "0.0.0.0"])
def test_a_frame_not_from_the_ports_client_is_dropped_and_counted(
    clients: Clients, source: str
) -> None:
    clients.nothing(A, IP(src=source, dst=SERVER) / UDP(sport=5000, dport=7))
    assert clients.dropped("spoofed-source") == 1
    assert clients.dropped("spoofed-source", A) == 1 and clients.dropped("spoofed-source", B) == 0


def test_an_arp_packet_not_from_the_ports_client_is_dropped(clients: Clients) -> None:
    request = Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENTS[A][1]) / ARP(
        op=1, hwsrc=CLIENTS[A][1], psrc=ip_of(B), pdst=GW
    )
    clients.nothing(A, request)
    assert clients.dropped("spoofed-arp", A) == 1


def test_a_frame_on_a_port_without_a_client_is_dropped(clients: Clients) -> None:
    clients.nothing("vif9.0", IP(src=ip_of(A), dst=SERVER) / UDP(sport=5000, dport=7))
    assert clients.dropped("no-client") == 1


def test_a_frame_to_another_mac_is_dropped(clients: Clients) -> None:
    frame = Ether(dst="02:00:00:00:00:00", src=CLIENTS[A][1]) / IP(src=ip_of(A), dst=SERVER) / UDP()
    clients.nothing(A, frame)  # not even the NAT's inner MAC gets in from a port
    assert clients.dropped("not-our-mac", A) == 1


# -- proxy ARP -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [GW, SERVER, ip_of(B), "10.139.1.1"])
def test_proxy_arp_answers_for_every_address_but_the_clients_own(
    clients: Clients, target: str
) -> None:
    request = Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENTS[A][1]) / ARP(
        op=1, hwsrc=CLIENTS[A][1], psrc=ip_of(A), pdst=target
    )
    reply = clients.one(A, request, A)
    assert reply[ARP].op == 2 and reply[ARP].psrc == target and reply[ARP].hwsrc == PORT_MAC
    assert reply.dst == CLIENTS[A][1] and reply[ARP].pdst == ip_of(A)


def test_proxy_arp_does_not_answer_for_the_clients_own_address(clients: Clients) -> None:
    probe = Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENTS[A][1]) / ARP(
        op=1, hwsrc=CLIENTS[A][1], psrc=ip_of(A), pdst=ip_of(A)
    )
    clients.nothing(A, probe)


# -- isolation -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [ip_of(B), ip_of(C), "10.137.0.99"])
def test_client_to_client_is_dropped_and_counted(clients: Clients, target: str) -> None:
    clients.nothing(A, IP(src=ip_of(A), dst=target) / UDP(sport=5000, dport=7))
    clients.nothing(A, IP(src=ip_of(A), dst=target) / ICMP())
    assert clients.dropped("client-to-client", A) == 2


# -- DNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("virtual", "upstream"), [("10.139.1.1", DNS1), ("10.139.1.2", DNS2)])
def test_dns_to_a_virtual_address_goes_upstream_and_comes_back_from_it(
    clients: Clients, virtual: str, upstream: str
) -> None:
    query = IP(src=ip_of(A), dst=virtual) / UDP(sport=33333, dport=53) / b"query"
    out = clients.one(A, query, WAN)
    assert (out[IP].src, out[IP].dst, out[UDP].dport) == (WAN_IP, upstream, 53)
    answer = IP(src=upstream, dst=WAN_IP) / UDP(sport=53, dport=out[UDP].sport) / b"answer"
    back = clients.one(WAN, answer, A)
    assert (back[IP].src, back[UDP].sport, back[IP].dst, back[UDP].dport) == (
        virtual,
        53,
        ip_of(A),
        33333,
    )
    assert bytes(back[UDP].payload) == b"answer"


def test_dns_over_tcp_is_translated_both_ways(clients: Clients) -> None:
    syn = IP(src=ip_of(B), dst="10.139.1.1") / TCP(sport=40000, dport=53, flags="S", seq=1)
    out = clients.one(B, syn, WAN)
    assert out[IP].dst == DNS1 and out[TCP].dport == 53
    syn_ack = IP(src=DNS1, dst=WAN_IP) / TCP(sport=53, dport=out[TCP].sport, flags="SA", ack=2)
    back = clients.one(WAN, syn_ack, B)
    assert back[IP].src == "10.139.1.1" and back[TCP].flags == "SA"


def test_only_one_upstream_serves_both_virtual_addresses(netvm_config: ApplianceConfig) -> None:
    clients = Clients(
        netvm_config._replace(nat=netvm_config.nat._replace(dns_servers=(IPv4Address(DNS1),)))
    )
    for virtual in ("10.139.1.1", "10.139.1.2"):
        query = IP(src=ip_of(A), dst=virtual) / UDP(sport=33000, dport=53) / b"q"
        out = clients.one(A, query, WAN)
        assert out[IP].dst == DNS1
        answer = IP(src=DNS1, dst=WAN_IP) / UDP(sport=53, dport=out[UDP].sport) / b"a"
        assert clients.one(WAN, answer, A)[IP].src == virtual


def test_dns_asked_of_the_upstream_directly_keeps_its_source(clients: Clients) -> None:
    query = IP(src=ip_of(A), dst=DNS1) / UDP(sport=34000, dport=53) / b"q"
    out = clients.one(A, query, WAN)
    answer = IP(src=DNS1, dst=WAN_IP) / UDP(sport=53, dport=out[UDP].sport) / b"a"
    assert clients.one(WAN, answer, A)[IP].src == DNS1


def test_dns_without_upstream_servers_is_dropped_and_counted(
    netvm_config: ApplianceConfig,
) -> None:
    clients = Clients(netvm_config._replace(nat=netvm_config.nat._replace(dns_servers=())))
    clients.nothing(A, IP(src=ip_of(A), dst="10.139.1.1") / UDP(sport=33333, dport=53) / b"q")
    assert clients.dropped("dns-no-upstream", A) == 1


@pytest.mark.parametrize("packet", [ICMP(), UDP(sport=5000, dport=54), TCP(dport=80)])
def test_other_traffic_to_the_dns_addresses_is_dropped(clients: Clients, packet: Packet) -> None:
    clients.nothing(A, IP(src=ip_of(A), dst="10.139.1.2") / packet)
    assert clients.dropped("not-dns", A) == 1


def test_dns_records_go_with_their_flows(clients: Clients) -> None:
    query = IP(src=ip_of(A), dst="10.139.1.1") / UDP(sport=33333, dport=53) / b"q"
    clients.one(A, query, WAN)
    assert len(clients.netvm.clients[A].dns) == 1
    timeout = clients.netvm.config.nat.timeouts.udp
    clients.netvm.tick(clients.now + timeout + 1)
    assert clients.netvm.clients[A].dns == {}


# -- attach and detach -----------------------------------------------------------------------


def test_detach_drops_that_clients_flows_and_no_others(clients: Clients) -> None:
    ext_a = udp_out(clients, A, sport=5000)[UDP].sport
    ext_b = udp_out(clients, B, sport=5000)[UDP].sport
    client = clients.netvm.detach_client(A, clients.now)
    assert client is not None and client.port == A
    table = clients.netvm.table
    assert table.lookup_out(UDP_PROTO, client.ip, 5000) is None
    assert table.lookup_out(UDP_PROTO, IPv4Address(ip_of(B)).packed, 5000) is not None
    clients.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / UDP(sport=7, dport=ext_a))
    reply = IP(src=SERVER, dst=WAN_IP) / UDP(sport=7, dport=ext_b) / b"a"
    assert clients.one(WAN, reply, B)[IP].dst == ip_of(B)
    clients.nothing(A, IP(src=ip_of(A), dst=SERVER) / UDP(sport=5000, dport=7))
    assert clients.dropped("no-client") == 1
    assert clients.netvm.detach_client(A, clients.now) is None


def test_a_detached_tcp_flow_is_gone_and_the_client_can_attach_again(clients: Clients) -> None:
    syn = IP(src=ip_of(A), dst=SERVER) / TCP(sport=6000, dport=80, flags="S")
    clients.one(A, syn, WAN)
    clients.netvm.detach_client(A, clients.now)
    assert len(clients.netvm.table) == 0
    clients.attach(A)
    assert clients.one(A, syn, WAN)[IP].src == WAN_IP
    assert clients.netvm.table.lookup_out(TCP_PROTO, IPv4Address(ip_of(A)).packed, 6000)


@pytest.mark.parametrize(
    ("port", "ip", "mac", "problem"),
    [
        ("vif9.0", ip_of(A), "00:16:3e:00:00:09", "already served on vif1.0"),
        (A, "10.137.0.50", "00:16:3e:00:00:09", "the port already serves 10.137.0.10"),
        ("vif9.0", "192.168.1.5", "00:16:3e:00:00:09", "not a client address of 10.136.0.0/14"),
        ("vif9.0", GW, "00:16:3e:00:00:09", "not a client address"),
        ("vif9.0", "10.139.1.1", "00:16:3e:00:00:09", "a virtual DNS address"),
        ("vif9.0", "10.137.0.50", "01:00:5e:00:00:01", "not a unicast MAC address"),
        ("wan", "10.137.0.50", "00:16:3e:00:00:09", "'wan' names the uplink"),
    ],
)
def test_attach_refuses_what_it_cannot_serve(
    clients: Clients, port: str, ip: str, mac: str, problem: str
) -> None:
    with pytest.raises(ClientError, match=problem):
        clients.netvm.attach_client(port, IPv4Address(ip), mac_bytes(mac), mac_bytes(PORT_MAC), 0.0)


def test_start_sends_only_on_the_uplink(clients: Clients) -> None:
    out = clients.netvm.start(clients.now)
    assert out and all(port == WAN for port, _ in out)


def test_the_nat_never_asks_arp_on_a_port(clients: Clients) -> None:
    udp_out(clients, A)
    for later in (400.0, 800.0):  # past the neighbours' reachable time: pinned, never stale
        assert [port for port, _ in clients.netvm.tick(clients.now + later)] == []


# -- an uplink that is a /32 with an on-link gateway -------------------------------------------


def test_a_slash_32_uplink_reaches_its_on_link_gateway(netvm_config: ApplianceConfig) -> None:
    words = {
        "natvm.wan.ip": ["10.138.0.7/32"],
        "natvm.wan.gw": ["10.138.0.1"],
        "natvm.lan.ip": [f"{GW}/16"],
    }
    config = apply_overrides(netvm_config, {**words, "natvm.forward": ["none"]})
    clients = Clients(config, attach=(A,))
    out = clients.one(A, IP(src=ip_of(A), dst=SERVER) / UDP(sport=5000, dport=7), WAN)
    assert out[IP].src == "10.138.0.7" and out.dst == GATEWAY_MAC
    reply = IP(src=SERVER, dst="10.138.0.7") / UDP(sport=7, dport=out[UDP].sport)
    assert clients.one(WAN, reply, A)[IP].dst == ip_of(A)


def test_each_frame_from_a_client_is_counted_in_once(clients: Clients) -> None:
    counters = clients.netvm.counters
    udp_out(clients, A)  # through the NAT
    clients.nothing(A, IP(src=ip_of(B), dst=SERVER) / UDP())  # dropped here
    arp = ARP(op=1, hwsrc=CLIENTS[A][1], psrc=ip_of(A), pdst=GW)
    clients.one(A, Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENTS[A][1]) / arp, A)  # answered here
    query = IP(src=ip_of(A), dst="10.139.1.1") / UDP(sport=33333, dport=53) / b"q"
    clients.one(A, query, WAN)  # translated here, then through the NAT
    assert (counters.frames_in[LAN], counters.frames_out[LAN]) == (4, 1)
    assert counters.frames_out[WAN] == 2


def test_a_forward_to_a_client_not_attached_sends_nothing_to_any_port(
    netvm_config: ApplianceConfig,
) -> None:
    clients = Clients(netvm_config, attach=(B,))  # the forward's client, A, is not there
    clients.nothing(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=4000, dport=8080, flags="S"))
    assert clients.netvm.counters.frames_out[LAN] == 0
    # It waited for the client's address: attaching the client delivers it.
    ip, mac = CLIENTS[A]
    out = clients.netvm.attach_client(
        A, IPv4Address(ip), mac_bytes(mac), mac_bytes(PORT_MAC), clients.now
    )
    assert [(port, Ether(frame)[TCP].dport) for port, frame in out] == [(A, 80)]


# -- firewall rules ---------------------------------------------------------------------------


def rules(policy: str, *words: str) -> RuleSet:
    """A rule set as QubesDB gives it: `policy` and rules 0000, 0001, ... in order."""
    entries = {f"{number:04d}": text for number, text in enumerate(words)}
    return parse_rule_set({**entries, "policy": policy})


def syn(port: str, dport: int, sport: int = 40000, dst: str = SERVER) -> Packet:
    return IP(src=ip_of(port), dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=1)


def assert_admin_prohibited(answer: Ether, port: str, about: Packet) -> None:
    """ICMP 3/13 from the gateway to the client, on its port, quoting what it sent."""
    assert answer.dst == CLIENTS[port][1] and answer.src == PORT_MAC
    assert (answer[IP].src, answer[IP].dst) == (GW, ip_of(port))
    assert (answer[ICMP].type, answer[ICMP].code) == (3, 13)
    assert answer[IPerror].dst == about[IP].dst and answer[IPerror].src == ip_of(port)
    if TCP in about:
        assert answer[TCPerror].dport == about[TCP].dport


def test_a_dropped_flow_is_answered_admin_prohibited_and_counted(clients: Clients) -> None:
    clients.netvm.set_rules(
        IPv4Address(ip_of(A)), rules("accept", "action=drop proto=tcp dstports=80-80")
    )
    blocked = syn(A, 80)
    assert_admin_prohibited(clients.one(A, blocked, A), A, blocked)
    assert clients.one(A, syn(A, 8080), WAN)[TCP].dport == 8080
    assert clients.dropped("firewall") == 1 and clients.dropped("firewall", A) == 1
    assert clients.netvm.firewalls[IPv4Address(ip_of(A)).packed].counts == {
        Action.ACCEPT: 1,
        Action.DROP: 1,
    }
    assert clients.netvm.counters.icmp_errors_sent == 1
    assert clients.one(B, syn(B, 80), WAN)[TCP].dport == 80  # B has no rules


def test_rules_decide_new_flows_only_and_change_at_run_time(clients: Clients) -> None:
    a = IPv4Address(ip_of(A))
    out = clients.one(A, syn(A, 80, sport=41000), WAN)
    clients.netvm.set_rules(a, rules("drop"))
    # the flow that exists goes on both ways, as under Qubes' `ct state established accept`
    answer = IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=out[TCP].sport, flags="SA", ack=2)
    assert clients.one(WAN, answer, A)[TCP].flags == "SA"
    ack = IP(src=ip_of(A), dst=SERVER) / TCP(sport=41000, dport=80, flags="A", seq=2)
    assert clients.one(A, ack, WAN)[TCP].flags == "A"
    # a new flow from the same port to another destination port is new: it is decided
    assert clients.one(A, syn(A, 81, sport=41000), A)[ICMP].code == 13
    assert clients.one(A, syn(A, 80, sport=41001), A)[ICMP].code == 13
    clients.netvm.set_rules(a, rules("accept"))  # what the QubesDB watcher calls: no restart
    assert clients.one(A, syn(A, 80, sport=41002), WAN)[TCP].dport == 80
    assert clients.netvm.firewalls[a.packed].counts[Action.DROP] == 2  # kept across the change
    clients.netvm.set_rules(a, None)
    assert a.packed not in clients.netvm.firewalls


def test_rules_given_before_the_client_attaches_apply_to_it(
    netvm_config: ApplianceConfig,
) -> None:
    clients = Clients(netvm_config, attach=())
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("drop"))
    clients.attach(A)
    assert clients.one(A, syn(A, 443), A)[ICMP].code == 13
    clients.netvm.detach_client(A, clients.now)
    clients.attach(A)  # the rules belong to the address, as in QubesDB
    assert clients.one(A, syn(A, 443), A)[ICMP].code == 13


def test_specialtarget_dns_lets_dns_through_the_virtual_addresses_only(clients: Clients) -> None:
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("drop", "action=accept specialtarget=dns"))
    for virtual, upstream in (("10.139.1.1", DNS1), ("10.139.1.2", DNS2)):
        query = IP(src=ip_of(A), dst=virtual) / UDP(sport=33333, dport=53) / b"q"
        assert clients.one(A, query, WAN)[IP].dst == upstream
    tcp_query = IP(src=ip_of(A), dst="10.139.1.1") / TCP(sport=33334, dport=53, flags="S")
    assert clients.one(A, tcp_query, WAN)[IP].dst == DNS1
    direct = IP(src=ip_of(A), dst=DNS1) / UDP(sport=33335, dport=53) / b"q"
    assert clients.one(A, direct, WAN)[IP].dst == DNS1  # an upstream server is a DNS server
    elsewhere = IP(src=ip_of(A), dst=SERVER) / UDP(sport=33336, dport=53) / b"q"
    assert_admin_prohibited(clients.one(A, elsewhere, A), A, elsewhere)


def test_icmp_rules_and_what_the_rules_never_see(clients: Clients) -> None:
    clients.netvm.set_rules(
        IPv4Address(ip_of(A)), rules("drop", "action=accept proto=icmp icmptype=8")
    )
    assert clients.one(A, IP(src=ip_of(A), dst=SERVER) / ICMP(id=7, seq=1), WAN)[ICMP].type == 8
    # the gateway's own address is not forwarded traffic: no rules (Qubes' input chain)
    clients.nothing(A, IP(src=ip_of(A), dst=GW) / TCP(dport=22, flags="S"))
    assert clients.dropped("to-appliance") == 1  # the NAT's own drop, not the rules'
    assert clients.one(A, IP(src=ip_of(A), dst=GW) / ICMP(id=8), A)[ICMP].type == 0
    assert clients.dropped("firewall", A) == 0


def test_an_icmp_error_from_a_client_is_related_not_new(clients: Clients) -> None:
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("drop"))
    inbound_syn = IP(src=SERVER, dst=WAN_IP) / TCP(sport=4000, dport=8080, flags="S")
    inside = clients.one(WAN, inbound_syn, A)
    error = IP(src=ip_of(A), dst=SERVER) / ICMP(type=3, code=3) / bytes(inside[IP])[:28]
    assert clients.one(A, error, WAN)[ICMP].type == 3
    assert clients.dropped("firewall", A) == 0


def test_later_fragments_follow_their_first(clients: Clients) -> None:
    clients.netvm.set_rules(
        IPv4Address(ip_of(A)), rules("accept", "action=drop proto=udp dstports=7-7")
    )
    whole = IP(src=ip_of(A), dst=SERVER, id=99) / UDP(sport=5000, dport=7) / (b"z" * 40)
    first, second = bytes(whole)[: 20 + 24], bytes(whole)[20 + 24 :]
    head = IP(bytes(whole)[:20])
    head.flags, head.frag, head.len, head.chksum = "MF", 0, None, None
    tail = IP(bytes(whole)[:20])
    tail.flags, tail.frag, tail.len, tail.chksum = 0, 3, None, None
    clients.nothing(A, tail / second)  # waits for its first fragment: not decided
    assert clients.dropped("firewall", A) == 0
    assert clients.one(A, head / first[20:], A)[ICMP].code == 13


def test_a_dsthost_rule_uses_the_addresses_given_for_its_name(clients: Clients) -> None:
    clients.netvm.set_rules(
        IPv4Address(ip_of(A)), rules("drop", "action=accept dsthost=server.example")
    )
    assert clients.one(A, syn(A, 443), A)[ICMP].code == 13  # not resolved yet: nothing matches
    clients.netvm.resolve_host("server.example", [IPv4Address(SERVER)])
    assert clients.one(A, syn(A, 443, sport=40001), WAN)[IP].dst == SERVER


# -- dsthost names: natvm's own DNS queries ---------------------------------------------------


def dns_query_out(clients: Clients, server: str = DNS1) -> Ether:
    """The one frame natvm's tick sends: its DNS query, checked to leave as its own."""
    out = [(port, Ether(frame)) for port, frame in clients.netvm.tick(clients.now)]
    assert len(out) == 1 and out[0][0] == WAN, out
    query = out[0][1]
    assert_checksums_valid(query)
    assert (query.src, query.dst) == (WAN_MAC, GATEWAY_MAC)
    assert (query[IP].src, query[IP].dst, query[UDP].dport) == (WAN_IP, server, 53)
    assert query[UDP].sport == clients.netvm.resolver_port
    return query


def gateway_arp_reply(config: ApplianceConfig) -> Ether:
    gateway = config.wan.gateway
    assert gateway is not None
    return Ether(dst=WAN_MAC, src=GATEWAY_MAC) / ARP(
        op=2, hwsrc=GATEWAY_MAC, psrc=str(gateway), hwdst=WAN_MAC, pdst=WAN_IP
    )


def dns_answer(query: Ether, *addresses: str, **fields: object) -> Packet:
    asked = DNS(bytes(query[UDP].payload))
    records = [DNSRR(rrname=asked.qd[0].qname, type="A", ttl=600, rdata=a) for a in addresses]
    dns = DNS(id=asked.id, qr=1, rd=1, ra=1, qd=asked.qd, an=records)
    for name, value in fields.items():
        setattr(dns, name, value)
    return IP(src=DNS1, dst=WAN_IP) / UDP(sport=53, dport=query[UDP].sport) / dns


def test_a_dsthost_name_is_resolved_by_natvm_itself(clients: Clients) -> None:
    clients.netvm.set_rules(
        IPv4Address(ip_of(A)), rules("drop", "action=accept proto=tcp dsthost=server.example")
    )
    query = dns_query_out(clients)
    asked = DNS(bytes(query[UDP].payload))
    assert (asked.rd, asked.qd[0].qname, asked.qd[0].qtype) == (1, b"server.example.", 1)
    clients.nothing(WAN, dns_answer(query, SERVER))  # taken by the resolver, not the NAT
    assert clients.netvm.notes == ["dns: server.example -> 198.51.100.10 (ttl 600 s)"]
    assert clients.one(A, syn(A, 443), WAN)[IP].dst == SERVER
    assert clients.one(A, syn(A, 443, dst=SERVER2), A)[ICMP].code == 13
    assert clients.netvm.counters.drops.get("filtered", 0) == 0
    assert clients.netvm.tick(clients.now + 599) == []  # asked again when its TTL runs out
    clients.now += 600
    clients.nothing(WAN, gateway_arp_reply(clients.netvm.config))  # long since forgotten
    assert DNS(bytes(dns_query_out(clients)[UDP].payload)).qd[0].qname == b"server.example."


def test_a_rule_set_naming_a_resolved_name_gets_its_addresses_at_once(clients: Clients) -> None:
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("drop", "action=accept dsthost=s.ex"))
    clients.nothing(WAN, dns_answer(dns_query_out(clients), SERVER))
    clients.netvm.set_rules(IPv4Address(ip_of(B)), rules("drop", "action=accept dsthost=s.ex"))
    assert clients.netvm.tick(clients.now) == []  # nothing to ask
    assert clients.one(B, syn(B, 443), WAN)[IP].dst == SERVER


def test_answers_natvm_did_not_ask_for_are_counted_and_change_nothing(clients: Clients) -> None:
    clients.netvm.set_rules(
        IPv4Address(ip_of(A)), rules("drop", "action=accept dsthost=server.example")
    )
    query = dns_query_out(clients)
    forged = dns_answer(query, SERVER2)
    forged[DNS].id ^= 1
    clients.nothing(WAN, forged)
    from_elsewhere = dns_answer(query, SERVER2)
    from_elsewhere[IP].src = SERVER2
    clients.nothing(WAN, from_elsewhere)
    wrong_port = dns_answer(query, SERVER2)
    wrong_port[UDP].sport = 5353
    clients.nothing(WAN, wrong_port)
    assert clients.dropped("dns-mismatched") == 3
    cut = bytes(dns_answer(query, SERVER)[DNS])[:20]  # its ID, then nothing whole
    garbled = IP(src=DNS1, dst=WAN_IP) / UDP(sport=53, dport=query[UDP].sport) / cut
    clients.nothing(WAN, garbled)
    assert clients.dropped("dns-malformed") == 1
    assert clients.netvm.notes == []
    clients.nothing(WAN, dns_answer(query, SERVER))  # the real answer still counts
    assert clients.netvm.notes == ["dns: server.example -> 198.51.100.10 (ttl 600 s)"]


def test_the_resolvers_port_is_never_a_mappings(clients: Clients) -> None:
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("accept", "action=drop dsthost=x.ex"))
    port = dns_query_out(clients)[UDP].sport
    out = clients.one(B, IP(src=ip_of(B), dst=SERVER) / UDP(sport=port, dport=7) / b"q", WAN)
    assert out[UDP].sport != port  # port preservation gives way to the reservation
    assert (UDP_PROTO, port) in clients.netvm.table.reserved


def test_no_answer_is_asked_again_of_the_other_server_then_logged(clients: Clients) -> None:
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("drop", "action=accept dsthost=s.ex"))
    for server in (DNS1, DNS2, DNS1):
        dns_query_out(clients, server)
        clients.now += 2.0
    assert clients.netvm.tick(clients.now) == []
    assert clients.netvm.notes == [
        f"dns: s.ex: failed after 3 tries (no answer from {DNS1}); again in 10 s"
    ]


def test_without_dns_servers_one_line_says_the_names_stay_unresolved(
    netvm_config: ApplianceConfig,
) -> None:
    clients = Clients(netvm_config._replace(nat=netvm_config.nat._replace(dns_servers=())))
    clients.netvm.set_rules(IPv4Address(ip_of(A)), rules("drop", "action=accept dsthost=s.ex"))
    clients.netvm.set_rules(IPv4Address(ip_of(B)), rules("drop", "action=accept dsthost=t.ex"))
    assert clients.netvm.tick(clients.now) == []
    assert clients.netvm.notes == [
        "dns: no upstream DNS servers (nat.dns_servers): dsthost rules stay unresolved"
    ]
