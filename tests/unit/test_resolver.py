"""The net VM's resolver for dsthost names (appliance/resolver.py), on a clock of its own:
queries checked and answered with scapy's DNS layer."""

import random
from ipaddress import IPv4Address

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR

from appliance.dnsquery import DnsError, DnsMismatch
from appliance.resolver import MAX_TRIES, MIN_TTL, QUERY_TIMEOUT, Outcome, Query, Resolver

S1, S2 = IPv4Address("198.51.100.53").packed, IPv4Address("203.0.113.53").packed
NAME = "updates.example.org"


def answer(query: Query, *addresses: str, ttl: int = 300, **fields: object) -> bytes:
    asked = DNS(query.message)
    records = [DNSRR(rrname=query.name, type="A", ttl=ttl, rdata=a) for a in addresses]
    return bytes(
        DNS(id=asked.id, qr=1, rd=1, ra=1, qd=DNSQR(qname=query.name), an=records, **fields)
    )


def only(queries: list[Query]) -> Query:
    assert len(queries) == 1, queries
    return queries[0]


@pytest.fixture
def resolver() -> Resolver:
    return Resolver([S1, S2], random.Random(53))


def test_a_wanted_name_is_asked_once_and_its_answer_held_for_its_ttl(
    resolver: Resolver,
) -> None:
    assert resolver.want([NAME]) == []
    query = only(resolver.poll(0.0)[0])
    asked = DNS(query.message)
    assert (query.name, query.server, asked.qd[0].qname) == (NAME, S1, b"updates.example.org.")
    assert resolver.poll(1.0) == ([], [])  # one outstanding query per name
    outcome = resolver.receive(S1, answer(query, "192.0.2.10", "192.0.2.11", ttl=300), 1.5)
    assert outcome == Outcome(
        NAME,
        (IPv4Address("192.0.2.10"), IPv4Address("192.0.2.11")),
        f"dns: {NAME} -> 192.0.2.10,192.0.2.11 (ttl 300 s)",
    )
    assert resolver.known(NAME) == outcome.addresses
    assert resolver.poll(301.0) == ([], [])
    again = only(resolver.poll(301.0 + 0.5)[0])
    assert DNS(again.message).qd[0].qname == asked.qd[0].qname


@pytest.mark.parametrize(("ttl", "held"), [(0, MIN_TTL), (5, MIN_TTL), (86400 * 7, 3600.0)])
def test_a_ttl_is_clamped(resolver: Resolver, ttl: int, held: float) -> None:
    resolver.want([NAME])
    query = only(resolver.poll(0.0)[0])
    outcome = resolver.receive(S1, answer(query, "192.0.2.10", ttl=ttl), 0.0)
    assert outcome is not None and outcome.line.endswith(f"(ttl {held:.0f} s)")
    assert resolver.poll(held - 0.1)[0] == []
    assert len(resolver.poll(held)[0]) == 1


def test_no_answer_tries_the_servers_in_turn_then_backs_off(resolver: Resolver) -> None:
    resolver.want([NAME])
    servers, now, outcomes = [], 0.0, []
    for _ in range(MAX_TRIES):
        queries, failed = resolver.poll(now)
        servers.append(only(queries).server)
        outcomes += failed
        now += QUERY_TIMEOUT
    queries, failed = resolver.poll(now)
    assert servers == [S1, S2, S1] and outcomes == [] and queries == []
    assert [o.line for o in failed] == [
        f"dns: {NAME}: failed after 3 tries (no answer from 198.51.100.53); again in 10 s"
    ]
    assert resolver.poll(now + 9.9) == ([], [])
    now += 10
    assert only(resolver.poll(now)[0]).server == S2  # the next round starts further on
    for _ in range(MAX_TRIES):
        now += QUERY_TIMEOUT
        queries, failed = resolver.poll(now)
    assert queries == [] and failed[0].line.endswith("again in 20 s")  # doubled


def test_a_server_failure_is_a_failed_try_and_known_addresses_stay(resolver: Resolver) -> None:
    resolver.want([NAME])
    query = only(resolver.poll(0.0)[0])
    resolver.receive(S1, answer(query, "192.0.2.10", ttl=60), 0.0)
    outcomes = []
    for now in (60.0, 61.0, 62.0):
        query = only(resolver.poll(now)[0])
        outcomes.append(resolver.receive(query.server, answer(query, rcode=2), now))
    assert outcomes[:2] == [None, None]
    assert outcomes[2] == Outcome(
        NAME,
        None,
        f"dns: {NAME}: failed after 3 tries (SERVFAIL from the server); the addresses known"
        " stay; again in 10 s",
    )
    assert resolver.known(NAME) == (IPv4Address("192.0.2.10"),)


def test_nxdomain_means_no_address(resolver: Resolver) -> None:
    resolver.want([NAME])
    query = only(resolver.poll(0.0)[0])
    outcome = resolver.receive(S1, answer(query, rcode=3), 0.0)
    assert outcome == Outcome(NAME, (), f"dns: {NAME} -> no address (NXDOMAIN, ttl 60 s)")


def test_forged_and_garbled_answers_change_nothing(resolver: Resolver) -> None:
    resolver.want([NAME])
    query = only(resolver.poll(0.0)[0])
    good = answer(query, "192.0.2.10")
    wrong_id = bytes([good[0] ^ 1]) + good[1:]
    with pytest.raises(DnsMismatch, match="no query outstanding"):
        resolver.receive(S1, wrong_id, 0.1)
    with pytest.raises(DnsMismatch, match="no query outstanding"):
        resolver.receive(S2, good, 0.1)  # the other server was not asked
    other = DNS(good)
    other.qd[0].qname = "evil.example"
    with pytest.raises(DnsMismatch, match="the question"):
        resolver.receive(S1, bytes(other), 0.1)
    with pytest.raises(DnsError):
        resolver.receive(S1, good[:20], 0.1)
    assert resolver.known(NAME) is None
    assert resolver.receive(S1, good, 0.2) is not None  # the real answer still counts
    with pytest.raises(DnsMismatch):
        resolver.receive(S1, good, 0.3)  # and only once


def test_names_no_rule_names_are_forgotten_and_late_answers_refused(resolver: Resolver) -> None:
    resolver.want([NAME, "b.example"])
    queries = resolver.poll(0.0)[0]
    assert {q.name for q in queries} == {NAME, "b.example"}
    resolver.want(["b.example"])
    late = next(q for q in queries if q.name == NAME)
    with pytest.raises(DnsMismatch):
        resolver.receive(late.server, answer(late, "192.0.2.1"), 0.5)
    assert list(resolver.names) == ["b.example"]


def test_bad_names_and_names_over_the_bound_are_refused_once() -> None:
    resolver = Resolver([S1], random.Random(1), max_names=2)
    names = ["a.example", "b.example", "c.example", "bad..name"]
    lines = [o.line for o in resolver.want(names)]
    assert lines == [
        "dns: bad..name: not a DNS name ('bad..name' has an empty label or one over 63 bytes);"
        " stays unresolved",
        "dns: c.example: over the 2 names natvm resolves; stays unresolved",
    ]
    assert resolver.want(names) == []  # said once
    assert len(resolver.poll(0.0)[0]) == 2


def test_without_servers_one_line_and_no_query() -> None:
    resolver = Resolver([], random.Random(1))
    assert [o.line for o in resolver.want([NAME])] == [
        "dns: no upstream DNS servers (nat.dns_servers): dsthost rules stay unresolved"
    ]
    assert resolver.want([NAME, "b.example"]) == []
    assert resolver.poll(0.0) == ([], [])
