"""Properties of the NAT engine, with hypothesis: hostile input and the RFC 4787 mapping rules.

- Random bytes and mutated valid frames never raise, and every frame the engine emits has valid
  checksums (scapy as the oracle, inner ones too). A non-fragment IPv4 frame whose header or L4
  checksum is broken is never forwarded or answered.
- A reply to any translated packet (TCP, UDP, ICMP echo) maps back to the flow it answers.
- No port overloading, endpoint-independent mapping, port parity and preservation (REQ-1, 3, 4).
"""

import copy
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_RR,
    IPOption_SSRR,
    fragment,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Padding
from scapy.utils import checksum

from appliance.config import ApplianceConfig, load_config
from appliance.engine import Nat, Side
from tests.unit.nat_harness import (
    GATEWAY,
    GATEWAY_MAC,
    HOST,
    HOST2,
    HOST_MACS,
    LAN_IP,
    LAN_MAC,
    ROOT,
    SERVER,
    SERVER2,
    WAN_IP,
    WAN_MAC,
    Harness,
    assert_checksums_valid,
    make_harness,
)

LAN, WAN = Side.LAN, Side.WAN


def examples(count: int) -> settings:
    """Each property runs `count` examples: a few seconds, well inside the unit tier's budget."""
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


NOW = 1001.0


@functools.cache
def config() -> ApplianceConfig:
    # Not the demo_config fixture: hypothesis runs many examples per fixture instance.
    return load_config(ROOT / "ops-config.json")


# -- the oracle: what scapy's checksum says about a frame going in --------------------------


@dataclass(frozen=True)
class Verdict:
    """Checksum validity of an IPv4 packet: None where it cannot be told (a fragment, a quote
    cut short, an unsupported protocol)."""

    header: bool
    l4: bool | None = None
    inner: bool | None = None


def l4_valid(ip: bytes) -> bool | None:
    """The transport header and checksum of a whole datagram (`ip` trimmed to its length)."""
    header_len, proto = (ip[0] & 0x0F) * 4, ip[9]
    segment = ip[header_len:]
    if proto == 6:
        if len(segment) < 20 or not 20 <= (segment[12] >> 4) * 4 <= len(segment):
            return False
    elif proto == 17:
        if len(segment) < 8 or int.from_bytes(segment[4:6], "big") != len(segment):
            return False
        if segment[6:8] == b"\x00\x00":
            return True
    elif proto == 1:
        if len(segment) < 8:
            return False
    else:
        return None
    pseudo = b"" if proto == 1 else ip[12:20] + struct.pack("!BBH", 0, proto, len(segment))
    return checksum(pseudo + segment) == 0


def header_valid(ip: bytes) -> bool:
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return False
    header_len, total = (ip[0] & 0x0F) * 4, int.from_bytes(ip[2:4], "big")
    return 20 <= header_len <= total <= len(ip) and checksum(ip[:header_len]) == 0


def is_fragment(ip: bytes) -> bool:
    return bool(int.from_bytes(ip[6:8], "big") & 0x3FFF)


def verdict(ip: bytes) -> Verdict:
    if not header_valid(ip):
        return Verdict(False)
    ip = ip[: int.from_bytes(ip[2:4], "big")]
    if is_fragment(ip):
        return Verdict(True)
    l4 = l4_valid(ip)
    inner = None
    quote = _quote(ip)
    if l4 and quote is not None and header_valid(quote) and not is_fragment(quote):
        inner = l4_valid(quote[: int.from_bytes(quote[2:4], "big")])
    elif l4 and quote is not None and len(quote) >= 20:  # cut short: only its header can be told
        inner = False if quote[0] >> 4 == 4 and checksum(quote[: (quote[0] & 15) * 4]) else None
    return Verdict(True, l4, inner)


def _quote(ip: bytes) -> bytes | None:
    header_len = (ip[0] & 0x0F) * 4
    if ip[9] != 1 or len(ip) < header_len + 8 or ip[header_len] not in (3, 11, 12):
        return None
    return ip[header_len + 8 :]


