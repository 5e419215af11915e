"""DNS messages (appliance/dnsquery.py): queries checked by scapy's DNS layer, responses built
by it, and malformed ones built by hand."""

import random
import struct
from ipaddress import IPv4Address

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR

from appliance.dnsquery import (
    RCODE_NXDOMAIN,
    DnsError,
    DnsMismatch,
    build_query,
    encode_name,
    parse_response,
    read_name,
)

NAME = "updates.example.org"


def response(query_id: int = 4242, name: str = NAME, **fields: object) -> bytes:
    """A response in scapy's hands, compressed as scapy compresses it."""
    fields.setdefault("qd", DNSQR(qname=name, qtype="A"))
    return bytes(DNS(id=query_id, qr=1, rd=1, ra=1, **fields))


def test_a_query_is_one_a_question_with_recursion_desired() -> None:
    query = DNS(build_query(4242, NAME))
    assert (query.id, query.qr, query.opcode, query.rd) == (4242, 0, 0, 1)
    assert (query.qdcount, query.ancount, query.nscount, query.arcount) == (1, 0, 0, 0)
    assert (query.qd[0].qname, query.qd[0].qtype, query.qd[0].qclass) == (
        b"updates.example.org.",
        1,
        1,
    )
    assert build_query(1, NAME + ".") == build_query(1, NAME)


@pytest.mark.parametrize(
    "name", ["a..b", "x" * 64 + ".org", ".".join(["abcdefghi"] * 26), "bücher.example"]
)
def test_a_name_that_is_not_a_dns_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        build_query(1, name)


def test_addresses_and_the_least_ttl() -> None:
    answers = [
        DNSRR(rrname=NAME, type="A", ttl=300, rdata="192.0.2.10"),
        DNSRR(rrname=NAME, type="A", ttl=120, rdata="192.0.2.11"),
    ]
    got = parse_response(response(an=answers), 4242, NAME)
    assert got.addresses == (IPv4Address("192.0.2.10"), IPv4Address("192.0.2.11"))
    assert (got.ttl, got.rcode, got.truncated) == (120, 0, False)


def test_a_cname_chain_is_followed_and_other_records_ignored() -> None:
    answers = [
        DNSRR(rrname=NAME, type="CNAME", ttl=600, rdata="cdn.example.net"),
        DNSRR(rrname="unrelated.example", type="A", ttl=5, rdata="198.51.100.99"),
        DNSRR(rrname="cdn.example.net", type="CNAME", ttl=90, rdata="edge.example.net"),
        DNSRR(rrname="edge.example.net", type="A", ttl=3600, rdata="203.0.113.7"),
        DNSRR(rrname="edge.example.net", type="TXT", ttl=1, rdata="ignored"),
    ]
    got = parse_response(response(an=answers), 4242, NAME)
    assert got.addresses == (IPv4Address("203.0.113.7"),) and got.ttl == 90


def test_names_compare_without_case() -> None:
    answers = DNSRR(rrname="UPDATES.Example.ORG", type="A", ttl=60, rdata="192.0.2.1")
    got = parse_response(response(name="Updates.EXAMPLE.org", an=answers), 4242, NAME)
    assert got.addresses == (IPv4Address("192.0.2.1"),)


def test_a_cname_loop_ends_with_no_address() -> None:
    answers = [
        DNSRR(rrname=NAME, type="CNAME", rdata="b.example"),
        DNSRR(rrname="b.example", type="CNAME", rdata=NAME),
    ]
    assert parse_response(response(an=answers), 4242, NAME).addresses == ()


def test_nxdomain_and_truncation_are_reported() -> None:
    nx = parse_response(response(rcode=RCODE_NXDOMAIN), 4242, NAME)
    assert (nx.addresses, nx.rcode_name) == ((), "NXDOMAIN")
    assert parse_response(response(tc=1), 4242, NAME).truncated


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (response(query_id=4243), "ID 4243, not 4242"),
        (bytes(DNS(id=4242, qr=0, qd=DNSQR(qname=NAME))), "not a response"),
        (response(name="other.example.org"), "the question is 'other.example.org'"),
        (response(qd=DNSQR(qname=NAME, qtype="AAAA")), "type 28"),
        (response(qd=[DNSQR(qname=NAME), DNSQR(qname=NAME)]), "2 questions"),
    ],
)
def test_a_message_that_answers_another_query_is_a_mismatch(message: bytes, reason: str) -> None:
    with pytest.raises(DnsMismatch, match=reason):
        parse_response(message, 4242, NAME)


def header(ancount: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 4242, 0x8180, 1, ancount, 0, 0)


QUESTION = encode_name(NAME) + b"\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x10", "shorter than a DNS header"),
        (header(), "runs past the end"),  # no question
        (header() + QUESTION[:-2], "the question runs past"),
        # a question name that points at itself
        (header() + b"\xc0\x0c\x00\x01\x00\x01", "not backwards"),
        # an answer name pointing forward at a pointer back to it: a loop, refused at once
        (
            header(1)
            + QUESTION
            + b"\xc0\x27\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
            + b"\xc0\x25",
            "not backwards",
        ),
        (header() + b"\x40abc\x00\x00\x01\x00\x01", "label type 1"),
        (header() + b"\x05abc", "a label runs past"),
        (header() + b"\xc0", "pointer cut off"),
        (
            header()
            + b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"b" * 63
            + b"\x3f"
            + b"c" * 63
            + b"\x3f"
            + b"d" * 63
            + b"\x00\x00\x01\x00\x01",
            "over 255 bytes",
        ),
        (
            header(1) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00",
            "runs past the end",
        ),
        (
            header(1) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x05" + bytes(5),
            "an A record of 5 bytes",
        ),
        (
            header(2) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes(4),
            "runs past the end",
        ),
    ],
)
def test_a_malformed_message_is_one_error(message: bytes, reason: str) -> None:
    with pytest.raises(DnsError, match=reason) as raised:
        parse_response(message, 4242, NAME)
    assert type(raised.value) is DnsError


def test_a_compressed_name_is_read_to_its_end_and_after_its_pointer() -> None:
    message = b"\x07example\x03org\x00" + b"\x03www\xc0\x00" + b"rest"
    assert read_name(message, 0) == ("example.org", 13)
    assert read_name(message, 13) == ("www.example.org", 19)


def test_a_dot_inside_a_label_does_not_pass_for_two_labels() -> None:
    message = header() + b"\x0fupdates.example\x03org\x00\x00\x01\x00\x01"
    with pytest.raises(DnsMismatch):
        parse_response(message, 4242, NAME)


def test_no_input_raises_anything_but_dns_error() -> None:
    rng = random.Random(1035)
    good = response(
        an=[
            DNSRR(rrname=NAME, type="CNAME", rdata="b.example"),
            DNSRR(rrname="b.example", type="A", rdata="192.0.2.1"),
        ]
    )
    outcomes = {"read": 0, "refused": 0}
    for _ in range(20000):
        message = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            message[rng.randrange(len(message))] = rng.randrange(256)
        cut = bytes(message[: rng.randint(0, len(message))] if rng.random() < 0.3 else message)
        try:
            parse_response(cut, 4242, NAME)
            outcomes["read"] += 1
        except DnsError:
            outcomes["refused"] += 1
    assert min(outcomes.values()) > 1000  # both ways out were taken
