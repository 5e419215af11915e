"""DNS messages for one question: an A query built, its response read. Pure.

Theory of operation (RFC 1035 section 4; RFC 2181 for TTLs and CNAMEs). natvm asks its upstream
servers for the IPv4 addresses of the host names in firewall rules (appliance/resolver.py). A
query is one question, QTYPE A, QCLASS IN, with RD (recursion desired) set, no EDNS: so an
answer fits the 512 bytes of plain DNS over UDP (4.2.1), and a server that needs more sets TC.

A response is taken only if it answers that query: QR set, opcode QUERY, the query's ID, and
exactly its question (the name compared case-insensitively, 2.3.3). Of its answer section the
A/IN records of the name are collected, following CNAME records of the same message from the
name to their target (a chain, bounded by the number of records; a loop ends it). The TTL of
the result is the least of the TTLs along the chain (RFC 2181 5.2: the records used are only
good as long as the shortest of them).

Names in a response may be compressed (4.1.4): a pointer must point before the place it is
read from, so each jump goes strictly backwards and a loop cannot happen; a name longer than
255 bytes, a label type other than a length or a pointer, and any field past the end of the
message are errors. Every fault raises `DnsError` (malformed) or `DnsMismatch` (a well-formed
message that is not the answer to this query), each with a one-line reason; nothing in here
raises anything else on any input.
"""

import struct
from ipaddress import IPv4Address
from typing import NamedTuple

TYPE_A, TYPE_CNAME, CLASS_IN = 1, 5, 1
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
MAX_NAME = 255  # bytes of a name on the wire (RFC 1035 2.3.4)
MAX_LABEL = 63
UDP_MAX = 512  # a plain DNS message over UDP, without EDNS (RFC 1035 4.2.1)

_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_QR, _TC, _RD = 0x8000, 0x0200, 0x0100
_OPCODE_MASK, _RCODE_MASK = 0x7800, 0x000F
_RECORD = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QUESTION = struct.Struct("!HH")  # type, class
_POINTER = 0xC0
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class DnsError(ValueError):
    """A DNS message that cannot be read, as one line."""


class DnsMismatch(DnsError):
    """A readable DNS message that does not answer the query (another ID, another question,
    not a response)."""


class Response(NamedTuple):
    """What a response says of the question's name: its addresses (A records at the end of
    the CNAME chain, in the order given), the least TTL along the chain (0 without
    addresses), the response code, and whether the server truncated it (TC)."""

    addresses: tuple[IPv4Address, ...]
    ttl: int
    rcode: int
    truncated: bool

    @property
    def rcode_name(self) -> str:
        return RCODE_NAMES.get(self.rcode, f"RCODE {self.rcode}")


def encode_name(name: str) -> bytes:
    """`name` in wire form (labels, then the root); ValueError if it is not a DNS name: an
    empty label, a label over 63 bytes, over 255 bytes in all, or not ASCII."""
    if not name.isascii():
        raise ValueError(f"{name!r} is not an ASCII host name")
    labels = name.removesuffix(".").split(".")
    if any(not label or len(label) > MAX_LABEL for label in labels):
        raise ValueError(f"{name!r} has an empty label or one over {MAX_LABEL} bytes")
    wire = b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\x00"
    if len(wire) > MAX_NAME:
        raise ValueError(f"{name!r} is over {MAX_NAME} bytes")
    return wire


def build_query(query_id: int, name: str) -> bytes:
    """A standard query for the A records of `name`, recursion desired; `query_id` the
    caller's random 16-bit ID. ValueError if `name` is not a DNS name."""
    if not 0 <= query_id <= 0xFFFF:
        raise ValueError(f"query ID {query_id} is not 16 bits")
    header = _HEADER.pack(query_id, _RD, 1, 0, 0, 0)
    return header + encode_name(name) + _QUESTION.pack(TYPE_A, CLASS_IN)


def message_id(message: bytes) -> int | None:
    """The ID of a DNS message; None if it is too short to have one."""
    return int.from_bytes(message[:2], "big") if len(message) >= 2 else None