def feed(nat: Nat, side: Side, frame: bytes, now: float = NOW) -> list[tuple[Side, Ether]]:
    """Hand `frame` to the engine and check what comes out against what went in."""
    out = nat.handle(side, frame, now)
    given_ip = Verdict(True)
    if len(frame) >= 14 and frame[12:14] == b"\x08\x00":
        given_ip = verdict(frame[14:])
        if not given_ip.header or given_ip.l4 is False:
            assert out == [], f"forwarded a packet with a bad checksum: {frame.hex()}"
    for _, emitted in out:
        assert_emitted_checksums_valid(emitted, inner=given_ip.inner is not False)
    return [(s, Ether(f)) for s, f in out]


def assert_emitted_checksums_valid(frame: bytes, inner: bool) -> None:
    """Every checksum in `frame`, the quoted ones only if `inner`: a quote that came in with a
    bad L4 checksum is passed on as it is, since a NAT cannot tell (quotes are usually cut short).

    Checked over the raw bytes; and with conftest's scapy recomputation too where that recomputes
    the same thing: scapy rewrites malformed TCP and IP options, leaves bytes after a quoted
    datagram's length (a Padding layer) out of the ICMP checksum, and follows source routes.
    """
    if frame[12:14] != b"\x08\x00":
        return
    emitted = verdict(frame[14:])
    assert emitted.header and emitted.l4 is not False, f"bad checksum: {frame.hex()}"
    if not inner:
        return
    assert emitted.inner is not False, f"bad quoted checksum: {frame.hex()}"
    parsed = Ether(frame)
    parsed.clear_cache()
    if _rebuilds_as(parsed, frame) and Padding not in parsed and not _source_routed(parsed):
        assert_checksums_valid(Ether(frame))


def _rebuilds_as(packet: Packet, frame: bytes) -> bool:
    """Whether scapy rebuilds `packet` into exactly `frame`; some malformed TCP options make its
    rebuild raise instead (an int where it wants bytes): it cannot be the oracle for those."""
    try:
        return bytes(packet) == frame
    except (TypeError, ValueError, struct.error):
        return False


def _source_routed(packet: Packet) -> bool:
    # scapy puts the last hop of a source route option in the pseudo-header (RFC 791, 793); the
    # engine, like any NAT that does not source-route, uses the destination in the header.
    return any(
        isinstance(option, (IPOption_LSRR, IPOption_SSRR))
        for layer in packet.iterpayloads()
        for option in getattr(layer, "options", None) or []
    )


# -- the valid frames that mutations start from ------------------------------------------------


def lan(packet: Packet, host: str = HOST) -> bytes:
    return bytes(Ether(dst=LAN_MAC, src=HOST_MACS.get(host, "02:00:00:00:02:99")) / packet)


def wan(packet: Packet) -> bytes:
    return bytes(Ether(dst=WAN_MAC, src=GATEWAY_MAC) / packet)


UNRESOLVED, UNRESOLVED_MAC = "10.77.0.30", "02:00:00:00:02:30"


@dataclass
class Primed:
    """An engine with flows of each kind open, and the frames that belong to them."""

    nat: Nat
    cases: list[tuple[str, list[tuple[Side, bytes]]]]


