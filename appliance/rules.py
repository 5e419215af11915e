"""Per-client firewall rules with Qubes' semantics. Pure.

What Qubes writes (qubes-core-admin qubes/firewall.py, qubes/vm/qubesvm.py
reload_firewall_for_vm): for a client with address IP, `/qubes-firewall/IP/policy` (accept or
drop) and rules `/qubes-firewall/IP/0000`, `0001`, ... each a space-separated list of `k=v`
words; the empty write of `/qubes-firewall/IP` says the set is complete. How a net VM reads
them is qubes-core-agent-linux qubesagent/firewall.py (read_rules, NftablesWorker.prepare_rules),
and natvm follows it:

  keys       `policy`, and rule keys of exactly four digits, taken in sorted order; any other
             key is an error. Every rule needs `action`.
  action     accept, or drop (answered with ICMP administratively prohibited).
  proto      tcp, udp or icmp.
  dst4       an IPv4 network (CIDR; host bits are cleared).
  dst6       refused: natvm's clients are IPv4 (Qubes' agent also refuses dst6 for an IPv4
             client: "dst6 rule found for IPv4 address").
  dsthost    a name, resolved by the net VM. The rule keeps the name; the addresses come from
             natvm's own resolver (appliance/resolver.py, through `Firewall.resolve`). Until
             they do, an accept rule with the name matches nothing and a drop rule matches
             every destination: an unresolved name errs towards dropping (Qubes' agent drops
             everything when a name fails to resolve).
  dstports   `a-b` (or one port), 1..65535; with proto tcp or udp, that protocol's
             destination port; without proto, TCP or UDP to those ports (the agent writes a
             tcp and a udp rule). With proto icmp it is an error.
  icmptype   a number 0..255: ICMP of that type.
  specialtarget=dns
             the DNS servers the net VM forwards to, TCP or UDP port 53 (or the given proto);
             a rule with other dstports than 53 is skipped, and so is every such rule when the
             net VM has no DNS server (both as the agent does).

First match wins; if none matches, the policy decides.

New connections only: Qubes' own net VMs put `ct state established,related accept` ahead of
every client's rules in their forward chain (qubesagent/firewall.py, NftablesWorker.init), and
qubes-mirage-firewall consults its rules only for a packet that matches no NAT entry
(firewall.ml, ipv4_from_client: "Check for existing NAT entry"; rules.ml from_client: "If the
packet matched an existing NAT rule then this isn't called"). So a rule change applies to new
flows; flows already established go on. The caller (appliance/netvm.py) asks `decide` only
for a packet that starts a flow.

Counters: `Firewall.counts` holds the decisions per action, for one client.
"""

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import NamedTuple

from appliance.packet import ICMP, TCP, UDP

DNS_PORT = 53
_PROTOS = {"tcp": TCP, "udp": UDP, "icmp": ICMP}
_OPTIONS = ("action", "proto", "dst4", "dst6", "dsthost", "dstports", "icmptype", "specialtarget")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")
_RULE_KEY = re.compile(r"[0-9]{4}")


class Action(StrEnum):
    ACCEPT = "accept"
    DROP = "drop"


class RuleError(ValueError):
    """A rule set that cannot be used, as one line naming the QubesDB key at fault."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


class Rule(NamedTuple):
    """One rule; None means "any". `dns` is specialtarget=dns."""

    action: Action
    proto: int | None = None
    dst: IPv4Network | None = None
    dsthost: str | None = None
    ports: tuple[int, int] | None = None
    icmp_type: int | None = None
    dns: bool = False
    key: str = ""  # the QubesDB key it came from, for log lines


class RuleSet(NamedTuple):
    """A client's rules in order, then the policy."""

    rules: tuple[Rule, ...]
    policy: Action

    @property
    def hosts(self) -> frozenset[str]:
        """The names of dsthost rules: what the net VM must resolve."""
        return frozenset(rule.dsthost for rule in self.rules if rule.dsthost is not None)


DROP_ALL = RuleSet((), Action.DROP)


def parse_rule(text: str, key: str = "") -> Rule:
    """One rule's `k=v` words; RuleError naming `key` if it is not a rule natvm can apply."""
    words: dict[str, str] = {}
    for word in text.split(" "):
        name, sep, value = word.partition("=")
        if not sep or not value:
            raise RuleError(key, f"{word!r} is not a k=v word")
        if name not in _OPTIONS:
            raise RuleError(key, f"unsupported option {name!r}")
        if name in words:
            raise RuleError(key, f"{name} given twice")
        words[name] = value
    return _rule(words, key)


