"""A fuzz input is a program: its bytes, read one at a time, choose the engine's configuration and
then a sequence of steps, each of which builds frames and hands them to a fresh engine
(`Nat.handle` / `Nat.handle_offload`) or runs its timers (`Nat.tick`), and checks everything the
oracle knows after every frame. Any byte string is a valid program (a read past the end gives 0),
so a mutated input is a mutated program: a coverage-guided fuzzer (atheris/libFuzzer) or the
seeded mutator in `fuzz.campaign` explores sequences of structured frames, not only byte soup.

Steps (the first byte of a step, modulo their number, chooses one):
  lan / wan          a packet from a LAN host or a WAN host: TCP (any flags), UDP, ICMP echo or
                     another type, another protocol; sources and destinations from small pools
                     that include spoofed, special, broadcast, hairpin and on-link addresses;
                     ports from a pool with port-forward, low and colliding ports
  lan-reply / wan-reply   the other end answering a packet the engine sent (so flows get
                     established, refreshed and closed)
  wan-error / lan-error   an ICMP error quoting a packet the engine sent, cut at some length
  fragments          a packet of either side cut into fragments, sent in some order, with
                     duplicates, overlaps or pieces missing
  arp                an ARP request or reply on either side, from pooled or odd senders
  tick               time moves on (0 s to a day) and the engine's timers run
  vnet_header / mutate / vlan   modify the next frame: a virtio_net_hdr as the shell decodes
                     it (a partial checksum, aggregates up to 64 KiB, DATA_VALID; kinds the
                     shell drops), byte mutations (flips, lengths, header fields;
                     checksums fixed up after or not), an 802.1Q/802.1ad tag
  raw                random bytes as a frame
  repeat             the last frame again, a few times
"""

import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

from appliance import shell
from appliance.config import ApplianceConfig, apply_overrides, load_config
from appliance.engine import Nat
from appliance.flows import PortAllocator
from appliance.frames import Offload, OffloadOutput, Output, Side
from fuzz import oracle, wire

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
MAX_FRAMES = 256  # frames one input may hand the engine
SCAPY_EVERY = 500  # one emitted frame in this many also goes to scapy's recomputation


def _ip(text: str) -> bytes:
    return IPv4Address(text).packed