@functools.cache
def primed() -> Primed:
    harness = Harness(config())
    harness.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53) / b"query", WAN)
    harness.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=40000, dport=80, flags="S"), WAN)
    echo = harness.one(LAN, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=77, seq=1), WAN)
    echo_id = echo[ICMP].id
    harness.one(WAN, IP(src=SERVER2, dst=WAN_IP) / TCP(sport=3333, dport=8080, flags="S"), LAN)
    harness.one(LAN, IP(src=UNRESOLVED, dst=SERVER) / UDP(sport=5030, dport=53), WAN)
    sent_udp = IP(src=WAN_IP, dst=SERVER, ttl=3) / UDP(sport=5000, dport=53) / b"query"
    sent_tcp = IP(src=WAN_IP, dst=SERVER, ttl=1) / TCP(sport=40000, dport=80, flags="S")
    sent_echo = IP(src=WAN_IP, dst=SERVER) / ICMP(type=8, id=echo_id, seq=1)
    received = IP(src=SERVER2, dst=HOST, ttl=60) / TCP(sport=3333, dport=80, flags="S")
    big_out = IP(src=HOST, dst=SERVER, id=99) / UDP(sport=5000, dport=53) / (b"o" * 3000)
    big_in = IP(src=SERVER, dst=WAN_IP, id=98) / UDP(sport=53, dport=5000) / (b"i" * 3000)

    def one(side: Side, packet: Packet) -> list[tuple[Side, bytes]]:
        return [(side, lan(packet) if side is LAN else wan(packet))]

    cases: list[tuple[str, list[tuple[Side, bytes]]]] = [
        ("lan-arp", [(LAN, lan(ARP(op=1, hwsrc=HOST_MACS[HOST], psrc=HOST, pdst=LAN_IP)))]),
        (
            "lan-tcp-data",
            one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=40000, dport=80, flags="A") / b"x"),
        ),
        (
            "lan-tcp-syn-options",
            one(
                LAN,
                IP(src=HOST2, dst=SERVER2, options=[IPOption_NOP()] * 4)
                / TCP(sport=41000, dport=443, flags="S", options=[("MSS", 1460), ("WScale", 7)]),
            ),
        ),
        ("lan-udp", one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53) / b"more")),
        (
            "lan-udp-no-checksum",
            one(LAN, IP(src=HOST2, dst=SERVER) / UDP(sport=6000, dport=53, chksum=0)),
        ),
        (
            "lan-udp-ip-options",
            one(
                LAN,
                IP(src=HOST, dst=SERVER, options=[IPOption_RR()])
                / UDP(sport=5001, dport=53)
                / b"o",
            ),
        ),
        ("lan-echo", one(LAN, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=77, seq=2) / b"p")),
        ("lan-echo-self", one(LAN, IP(src=HOST, dst=LAN_IP) / ICMP(type=8, id=1) / b"p")),
        ("lan-icmp-error", one(LAN, IP(src=HOST, dst=SERVER2) / ICMP(type=3, code=3) / received)),
        ("lan-ttl-1", one(LAN, IP(src=HOST, dst=SERVER, ttl=1) / UDP(sport=5000, dport=53) / b"t")),
        ("lan-df-too-big", one(LAN, IP(src=HOST, dst=SERVER, flags="DF") / UDP() / bytes(1600))),
        ("lan-hairpin", one(LAN, IP(src=HOST2, dst=WAN_IP) / UDP(sport=46000, dport=5353) / b"h")),
        ("lan-fragments", [(LAN, lan(piece)) for piece in fragment(big_out, 1000)]),
        ("wan-arp-request", [(WAN, wan(ARP(op=1, hwsrc=GATEWAY_MAC, psrc=GATEWAY, pdst=WAN_IP)))]),
        (
            "lan-arp-reply-releases-a-queued-packet",
            [
                (WAN, wan(IP(src=SERVER, dst=WAN_IP) / UDP(sport=53, dport=5030) / b"late")),
                (LAN, lan(ARP(op=2, hwsrc=UNRESOLVED_MAC, psrc=UNRESOLVED, pdst=LAN_IP))),
            ],
        ),
        (
            "wan-tcp-synack",
            one(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=40000, flags="SA")),
        ),
        ("wan-udp", one(WAN, IP(src=SERVER, dst=WAN_IP) / UDP(sport=53, dport=5000) / b"answer")),
        ("wan-echo-reply", one(WAN, IP(src=SERVER, dst=WAN_IP) / ICMP(type=0, id=echo_id))),
        ("wan-echo-request", one(WAN, IP(src=SERVER, dst=WAN_IP) / ICMP(type=8) / b"ping")),
        (
            "wan-error-udp",
            one(WAN, IP(src="198.51.100.1", dst=WAN_IP) / ICMP(type=3, code=3) / sent_udp),
        ),
        ("wan-error-tcp", one(WAN, IP(src="198.51.100.1", dst=WAN_IP) / ICMP(type=11) / sent_tcp)),
        ("wan-error-echo", one(WAN, IP(src=SERVER, dst=WAN_IP) / ICMP(type=3, code=1) / sent_echo)),
        (
            "wan-forward-tcp",
            one(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=5555, dport=8080, flags="S")),
        ),
        (
            "wan-forward-udp",
            one(WAN, IP(src=SERVER, dst=WAN_IP) / UDP(sport=5555, dport=5353) / b"dns"),
        ),
        (
            "wan-ttl-1",
            one(WAN, IP(src=SERVER, dst=WAN_IP, ttl=1) / UDP(sport=53, dport=5000) / b"t"),
        ),
        ("wan-fragments", [(WAN, wan(piece)) for piece in reversed(fragment(big_in, 1200))]),
    ]
    # Every case goes through unmutated: a mutation is a departure from a frame that works.
    for name, frames in cases:
        probe = copy.deepcopy(harness.nat)
        outputs = [out for side, frame in frames for out in feed(probe, side, frame)]
        assert outputs, f"{name}: the valid frames produced nothing: {probe.counters.drops}"
    return Primed(harness.nat, cases)


