"""Internet checksum (RFC 1071) and its incremental update (RFC 1624).

The forwarding path never recomputes a checksum over a whole packet: a NAT changes a few 16-bit
words (an address, a port, the TTL), and RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), updates the
stored checksum from the old and new values of just those words.
"""


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of `data` (big-endian words, odd length zero-padded)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    # 2**16 = 1 (mod 0xFFFF), so the end-around-carry sum of the words is the whole buffer read
    # as one big integer, modulo 0xFFFF (with 0xFFFF, not 0, for a nonzero buffer): one C-speed
    # conversion instead of a Python loop over the words.
    value = int.from_bytes(data, "big")
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The checksum to store in a header whose checksum field is zero in `data`."""
    return ~_fold(ones_sum(data) + initial) & 0xFFFF


def _small_sum(data: bytes | bytearray) -> int:
    # The forwarding path only changes 2- and 4-byte fields: skip the general sum for them.
    if len(data) == 2:
        return (data[0] << 8) | data[1]
    if len(data) == 4:
        return _fold(((data[0] << 8) | data[1]) + ((data[2] << 8) | data[3]))
    return ones_sum(data)


def adjust(check: int, old: bytes | bytearray, new: bytes | bytearray) -> int:
    """RFC 1624 eqn. 3: the checksum after the words `old` (even length) became `new`."""
    total = (~check & 0xFFFF) + (~_small_sum(old) & 0xFFFF) + _small_sum(new)
    return ~_fold(total) & 0xFFFF


def adjust_word(check: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for a single 16-bit word."""
    return ~_fold((~check & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def adjust_partial(partial: int, old: bytes | bytearray, new: bytes | bytearray) -> int:
    """A partial checksum (the non-complemented pseudo-header sum that a checksum offload
    completes) after the words `old` became `new`: RFC 1624 on the complement."""
    return ~adjust(~partial & 0xFFFF, old, new) & 0xFFFF


def word(buf: bytes | bytearray, offset: int) -> int:
    """The big-endian 16-bit word at `offset`."""
    return (buf[offset] << 8) | buf[offset + 1]


def addr_sum(buf: bytes | bytearray, offset: int) -> int:
    """The one's complement sum of the two words of the address at `offset`: `_small_sum` of
    those 4 bytes, read in place."""
    total = word(buf, offset) + word(buf, offset + 2)
    return (total & 0xFFFF) + (total >> 16)


def checksum_after(check: int, terms: int) -> int:
    """RFC 1624 eqn. 3 with the (~old + new) terms of every changed word already summed."""
    total = (~check & 0xFFFF) + terms
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
