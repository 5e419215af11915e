"""Frame codec: Ethernet II, ARP, IPv4 (with options), TCP, UDP and ICMP.

Theory of operation: the engine works on a `bytearray` holding one IPv4 packet (the Ethernet
header stripped, link padding trimmed) and rewrites fields in place by offset. Parsing validates
exactly what the forwarding path relies on (RFC 791 header, RFC 1071 checksums, L4 header sizes);
anything else raises `Drop` with a short reason, which the engine counts as a drop. Nothing in
here raises any other exception on any input.
"""

import struct
from typing import Final

from appliance.checksum import internet_checksum, ones_sum

ETH_HEADER_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6

ICMP = 1
TCP = 6
UDP = 17

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETER_PROBLEM = 12
# Error types a NAT must translate (RFC 5508 REQ-10, RFC 5382 REQ-9); source quench and redirect
# are deprecated (RFC 6633; redirects are meaningless across a NAT) and dropped.
# Query types other than echo (timestamp, information, address mask) are obsolete or
# unused and are dropped by policy, as RFC 5508 REQ-1 allows ("unless explicitly overridden by
# local policy").
ICMP_ERROR_TYPES = frozenset({ICMP_DEST_UNREACHABLE, ICMP_TIME_EXCEEDED, ICMP_PARAMETER_PROBLEM})

CODE_PORT_UNREACHABLE = 3
CODE_FRAGMENTATION_NEEDED = 4
CODE_NET_UNREACHABLE = 0
CODE_HOST_UNREACHABLE = 1
CODE_ADMIN_PROHIBITED = 13

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

# RFC 1812 4.3.2.3: an ICMP error carries as much of the original as fits in 576 bytes.
ICMP_ERROR_MAX_LEN = 576

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET_MASK = 0x1FFF


class Drop(Exception):
    """A frame that is not forwarded; `reason` is a short, counter-friendly name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ipv4:
    """The fields of a validated IPv4 header; the packet bytes stay in `buf`. Made for every
    packet of the full path: a slotted class is the cheapest record to make and to read."""

    __slots__ = ("buf", "dst", "flags_offset", "header_len", "ident", "proto", "src", "ttl")

    def __init__(
        self,
        buf: bytearray,
        header_len: int,
        proto: int,
        src: bytes,
        dst: bytes,
        ttl: int,
        flags_offset: int,  # the 16-bit flags + fragment offset word
        ident: int,
    ) -> None:
        self.buf = buf
        self.header_len = header_len
        self.proto = proto
        self.src = src
        self.dst = dst
        self.ttl = ttl
        self.flags_offset = flags_offset
        self.ident = ident

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_offset & (IP_MF | IP_OFFSET_MASK))

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_offset & IP_DF)

    @property
    def payload_len(self) -> int:
        return len(self.buf) - self.header_len


def parse_ipv4(buf: bytearray) -> Ipv4:
    """Validate the IPv4 header at the start of `buf` and trim `buf` to its total length."""
    if len(buf) < 20:
        raise Drop("truncated-ip")
    version_ihl = buf[0]
    header_len = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4:
        raise Drop("bad-ip-version")
    if header_len < 20 or len(buf) < header_len:
        raise Drop("bad-ip-header-length")
    total_len = (buf[2] << 8) | buf[3]
    if total_len < header_len or total_len > len(buf):
        raise Drop("bad-ip-total-length")
    if ones_sum(memoryview(buf)[:header_len]) != 0xFFFF:
        raise Drop("bad-ip-checksum")
    if header_len > 20 and _has_source_route(buf, header_len):
        # Source routing lets a sender steer replies through hosts of its choosing; routers drop
        # it by default (RFC 7126 4.3, Linux's accept_source_route=0), and so does the appliance.
        raise Drop("source-routed")
    del buf[total_len:]
    flags_offset, ident = (buf[6] << 8) | buf[7], (buf[4] << 8) | buf[5]
    if flags_offset & 0x8000:
        raise Drop("ip-reserved-flag")
    return Ipv4(
        buf, header_len, buf[9], bytes(buf[12:16]), bytes(buf[16:20]), buf[8], flags_offset, ident
    )


_LSRR, _SSRR = 0x83, 0x89


def _has_source_route(buf: bytearray, header_len: int) -> bool:
    i = 20
    while i < header_len:
        kind = buf[i]
        if kind == 0:
            return False
        if kind == 1:
            i += 1
            continue
        if kind in (_LSRR, _SSRR):
            return True
        if i + 1 >= header_len or buf[i + 1] < 2:
            return False  # a malformed option list: nothing routes on it
        i += buf[i + 1]
    return False


_L4_MIN_LEN = {TCP: 20, UDP: 8, ICMP: 8}


def check_l4(ip: Ipv4, verify_checksum: bool = True) -> None:
    """Validate the transport header and checksum of a whole (unfragmented) datagram."""
    minimum = _L4_MIN_LEN.get(ip.proto)
    if minimum is None:
        raise Drop("unsupported-protocol")
    start, length = ip.header_len, ip.payload_len
    if length < minimum:
        raise Drop("truncated-l4")
    buf = ip.buf
    if ip.proto == TCP:
        data_offset = (buf[start + 12] >> 4) * 4
        if data_offset < 20 or data_offset > length:
            raise Drop("bad-tcp-header-length")
    elif ip.proto == UDP:
        udp_len = (buf[start + 4] << 8) | buf[start + 5]
        if udp_len != length:
            raise Drop("bad-udp-length")
        if buf[start + 6] == 0 and buf[start + 7] == 0:
            return  # UDP checksum 0: the sender computed none (RFC 768)
    if verify_checksum and l4_checksum_sum(ip) != 0xFFFF:
        raise Drop(f"bad-{_PROTO_NAMES[ip.proto]}-checksum")


_PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}


def proto_name(proto: int) -> str:
    return _PROTO_NAMES.get(proto, str(proto))


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return ones_sum(src + dst + struct.pack("!BBH", 0, proto, length))


def l4_checksum_sum(ip: Ipv4) -> int:
    """One's complement sum over the L4 segment (with pseudo-header for TCP/UDP); 0xFFFF = valid."""
    segment = memoryview(ip.buf)[ip.header_len :]
    total = ones_sum(segment)
    if ip.proto != ICMP:
        total += pseudo_header_sum(ip.src, ip.dst, ip.proto, len(segment))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def l4_checksum_offset(proto: int) -> int:
    return {TCP: 16, UDP: 6, ICMP: 2}[proto]