def _rule(words: dict[str, str], key: str) -> Rule:
    if "action" not in words:
        raise RuleError(key, "no action")
    if "dst6" in words:
        raise RuleError(key, "dst6 rule for an IPv4 client (natvm's clients are IPv4)")
    action = Action(_choice(words["action"], Action, "action", key))
    proto = _PROTOS[_choice(words["proto"], _PROTOS, "proto", key)] if "proto" in words else None
    ports = _ports(words["dstports"], key) if "dstports" in words else None
    if ports is not None and proto == ICMP:
        raise RuleError(key, "dstports with proto=icmp")
    special = words.get("specialtarget")
    if special is not None and special != "dns":
        raise RuleError(key, f"specialtarget {special!r} (only 'dns' exists)")
    if "dst4" in words and "dsthost" in words:
        raise RuleError(key, "both dst4 and dsthost")
    return Rule(
        action,
        proto,
        _network(words["dst4"], key) if "dst4" in words else None,
        _hostname(words["dsthost"], key) if "dsthost" in words else None,
        ports,
        _number(words["icmptype"], 0, 255, "icmptype", key) if "icmptype" in words else None,
        special == "dns",
        key,
    )


def _choice(value: str, choices: Iterable[str], name: str, key: str) -> str:
    allowed = [str(choice) for choice in choices]
    if value not in allowed:
        raise RuleError(key, f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _number(text: str, low: int, high: int, name: str, key: str) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise RuleError(key, f"{name} {text!r} is not a number from {low} to {high}")
    return int(text)


def _ports(text: str, key: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    low = _number(first, 1, 65535, "dstports", key)
    high = _number(last, 1, 65535, "dstports", key) if last else low
    if low > high:
        raise RuleError(key, f"dstports {text!r} runs backwards")
    return low, high


def _network(text: str, key: str) -> IPv4Network:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        raise RuleError(key, f"dst4 {text!r} is not an IPv4 network") from None


def _hostname(text: str, key: str) -> str:
    if not _HOSTNAME.fullmatch(text):
        raise RuleError(key, f"dsthost {text!r} is not a host name")
    return text


def parse_rule_set(entries: Mapping[str, str], base: str = "") -> RuleSet:
    """The rule set of one client from its entries (`policy` and `NNNN` -> value, keys
    relative to `base`, the client's QubesDB directory, which only names them in errors)."""
    if "policy" not in entries:
        raise RuleError(f"{base}policy", "no policy")
    policy = Action(_choice(entries["policy"], Action, "policy", f"{base}policy"))
    rules = []
    for name in sorted(entries):
        if name == "policy":
            continue
        if not _RULE_KEY.fullmatch(name):
            raise RuleError(f"{base}{name}", "neither 'policy' nor a four-digit rule number")
        rules.append(parse_rule(entries[name], f"{base}{name}"))
    return RuleSet(tuple(rules), policy)


class Firewall:
    """One client's rules in force, the addresses of their host names, and the counts of its
    decisions per action."""

    __slots__ = ("counts", "resolved", "rules")

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.resolved: dict[str, frozenset[bytes]] = {}
        self.counts: dict[Action, int] = dict.fromkeys(Action, 0)

    def replace(self, rules: RuleSet) -> None:
        """New rules for new flows; the addresses of names still named are kept."""
        self.rules = rules
        self.resolved = {name: self.resolved[name] for name in rules.hosts & self.resolved.keys()}

    def resolve(self, name: str, addresses: Iterable[IPv4Address]) -> None:
        """The addresses of a dsthost name (from the net VM's resolver)."""
        self.resolved[name] = frozenset(address.packed for address in addresses)

    def decide(
        self, proto: int, dst: bytes, port: int, icmp_type: int, dns_servers: frozenset[bytes]
    ) -> Action:
        """The action for a packet that starts a flow to `dst`: `port` its TCP or UDP
        destination port, `icmp_type` its ICMP type (each ignored for other protocols),
        `dns_servers` the addresses specialtarget=dns means. Counted."""
        action = self.rules.policy
        for rule in self.rules.rules:
            if self._matches(rule, proto, dst, port, icmp_type, dns_servers):
                action = rule.action
                break
        self.counts[action] += 1
        return action

    def _matches(
        self,
        rule: Rule,
        proto: int,
        dst: bytes,
        port: int,
        icmp_type: int,
        dns_servers: frozenset[bytes],
    ) -> bool:
        if rule.proto is not None and rule.proto != proto:
            return False
        if rule.dns:
            if not dns_servers or (rule.ports is not None and rule.ports != (DNS_PORT, DNS_PORT)):
                return False  # the agent skips such a rule altogether
            if dst not in dns_servers or proto not in (TCP, UDP) or port != DNS_PORT:
                return False
        if rule.ports is not None and (
            proto not in (TCP, UDP) or not rule.ports[0] <= port <= rule.ports[1]
        ):
            return False
        if rule.icmp_type is not None and (proto != ICMP or icmp_type != rule.icmp_type):
            return False
        if rule.dst is not None and IPv4Address(dst) not in rule.dst:
            return False
        if rule.dsthost is not None:
            addresses = self.resolved.get(rule.dsthost)
            if addresses is None:
                return rule.action is Action.DROP
            return dst in addresses
        return True
