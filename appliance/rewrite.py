"""Reading the endpoints of a packet, and rewriting them in place with its checksums kept right.

Theory of operation. A NAT changes a few 16-bit words of a packet it forwards: an address, a port
or an ICMP echo id, the TTL. Every checksum that covers a changed word is updated from the old and
new values of that word alone (RFC 1624 eqn. 3, `checksum.adjust`), never recomputed over the
packet, so the cost does not grow with the payload:
  - the IP header checksum covers the addresses and the TTL;
  - a TCP or UDP checksum covers the addresses (through the pseudo-header) and the ports; a UDP
    checksum of zero means none and stays zero, a computed zero is sent as 0xFFFF (RFC 768);
  - an ICMP checksum has no pseudo-header: it covers an echo id, not the addresses;
  - a *partial* TCP/UDP checksum, left for an offload to finish on transmit, holds only the
    pseudo-header's sum, not complemented: the address changes it (`checksum.adjust_partial`),
    the ports do not.
An ICMP error quotes the packet it is about. The quoted header is validated first (RFC 5508
REQ-3a, 3b), its endpoint is rewritten with its own IP and L4 checksums updated as above
(REQ-3d), and then the outer ICMP checksum, which covers the quote, is computed from scratch.

Offsets are those of the IP header: the source address at 12, the destination at 16; ports at
the start of the TCP/UDP header (source, destination), an echo id 4 bytes into the ICMP header
(`query_ports`, `reply_ports` and `embedded_ports` read them from a packet).
"""

from appliance.checksum import adjust, adjust_partial, ones_sum, word
from appliance.packet import (
    ICMP,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    TCP,
    UDP,
    Drop,
    Ipv4,
    fill_l4_checksum,
)


def query_ports(ip: Ipv4) -> tuple[int, int, int]:
    """(internal port or echo id, remote port, TCP flags) of a packet leaving the LAN."""
    start = ip.header_len
    if ip.proto == ICMP:
        if ip.buf[start] != ICMP_ECHO_REQUEST:
            raise Drop("unsupported-icmp")
        return word(ip.buf, start + 4), 0, 0
    flags = ip.buf[start + 13] if ip.proto == TCP else 0
    return word(ip.buf, start), word(ip.buf, start + 2), flags


def reply_ports(ip: Ipv4) -> tuple[int, int, int]:
    """(external port or echo id, remote port, TCP flags) of a packet to the WAN address."""
    start = ip.header_len
    if ip.proto == ICMP:
        return word(ip.buf, start + 4), 0, 0
    flags = ip.buf[start + 13] if ip.proto == TCP else 0
    return word(ip.buf, start + 2), word(ip.buf, start), flags


def source_port_offset(ip: Ipv4) -> int | None:
    return ip.header_len + (4 if ip.proto == ICMP else 0)


def dst_port_offset(ip: Ipv4) -> int | None:
    return ip.header_len + (4 if ip.proto == ICMP else 2)


def _l4_checksum_offset(ip: Ipv4) -> int | None:
    """Where the L4 checksum is, if present in the bytes we have and in use."""
    offset = ip.header_len + {TCP: 16, UDP: 6, ICMP: 2}[ip.proto]
    if offset + 2 > len(ip.buf):
        return None
    if ip.proto == UDP and ip.buf[offset] == 0 and ip.buf[offset + 1] == 0:
        return None
    return offset


def _patch(
    buf: bytearray,
    offset: int,
    new: bytes,
    checksums: tuple[int | None, ...],
    never_zero: int | None = None,
) -> None:
    old = bytes(buf[offset : offset + len(new)])
    if old == new:
        return
    buf[offset : offset + len(new)] = new
    for check in checksums:
        if check is None:
            continue
        value = adjust(word(buf, check), old, new)
        if check == never_zero and value == 0:
            value = 0xFFFF
        buf[check : check + 2] = value.to_bytes(2, "big")