def fill_l4_checksum(ip: Ipv4) -> None:
    """Compute the L4 checksum from scratch (for packets the appliance builds itself)."""
    offset = ip.header_len + l4_checksum_offset(ip.proto)
    ip.buf[offset : offset + 2] = b"\x00\x00"
    segment = memoryview(ip.buf)[ip.header_len :]
    initial = 0 if ip.proto == ICMP else pseudo_header_sum(ip.src, ip.dst, ip.proto, len(segment))
    value = internet_checksum(segment, initial)
    if ip.proto == UDP and value == 0:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    ip.buf[offset : offset + 2] = value.to_bytes(2, "big")


def fill_ip_checksum(buf: bytearray, header_len: int) -> None:
    buf[10:12] = b"\x00\x00"
    buf[10:12] = internet_checksum(memoryview(buf)[:header_len]).to_bytes(2, "big")


def build_ipv4(
    src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64, ident: int = 0
) -> Ipv4:
    """A new IPv4 packet with DF clear, header checksum set; the L4 checksum is the caller's."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, ttl, proto, 0, src, dst
    )
    buf = bytearray(header + payload)
    fill_ip_checksum(buf, 20)
    return Ipv4(buf, 20, proto, src, dst, ttl, 0, ident)


def build_icmp_error(
    icmp_type: int, code: int, src: bytes, original: bytearray, rest_of_header: int = 0
) -> Ipv4:
    """An ICMP error from `src` about `original` (an IP packet), sent back to its source."""
    quoted = bytes(original[: ICMP_ERROR_MAX_LEN - 28])
    icmp = struct.pack("!BBHI", icmp_type, code, 0, rest_of_header) + quoted
    ip = build_ipv4(src, bytes(original[12:16]), ICMP, icmp)
    fill_l4_checksum(ip)
    return ip


def ethernet_header(dst_mac: bytes, src_mac: bytes, ethertype: int) -> bytes:
    return dst_mac + src_mac + ethertype.to_bytes(2, "big")


class Arp:
    __slots__ = ("op", "sender_ip", "sender_mac", "target_ip", "target_mac")

    def __init__(
        self, op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes
    ) -> None:
        self.op: Final = op  # 1 request, 2 reply
        self.sender_mac: Final = sender_mac
        self.sender_ip: Final = sender_ip
        self.target_mac: Final = target_mac
        self.target_ip: Final = target_ip


ARP_REQUEST = 1
ARP_REPLY = 2


def parse_arp(payload: bytes) -> Arp:
    if len(payload) < 28:
        raise Drop("truncated-arp")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", payload)
    if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4) or op not in (1, 2):
        raise Drop("unsupported-arp")
    return Arp(
        op,
        bytes(payload[8:14]),
        bytes(payload[14:18]),
        bytes(payload[18:24]),
        bytes(payload[24:28]),
    )


def build_arp_frame(
    op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes
) -> bytes:
    """A whole ARP frame; requests go to broadcast, replies to the target."""
    eth_dst = BROADCAST_MAC if op == ARP_REQUEST else target_mac
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, ETHERTYPE_IPV4, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip
    )
    return ethernet_header(eth_dst, sender_mac, ETHERTYPE_ARP) + body + bytes(18)
