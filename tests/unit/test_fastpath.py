"""The engine's fast path (FastPath.outbound, .inbound) against the full path, frame by frame.

Each example hands the same frame to `Nat.handle` (which takes the fast path when it can) and, on
a deep copy of the engine, to `Nat._full` (the full path only); the frames out, the counters and
the table's timers must be identical. Frames are built so that most of them are fast-path cases
(existing flows, valid checksums, including UDP checksums of 0xFFFF and of none; any TCP flags, so
the TCP state moves) and the rest are near misses (TTL 1, bad checksums, options, fragments,
broadcast, too long) that the fast path must hand on without touching anything. Offloaded frames
(`Nat.handle_offload`: partial checksums, TCP aggregates over the MTU) are compared the same way.
"""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from appliance.config import ApplianceConfig
from appliance.engine import Nat, Offload, Side
from appliance.fastpath import DROPPED
from tests.unit.nat_harness import (
    HOST,
    HOST2,
    LAN_MAC,
    SERVER,
    WAN_IP,
    WAN_MAC,
    Harness,
    make_harness,
)

LAN, WAN = Side.LAN, Side.WAN
# (proto, host, internal port): 5000 and 6000 keep their port, 80 is moved into the range;
# the TCP connection from HALF_OPEN has only sent its SYN.
FLOWS = [
    ("udp", HOST, 5000),
    ("udp", HOST2, 80),
    ("tcp", HOST, 6000),
    ("tcp", HOST2, 80),
    ("tcp", HOST, 7000),
]
HALF_OPEN = 7000
SERVER_PORT = 443
# Flows never opened, with the external port a WAN frame of theirs goes to: unsolicited ones
# (the fast path drops them as the full path does) and the demo's two port forwards (the full
# path opens their sessions). From the LAN they are new flows, the full path's too.
UNOPENED = {("tcp", HOST, 9000): 9000, ("udp", HOST, 9001): 9001}
FORWARDS = {("tcp", HOST, 80): 8080, ("udp", HOST, 53): 5353}


def established(config: ApplianceConfig) -> tuple[Harness, dict[tuple[str, str, int], int]]:
    """A harness with every flow of FLOWS open (TCP past its handshake); and external ports."""
    harness = make_harness(config, port_first=1024)
    external = {}
    for proto, host, port in FLOWS:
        if proto == "udp":
            l4: Packet = UDP(sport=port, dport=SERVER_PORT)
        else:
            l4 = TCP(sport=port, dport=SERVER_PORT, flags="S")
        out = harness.one(LAN, IP(src=host, dst=SERVER) / l4, WAN)
        ext = out[IP].payload.sport
        external[(proto, host, port)] = ext
        if proto == "tcp" and port != HALF_OPEN:
            synack = TCP(sport=SERVER_PORT, dport=ext, flags="SA")
            harness.one(WAN, IP(src=SERVER, dst=WAN_IP) / synack, LAN)
            harness.one(LAN, IP(src=host, dst=SERVER) / TCP(sport=port, dport=SERVER_PORT), WAN)
    return harness, {**external, **UNOPENED, **FORWARDS}


def rebuild(packet: Packet, body: bytes, target: int | None) -> bytes:
    """`packet` with a payload of a word chosen so that the L4 checksum becomes `target` and
    then `body` (one's complement: adding the word w changes the checksum c into c - w; the
    word is first so it is aligned whatever the length of `body`)."""
    plain = Ether(bytes(packet / (b"\x00\x00" + body)))
    if target is None:
        return bytes(plain)
    computed = plain[IP].payload.chksum
    word = (computed - target) % 0xFFFF
    if word == 0:
        word = 0xFFFF  # 0 and 0xFFFF are the same one's complement number; avoid a no-op
    frame = Ether(bytes(packet / (word.to_bytes(2, "big") + body)))
    got = frame[IP].payload.chksum
    assert got == target or {got, target} <= {0, 0xFFFF}  # the two zeros
    return bytes(frame)