WAN_MAC, LAN_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
OTHER_MAC, BROADCAST = bytes.fromhex("02000000ee01"), b"\xff" * 6
GATEWAY, GATEWAY_MAC = _ip("192.0.2.1"), bytes.fromhex("020000000101")
WAN_IP, LAN_IP = _ip("192.0.2.2"), _ip("10.77.0.1")
ON_LINK = _ip("192.0.2.77")  # a WAN neighbour that never answers ARP
SERVER, SERVER2, ROUTER = _ip("198.51.100.10"), _ip("203.0.113.10"), _ip("198.51.100.1")
HOSTS = {  # LAN hosts that answer ARP at the start; 10.77.0.12 never does
    _ip("10.77.0.10"): bytes.fromhex("020000000210"),
    _ip("10.77.0.11"): bytes.fromhex("020000000211"),
    _ip("10.77.0.200"): bytes.fromhex("0200000002c8"),
}
QUIET_HOST = _ip("10.77.0.12")
H10, H11, H200 = HOSTS
LAN_SOURCES = [H10, H10, H10, H11, H11, H11, H200, H200, QUIET_HOST, LAN_IP, _ip("10.77.0.255")]
LAN_SOURCES += [_ip("10.77.0.0"), _ip("10.77.9.9"), _ip("0.0.0.0"), SERVER]
REMOTES = [SERVER, SERVER, SERVER2, SERVER2, ROUTER, GATEWAY, ON_LINK, WAN_IP, WAN_IP, LAN_IP]
REMOTES += [H11, _ip("224.0.0.5"), _ip("255.255.255.255"), _ip("127.0.0.1"), _ip("240.0.0.1")]
WAN_SOURCES = [SERVER, SERVER, SERVER, SERVER2, SERVER2, ROUTER, GATEWAY, ON_LINK, H10, WAN_IP]
WAN_SOURCES += [SERVER, SERVER2, LAN_IP, _ip("0.1.2.3"), _ip("224.0.0.1"), _ip("192.0.2.255")]
WAN_DESTINATIONS = [WAN_IP] * 6 + [SERVER, LAN_IP, H10, _ip("192.0.2.255")]
PORTS = [80, 53, 443, 5000, 5001, 40000, 40001, 1023, 1024, 1025, 1, 0, 8080, 5353, 5354]
PORTS += [2000, 2001, 2003, 22, 65535, 1030, 1031]
ECHO_IDS = [77, 78, 1, 0, 1024, 5000, 8080, 65535]
TCP_FLAGS = [0x02, 0x02, 0x12, 0x10, 0x10, 0x18, 0x11, 0x01, 0x04, 0x14, 0x00, 0x03, 0xC2, 0x29]
PAYLOADS = [0, 0, 1, 7, 20, 64, 500, 548, 1400, 1452, 1472, 1473, 2000, 3000, 9000]
AGGREGATES = [1448 * 2, 1448 * 11, 16000, 65495]
TTLS = [64, 64, 64, 2, 1, 0, 255]
ERRORS = [(3, 3), (3, 1), (3, 0), (3, 4), (3, 13), (11, 0), (11, 1), (12, 0), (4, 0), (5, 1)]
QUOTE_LENGTHS = [20, 27, 28, 40, 48, 548, 0xFFFF]
FRAGMENT_SIZES = [8, 16, 64, 504, 1000, 1480]
TICKS = [0.0, 0.2, 1.0, 2.5, 30.0, 61.0, 121.0, 241.0, 301.0, 7441.0, 90000.0]
GSO_SIZES = [1448, 536, 8, 1, 0]
GSO_TYPES = [0, 0, 0, shell.GSO_TCPV4, shell.GSO_TCPV4, shell.GSO_TCPV4 | shell.GSO_ECN, 3, 4]
IP_OPTIONS = [b""] * 12 + [b"\x01\x01\x01\x01", b"\x07\x07\x04" + bytes(5)]
IP_OPTIONS.append(b"\x83\x07\x04" + _ip("198.51.100.99") + b"\x00")  # a loose source route
# Configurations, as natvm.* kernel words over the demo file (the product's own override path).
VARIANTS: list[dict[str, list[str]]] = [
    {},
    {
        "natvm.max_flows": ["6"],
        "natvm.max_flows_per_host": ["3"],
        "natvm.ports": ["1024-1031"],
    },
    {
        "natvm.filtering": ["endpoint-independent"],
        "natvm.ping_on_wan": ["0"],
        "natvm.forward": ["tcp:2000-2003:10.77.0.11:22", "udp:5353:10.77.0.10:53"],
    },
    {
        "natvm.filtering": ["address-and-port-dependent"],
        "natvm.mtu": ["576"],
        "natvm.ports": ["1-65535"],
    },
    {"natvm.wan.gw": ["none"], "natvm.max_flows_per_host": ["2"]},
    {"natvm.max_flows": ["1"], "natvm.max_flows_per_host": ["1"], "natvm.forward": ["none"]},
]


@cache
def configuration(variant: int) -> ApplianceConfig:
    return apply_overrides(load_config(ROOT / "ops-config.json"), VARIANTS[variant])