def rewrite_endpoint(
    ip: Ipv4,
    addr_offset: int,
    addr: bytes,
    port_offset: int | None,
    port: int,
    partial: bool = False,
) -> None:
    """Set the source (12) or destination (16) address and port, fixing the checksums.

    `partial`: a TCP/UDP checksum field holds the non-complemented pseudo-header sum (the kernel
    adds the segment on transmit): only the address, which is in the pseudo-header, changes it.
    """
    buf = ip.buf
    l4_check = _l4_checksum_offset(ip)
    # RFC 1624's update gives 0x0000 when the words sum to zero, but data that is all zeros
    # needs 0xFFFF (an ICMP echo of id 0, sequence 0 and no data; TCP and UDP sums include the
    # pseudo-header, never zero); 0xFFFF is valid for any data, and UDP sends no 0 (RFC 768).
    never_zero = l4_check if ip.proto in (UDP, ICMP) else None
    if partial and l4_check is not None and ip.proto != ICMP:
        old = bytes(buf[addr_offset : addr_offset + 4])
        _patch(buf, addr_offset, addr, (10,))
        buf[l4_check : l4_check + 2] = adjust_partial(word(buf, l4_check), old, addr).to_bytes(
            2, "big"
        )
        if port_offset is not None:
            buf[port_offset : port_offset + 2] = port.to_bytes(2, "big")
        if addr_offset == 12:
            ip.src = addr
        else:
            ip.dst = addr
        return
    # The ICMP checksum has no pseudo-header: an address change does not touch it.
    addr_checks = (10,) if ip.proto == ICMP else (10, l4_check)
    _patch(buf, addr_offset, addr, addr_checks, never_zero)
    if port_offset is not None:
        _patch(buf, port_offset, port.to_bytes(2, "big"), (l4_check,), never_zero)
    if addr_offset == 12:
        ip.src = addr
    else:
        ip.dst = addr


def decrement_ttl(ip: Ipv4) -> None:
    ip.ttl -= 1
    _patch(ip.buf, 8, bytes((ip.ttl, ip.proto)), (10,))


def embedded(ip: Ipv4) -> Ipv4:
    """The IP packet quoted in an ICMP error: its header validated (RFC 5508 REQ-3a, 3b)."""
    start = ip.header_len + 8
    quoted = ip.buf[start:]
    if len(quoted) < 20:
        raise Drop("truncated-icmp-error")
    header_len = (quoted[0] & 0x0F) * 4
    if quoted[0] >> 4 != 4 or header_len < 20 or len(quoted) < header_len + 8:
        raise Drop("truncated-icmp-error")
    if ones_sum(quoted[:header_len]) != 0xFFFF:
        raise Drop("bad-embedded-ip-checksum")
    proto = quoted[9]
    if proto not in (TCP, UDP, ICMP):
        raise Drop("unsupported-embedded-protocol")
    inner = Ipv4(
        quoted,
        header_len,
        proto,
        bytes(quoted[12:16]),
        bytes(quoted[16:20]),
        quoted[8],
        word(quoted, 6),
        word(quoted, 4),
    )
    if proto == ICMP and quoted[header_len] not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
        raise Drop("unsupported-embedded-icmp")
    return inner


def embedded_ports(inner: Ipv4, receiver: bool) -> tuple[int, int]:
    """(our side's port, remote port) of a quoted packet; `receiver`: the LAN host received it."""
    start, buf = inner.header_len, inner.buf
    if inner.proto == ICMP:
        return word(buf, start + 4), 0
    src_port, dst_port = word(buf, start), word(buf, start + 2)
    return (dst_port, src_port) if receiver else (src_port, dst_port)


def rewrite_embedded(
    ip: Ipv4, inner: Ipv4, addr_offset: int, addr: bytes, port_offset: int | None, port: int
) -> None:
    """Rewrite the quoted packet (its IP and L4 checksums incrementally, RFC 5508 REQ-3d)
    and then recompute the outer ICMP checksum, which covers it."""
    if inner.proto == ICMP:
        # An echo id is covered by the quoted ICMP checksum only; addresses are not.
        _patch(inner.buf, addr_offset, addr, (10,))
        if port_offset is not None:
            check = _l4_checksum_offset(inner)
            _patch(inner.buf, port_offset, port.to_bytes(2, "big"), (check,), never_zero=check)
    else:
        rewrite_endpoint(inner, addr_offset, addr, port_offset, port)
    start = ip.header_len + 8
    ip.buf[start:] = inner.buf
    fill_l4_checksum(ip)
