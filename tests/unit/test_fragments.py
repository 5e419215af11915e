"""The reassembler's bounds: a flood of tiny fragments costs bounded work and memory.

Issue 14, finding 1: each new fragment used to be checked against every piece held, so one
datagram of N pieces cost O(N^2) and 8,000 eight-byte pieces took seconds. Now a datagram holds
at most `max_pieces` pieces, all pieces together at most `max_bytes`, and a legitimate datagram
still reassembles in any order.
"""

import random

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.packet import raw

from appliance.fragments import PIECE_OVERHEAD, Reassembler
from appliance.packet import IP_MF, Drop, Ipv4, fill_ip_checksum, parse_ipv4

SRC, DST = "192.0.2.7", "192.0.2.2"


HEADER = raw(IP(src=SRC, dst=DST, proto=17))[:20]


def piece(offset_units: int, payload: bytes, ident: int = 1, more: bool = True) -> Ipv4:
    """A fragment, built without scapy's per-packet cost (the flood test makes thousands)."""
    buf = bytearray(HEADER) + payload
    buf[2:4] = len(buf).to_bytes(2, "big")
    buf[4:6] = ident.to_bytes(2, "big")
    buf[6:8] = (offset_units | (IP_MF if more else 0)).to_bytes(2, "big")
    fill_ip_checksum(buf, 20)
    return parse_ipv4(buf)


def add(reassembler: Reassembler, ip: Ipv4, now: float = 0.0) -> bytearray | str | None:
    """The reassembled datagram, None while incomplete, or the drop reason."""
    try:
        return reassembler.add(ip, now)
    except Drop as drop:
        return drop.reason


def test_tiny_fragment_flood_holds_at_most_max_pieces() -> None:
    reassembler = Reassembler()
    outcomes = [add(reassembler, piece(unit, b"t" * 8)) for unit in range(1, 8189)]
    drops = [o for o in outcomes if isinstance(o, str)]
    # The datagram is given up each time it reaches the cap, and started again by later pieces.
    assert set(drops) == {"fragments-too-many"}
    assert len(drops) == 8188 // (reassembler.max_pieces + 1)
    assert reassembler.held_bytes <= reassembler.max_pieces * (8 + PIECE_OVERHEAD)
    assert len(reassembler) == 1


def test_held_bytes_never_exceed_the_budget() -> None:
    reassembler = Reassembler(max_bytes=64 * 1024)
    for ident in range(40):
        for unit in range(0, 40 * 185, 185):  # 1480-byte pieces, never the last one
            add(reassembler, piece(unit, b"b" * 1480, ident=ident))
            assert reassembler.held_bytes <= reassembler.max_bytes
    assert reassembler.dropped > 0
    # Accounting returns to zero once everything is gone.
    reassembler.expire(now=1000.0)
    assert len(reassembler) == 0 and reassembler.held_bytes == 0


def test_one_datagram_larger_than_the_budget_is_dropped() -> None:
    reassembler = Reassembler(max_bytes=4000)
    assert add(reassembler, piece(0, b"a" * 2000)) is None
    assert add(reassembler, piece(250, b"a" * 2000)) == "fragments-over-budget"
    assert len(reassembler) == 0 and reassembler.held_bytes == 0


@pytest.mark.parametrize("mtu", [576, 1500])
def test_largest_datagram_reassembles_in_any_order(mtu: int) -> None:
    payload = bytes(random.Random(mtu).randrange(256) for _ in range(65507))
    datagram = IP(src=SRC, dst=DST, id=9) / UDP(sport=1, dport=2) / payload
    pieces = fragment(datagram, fragsize=mtu - 20)
    random.Random(0).shuffle(pieces)
    reassembler = Reassembler()
    outcomes = [add(reassembler, parse_ipv4(bytearray(raw(p)))) for p in pieces]
    assert all(o is None for o in outcomes[:-1])
    whole = outcomes[-1]
    assert isinstance(whole, bytearray) and bytes(IP(bytes(whole))[UDP].payload) == payload
    assert reassembler.held_bytes == 0 and reassembler.dropped == 0


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        ((1, b"o" * 16, True), "fragment-overlap"),  # starts inside the first piece
        ((0, b"p" * 16, True), "fragment-overlap"),  # same offset, other bytes
        ((3, b"", True), "bad-fragment"),  # an empty piece that is not the last
        ((5, b"o" * 12, True), "bad-fragment"),  # not a multiple of 8 yet more follow
    ],
)
def test_bad_second_piece_discards_the_datagram(
    second: tuple[int, bytes, bool], reason: str
) -> None:
    reassembler = Reassembler()
    assert add(reassembler, piece(0, b"o" * 16)) is None
    assert add(reassembler, piece(*second)) == reason
    assert len(reassembler) == 0 and reassembler.held_bytes == 0 and reassembler.dropped == 1


def test_last_piece_before_a_held_one_is_an_overlap() -> None:
    reassembler = Reassembler()
    assert add(reassembler, piece(4, b"x" * 16)) is None
    assert add(reassembler, piece(0, b"y" * 8, more=False)) == "fragment-overlap"