# -- mutations ---------------------------------------------------------------------------------


def fix_checksums(frame: bytearray) -> None:
    """Recompute every checksum scapy would, innermost first, so mutations reach past them."""
    ip = memoryview(frame)[14:]
    if frame[12:14] != b"\x08\x00" or len(ip) < 20 or (ip[0] & 0x0F) * 4 > len(ip):
        return
    header_len = max(20, (ip[0] & 0x0F) * 4)
    total = min(len(ip), max(header_len, int.from_bytes(ip[2:4], "big")))
    if not is_fragment(bytes(ip[:20])):
        quote = _quote(bytes(ip[:total]))
        if quote is not None and len(quote) >= 20:
            start = 14 + header_len + 8
            inner_len = min(len(quote), int.from_bytes(quote[2:4], "big"))
            _fix_datagram(frame, start, inner_len)
        _fix_datagram(frame, 14, total)
    _fix_header(frame, 14, header_len)


def _fix_header(frame: bytearray, start: int, header_len: int) -> None:
    if start + header_len > len(frame):
        return
    frame[start + 10 : start + 12] = b"\x00\x00"
    value = checksum(bytes(frame[start : start + header_len]))
    frame[start + 10 : start + 12] = value.to_bytes(2, "big")


def _fix_datagram(frame: bytearray, start: int, total: int) -> None:
    """The L4 checksum, then the header checksum, of the datagram at `start`."""
    header_len = (frame[start] & 0x0F) * 4
    if header_len < 20 or total < header_len or is_fragment(bytes(frame[start : start + 20])):
        return
    proto, end = frame[start + 9], start + total
    field = {6: 16, 17: 6, 1: 2}.get(proto)
    segment_start = start + header_len
    if field is None or segment_start + field + 2 > end:
        _fix_header(frame, start, header_len)
        return
    frame[segment_start + field : segment_start + field + 2] = b"\x00\x00"
    segment = bytes(frame[segment_start:end])
    pseudo = (
        b""
        if proto == 1
        else bytes(frame[start + 12 : start + 20]) + struct.pack("!BBH", 0, proto, len(segment))
    )
    value = checksum(pseudo + segment)
    if proto == 17 and value == 0:
        value = 0xFFFF
    frame[segment_start + field : segment_start + field + 2] = value.to_bytes(2, "big")
    _fix_header(frame, start, header_len)


def _ihl(frame: bytearray) -> int:
    return (frame[14] & 0x0F) * 4 if len(frame) > 14 else 20