def parse_response(message: bytes, query_id: int, name: str) -> Response:
    """The answer to the A query `query_id` for `name` in `message`; raises DnsMismatch if it
    is not that answer, DnsError if it cannot be read."""
    if len(message) < _HEADER.size:
        raise DnsError(f"{len(message)} bytes: shorter than a DNS header")
    ident, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(message)
    if ident != query_id:
        raise DnsMismatch(f"ID {ident}, not {query_id}")
    if not flags & _QR or flags & _OPCODE_MASK:
        raise DnsMismatch("not a response to a standard query")
    if qdcount != 1:
        raise DnsMismatch(f"{qdcount} questions, not 1")
    asked, offset = read_name(message, _HEADER.size)
    qtype, qclass = _unpack(_QUESTION, message, offset, "the question")
    try:
        wanted = encode_name(name)
    except ValueError as error:
        raise DnsMismatch(str(error)) from None
    if asked.lower() != _dotted(wanted).lower() or (qtype, qclass) != (TYPE_A, CLASS_IN):
        raise DnsMismatch(f"the question is {asked!r} type {qtype} class {qclass}")
    records = _answers(message, offset + _QUESTION.size, ancount)
    addresses, ttl = _follow(asked.lower(), records)
    return Response(addresses, ttl, flags & _RCODE_MASK, bool(flags & _TC))


# An answer record as read: (owner name lowercased, type, TTL, data: an address or a name).
_Record = tuple[str, int, int, IPv4Address | str]


def _answers(message: bytes, offset: int, count: int) -> list[_Record]:
    records: list[_Record] = []
    for _ in range(count):
        owner, offset = read_name(message, offset)
        rtype, rclass, ttl, length = _unpack(_RECORD, message, offset, "a record")
        offset += _RECORD.size
        if offset + length > len(message):
            raise DnsError(f"a record's data runs past the end ({length} bytes at {offset})")
        ttl = 0 if ttl & 0x80000000 else ttl  # RFC 2181 8: a TTL with the top bit set is 0
        if rclass == CLASS_IN and rtype == TYPE_A:
            if length != 4:
                raise DnsError(f"an A record of {length} bytes")
            records.append((owner.lower(), rtype, ttl, IPv4Address(message[offset : offset + 4])))
        elif rclass == CLASS_IN and rtype == TYPE_CNAME:
            target, end = read_name(message, offset)
            if end != offset + length:
                raise DnsError("a CNAME record whose name does not fill its data")
            records.append((owner.lower(), rtype, ttl, target.lower()))
        offset += length
    return records


def _follow(name: str, records: list[_Record]) -> tuple[tuple[IPv4Address, ...], int]:
    """The addresses at the end of `name`'s CNAME chain and the least TTL on the way."""
    ttls, seen = [], {name}
    for _ in range(len(records)):  # a chain longer than the records would be a loop
        cname = next((r for r in records if r[0] == name and r[1] == TYPE_CNAME), None)
        if cname is None or cname[3] in seen:
            break
        ttls.append(cname[2])
        name = str(cname[3])
        seen.add(name)
    found = [
        (data, ttl) for owner, rtype, ttl, data in records if owner == name and rtype == TYPE_A
    ]
    if not found:
        return (), 0
    addresses = tuple(data for data, _ in found if isinstance(data, IPv4Address))
    return addresses, min(ttls + [ttl for _, ttl in found])


def read_name(message: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` (dotted, no trailing dot; "" for the root) and the offset after
    it where it is stored (after its first pointer, if compressed)."""
    labels: list[str] = []
    wire_length, end, position = 1, -1, offset
    while True:
        if position >= len(message):
            raise DnsError(f"a name runs past the end of the message (at {position})")
        length = message[position]
        if length & _POINTER == _POINTER:
            if position + 1 >= len(message):
                raise DnsError("a compression pointer cut off at the end")
            target = ((length & ~_POINTER) << 8) | message[position + 1]
            if target >= position:
                raise DnsError(f"a compression pointer at {position} to {target}: not backwards")
            if end < 0:
                end = position + 2
            position = target
            continue
        if length & _POINTER:
            raise DnsError(f"label type {length >> 6} at {position}")
        if length == 0:
            return ".".join(labels), end if end >= 0 else position + 1
        wire_length += length + 1
        if wire_length > MAX_NAME:
            raise DnsError(f"a name over {MAX_NAME} bytes")
        label = message[position + 1 : position + 1 + length]
        if len(label) < length:
            raise DnsError(f"a label runs past the end of the message (at {position})")
        # A dot inside a label is escaped, so that it cannot pass for two labels.
        labels.append(label.decode("latin-1").replace(".", "\\."))
        position += 1 + length


def _dotted(wire: bytes) -> str:
    return read_name(wire, 0)[0]


def _unpack(layout: struct.Struct, message: bytes, offset: int, what: str) -> tuple[int, ...]:
    if offset + layout.size > len(message):
        raise DnsError(f"{what} runs past the end of the message (at {offset})")
    return layout.unpack_from(message, offset)