class Reader:
    """The input, a byte at a time; 0 once it is used up."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def byte(self) -> int:
        if self.position >= len(self.data):
            return 0
        self.position += 1
        return self.data[self.position - 1]

    def pick(self, choices: list[T]) -> T:
        return choices[self.byte() % len(choices)]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    @property
    def more(self) -> bool:
        return self.position < len(self.data)


@dataclass
class Modifiers:
    """What the next frame gets beyond its packet (set by the modifying steps)."""

    offload: Offload | None = None
    verified: bool = False
    mutations: list[tuple[int, int, int]] = field(default_factory=list)
    fix_checksums: bool = False
    vlan: tuple[int, int] | None = None
    dropped: bool = False  # the shell drops the frame (a virtio_net_hdr it cannot translate)


@dataclass
class Result:
    frames: int = 0  # frames handed to the engine
    emitted: int = 0  # frames it sent


class Program:
    """One run of one input against a fresh engine."""

    def __init__(self, data: bytes, stats: Result | None = None) -> None:
        self.reader = Reader(data)
        config = configuration(self.reader.byte() % len(VARIANTS))
        self.mtu = config.nat.mtu
        ports = PortAllocator(config.nat.port_first, config.nat.port_last, random.Random(7))
        self.nat = Nat(config, WAN_MAC, LAN_MAC, ports)
        self.view = oracle.View(
            {Side.WAN: WAN_MAC, Side.LAN: LAN_MAC},
            {Side.WAN: WAN_IP, Side.LAN: LAN_IP},
            config.lan.address.network,
            self.mtu,
        )
        self.now = 1000.0
        self.result = stats or Result()
        self.sent: dict[Side, deque[bytes]] = {
            Side.WAN: deque(maxlen=12),
            Side.LAN: deque(maxlen=12),
        }
        self.modifiers = Modifiers()
        self.last: tuple[Side, bytes, Offload | None, bool] | None = None
        self.trusted = True  # every checksum claim so far was true (oracle.claims_hold)
        self.quotes_trusted = True  # no quote came in with a bad L4 checksum, no partial one
        self.frames = 0
        self._emitted(self.nat.start(self.now))
        self._resolve()

    def run(self) -> Result:
        steps = STEPS
        while self.reader.more and self.frames < MAX_FRAMES:
            steps[self.reader.byte() % len(steps)](self)
        return self.result

    # -- delivering frames --------------------------------------------------------------------

    def _resolve(self) -> None:
        """The gateway and the LAN hosts answer ARP, as on a live network."""
        self.deliver_frame(
            Side.WAN,
            wire.ethernet(
                WAN_MAC,
                GATEWAY_MAC,
                wire.ETHERTYPE_ARP,
                wire.arp(2, GATEWAY_MAC, GATEWAY, WAN_MAC, WAN_IP),
            ),
            None,
            False,
        )
        for host, mac in HOSTS.items():
            arp = wire.arp(2, mac, host, LAN_MAC, LAN_IP)
            self.deliver_frame(
                Side.LAN, wire.ethernet(LAN_MAC, mac, wire.ETHERTYPE_ARP, arp), None, False
            )

    def deliver(self, side: Side, packet: bytearray, src_mac: bytes | None = None) -> None:
        """Hand the engine an IPv4 packet from `side`, with the pending modifiers."""
        modifiers, self.modifiers = self.modifiers, Modifiers()
        if modifiers.dropped:
            return
        our_mac = WAN_MAC if side is Side.WAN else LAN_MAC
        if src_mac is None:
            src_mac = (
                GATEWAY_MAC if side is Side.WAN else HOSTS.get(bytes(packet[12:16]), OTHER_MAC)
            )
        partial = modifiers.offload is not None and modifiers.offload.needs_csum
        if partial and packet[9] in (wire.TCP, wire.UDP):
            wire.fill_l4(packet, partial=True)
        frame = bytearray(wire.ethernet(our_mac, src_mac, wire.ETHERTYPE_IPV4, packet))
        if modifiers.mutations:
            _mutate(frame, modifiers.mutations)
            if modifiers.fix_checksums:
                _fix_checksums(frame, partial)
        if modifiers.vlan is not None:
            tpid, tci = modifiers.vlan
            frame[12:12] = struct.pack("!HH", tpid, tci)
        self.deliver_frame(side, bytes(frame), modifiers.offload, modifiers.verified)

    def deliver_frame(
        self, side: Side, frame: bytes, offload: Offload | None, verified: bool
    ) -> None:
        """Hand the engine a frame as the shell would, with what its virtio_net_hdr said."""
        if not oracle.claims_hold(frame, offload, verified):
            self.trusted = False
        if offload is not None and offload.needs_csum:
            self.quotes_trusted = False  # the engine may quote a partial checksum, as Linux does
        elif self.quotes_trusted and not _quote_sound(frame):
            self.quotes_trusted = False
        self.last = (side, frame, offload, verified)
        self.frames += 1
        self.result.frames += 1
        if offload is None:
            self._emitted(self.nat.handle(side, frame, self.now, verified))
        else:
            self._emitted(self.nat.handle_offload(side, frame, self.now, offload))
        oracle.check_state(self.nat, self.now)

    def _emitted(self, out: OffloadOutput | Output) -> None:
        for item in out:
            side, frame = item[0], item[1]
            offload = item[2] if len(item) == 3 else None
            oracle.check_emitted(self.view, side, frame, offload, self.trusted, self.quotes_trusted)
            self.result.emitted += 1
            if self.result.emitted % SCAPY_EVERY == 0 and self.trusted and self.quotes_trusted:
                oracle.scapy_check(frame, offload)
            if frame[12:14] == b"\x08\x00":
                packet = bytearray(frame[14:])
                if offload is not None and offload.needs_csum:
                    oracle.complete(packet)  # as it is on the wire
                self.sent[side].append(bytes(packet))

    # -- steps --------------------------------------------------------------------------------

    def lan_packet(self, payload_scale: int = 1) -> None:
        self.deliver(
            Side.LAN,
            self._packet(self.reader.pick(LAN_SOURCES), self.reader.pick(REMOTES), payload_scale),
        )

    def wan_packet(self, payload_scale: int = 1) -> None:
        r = self.reader
        self.deliver(
            Side.WAN, self._packet(r.pick(WAN_SOURCES), r.pick(WAN_DESTINATIONS), payload_scale)
        )

    def _packet(self, src: bytes, dst: bytes, payload_scale: int = 1) -> bytearray:
        r = self.reader
        kind = r.byte() % 8
        size = r.pick(PAYLOADS) * payload_scale
        if self.modifiers.offload is not None and self.modifiers.offload.gso_size:
            size = r.pick(AGGREGATES)
        size = min(size, 0xFFFF - 60 - 20)  # room for the largest IP and TCP headers
        payload = bytes([r.byte()]) * size
        if kind <= 2:
            proto, l4 = (
                wire.TCP,
                wire.tcp(r.pick(PORTS), r.pick(PORTS), r.pick(TCP_FLAGS), payload, r.u16()),
            )
        elif kind <= 4:
            proto, l4 = wire.UDP, wire.udp(r.pick(PORTS), r.pick(PORTS), payload)
        elif kind <= 6:
            icmp_type = 8 if kind == 5 else r.pick([0, 8, 13, 3, 11, 42])
            proto, l4 = (
                wire.ICMP,
                wire.icmp(icmp_type, 0, r.pick(ECHO_IDS) << 16 | r.byte(), payload),
            )
        else:
            proto, l4 = r.pick([47, 50, 132, 0]), payload
        return self._ip(src, dst, proto, l4)

    def _ip(self, src: bytes, dst: bytes, proto: int, l4: bytes) -> bytearray:
        r = self.reader
        flags = wire.DF if r.byte() & 1 else 0
        packet = wire.ipv4(src, dst, proto, l4, r.pick(TTLS), r.u16(), flags, r.pick(IP_OPTIONS))
        wire.fill_l4(packet, udp_none=r.byte() % 8 == 0)
        return packet

    def reply(self, side: Side) -> None:
        """The far end of a packet the engine sent on `side` answers it."""
        sent = self.sent[side]
        if not sent:
            (self.wan_packet if side is Side.WAN else self.lan_packet)()
            return
        r = self.reader
        original = sent[-1 - r.byte() % len(sent)]
        header_len = (original[0] & 15) * 4
        src, dst, proto = original[16:20], original[12:16], original[9]
        payload = bytes(r.pick(PAYLOADS))
        if proto == wire.TCP and len(original) >= header_len + 20:
            sport, dport = struct.unpack_from("!HH", original, header_len)
            seq, ack = struct.unpack_from("!II", original, header_len + 4)
            l4 = wire.tcp(dport, sport, r.pick(TCP_FLAGS), payload, ack, (seq + 1) & 0xFFFFFFFF)
        elif proto == wire.UDP and len(original) >= header_len + 8:
            sport, dport = struct.unpack_from("!HH", original, header_len)
            l4 = wire.udp(dport, sport, payload)
        elif proto == wire.ICMP and len(original) >= header_len + 8:
            echo_type = 0 if original[header_len] == 8 else r.pick([8, 0, 3])
            rest = int.from_bytes(original[header_len + 4 : header_len + 8], "big")
            l4 = wire.icmp(echo_type, 0, rest, payload)
        else:
            proto, l4 = r.pick([wire.TCP, wire.UDP]), bytes(8)
        if side is Side.WAN and r.byte() % 4 == 0:
            src = r.pick(WAN_SOURCES)  # someone else answers: filtering decides
        self.deliver(side, self._ip(src, dst, proto, l4))

    def wan_reply(self) -> None:
        self.reply(Side.WAN)

    def lan_reply(self) -> None:
        self.reply(Side.LAN)

    def error(self, side: Side) -> None:
        """An ICMP error about a packet the engine sent on `side`, from that side."""
        sent, r = self.sent[side], self.reader
        if not sent:
            (self.wan_packet if side is Side.WAN else self.lan_packet)()
            return
        quoted = sent[-1 - r.byte() % len(sent)][: r.pick(QUOTE_LENGTHS)]
        icmp_type, code = r.pick(ERRORS)
        if side is Side.WAN:
            src, dst = r.pick([quoted[16:20], ROUTER, GATEWAY, SERVER2]), WAN_IP
        else:
            src, dst = r.pick([quoted[16:20], quoted[16:20], H11, LAN_IP]), quoted[12:16]
        rest = r.pick([0, 1280, 576, 68])
        self.deliver(side, self._ip(src, dst, wire.ICMP, wire.icmp(icmp_type, code, rest, quoted)))

    def wan_error(self) -> None:
        self.error(Side.WAN)

    def lan_error(self) -> None:
        self.error(Side.LAN)

    def fragments(self) -> None:
        r = self.reader
        side = Side.LAN if r.byte() & 1 else Side.WAN
        if side is Side.LAN:
            packet = self._packet(r.pick(LAN_SOURCES[:6]), r.pick(REMOTES[:9]), payload_scale=3)
        else:
            packet = self._packet(r.pick(WAN_SOURCES[:6]), WAN_IP, payload_scale=3)
        if (packet[0] & 15) != 5:
            packet = packet[:20] + packet[(packet[0] & 15) * 4 :]
            packet[0], packet[2:4] = 0x45, len(packet).to_bytes(2, "big")
            wire.fill_header(packet)
            wire.fill_l4(packet)
        packet[6] &= ~(wire.DF >> 8) & 0xFF
        wire.fill_header(packet)
        pieces = wire.fragments(bytes(packet), r.pick(FRAGMENT_SIZES), limit=64)
        order = r.byte() % 6
        if order == 1:
            pieces.reverse()
        elif order == 2 and len(pieces) > 1:
            pieces.insert(r.byte() % len(pieces), pieces[r.byte() % len(pieces)])  # a duplicate
        elif order == 3 and len(pieces) > 1:
            del pieces[r.byte() % len(pieces)]  # one never comes
        elif order == 4 and len(pieces) > 1:  # one overlaps its neighbour
            piece = pieces[r.byte() % len(pieces)]
            offset = int.from_bytes(piece[6:8], "big")
            piece[6:8] = ((offset & 0xE000) | max(0, (offset & 0x1FFF) - 1)).to_bytes(2, "big")
            wire.fill_header(piece)
        elif order == 5:
            random.Random(r.byte()).shuffle(pieces)
        src_mac = GATEWAY_MAC if side is Side.WAN else HOSTS.get(bytes(packet[12:16]), OTHER_MAC)
        pending = self.modifiers  # the first piece gets them all, the rest the offload claims
        for piece in pieces:
            if self.frames >= MAX_FRAMES:
                break
            self.deliver(side, piece, src_mac)
            self.modifiers = Modifiers(pending.offload, pending.verified)
        self.modifiers = Modifiers()

    def arp(self) -> None:
        r = self.reader
        side = Side.LAN if r.byte() & 1 else Side.WAN
        if side is Side.WAN:
            sender = r.pick([GATEWAY, GATEWAY, ON_LINK, WAN_IP, _ip("192.0.2.255"), SERVER])
            target, our_mac = r.pick([WAN_IP, WAN_IP, GATEWAY, ON_LINK]), WAN_MAC
        else:
            sender = r.pick(
                [H10, H11, H200, QUIET_HOST, QUIET_HOST, LAN_IP, _ip("10.77.0.0"), SERVER]
            )
            target, our_mac = r.pick([LAN_IP, LAN_IP, H10, QUIET_HOST]), LAN_MAC
        mac = r.pick([HOSTS.get(sender, GATEWAY_MAC), OTHER_MAC, BROADCAST, bytes(6)])
        body = wire.arp(r.pick([1, 2, 1, 2, 3]), mac, sender, r.pick([bytes(6), our_mac]), target)
        body += bytes(r.pick([18, 18, 0]))
        dst = r.pick([BROADCAST, our_mac, our_mac, OTHER_MAC])
        frame = bytearray(wire.ethernet(dst, mac, wire.ETHERTYPE_ARP, body))
        modifiers, self.modifiers = self.modifiers, Modifiers()
        if modifiers.dropped:
            return
        if modifiers.mutations:
            _mutate(frame, modifiers.mutations)
        self.deliver_frame(side, bytes(frame), modifiers.offload, modifiers.verified)

    def tick(self) -> None:
        self.now += self.reader.pick(TICKS)
        self._emitted(self.nat.tick(self.now))
        oracle.check_state(self.nat, self.now, after_tick=True)

    def vnet_header(self) -> None:
        """The next frame comes with a virtio_net_hdr, decoded by the shell's own decoder: a
        partial checksum, DATA_VALID, a TCP aggregate, or a kind the shell drops (it never
        reaches the engine, so neither does the frame)."""
        r = self.reader
        header = shell.VNET_HDR.pack(r.byte() & 3, r.pick(GSO_TYPES), 0, r.pick(GSO_SIZES), 0, 0)
        try:
            offload, verified = shell.decode_vnet_hdr(header)
        except ValueError:
            self.modifiers.dropped = True
            return
        self.modifiers.offload, self.modifiers.verified = offload, verified

    def mutate(self) -> None:
        r = self.reader
        count = 1 + r.byte() % 4
        self.modifiers.mutations += [(r.byte(), r.u16(), r.u16()) for _ in range(count)]
        self.modifiers.fix_checksums = r.byte() % 3 != 0

    def vlan(self) -> None:
        r = self.reader
        self.modifiers.vlan = (r.pick([wire.ETHERTYPE_VLAN, wire.ETHERTYPE_QINQ]), r.u16())

    def raw(self) -> None:
        r = self.reader
        side = Side.LAN if r.byte() & 1 else Side.WAN
        size = r.pick([0, 1, 13, 14, 15, 20, 34, 42, 60, 100, 1514, 9000])
        body = random.Random(r.u16()).randbytes(size)
        our_mac = WAN_MAC if side is Side.WAN else LAN_MAC
        head = r.pick([our_mac, our_mac, BROADCAST, OTHER_MAC])
        ethertype = r.pick([0x0800, 0x0800, 0x0806, 0x8100, 0x86DD, 0x88A8, 0x0000, 0xFFFF])
        frame = (head + GATEWAY_MAC + ethertype.to_bytes(2, "big") + body)[:size]
        modifiers, self.modifiers = self.modifiers, Modifiers()
        if not modifiers.dropped:
            self.deliver_frame(side, frame, modifiers.offload, modifiers.verified)

    def repeat(self) -> None:
        r = self.reader
        if self.last is None:
            return
        count, step = r.pick([1, 2, 8, 32]), r.pick([0.0, 0.01, 1.0])
        for _ in range(count):
            if self.frames >= MAX_FRAMES:
                break
            self.now += step
            self.deliver_frame(*self.last)


STEPS: list[Callable[[Program], None]] = [
    Program.lan_packet,
    Program.wan_packet,
    Program.lan_reply,
    Program.wan_reply,
    Program.wan_error,
    Program.lan_error,
    Program.fragments,
    Program.arp,
    Program.tick,
    Program.vnet_header,
    Program.mutate,
    Program.vlan,
    Program.raw,
    Program.repeat,
    Program.lan_packet,
    Program.wan_reply,
]
STEP_NAMES = [step.__name__ for step in STEPS]


def run_input(data: bytes, stats: Result | None = None) -> Result:
    """Run one input; raises AssertionError (an oracle's finding) or whatever the engine raised."""
    return Program(data, stats).run()


# -- mutations of a frame's bytes -----------------------------------------------------------------

# Length and header fields by their offset from the frame start, given the IP header length:
# IP total length, UDP length, TCP data offset, the quoted IP total length and UDP length.
_FIELDS: list[Callable[[int], int]] = [
    lambda ihl: 16,
    lambda ihl: 14 + ihl + 4,
    lambda ihl: 14 + ihl + 12,
    lambda ihl: 14 + ihl + 8 + 2,
    lambda ihl: 14 + ihl + 8 + 20 + 4,
    lambda ihl: 20,  # flags and fragment offset
    lambda ihl: 22,  # TTL and protocol
]
_VALUES = [0, 1, 7, 8, 19, 20, 21, 28, 0x2000, 0x4000, 0x8000, 0x1FFF, 0x0106, 0x0111, 0xFFFF]


def _mutate(frame: bytearray, mutations: list[tuple[int, int, int]]) -> None:
    for kind, position, value in mutations:
        kind %= 8
        if kind < 3 and frame:
            at = position % (80 if position & 0x8000 else len(frame)) % len(frame)
            if kind == 0:
                frame[at] ^= value & 0xFF or 1
            elif kind == 1:
                frame[at] = value & 0xFF
            else:
                del frame[at:]
        elif kind == 3:
            frame += bytes([value & 0xFF]) * (1 + position % 64)
        elif kind in (4, 5) and len(frame) > 14:
            ihl = (frame[14] & 15) * 4
            at = _FIELDS[position % len(_FIELDS)](ihl)
            new = _VALUES[value % len(_VALUES)] if kind == 4 else value
            if at + 2 <= len(frame):
                frame[at : at + 2] = new.to_bytes(2, "big")
        elif kind == 6 and len(frame) > 14:
            frame[14] = (frame[14] & 0xF0) | value % 16
        elif kind == 7 and len(frame) > position % 60 + 1:
            del frame[position % 60 : position % 60 + 1 + value % 8]


def _fix_checksums(frame: bytearray, partial: bool) -> None:
    """Recompute what a sender would after the mutations: a quote's checksums, the L4 checksum
    (partial where the frame claims an offload), the header checksum; where lengths allow."""
    if frame[12:14] != b"\x08\x00" or len(frame) < 34:
        return
    packet = memoryview(frame)[14:]
    header_len = (packet[0] & 15) * 4
    total = int.from_bytes(packet[2:4], "big")
    if header_len < 20 or not header_len <= total <= len(packet):
        wire.fill_header(packet) if 20 <= header_len <= len(packet) else None
        return
    whole = bytearray(packet[:total])
    if not int.from_bytes(whole[6:8], "big") & 0x3FFF:
        if (
            whole[9] == wire.ICMP
            and len(whole) >= header_len + 28
            and whole[header_len] in (3, 11, 12)
        ):
            quote = memoryview(whole)[header_len + 8 :]
            quoted_len, quoted_total = (quote[0] & 15) * 4, int.from_bytes(quote[2:4], "big")
            if 20 <= quoted_len <= quoted_total <= len(quote):
                inner = bytearray(quote[:quoted_total])
                wire.fill_l4(inner)
                wire.fill_header(inner)
                quote[:quoted_total] = inner
            elif 20 <= quoted_len <= len(quote):
                wire.fill_header(quote)
        wire.fill_l4(whole, partial=partial and whole[9] in (wire.TCP, wire.UDP))
    wire.fill_header(whole)
    packet[:total] = whole


def _quote_sound(frame: bytes) -> bool:
    """False for an ICMP error whose whole quote has a bad L4 checksum: passed on as it is."""
    if len(frame) < 14 + 20 + 8 + 28 or frame[12:14] != b"\x08\x00" or frame[23] != wire.ICMP:
        return True
    header_len = (frame[14] & 15) * 4
    quote = frame[14 + header_len + 8 :]
    if len(quote) < 20 or frame[14 + header_len] not in (3, 11, 12) or quote[0] >> 4 != 4:
        return True
    total = int.from_bytes(quote[2:4], "big")
    if (
        total > len(quote)
        or total < (quote[0] & 15) * 4
        or int.from_bytes(quote[6:8], "big") & 0x3FFF
    ):
        return True
    return oracle.l4_verdict(quote[:total]) is not False
