"""The pure tier's harness: an engine with fixed MACs and resolved neighbours, and scapy as the
checksum oracle. (A module of its own, not conftest.py: another tier's conftest would shadow it.)"""

import random
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.utils import checksum

from appliance.config import ApplianceConfig, load_config
from appliance.engine import Nat, Side
from appliance.flows import PortAllocator

ROOT = Path(__file__).resolve().parents[2]
WAN_MAC = "02:00:00:00:00:01"
LAN_MAC = "02:00:00:00:00:02"
GATEWAY_MAC = "02:00:00:00:01:01"
HOST_MACS = {"10.77.0.10": "02:00:00:00:02:10", "10.77.0.11": "02:00:00:00:02:11"}
WAN_IP, LAN_IP, GATEWAY = "192.0.2.2", "10.77.0.1", "192.0.2.1"
SERVER, SERVER2 = "198.51.100.10", "203.0.113.10"
HOST, HOST2 = "10.77.0.10", "10.77.0.11"


@pytest.fixture(scope="session")
def demo_config() -> ApplianceConfig:
    return load_config(ROOT / "ops-config.json")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Harness:
    """An engine whose neighbours are already resolved, and helpers to talk to it in scapy."""

    def __init__(self, config: ApplianceConfig, now: float = 1000.0) -> None:
        ports = PortAllocator(config.nat.port_first, config.nat.port_last, random.Random(7))
        self.nat = Nat(config, mac_bytes(WAN_MAC), mac_bytes(LAN_MAC), ports)
        self.now = now
        self.advance(now)

    def advance(self, to: float) -> None:
        """Move the clock, run the timers, and let the neighbours answer the ARP refreshes."""
        self.nat.tick(to)
        self.now = to
        self.resolve(Side.WAN, GATEWAY, GATEWAY_MAC)
        for ip, mac in HOST_MACS.items():
            self.resolve(Side.LAN, ip, mac)

    def resolve(self, side: Side, ip: str, mac: str) -> None:
        own = WAN_IP if side is Side.WAN else LAN_IP
        reply = Ether(dst=WAN_MAC if side is Side.WAN else LAN_MAC, src=mac) / ARP(
            op=2, hwsrc=mac, psrc=ip, hwdst=WAN_MAC if side is Side.WAN else LAN_MAC, pdst=own
        )
        self.nat.handle(side, bytes(reply), self.now)

    def send(self, side: Side, packet: Packet, at: float | None = None) -> list[tuple[Side, Ether]]:
        """Wrap an IP packet in Ethernet addressed to the appliance, handle it, parse the output."""
        if at is not None:
            self.now = at
        if not isinstance(packet, Ether):
            src = (
                GATEWAY_MAC
                if side is Side.WAN
                else HOST_MACS.get(packet[IP].src, "02:00:00:00:02:99")
            )
            packet = Ether(dst=WAN_MAC if side is Side.WAN else LAN_MAC, src=src) / packet
        out = self.nat.handle(side, bytes(packet), self.now)
        parsed = [(s, Ether(f)) for s, f in out]
        for _, frame in parsed:
            assert_checksums_valid(frame)
        return parsed

    def one(self, side: Side, packet: Packet, expect: Side) -> Ether:
        out = self.send(side, packet)
        assert len(out) == 1, f"expected one frame, got {out} drops={self.nat.counters.drops}"
        assert out[0][0] is expect
        return out[0][1]

    def nothing(self, side: Side, packet: Packet) -> None:
        out = self.send(side, packet)
        assert out == [], f"expected a drop, got {[f.summary() for _, f in out]}"

    def dropped(self, reason: str) -> int:
        return self.nat.counters.drops.get(reason, 0)


@pytest.fixture
def harness(demo_config: ApplianceConfig) -> Harness:
    return Harness(demo_config)


def make_harness(config: ApplianceConfig, **nat_changes: object) -> Harness:
    return Harness(config._replace(nat=config.nat._replace(**nat_changes)))


def assert_checksums_valid(frame: Packet) -> None:
    """scapy as the oracle: every checksum in the frame, inner ones too, equals a recomputation."""
    if IP in frame:
        assert_ip_checksums_valid(bytes(frame[IP]))


def assert_ip_checksums_valid(data: bytes) -> None:
    packet = IP(data)
    header = data[: packet.ihl * 4]
    assert packet.chksum == checksum(header[:10] + b"\x00\x00" + header[12:]), "IP header checksum"
    if packet.frag or packet.flags.MF or len(data) < packet.len:
        return  # a fragment or a truncated quote: its L4 checksum cannot be recomputed
    l4 = packet.payload
    if not isinstance(l4, (TCP, UDP, ICMP)) or (isinstance(l4, UDP) and l4.chksum == 0):
        return
    clean = IP(data)
    clean.payload.chksum = None
    expected = IP(bytes(clean)).payload.chksum
    assert l4.chksum == expected, f"{l4.name} checksum {l4.chksum:#06x} != {expected:#06x}"
    if isinstance(l4, ICMP) and l4.type in (3, 11, 12):
        quoted = bytes(l4)[8:]
        if len(quoted) >= 20:
            assert_ip_checksums_valid(quoted)