# Offsets of length fields, from the frame and its IP header length: the IP total length, the
# UDP length (a TCP sequence number, an ICMP id), the TCP data offset, the quoted IP total length
# and the quoted UDP length in an ICMP error.
LENGTH_FIELDS: list[Callable[[int], int]] = [
    lambda ihl: 16,
    lambda ihl: 14 + ihl + 4,
    lambda ihl: 14 + ihl + 12,
    lambda ihl: 14 + ihl + 8 + 2,
    lambda ihl: 14 + ihl + 8 + 20 + 4,
]

byte_position = st.one_of(  # the headers first
    st.integers(34, 80), st.integers(14, 34), st.integers(0, 1700)
)
mutation = st.one_of(
    st.tuples(st.just("flip"), byte_position, st.integers(1, 255)),
    st.tuples(st.just("set"), byte_position, st.integers(0, 255)),
    st.tuples(st.just("truncate"), byte_position),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=40)),
    st.tuples(
        st.just("length"),
        st.integers(0, len(LENGTH_FIELDS) - 1),
        st.one_of(st.sampled_from([0, 1, 7, 8, 19, 20, 21, 28, 0xFFFF]), st.integers(0, 0xFFFF)),
    ),
    st.tuples(st.just("ihl"), st.integers(0, 15)),
)


def mutate(frame: bytes, mutations: list[tuple[object, ...]]) -> bytearray:
    data = bytearray(frame)
    for kind, *args in mutations:
        if kind == "flip" and data:
            position, mask = args
            data[int(position) % len(data)] ^= int(mask)  # type: ignore[call-overload]
        elif kind == "set" and data:
            position, value = args
            data[int(position) % len(data)] = int(value)  # type: ignore[call-overload]
        elif kind == "truncate":
            del data[int(args[0]) % (len(data) + 1) :]  # type: ignore[call-overload]
        elif kind == "extend":
            data += args[0]  # type: ignore[operator]
        elif kind == "length":
            offset = LENGTH_FIELDS[int(args[0])](_ihl(data))  # type: ignore[call-overload]
            if offset + 2 <= len(data):
                data[offset : offset + 2] = int(args[1]).to_bytes(2, "big")  # type: ignore[call-overload]
        elif kind == "ihl" and len(data) > 14:
            data[14] = (data[14] & 0xF0) | int(args[0])  # type: ignore[call-overload]
    return data


# -- (a) random bytes ---------------------------------------------------------------------------

OUR_MACS = {
    LAN: bytes.fromhex(LAN_MAC.replace(":", "")),
    WAN: bytes.fromhex(WAN_MAC.replace(":", "")),
}
ADDRESSES = [HOST, HOST2, LAN_IP, WAN_IP, SERVER, SERVER2, GATEWAY, "10.77.0.255", "224.0.0.1"]


PORTS = [53, 80, 5000, 5353, 8080, 40000]
INSIDE, OUTSIDE = [HOST, HOST2, "10.77.0.30"], [SERVER, SERVER2, GATEWAY]


def address(text: str) -> bytes:
    return bytes(map(int, text.split(".")))


@st.composite
def plausible_l4(draw: st.DrawFn, proto: int, nested: bool = True) -> bytes:
    """A TCP, UDP or ICMP message with ports, types and lengths mostly as the engine expects."""
    port = st.one_of(st.sampled_from(PORTS), st.integers(0, 0xFFFF))
    payload = draw(st.binary(max_size=60))
    if proto == 6:
        offset = draw(st.sampled_from([5, 5, 5, draw(st.integers(0, 15))]))
        flags = draw(st.sampled_from([0x02, 0x12, 0x10, 0x11, 0x04, draw(st.integers(0, 255))]))
        return (
            struct.pack("!HHIIBBHHH", draw(port), draw(port), 1, 0, offset << 4, flags, 8192, 0, 0)
            + bytes(4 * max(0, offset - 5))
            + payload
        )
    if proto == 17:
        length = draw(st.sampled_from([8 + len(payload), draw(st.integers(0, 0xFFFF))]))
        return struct.pack("!HHHH", draw(port), draw(port), length, 0) + payload
    icmp_type = draw(st.sampled_from([0, 3, 8, 11, 12, draw(st.integers(0, 255))]))
    header = struct.pack("!BBHHH", icmp_type, draw(st.integers(0, 5)), 0, draw(port), 1)
    if nested and icmp_type in (3, 11, 12) and draw(st.booleans()):
        payload = draw(plausible_ipv4(OUTSIDE, [WAN_IP, *INSIDE], nested=False))
    return header + payload


