"""Regression tests for what the fuzzer (fuzz/, `invoke fuzz`) found in the engine; each input
that found one stays in fuzz/corpus/ as `crash-*` and is replayed by test_fuzz.py as well."""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from appliance.engine import Offload, Side
from tests.unit.nat_harness import (
    GATEWAY_MAC,
    HOST,
    HOST_MACS,
    LAN_MAC,
    SERVER,
    WAN_IP,
    WAN_MAC,
    Harness,
    assert_checksums_valid,
)


def test_an_echo_reply_of_all_zeros_keeps_a_valid_checksum(harness: Harness) -> None:
    """Id 0, sequence 0, no data: the reply's ICMP words all become zero once its id is restored,
    and RFC 1624's update then gives 0x0000, which a receiver sums to 0xFFFF and rejects; the
    checksum of all-zero data is 0xFFFF."""
    out = harness.one(Side.LAN, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=0, seq=0), Side.WAN)
    external_id = out[ICMP].id
    assert external_id != 0  # 0 is outside the port range: the id changes both ways
    reply = IP(src=SERVER, dst=WAN_IP) / ICMP(type=0, id=external_id, seq=0)
    back = harness.one(Side.WAN, reply, Side.LAN)
    assert back[ICMP].id == 0 and back[ICMP].chksum == 0xFFFF


def test_a_udp_datagram_claiming_tcp_segmentation_leaves_without_it(harness: Harness) -> None:
    """netback passes a client's GSO type on whatever the frame holds: a UDP datagram marked as
    a TCP aggregate must not go out to the kernel still marked (it would cut it as TCP)."""
    packet = IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53) / (b"u" * 100)
    frame = bytearray(bytes(Ether(dst=LAN_MAC, src=HOST_MACS[HOST]) / packet))
    frame[40:42] = _pseudo_header_sum(frame).to_bytes(2, "big")  # partial, as the sender left it
    out = harness.nat.handle_offload(Side.LAN, bytes(frame), harness.now, Offload(True, 1448))
    assert len(out) == 1
    side, sent, offload = out[0]
    assert side is Side.WAN and (offload is None or not offload.gso_size)
    if offload is None:
        assert_checksums_valid(Ether(sent))


def test_a_tcp_aggregate_keeps_its_segmentation(harness: Harness) -> None:
    """The other side of the fix above: a real TCP aggregate still leaves whole, marked."""
    harness.one(
        Side.LAN, IP(src=HOST, dst=SERVER) / TCP(sport=40000, dport=80, flags="S"), Side.WAN
    )
    harness.one(
        Side.WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=40000, flags="SA"), Side.LAN
    )
    packet = IP(src=HOST, dst=SERVER) / TCP(sport=40000, dport=80, flags="A") / (b"t" * 5000)
    frame = bytearray(bytes(Ether(dst=LAN_MAC, src=HOST_MACS[HOST]) / packet))
    frame[50:52] = _pseudo_header_sum(frame).to_bytes(2, "big")
    out = harness.nat.handle_offload(Side.LAN, bytes(frame), harness.now, Offload(True, 1448))
    assert [(side, offload) for side, _, offload in out] == [(Side.WAN, Offload(True, 1448))]
    assert Ether(out[0][1])[IP].src == WAN_IP and Ether(out[0][1]).src == WAN_MAC
    assert Ether(out[0][1]).dst == GATEWAY_MAC


def _pseudo_header_sum(frame: bytearray) -> int:
    """What a checksum offload leaves in the field: the pseudo-header's folded sum."""
    length = len(frame) - 34
    words = frame[26:34] + bytes((0, frame[23])) + length.to_bytes(2, "big")
    total = sum(int.from_bytes(words[i : i + 2], "big") for i in range(0, len(words), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total