def both(
    nat: Nat, side: Side, frame: bytes, now: float, offload: Offload | None = None
) -> tuple[object, object]:
    """The outputs and states of the fast-path engine and of a copy run on the full path; with
    `offload`, through `handle_offload` and the full path it falls back to."""
    full = copy.deepcopy(nat)
    full.counters.frames_in[side] += 1  # what `handle` counts before choosing a path
    if offload is None:
        fast_out: object = nat.handle(side, frame, now)
        full_out: object = full._full(side, frame, now)
    else:
        fast_out = nat.handle_offload(side, frame, now, offload)
        full_out = full._run(side, frame, now, False, offload)
    return (fast_out, state(nat)), (full_out, state(full))


def state(nat: Nat) -> object:
    sessions = [
        (session.remote_addr, session.remote_port, session.state, session.expires, session.due)
        for mapping in nat.table.by_internal.values()
        for session in mapping.sessions()
    ]
    counters = nat.counters
    return (
        sessions,
        sorted(entry[0] for entry in nat.table._heap),
        counters.frames_in,
        counters.frames_out,
        counters.translated,
        counters.drops,
    )


flows = st.sampled_from(FLOWS + list(UNOPENED) + list(FORWARDS))
# Short payloads, and some over the MTU (a TCP aggregate when offloaded; else fragmented or
# refused with Fragmentation Needed).
bodies = st.one_of(st.binary(max_size=90), st.integers(1400, 9000).map(bytes))
# None: a frame with a complete checksum (`handle`). An offloaded frame (`handle_offload`) has a
# partial L4 checksum, so any value goes, and must leave with the same offload.
offloads = st.sampled_from(
    [None, None, None, Offload(True), Offload(True, 1448), Offload(True, 1448, ecn=True)]
)
ttls = st.sampled_from([0, 1, 2, 64, 255])
tcp_flags = st.sampled_from(["A", "PA", "S", "SA", "F", "FA", "R", "RA", "", "U"])
# None: scapy's own checksum; else the value the checksum is forced to (0: UDP's "none").
checksums = st.sampled_from([None, None, 0, 0xFFFF, 1, 0xFFFE, 0x8000])
variants = st.sampled_from(
    ["plain"] * 6 + ["options", "fragment", "broadcast", "bad-ip", "bad-l4", "bad-l4"]
)


def make_frame(
    side: Side,
    flow: tuple[str, str, int],
    ext: int,
    body: bytes,
    ttl: int,
    flags: str,
    target: int | None,
    variant: str,
) -> bytes:
    proto, host, port = flow
    src, dst, sport, dport = (
        (host, SERVER, port, SERVER_PORT) if side is LAN else (SERVER, WAN_IP, SERVER_PORT, ext)
    )
    ip = IP(src=src, dst=dst, ttl=ttl)
    if variant == "options":
        ip.options = [IPOption_NOP()] * 4
    if variant == "fragment":
        ip.flags = "MF"
    l4: Packet = (
        UDP(sport=sport, dport=dport)
        if proto == "udp"
        else TCP(sport=sport, dport=dport, flags=flags)
    )
    if target == 0 and proto == "udp":
        l4.chksum = 0
        target = None
    mac = "ff:ff:ff:ff:ff:ff" if variant == "broadcast" else (LAN_MAC if side is LAN else WAN_MAC)
    frame = bytearray(rebuild(Ether(dst=mac, src="02:00:00:00:02:10") / ip / l4, body, target))
    if variant == "bad-ip":
        frame[24] ^= 0x01
    if variant == "bad-l4":
        frame[-1] ^= 0x01  # the payload's last byte (or the header's, with no payload)
    return bytes(frame)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    side=st.sampled_from([LAN, WAN]),
    flow=flows,
    body=bodies,
    ttl=ttls,
    flags=tcp_flags,
    target=checksums,
    variant=variants,
    offload=offloads,
)
def test_fast_path_equals_full_path(
    demo_config: ApplianceConfig,
    side: Side,
    flow: tuple[str, str, int],
    body: bytes,
    ttl: int,
    flags: str,
    target: int | None,
    variant: str,
    offload: Offload | None,
) -> None:
    harness, external = _established(demo_config)
    frame = make_frame(side, flow, external[flow], body, ttl, flags, target, variant)
    fast, full = both(harness.nat, side, frame, harness.now, offload)
    assert fast == full


