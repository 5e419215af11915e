"""TCP segmentation offload done in software, for aggregates the kernel hands the appliance.

Under Xen netfront, or on a veth whose peer does TSO, a TCP sender's stack passes the appliance
one "super-segment" of up to 64 KiB with a partial checksum, expecting the hardware (which never
runs on this path) to cut it into MTU-sized segments. The appliance does that cut itself after
translating, exactly as GSO would: every segment gets the headers of the original with its own
sequence number, total length, IP id and complete checksums; FIN and PSH stay on the last segment
only, CWR on the first only (RFC 3168 6.1.2).
"""

from appliance.packet import TCP_FIN, Ipv4, fill_ip_checksum, fill_l4_checksum

_TCP_PSH = 0x08
_TCP_CWR = 0x80


def segment_tcp(ip: Ipv4, mtu: int) -> list[Ipv4]:
    """Cut a whole TCP datagram into segments that fit `mtu`; checksums complete."""
    buf, ip_len = ip.buf, ip.header_len
    tcp_len = (buf[ip_len + 12] >> 4) * 4
    headers = bytes(buf[: ip_len + tcp_len])
    payload = memoryview(buf)[ip_len + tcp_len :]
    mss = max(8, mtu - ip_len - tcp_len)
    seq = int.from_bytes(headers[ip_len + 4 : ip_len + 8], "big")
    flags = headers[ip_len + 13]
    segments: list[Ipv4] = []
    for index, start in enumerate(range(0, max(len(payload), 1), mss)):
        chunk = payload[start : start + mss]
        last = start + mss >= len(payload)
        piece = bytearray(headers) + chunk
        piece[2:4] = len(piece).to_bytes(2, "big")
        piece[4:6] = ((ip.ident + index) & 0xFFFF).to_bytes(2, "big")
        piece[ip_len + 4 : ip_len + 8] = ((seq + start) & 0xFFFFFFFF).to_bytes(4, "big")
        piece[ip_len + 13] = _segment_flags(flags, first=index == 0, last=last)
        fill_ip_checksum(piece, ip_len)
        segment = Ipv4(
            piece,
            ip_len,
            ip.proto,
            ip.src,
            ip.dst,
            ip.ttl,
            ip.flags_offset,
            (ip.ident + index) & 0xFFFF,
        )
        fill_l4_checksum(segment)
        segments.append(segment)
    return segments


def _segment_flags(flags: int, first: bool, last: bool) -> int:
    if not last:
        flags &= ~(TCP_FIN | _TCP_PSH)
    if not first:
        flags &= ~_TCP_CWR
    return flags