@st.composite
def plausible_ipv4(
    draw: st.DrawFn, sources: list[str], destinations: list[str], nested: bool = True
) -> bytes:
    """An IPv4 packet with random fields but a valid header checksum, to get past parse_ipv4,
    addresses mostly the side's own, and often a valid transport header and checksum."""
    sources = draw(st.sampled_from([sources, sources, ADDRESSES]))
    destinations = draw(st.sampled_from([destinations, destinations, ADDRESSES]))
    options = draw(st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)))
    options = draw(st.sampled_from([b"", b"", options]))
    proto = draw(st.sampled_from([1, 6, 17, draw(st.integers(0, 255))]))
    payload = draw(st.one_of(plausible_l4(proto, nested), st.binary(max_size=120)))
    header_len = 20 + len(options)
    total = header_len + len(payload)
    total = draw(st.sampled_from([total, total, total, draw(st.integers(0, 0xFFFF))]))
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | header_len // 4,
        0,
        total,
        draw(st.integers(0, 0xFFFF)),
        draw(st.sampled_from([0, 0, 0, 0x4000, 0x4000, 0x2000, 3, draw(st.integers(0, 0xFFFF))])),
        draw(st.sampled_from([64, 1, 2, draw(st.integers(0, 255))])),
        proto,
        0,
        address(draw(st.sampled_from(sources))),
        address(draw(st.sampled_from(destinations))),
    )
    data = bytearray(header + options + payload)
    if draw(st.sampled_from([True, True, True, False])):
        _fix_datagram(data, 0, min(len(data), max(header_len, total)))
    _fix_header(data, 0, header_len)
    return bytes(data)


@st.composite
def plausible_arp(draw: st.DrawFn) -> bytes:
    """An ARP body of the kind the appliance answers, its fields picked from likely values."""
    return struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        draw(st.sampled_from([1, 2, draw(st.integers(0, 0xFFFF))])),
        draw(st.binary(min_size=6, max_size=6)),
        address(draw(st.sampled_from([*ADDRESSES, "192.0.2.77"]))),
        draw(st.binary(min_size=6, max_size=6)),
        address(draw(st.sampled_from(ADDRESSES))),
    ) + draw(st.binary(max_size=20))


@st.composite
def random_frame(draw: st.DrawFn) -> tuple[Side, bytes]:
    """Any bytes at all now and then; mostly a frame to us with a plausible body, to get deep."""
    side = draw(st.sampled_from([LAN, WAN]))
    kind = draw(st.sampled_from(range(10)))
    if kind == 0:
        return side, draw(st.binary(max_size=80))
    mac = draw(st.sampled_from([b"\xff" * 6, draw(st.binary(min_size=6, max_size=6))]))
    if kind > 2:
        mac = OUR_MACS[side]
    if kind == 1:
        return side, mac + bytes(6) + draw(st.binary(max_size=200))
    if kind <= 5:
        return side, mac + bytes(6) + b"\x08\x06" + draw(plausible_arp())
    if side is LAN:
        return side, mac + bytes(6) + b"\x08\x00" + draw(plausible_ipv4(INSIDE, OUTSIDE))
    return side, mac + bytes(6) + b"\x08\x00" + draw(plausible_ipv4(OUTSIDE, [WAN_IP]))


