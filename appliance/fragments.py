"""IPv4 fragments: reassembly with bounded memory and cost, and fragmentation on egress (RFC 791).

A NAT must translate fragments that arrive in any order (RFC 4787 REQ-14) without letting a
fragment flood hurt unfragmented traffic (REQ-14a). The appliance reassembles: at most
`max_datagrams` partial datagrams of at most 65535 bytes each, each dropped `timeout` seconds after
its first fragment, the oldest evicted first when full. One source may hold at most
`max_per_source` of them (it then evicts its own oldest), and the engine keeps one reassembler per
side, so a flood from the WAN can neither evict the LAN's datagrams nor another sender's.

Cost is bounded too, since a flood of tiny fragments is the cheapest attack on a reassembler: a
datagram may have at most `max_pieces` pieces (256 covers a 64 KiB datagram over any link with an
MTU of 284 or more; more pieces than that is an attack, not a path), and all pieces held together
are charged their payload plus a per-piece overhead against `max_bytes`, the oldest datagrams
evicted to make room. Pieces are kept sorted by offset, so a new one is checked against its two
neighbours only (a binary search), not against every piece held.
Overlapping fragments discard the datagram (they are an evasion technique, not something a sane
sender produces); an exact duplicate (a retransmission along the path) is ignored. The whole
datagram is then translated like any other and fragmented again if it does not fit the egress MTU.
"""

from bisect import bisect_left

from appliance.packet import IP_MF, IP_OFFSET_MASK, Drop, Ipv4, fill_ip_checksum

_MAX_DATAGRAM = 65535
# What a held piece costs beyond its payload: the bytes object, its list slots, the offset.
PIECE_OVERHEAD = 100


class _Partial:
    __slots__ = ("ends", "expires", "header", "payloads", "received", "starts", "total")

    def __init__(
        self,
        expires: float,
        header: bytes | None = None,  # the header of the fragment at offset 0
        total: int | None = None,  # payload length, known once the last fragment is seen
        received: int = 0,
    ) -> None:
        self.expires = expires
        self.header = header
        self.starts: list[int] = []  # piece offsets, sorted
        self.ends: list[int] = []  # each piece's end, in the same order
        self.payloads: list[bytes] = []
        self.total = total
        self.received = received

    @property
    def charge(self) -> int:
        return self.received + PIECE_OVERHEAD * len(self.starts)