def test_fast_path_takes_plain_frames(demo_config: ApplianceConfig) -> None:
    """The comparison above is not vacuous: established flows do go the fast way."""
    harness, external = _established(demo_config)
    for flow in FLOWS:
        for side in (LAN, WAN):
            frame = make_frame(side, flow, external[flow], b"data", 64, "A", None, "plain")
            fast = harness.nat.fast_path.outbound if side is LAN else harness.nat.fast_path.inbound
            assert fast(frame, harness.now) is not None, (flow, side)


def test_fast_path_drops_unsolicited_frames(demo_config: ApplianceConfig) -> None:
    """Unsolicited frames are the fast path's to drop (so the comparison above covers that), a
    forwarded port's new flow not; a bad checksum goes on to the full path, which names it."""
    harness, external = _established(demo_config)
    inbound = harness.nat.fast_path.inbound
    for flow in UNOPENED:
        frame = make_frame(WAN, flow, external[flow], b"data", 64, "S", None, "plain")
        assert inbound(frame, harness.now) == DROPPED, flow
        bad = make_frame(WAN, flow, external[flow], b"data", 64, "S", None, "bad-l4")
        assert inbound(bad, harness.now) is None, flow
    for flow in FORWARDS:
        frame = make_frame(WAN, flow, external[flow], b"data", 64, "S", None, "plain")
        assert inbound(frame, harness.now) is None, flow
    assert harness.nat.counters.drops == {"filtered": len(UNOPENED)}


def test_udp_checksum_computed_zero_is_sent_as_all_ones(demo_config: ApplianceConfig) -> None:
    """RFC 768 on the fast path: the input checksum that translates to zero leaves as 0xFFFF."""
    harness, external = _established(demo_config)
    flow = FLOWS[1]
    sample = make_frame(LAN, flow, external[flow], b"x", 64, "A", 0x1234, "plain")
    out = Ether(harness.nat.handle(LAN, sample, harness.now)[0][1])
    # The translation subtracts a fixed amount D from the checksum (one's complement), so the
    # input checksum D gives 0 (sent as 0xFFFF).
    delta = (0x1234 - out[UDP].chksum) % 0xFFFF
    for target in {delta, delta or 0xFFFF}:
        frame = make_frame(LAN, flow, external[flow], b"x", 64, "A", target, "plain")
        fast, full = both(harness.nat, LAN, frame, harness.now)
        assert fast == full
        assert Ether(fast[0][0][1])[UDP].chksum == 0xFFFF


def test_offloaded_aggregates_take_the_fast_path(demo_config: ApplianceConfig) -> None:
    """Established TCP aggregates and partial-checksum frames of both protocols go the fast way
    (so the comparison above is not vacuous), and a UDP frame claiming TCP segmentation not."""
    harness, external = _established(demo_config)
    for flow in FLOWS:
        for side in (LAN, WAN):
            fast = harness.nat.fast_path.outbound if side is LAN else harness.nat.fast_path.inbound
            body = bytes(4000) if flow[0] == "tcp" else b"data"
            frame = make_frame(side, flow, external[flow], body, 64, "A", 0x1234, "plain")
            gso = Offload(True, 1448) if flow[0] == "tcp" else Offload(True)
            assert fast(frame, harness.now, True, gso) is not None, (flow, side)
            if flow[0] == "udp":
                assert fast(frame, harness.now, True, Offload(True, 1448)) is None


_cache: dict[int, tuple[Harness, dict[tuple[str, str, int], int]]] = {}


def _established(config: ApplianceConfig) -> tuple[Harness, dict[tuple[str, str, int], int]]:
    # Setting up the flows costs more than an example: build once, hand out copies.
    key = id(config)
    if key not in _cache:
        _cache[key] = established(config)
    return copy.deepcopy(_cache[key])