@examples(400)
@given(st.lists(random_frame(), min_size=1, max_size=8), st.floats(0, 400))
def test_random_frames_never_raise(frames: list[tuple[Side, bytes]], later: float) -> None:
    nat = copy.deepcopy(primed().nat)
    for side, frame in frames:
        feed(nat, side, frame)
    nat.tick(NOW + later)
    udp = dict(primed().cases)["lan-udp"][0][1]
    assert [side for side, _ in feed(nat, LAN, udp, NOW + later)] == [WAN], "still forwards"


# -- (b) mutated valid frames ----------------------------------------------------------------


@examples(600)
@example(81564, 0, [("set", 851, 0)], True)  # a TCP option scapy cannot even rebuild
@example(2, 0, [("flip", 62, 2)], True)  # a broken TCP option that scapy rewrites on rebuild
@example(8, 0, [("extend", b"\x01"), ("flip", 17, 1)], True)  # a byte after the quoted datagram
@example(1, 0, [("ihl", 7), ("set", 34, 0), ("set", 35, 3), ("set", 36, 7)], True)  # LSRR junk
@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.lists(mutation, min_size=1, max_size=4),
    st.sampled_from([True, True, False]),  # mostly fix the checksums, to get past them
)
def test_mutated_frames_never_raise_nor_emit_bad_checksums(
    case_index: int, frame_index: int, mutations: list[tuple[object, ...]], fix: bool
) -> None:
    state = primed()
    _, frames = state.cases[case_index % len(state.cases)]
    target = frame_index % len(frames)
    nat = copy.deepcopy(state.nat)
    for index, (side, frame) in enumerate(frames):
        if index == target:
            frame = mutate(frame, mutations)
            if fix:
                fix_checksums(frame)
            frame = bytes(frame)
        feed(nat, side, frame)


# -- (c) replies map back -------------------------------------------------------------------------

internal_host = st.integers(2, 254).map(lambda n: f"10.77.0.{n}")
remote_host = st.builds(
    lambda net, n: f"{net}.{n}", st.sampled_from(["198.51.100", "203.0.113"]), st.integers(1, 254)
)
port = st.integers(1, 65535)
flow = st.tuples(st.sampled_from(["tcp", "udp", "icmp"]), internal_host, port, remote_host, port)


def host_mac(host: str) -> str:
    return f"02:00:00:00:03:{int(host.rsplit('.', 1)[1]):02x}"


def outbound(proto: str, host: str, sport: int, remote: str, dport: int) -> Packet:
    ip = IP(src=host, dst=remote)
    if proto == "tcp":
        return ip / TCP(sport=sport, dport=dport, flags="S", seq=1000)
    if proto == "udp":
        return ip / UDP(sport=sport, dport=dport) / b"request"
    return ip / ICMP(type=8, id=sport, seq=dport) / b"echo"


def reply_to(left: Ether) -> Packet:
    """The remote's answer to what left on the WAN: addresses and ports swapped."""
    ip = IP(src=left[IP].dst, dst=left[IP].src)
    if TCP in left:
        seq = left[TCP].seq
        return ip / TCP(sport=left[TCP].dport, dport=left[TCP].sport, flags="SA", ack=seq + 1)
    if UDP in left:
        return ip / UDP(sport=left[UDP].dport, dport=left[UDP].sport) / b"response"
    return ip / ICMP(type=0, id=left[ICMP].id, seq=left[ICMP].seq) / b"echo"


def send(harness: Harness, side: Side, packet: Packet, host: str) -> list[tuple[Side, Ether]]:
    mac = host_mac(host) if side is LAN else GATEWAY_MAC
    frame = Ether(dst=OUR_MACS[side], src=mac) / packet
    return feed(harness.nat, side, bytes(frame), harness.now)