class Reassembler:
    def __init__(
        self,
        max_datagrams: int = 64,
        timeout: float = 30.0,
        max_per_source: int = 16,
        max_pieces: int = 256,
        max_bytes: int = 2 * 2**20,
    ) -> None:
        self.max_datagrams, self.timeout = max_datagrams, timeout
        self.max_per_source, self.max_pieces, self.max_bytes = max_per_source, max_pieces, max_bytes
        self._partials: dict[tuple[bytes, bytes, int, int], _Partial] = {}
        self._per_source: dict[bytes, int] = {}
        self.held_bytes = 0  # the sum of every partial's charge
        self.dropped = 0  # datagrams given up: timed out, evicted, overlapping or too large

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, ip: Ipv4, now: float) -> bytearray | None:
        """Store a fragment; returns the whole datagram once every piece is in, else None."""
        key = (ip.src, ip.dst, ip.proto, ip.ident)
        partial = self._partials.get(key)
        if partial is None:
            self._make_room(ip.src, now)
            partial = self._partials[key] = _Partial(now + self.timeout)
            self._per_source[ip.src] = self._per_source.get(ip.src, 0) + 1
        before = partial.charge
        try:
            self._insert(partial, ip)
        except Drop:
            self._discard(key)
            raise
        self.held_bytes += partial.charge - before
        if partial.total is None or partial.received < partial.total or partial.header is None:
            self._evict_over_budget(key)
            return None
        self._discard(key, completed=True)
        return _join(partial)

    def expire(self, now: float) -> None:
        for key in [k for k, p in self._partials.items() if p.expires <= now]:
            self._discard(key)

    def _make_room(self, src: bytes, now: float) -> None:
        self.expire(now)
        if self._per_source.get(src, 0) >= self.max_per_source:
            self._discard(next(k for k in self._partials if k[0] == src))
        elif len(self._partials) >= self.max_datagrams:
            self._discard(next(iter(self._partials)))

    def _evict_over_budget(self, newest: tuple[bytes, bytes, int, int]) -> None:
        """Oldest first; the datagram that grew goes last, and only if it alone is too big."""
        while self.held_bytes > self.max_bytes:
            oldest = next(iter(self._partials))
            self._discard(oldest)
            if oldest == newest:
                raise Drop("fragments-over-budget")

    def _discard(self, key: tuple[bytes, bytes, int, int], completed: bool = False) -> None:
        self.held_bytes -= self._partials.pop(key).charge
        left = self._per_source[key[0]] - 1
        if left:
            self._per_source[key[0]] = left
        else:
            del self._per_source[key[0]]
        if not completed:
            self.dropped += 1

    def _insert(self, partial: _Partial, ip: Ipv4) -> None:
        offset = (ip.flags_offset & IP_OFFSET_MASK) * 8
        payload = bytes(ip.buf[ip.header_len :])
        end = offset + len(payload)
        more = bool(ip.flags_offset & IP_MF)
        if end + 20 > _MAX_DATAGRAM or (more and (len(payload) % 8 or not payload)):
            raise Drop("bad-fragment")
        starts, ends = partial.starts, partial.ends
        index = bisect_left(starts, offset)
        if index < len(starts) and starts[index] == offset and partial.payloads[index] == payload:
            return  # an exact duplicate
        # Sorted and never overlapping: only the neighbours can overlap the new piece.
        if (index and ends[index - 1] > offset) or (index < len(starts) and starts[index] < end):
            raise Drop("fragment-overlap")
        if not more:
            if partial.total is not None or (ends and ends[-1] > end):
                raise Drop("fragment-overlap")
            partial.total = end
        elif partial.total is not None and end > partial.total:
            raise Drop("fragment-overlap")
        if len(starts) >= self.max_pieces:
            raise Drop("fragments-too-many")
        if offset == 0:
            partial.header = bytes(ip.buf[: ip.header_len])
        starts.insert(index, offset)
        ends.insert(index, end)
        partial.payloads.insert(index, payload)
        partial.received += len(payload)


def _join(partial: _Partial) -> bytearray:
    assert partial.header is not None and partial.total is not None
    header = bytearray(partial.header)
    payload = b"".join(partial.payloads)
    total = len(header) + len(payload)
    header[2:4] = total.to_bytes(2, "big")
    header[6:8] = b"\x00\x00"  # flags and offset: a whole datagram again
    fill_ip_checksum(header, len(header))
    return header + payload


def _copied_options(header: bytes) -> bytes:
    """The options with the copy flag set (RFC 791), padded to 32 bits, for later fragments."""
    options, out, i = header[20:], bytearray(), 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = options[i + 1] if i + 1 < len(options) else 0
        if length < 2:
            break
        if kind & 0x80:
            out += options[i : i + length]
        i += length
    out += bytes(-len(out) % 4)
    return bytes(out)


def fragment(ip: Ipv4, mtu: int) -> list[bytearray]:
    """Split a datagram (DF clear) into fragments of at most `mtu` bytes."""
    buf, header_len = ip.buf, ip.header_len
    first_header = bytes(buf[:header_len])
    later_options = _copied_options(first_header)
    payload = memoryview(buf)[header_len:]
    base_offset = (ip.flags_offset & IP_OFFSET_MASK) * 8
    last_has_more = bool(ip.flags_offset & IP_MF)
    fragments, position = [], 0
    while position < len(payload):
        header = first_header if position == 0 else _later_header(first_header, later_options)
        size = (mtu - len(header)) // 8 * 8
        chunk = payload[position : position + size]
        more = position + len(chunk) < len(payload) or last_has_more
        piece = bytearray(header) + chunk
        flags_offset = ((base_offset + position) // 8) | (IP_MF if more else 0)
        piece[2:4] = len(piece).to_bytes(2, "big")
        piece[6:8] = flags_offset.to_bytes(2, "big")
        fill_ip_checksum(piece, len(header))
        fragments.append(piece)
        position += len(chunk)
    return fragments


def _later_header(first_header: bytes, options: bytes) -> bytes:
    header = bytearray(first_header[:20]) + options
    header[0] = 0x40 | (len(header) // 4)
    return bytes(header)
