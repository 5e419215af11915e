"""The codec (appliance.checksum, appliance.packet) against scapy as the oracle.

Checksums are compared with `scapy.utils.checksum` on random data; the parser is fed packets that
scapy builds, then each malformation the forwarding path relies on being caught, one at a time.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, IPOption_Timestamp
from scapy.packet import Packet
from scapy.utils import checksum

from appliance.checksum import adjust, adjust_word, internet_checksum, ones_sum
from appliance.packet import (
    ICMP_DEST_UNREACHABLE,
    ICMP_ERROR_MAX_LEN,
    ICMP_TIME_EXCEEDED,
    Drop,
    Ipv4,
    build_icmp_error,
    check_l4,
    parse_ipv4,
)
from tests.unit.nat_harness import HOST, LAN_IP, SERVER, assert_ip_checksums_valid

# -- checksum.py: RFC 1071 sums and RFC 1624 updates ----------------------------------------


@given(st.binary(max_size=1600))
def test_internet_checksum_equals_scapy(data: bytes) -> None:
    assert internet_checksum(data) == checksum(data)
    assert internet_checksum(bytearray(data)) == checksum(data)
    assert internet_checksum(memoryview(data)) == checksum(data)


@given(st.binary(max_size=1600))
def test_ones_sum_is_the_complement_of_scapys_checksum(data: bytes) -> None:
    assert ones_sum(data) == ~checksum(data) & 0xFFFF


@given(st.binary(max_size=64), st.integers(0, 0xFFFF))
def test_internet_checksum_initial_is_a_prefix_sum(data: bytes, prefix: int) -> None:
    # `initial` carries the pseudo-header sum: the same as checksumming it as a leading word.
    assert internet_checksum(data, ones_sum(prefix.to_bytes(2, "big"))) == checksum(
        prefix.to_bytes(2, "big") + data
    )


@st.composite
def buffer_and_change(draw: st.DrawFn) -> tuple[bytes, int, bytes]:
    """A buffer (odd lengths too), an even offset, and new bytes (2 or 4) to put there."""
    size = draw(st.sampled_from([2, 4]))
    data = draw(st.binary(min_size=size, max_size=200))
    offset = draw(st.integers(0, (len(data) - size) // 2)) * 2
    new = draw(st.binary(min_size=size, max_size=size))
    return data, offset, new


def _nonzero(data: bytes) -> bool:
    return any(data)


@given(buffer_and_change())
def test_adjust_equals_a_full_recomputation(case: tuple[bytes, int, bytes]) -> None:
    data, offset, new = case
    changed = data[:offset] + new + data[offset + len(new) :]
    # RFC 1624 section 3: eqn. 3 gives the full result except for an all-zero buffer, where the
    # full sum is +0 and the update yields -0; no IP, TCP, UDP or ICMP header is all zeros.
    if not (_nonzero(data) and _nonzero(changed)):
        return
    old = data[offset : offset + len(new)]
    assert adjust(checksum(data), old, new) == checksum(changed)
    if len(new) == 2:
        old_word, new_word = int.from_bytes(old, "big"), int.from_bytes(new, "big")
        assert adjust_word(checksum(data), old_word, new_word) == checksum(changed)


@given(buffer_and_change(), st.integers(0, 99))
def test_adjust_keeps_an_embedded_checksum_valid(
    case: tuple[bytes, int, bytes], where: int
) -> None:
    # The way the engine uses it: the checksum is a field inside the buffer it covers.
    data, offset, new = case
    field = (where % (len(data) // 2)) * 2
    if field <= offset + len(new) - 2 and offset <= field:
        return  # the change would overwrite the checksum field itself
    buf = bytearray(data)
    buf[field : field + 2] = b"\x00\x00"
    buf[field : field + 2] = checksum(bytes(buf)).to_bytes(2, "big")
    old = bytes(buf[offset : offset + len(new)])
    buf[offset : offset + len(new)] = new
    if not any(buf[:field] + buf[field + 2 :]):
        return  # all zeros: the -0 case of RFC 1624 section 3, as above
    stored = int.from_bytes(buf[field : field + 2], "big")
    buf[field : field + 2] = adjust(stored, old, new).to_bytes(2, "big")
    assert ones_sum(buf) == 0xFFFF


def test_adjust_rfc1624_example() -> None:
    # RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
    assert adjust(0xDD2F, b"\x55\x55", b"\x32\x85") == 0x0000
    assert adjust_word(0xDD2F, 0x5555, 0x3285) == 0x0000


# -- parse_ipv4 ----------------------------------------------------------------------------


def ip_bytes(packet: Packet) -> bytearray:
    return bytearray(bytes(packet))


def with_header_checksum(data: bytearray) -> bytearray:
    """`data` with its IPv4 header checksum recomputed (for malformations past the checksum)."""
    header_len = (data[0] & 0x0F) * 4
    data[10:12] = b"\x00\x00"
    data[10:12] = checksum(bytes(data[:header_len])).to_bytes(2, "big")
    return data


def reason(buf: bytearray) -> str:
    with pytest.raises(Drop) as caught:
        check_l4(parse_ipv4(buf))
    return caught.value.reason


@pytest.mark.parametrize(
    "options",
    [
        [],
        [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()],
        [IPOption_RR(routers=["192.0.2.1", "192.0.2.9"])],
        [IPOption_Timestamp(flg=0, timestamp=[0, 0, 0])],
    ],
)
def test_parse_ipv4_accepts_scapy_packets_with_options(options: list[Packet]) -> None:
    packet = (
        IP(src=HOST, dst=SERVER, ttl=9, id=4242, flags="DF", options=options)
        / UDP(sport=1234, dport=53)
        / b"payload"
    )
    data = ip_bytes(packet)
    parsed = IP(bytes(data))
    ip = parse_ipv4(data)
    assert ip.header_len == parsed.ihl * 4
    assert (ip.proto, ip.ttl, ip.ident) == (17, 9, 4242)
    assert ip.src == bytes([10, 77, 0, 10]) and ip.dst == bytes([198, 51, 100, 10])
    assert ip.dont_fragment and not ip.is_fragment
    assert ip.payload_len == len(parsed[UDP])
    check_l4(ip)


def test_parse_ipv4_trims_ethernet_padding() -> None:
    # A 28-byte datagram arrives padded to Ethernet's 46-byte minimum payload.
    data = ip_bytes(IP(src=HOST, dst=SERVER) / UDP(sport=1, dport=2)) + bytes(18)
    ip = parse_ipv4(data)
    assert len(ip.buf) == 28 and ip.buf is data
    check_l4(ip)  # the padding would break the UDP length and checksum if kept


def test_parse_ipv4_flags_fragments() -> None:
    first = parse_ipv4(ip_bytes(IP(src=HOST, dst=SERVER, flags="MF") / (b"x" * 8)))
    later = parse_ipv4(ip_bytes(IP(src=HOST, dst=SERVER, frag=3) / b"x"))
    assert first.is_fragment and later.is_fragment


def _udp() -> bytearray:
    return ip_bytes(IP(src=HOST, dst=SERVER) / UDP(sport=1000, dport=53) / b"query")


def _set(data: bytearray, offset: int, value: bytes, fix_header: bool = True) -> bytearray:
    data[offset : offset + len(value)] = value
    return with_header_checksum(data) if fix_header else data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytearray(), "truncated-ip"),
        (_udp()[:19], "truncated-ip"),
        (_set(_udp(), 0, b"\x65"), "bad-ip-version"),
        (_set(_udp(), 0, b"\x44", fix_header=False), "bad-ip-header-length"),
        (_set(_udp(), 0, b"\x40", fix_header=False), "bad-ip-header-length"),
        (_set(_udp(), 0, b"\x4f", fix_header=False), "bad-ip-header-length"),  # 60 > 33 bytes
        (_set(_udp(), 2, struct.pack("!H", 34)), "bad-ip-total-length"),  # too big
        (_set(_udp(), 2, struct.pack("!H", 19)), "bad-ip-total-length"),  # below the header
        (_set(_udp(), 2, struct.pack("!H", 0)), "bad-ip-total-length"),
        (_set(_udp(), 8, b"\x07", fix_header=False), "bad-ip-checksum"),
        (_set(_udp(), 10, b"\x00\x00", fix_header=False), "bad-ip-checksum"),
        (_set(_udp(), 6, b"\x80\x00"), "ip-reserved-flag"),
    ],
    ids=[
        "empty",
        "19-bytes",
        "version-6",
        "ihl-4",
        "ihl-0",
        "ihl-beyond-buffer",
        "total-too-big",
        "total-below-header",
        "total-zero",
        "bad-checksum",
        "zero-checksum",
        "evil-bit",
    ],
)
def test_parse_ipv4_rejects_malformations(data: bytearray, expected: str) -> None:
    with pytest.raises(Drop) as caught:
        parse_ipv4(bytearray(data))
    assert caught.value.reason == expected


@given(st.binary(max_size=80))
def test_parse_ipv4_raises_only_drop(data: bytes) -> None:
    try:
        ip = parse_ipv4(bytearray(data))
        check_l4(ip)
    except Drop:
        pass


# -- check_l4 ------------------------------------------------------------------------------

SEGMENTS: dict[str, Packet] = {
    "tcp": TCP(sport=40000, dport=80, flags="S", seq=1) / b"hello",
    "udp": UDP(sport=5000, dport=53) / b"hello",
    "icmp": ICMP(type=8, id=7, seq=1) / b"hello",
}


def packet_of(proto: str) -> bytearray:
    return ip_bytes(IP(src=HOST, dst=SERVER) / SEGMENTS[proto])


@pytest.mark.parametrize("proto", sorted(SEGMENTS))
def test_check_l4_accepts_valid_segments(proto: str) -> None:
    check_l4(parse_ipv4(packet_of(proto)))


@pytest.mark.parametrize(("proto", "minimum"), [("tcp", 20), ("udp", 8), ("icmp", 8)])
def test_check_l4_rejects_truncated_headers(proto: str, minimum: int) -> None:
    data = packet_of(proto)[: 20 + minimum - 1]
    data[2:4] = len(data).to_bytes(2, "big")
    assert reason(with_header_checksum(data)) == "truncated-l4"


@pytest.mark.parametrize("offset_words", [0, 4, 15])
def test_check_l4_rejects_a_bad_tcp_data_offset(offset_words: int) -> None:
    # 15 words is 60 bytes, more than the 25-byte segment.
    data = packet_of("tcp")
    data[20 + 12] = offset_words << 4
    assert reason(data) == "bad-tcp-header-length"


def test_check_l4_accepts_tcp_options() -> None:
    packet = IP(src=HOST, dst=SERVER) / TCP(options=[("MSS", 1460), ("SAckOK", b"")])
    check_l4(parse_ipv4(ip_bytes(packet)))


@pytest.mark.parametrize("udp_len", [0, 7, 12, 14, 200])
def test_check_l4_rejects_a_bad_udp_length(udp_len: int) -> None:
    data = packet_of("udp")  # a 13-byte UDP datagram
    data[24:26] = udp_len.to_bytes(2, "big")
    assert reason(data) == "bad-udp-length"


@pytest.mark.parametrize("proto", sorted(SEGMENTS))
def test_check_l4_rejects_bad_checksums(proto: str) -> None:
    data = packet_of(proto)
    data[-1] ^= 0x01
    assert reason(data) == f"bad-{proto}-checksum"


def test_check_l4_checks_the_pseudo_header() -> None:
    data = packet_of("tcp")
    data[12:16] = bytes([10, 77, 0, 11])  # another source: the IP header is fixed, TCP is not
    assert reason(with_header_checksum(data)) == "bad-tcp-checksum"


def test_check_l4_accepts_udp_checksum_zero() -> None:
    data = packet_of("udp")
    data[26:28] = b"\x00\x00"
    check_l4(parse_ipv4(data))


def test_check_l4_rejects_unsupported_protocols() -> None:
    data = ip_bytes(IP(src=HOST, dst=SERVER, proto=47) / b"gre!")
    assert reason(data) == "unsupported-protocol"


# -- build_icmp_error ----------------------------------------------------------------------


@pytest.mark.parametrize("payload_len", [0, 1, 100, 519, 520, 521, 1472])
@pytest.mark.parametrize(
    ("icmp_type", "code", "rest"),
    [(ICMP_TIME_EXCEEDED, 0, 0), (ICMP_DEST_UNREACHABLE, 4, 1400), (ICMP_DEST_UNREACHABLE, 13, 0)],
)
def test_build_icmp_error_parses_in_scapy(
    payload_len: int, icmp_type: int, code: int, rest: int
) -> None:
    original = ip_bytes(
        IP(src=HOST, dst=SERVER, ttl=1) / UDP(sport=5000, dport=53) / (b"\xa5" * payload_len)
    )
    error = build_icmp_error(icmp_type, code, bytes([10, 77, 0, 1]), original, rest)
    data = bytes(error.buf)
    assert len(data) == min(ICMP_ERROR_MAX_LEN, 28 + len(original))
    assert_ip_checksums_valid(data)
    packet = IP(data)
    assert (packet.src, packet.dst, packet.len, packet.ttl) == (LAN_IP, HOST, len(data), 64)
    assert (packet[ICMP].type, packet[ICMP].code) == (icmp_type, code)
    if icmp_type == ICMP_DEST_UNREACHABLE and code == 4:
        assert packet[ICMP].nexthopmtu == rest
    assert bytes(packet[ICMP])[8:] == bytes(original[: ICMP_ERROR_MAX_LEN - 28])
    check_l4(parse_ipv4(bytearray(data)))


def test_build_icmp_error_result_is_a_parsed_ipv4() -> None:
    original = packet_of("tcp")
    error = build_icmp_error(ICMP_TIME_EXCEEDED, 0, bytes([10, 77, 0, 1]), original)
    assert isinstance(error, Ipv4)
    again = parse_ipv4(bytearray(error.buf))
    assert (again.src, again.dst, again.proto, again.header_len) == (
        error.src,
        error.dst,
        error.proto,
        error.header_len,
    )


@settings(max_examples=50)
@given(st.binary(min_size=20, max_size=1600))
def test_build_icmp_error_quotes_any_original(body: bytes) -> None:
    original = bytearray(bytes(IP(src=HOST, dst=SERVER))[:20]) + body[20:]
    error = build_icmp_error(ICMP_DEST_UNREACHABLE, 1, bytes([10, 77, 0, 1]), original)
    assert len(error.buf) <= ICMP_ERROR_MAX_LEN
    assert checksum(bytes(error.buf[:20])) == 0
    assert checksum(bytes(error.buf[20:])) == 0