@examples(150)
@given(st.lists(flow, min_size=1, max_size=12))
def test_a_reply_to_any_translated_packet_maps_back(
    flows: list[tuple[str, str, int, str, int]],
) -> None:
    harness = Harness(config())
    for _, host, *_ in flows:
        harness.resolve(LAN, host, host_mac(host))
    left = []
    for proto, host, sport, remote, dport in flows:
        out = send(harness, LAN, outbound(proto, host, sport, remote, dport), host)
        assert [side for side, _ in out] == [WAN], harness.nat.counters.drops
        frame = out[0][1]
        assert (frame[IP].src, frame[IP].dst, frame.dst) == (WAN_IP, remote, GATEWAY_MAC)
        if proto != "icmp":
            assert frame[IP].payload.dport == dport
        left.append(frame)
    for (proto, host, sport, remote, dport), frame in zip(flows, left, strict=True):
        back = send(harness, WAN, reply_to(frame), host)
        assert [side for side, _ in back] == [LAN], harness.nat.counters.drops
        arrived = back[0][1]
        assert (arrived[IP].src, arrived[IP].dst, arrived.dst) == (remote, host, host_mac(host))
        if proto == "icmp":
            assert (arrived[ICMP].type, arrived[ICMP].id, arrived[ICMP].seq) == (0, sport, dport)
        else:
            l4 = arrived[IP].payload
            assert (l4.sport, l4.dport) == (dport, sport)


# -- (d) mappings: no port overloading, endpoint independence -----------------------------------

FORWARDED = {("tcp", HOST, 80): 8080, ("udp", HOST, 53): 5353}
HOSTS = [HOST, HOST2, "10.77.0.20", "10.77.0.21"]
FORWARD_PORTS = {(proto, ext) for (proto, _, _), ext in FORWARDED.items()}
endpoint = st.tuples(
    st.sampled_from(["tcp", "udp", "icmp"]),
    st.sampled_from(HOSTS),
    st.one_of(st.sampled_from([53, 80, 1000, 2000, 2001, 2040, 5000, 5353, 8080]), port),
)


@examples(100)
@given(
    st.lists(st.tuples(endpoint, st.lists(remote_host, min_size=1, max_size=3)), max_size=50),
    st.sampled_from([(1024, 65535), (2000, 2039), (5000, 5003)]),
)
def test_no_port_overloading_and_endpoint_independent_mapping(
    traffic: list[tuple[tuple[str, str, int], list[str]]], port_range: tuple[int, int]
) -> None:
    first, last = port_range
    harness = make_harness(config(), port_first=first, port_last=last)
    for host in HOSTS:
        harness.resolve(LAN, host, host_mac(host))  # where refusals go
    external: dict[tuple[str, str, int], int] = {}  # internal endpoint -> external port
    owner: dict[tuple[str, int], tuple[str, str, int]] = {}  # external port -> internal endpoint
    for (proto, host, sport), remotes in traffic:
        for remote in remotes:
            out = send(harness, LAN, outbound(proto, host, sport, remote, 9), host)
            assert len(out) == 1
            side, frame = out[0]
            key = (proto, host, sport)
            taken = {
                p for (pr, p) in {*owner, *FORWARD_PORTS} if pr == proto and first <= p <= last
            }
            new = key not in external and key not in FORWARDED
            if side is LAN:  # refused (RFC 5508 REQ-8's admin-prohibited): only if no port is left
                assert (frame[ICMP].type, frame[ICMP].code) == (3, 13)
                assert new and len(taken) == last - first + 1
                continue
            ext = frame[ICMP].id if proto == "icmp" else frame[IP].payload.sport
            assert external.setdefault(key, ext) == ext, "endpoint-independent mapping"
            assert owner.setdefault((proto, ext), key) == key, "port overloading"
            if key in FORWARDED:
                assert ext == FORWARDED[key]
                continue
            assert (proto, ext) not in FORWARD_PORTS
            assert first <= ext <= last, "port range"
            if new:  # REQ-4: the same port if free, else the same parity while one is left
                assert ext == sport or not first <= sport <= last or sport in taken, "preservation"
                same_parity = range(first + (first ^ sport) % 2, last + 1, 2)
                parity_left = len(same_parity) > sum(p % 2 == sport % 2 for p in taken)
                assert ext % 2 == sport % 2 or not parity_left, "port parity"
