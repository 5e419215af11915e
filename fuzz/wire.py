"""Frames as the fuzzer builds and checks them: raw bytes, written here without the appliance's
codec, so that a bug in the codec cannot hide itself from the oracle (and without scapy, whose
builders are a hundred times too slow for millions of frames).

Checksums are RFC 1071 sums. `partial` is what a sender's checksum offload leaves in a TCP/UDP
checksum field (Linux's CHECKSUM_PARTIAL, a virtio_net_hdr with NEEDS_CSUM): the pseudo-header's
folded sum, not complemented; the receiver (or the NIC) completes it by summing the segment.
"""

import struct

TCP, UDP, ICMP = 6, 17, 1
CHECK_FIELD = {TCP: 16, UDP: 6, ICMP: 2}  # the L4 checksum's offset in its header
MF, DF = 0x2000, 0x4000
ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_VLAN, ETHERTYPE_QINQ = 0x0800, 0x0806, 0x8100, 0x88A8


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum (0 only for all-zero data, else 1..0xFFFF)."""
    total, size = 0, len(data)
    if size % 2:
        data, size = bytes(data) + b"\x00", size + 1
    total = sum(struct.unpack(f"!{size // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The value to store in a checksum field that is zero in `data`."""
    total = ones_sum(data) + initial
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return ones_sum(src + dst + struct.pack("!BBH", 0, proto, length))


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    ttl: int = 64,
    ident: int = 0,
    flags_offset: int = 0,
    options: bytes = b"",
) -> bytearray:
    """An IPv4 packet with its header checksum set (the payload as given)."""
    header_len = 20 + len(options)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | header_len // 4,
            0,
            header_len + len(payload),
            ident,
            flags_offset,
            ttl,
            proto,
            0,
            src,
            dst,
        )
        + options
    )
    header[10:12] = checksum(header).to_bytes(2, "big")
    return header + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes, seq: int = 1, ack: int = 0) -> bytes:
    """A TCP segment with a zero checksum (`fill_l4` sets it, knowing the addresses)."""
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(icmp_type: int, code: int, rest: int, payload: bytes) -> bytes:
    return struct.pack("!BBHI", icmp_type, code, 0, rest) + payload


def fill_l4(packet: bytearray, partial: bool = False, udp_none: bool = False) -> None:
    """Set the TCP/UDP/ICMP checksum of a whole packet: complete, or `partial` (TCP/UDP), or
    none at all for UDP (`udp_none`)."""
    header_len = (packet[0] & 0x0F) * 4
    proto, segment = packet[9], memoryview(packet)[header_len:]
    field = CHECK_FIELD.get(proto)
    if field is None or len(segment) < field + 2:
        return
    at = header_len + field
    packet[at : at + 2] = b"\x00\x00"
    if proto == ICMP:
        value = checksum(segment)
    else:
        pseudo = pseudo_sum(bytes(packet[12:16]), bytes(packet[16:20]), proto, len(segment))
        if partial:
            value = pseudo
        elif proto == UDP and udp_none:
            value = 0
        else:
            value = checksum(segment, pseudo) or (0xFFFF if proto == UDP else 0)
    packet[at : at + 2] = value.to_bytes(2, "big")


def fill_header(packet: bytearray | memoryview) -> None:
    header_len = (packet[0] & 0x0F) * 4
    if header_len < 20 or header_len > len(packet):
        return
    packet[10:12] = b"\x00\x00"
    packet[10:12] = checksum(packet[:header_len]).to_bytes(2, "big")


def fragments(packet: bytes, size: int, limit: int) -> list[bytearray]:
    """The first `limit` fragments of `packet` (a whole datagram without options) cut into
    `size` payload bytes each (a multiple of 8), in order."""
    header, payload = packet[:20], packet[20:]
    pieces = []
    for start in range(0, max(len(payload), 1), size)[:limit]:
        chunk = payload[start : start + size]
        more = MF if start + size < len(payload) else 0
        piece = bytearray(header) + chunk
        piece[2:4] = len(piece).to_bytes(2, "big")
        piece[6:8] = ((int.from_bytes(header[6:8], "big") & DF) | more | start // 8).to_bytes(
            2, "big"
        )
        fill_header(piece)
        pieces.append(piece)
    return pieces


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes | bytearray) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def arp(op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
    return struct.pack(
        "!HHBBH6s4s6s4s", 1, ETHERTYPE_IPV4, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip
    )
