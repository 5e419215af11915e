"""appliance/rules.py: Qubes' rule words and their semantics (qubes-core-agent-linux
qubesagent/firewall.py read_rules and NftablesWorker.prepare_rules), through the real parser."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from appliance.rules import DROP_ALL, Action, Firewall, Rule, RuleError, parse_rule, parse_rule_set

TCP, UDP, ICMP = 6, 17, 1
DNS = frozenset({IPv4Address("198.51.100.53").packed})
WEB = IPv4Address("203.0.113.80").packed
BASE = "/qubes-firewall/10.137.0.10/"


def firewall(policy: str, *rules: str) -> Firewall:
    entries = {f"{number:04d}": rule for number, rule in enumerate(rules)}
    return Firewall(parse_rule_set({**entries, "policy": policy}, BASE))


def decide(fw: Firewall, proto: int, dst: bytes = WEB, port: int = 0, icmp: int = 0) -> Action:
    return fw.decide(proto, dst, port, icmp, DNS)


def test_the_words_qubes_admin_writes_parse() -> None:
    # the shape of qubes-core-admin's Rule.rule: each option as k=v, separated by spaces
    rule = parse_rule("action=drop proto=tcp dst4=192.0.2.0/24 dstports=80-80", "k")
    assert rule == Rule(Action.DROP, TCP, IPv4Network("192.0.2.0/24"), None, (80, 80), key="k")
    assert parse_rule("action=accept specialtarget=dns").dns
    assert parse_rule("action=accept proto=icmp icmptype=8").icmp_type == 8
    assert parse_rule("action=accept dsthost=updates.example.org").dsthost == "updates.example.org"
    assert parse_rule("action=accept dst4=192.0.2.7").dst == IPv4Network("192.0.2.7/32")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("proto=tcp", "no action"),
        ("action=reject", "action 'reject' is not one of accept, drop"),
        ("action=drop proto=sctp", "proto 'sctp'"),
        ("action=drop dst6=2001:db8::/32", "dst6 rule for an IPv4 client"),
        ("action=drop dstports=0-80", "dstports '0' is not a number from 1 to 65535"),
        ("action=drop proto=tcp dstports=90-80", "runs backwards"),
        ("action=drop proto=icmp dstports=80-80", "dstports with proto=icmp"),
        ("action=drop icmptype=300", "icmptype '300'"),
        ("action=drop icmptype=\u00b2", "icmptype '\u00b2' is not a number"),  # isdigit() is true
        ("action=accept specialtarget=vpn", "specialtarget 'vpn'"),
        ("action=drop dst4=192.0.2.300/24", "dst4 '192.0.2.300/24' is not an IPv4 network"),
        ("action=drop dsthost=bad/name", "is not a host name"),
        ("action=drop srcports=1-2", "unsupported option 'srcports'"),
        ("action=drop  proto=tcp", "'' is not a k=v word"),
        ("action=drop proto", "'proto' is not a k=v word"),
        ("action=drop action=accept", "action given twice"),
    ],
)
def test_bad_rules_are_one_line_naming_the_key(text: str, words: str) -> None:
    with pytest.raises(RuleError, match=words) as error:
        parse_rule(text, f"{BASE}0003")
    assert str(error.value).startswith(f"{BASE}0003: ")


def test_a_rule_set_needs_its_policy_and_only_rule_keys() -> None:
    with pytest.raises(RuleError, match=f"{BASE}policy: no policy"):
        parse_rule_set({"0000": "action=accept"}, BASE)
    with pytest.raises(RuleError, match=f"{BASE}policy: policy 'maybe'"):
        parse_rule_set({"policy": "maybe"}, BASE)
    with pytest.raises(RuleError, match=f"{BASE}extra: neither 'policy' nor"):
        parse_rule_set({"policy": "drop", "extra": "action=accept"}, BASE)
    with pytest.raises(RuleError, match=f"{BASE}0001: no action"):
        parse_rule_set({"policy": "drop", "0000": "action=accept", "0001": "proto=tcp"}, BASE)


def test_first_match_wins_in_key_order_then_the_policy() -> None:
    # written out of order on purpose: 0010 sorts after 0002
    rules = {"policy": "accept", "0010": "action=accept proto=tcp", "0002": "action=drop proto=tcp"}
    fw = Firewall(parse_rule_set(rules, BASE))
    assert decide(fw, TCP, port=80) is Action.DROP
    assert decide(fw, UDP, port=80) is Action.ACCEPT  # no rule matches: the policy
    assert fw.counts == {Action.DROP: 1, Action.ACCEPT: 1}


def test_ports_without_proto_mean_tcp_or_udp() -> None:
    fw = firewall("accept", "action=drop dstports=80-81")
    assert decide(fw, TCP, port=81) is Action.DROP
    assert decide(fw, UDP, port=80) is Action.DROP
    assert decide(fw, TCP, port=8080) is Action.ACCEPT
    assert decide(fw, ICMP, icmp=8) is Action.ACCEPT


def test_destinations_by_network() -> None:
    fw = firewall("drop", "action=accept dst4=203.0.113.0/25")
    assert decide(fw, TCP, port=1) is Action.ACCEPT
    assert decide(fw, TCP, dst=IPv4Address("203.0.113.200").packed, port=1) is Action.DROP


def test_icmp_type() -> None:
    fw = firewall("drop", "action=accept proto=icmp icmptype=8")
    assert decide(fw, ICMP, icmp=8) is Action.ACCEPT
    assert decide(fw, ICMP, icmp=13) is Action.DROP
    assert decide(fw, UDP, port=8) is Action.DROP


def test_specialtarget_dns_is_the_dns_servers_port_53() -> None:
    fw = firewall("drop", "action=accept specialtarget=dns")
    server = next(iter(DNS))
    assert decide(fw, UDP, dst=server, port=53) is Action.ACCEPT
    assert decide(fw, TCP, dst=server, port=53) is Action.ACCEPT
    assert decide(fw, UDP, dst=server, port=54) is Action.DROP
    assert decide(fw, UDP, dst=WEB, port=53) is Action.DROP
    assert decide(fw, ICMP, dst=server, icmp=8) is Action.DROP
    # with no DNS server, and with other ports than 53, the agent skips the rule
    assert fw.decide(UDP, server, 53, 0, frozenset()) is Action.DROP
    skipped = firewall("drop", "action=accept specialtarget=dns dstports=1-100")
    assert decide(skipped, UDP, dst=server, port=53) is Action.DROP
    only_udp = firewall("drop", "action=accept specialtarget=dns proto=udp dstports=53-53")
    assert decide(only_udp, UDP, dst=server, port=53) is Action.ACCEPT
    assert decide(only_udp, TCP, dst=server, port=53) is Action.DROP


def test_dsthost_matches_its_resolved_addresses_and_unresolved_errs_towards_drop() -> None:
    fw = firewall("accept", "action=drop dsthost=ads.example", "action=accept dsthost=web.example")
    assert fw.rules.hosts == {"ads.example", "web.example"}
    # unresolved: the drop rule takes everything (first match), the accept rule nothing
    assert decide(fw, TCP, port=443) is Action.DROP
    fw.resolve("ads.example", [IPv4Address("192.0.2.66")])
    assert decide(fw, TCP, port=443) is Action.ACCEPT  # WEB is not ads.example's
    assert decide(fw, TCP, dst=IPv4Address("192.0.2.66").packed, port=443) is Action.DROP
    only_accept = firewall("drop", "action=accept dsthost=web.example")
    assert decide(only_accept, TCP, port=443) is Action.DROP
    only_accept.resolve("web.example", [IPv4Address("203.0.113.80")])
    assert decide(only_accept, TCP, port=443) is Action.ACCEPT


def test_replace_keeps_the_addresses_of_names_still_named() -> None:
    fw = firewall("drop", "action=accept dsthost=web.example")
    fw.resolve("web.example", [IPv4Address("203.0.113.80")])
    fw.replace(parse_rule_set({"policy": "drop", "0000": "action=accept dsthost=web.example"}))
    assert decide(fw, TCP, port=443) is Action.ACCEPT
    fw.replace(DROP_ALL)
    assert fw.resolved == {}
    assert decide(fw, TCP, port=443) is Action.DROP
