"""The net VM's own resolver for the host names of firewall rules (`dsthost`). Pure.

Why: Qubes' firewall lets a rule name a host (`dsthost=NAME`), and the net VM, not the client,
resolves it (qubes-core-agent-linux qubesagent/firewall.py resolves with the net VM's own
resolver; qubes-mirage-firewall, which has no OS resolver either, asks the upstream servers
with its own DNS client over its uplink). natvm has no kernel IP stack: it asks over UDP with
frames it builds itself (appliance/netvm.py), and this module is the state machine behind them,
driven by `now` and the caller's random source; it sends and logs nothing itself.

Theory of operation. `want(names)` says which names the rules in force name; each new one is
asked at the next `poll(now)`, which returns the queries to send (`Query`: name, server,
message) and what has failed meanwhile (`Outcome`s). `receive(server, message, now)` takes a
response and returns its `Outcome`; the caller puts its addresses in force
(`NetVm.resolve_host`) and logs its line.

  one at a time  a name has at most one query outstanding, with a fresh random 16-bit ID. A
                 response counts only if it comes from that query's server and carries its ID
                 and question (appliance/dnsquery.py); anything else raises DnsMismatch or
                 DnsError for the caller to count, and changes nothing: a forged or garbled
                 packet cannot cut a query short, only the real answer or the timeout can.
  retries        no answer in QUERY_TIMEOUT seconds, or a server failure (SERVFAIL, REFUSED, a
                 truncated answer: natvm does not ask over TCP), is a failed try; the next try
                 goes to the next server. After MAX_TRIES failed tries the round has failed:
                 logged once, and the name is asked again after a back-off that doubles from
                 RETRY_BASE up to MAX_TTL. Addresses known from an earlier answer stay in force
                 meanwhile (a failing server must not change what a client may reach).
  TTL            an answer's addresses hold for its TTL (the least along its CNAME chain),
                 clamped to MIN_TTL..MAX_TTL so that a TTL of 0 cannot turn natvm into a query
                 loop and a huge one cannot pin an address for days; then the name is asked
                 again. NXDOMAIN, or an answer with no A record, is an answer too: the name has
                 no address (an accept rule with it matches nothing), asked again after MIN_TTL.
  bounds         at most MAX_NAMES names (those asked longest first); a name beyond, or one
                 that is not a DNS name, is logged once and stays unresolved. A name no rule
                 set names any more is forgotten, its outstanding query with it.
  no servers     with no upstream servers nothing is asked: one line says the rules' names
                 stay unresolved (an accept rule with such a name then matches nothing).
"""

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from typing import NamedTuple

from appliance.dnsquery import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    DnsMismatch,
    build_query,
    message_id,
    parse_response,
)
from appliance.flows import RandomSource

QUERY_TIMEOUT = 2.0  # s without an answer before the next try
MAX_TRIES = 3  # tries per round, the servers in turn
RETRY_BASE = 10.0  # s after the first failed round; doubled after each one more
MIN_TTL, MAX_TTL = 60.0, 3600.0  # s an answer is used before the name is asked again
MAX_NAMES = 256


class Query(NamedTuple):
    """A query to send: the DNS message for `name`, to `server` (an IPv4 address, packed)."""

    name: str
    server: bytes
    message: bytes


class Outcome(NamedTuple):
    """What became of a name, as one log line; `addresses` what to put in force for it
    (None: nothing changes)."""

    name: str
    addresses: tuple[IPv4Address, ...] | None
    line: str


class _Name:
    __slots__ = ("addresses", "deadline", "due", "query_id", "rounds", "server", "tries", "why")

    def __init__(
        self,
        due: float = float("-inf"),  # when the next query may go out (none outstanding)
        query_id: int | None = None,  # the outstanding query's
        server: bytes = b"",
        deadline: float = 0.0,  # when the outstanding query times out
        tries: int = 0,  # failed tries in this round
        rounds: int = 0,  # failed rounds in a row, for the back-off
        why: str = "",  # the last failed try's reason
        addresses: tuple[IPv4Address, ...] | None = None,  # the last answer's
    ) -> None:
        self.due = due
        self.query_id = query_id
        self.server = server
        self.deadline = deadline
        self.tries = tries
        self.rounds = rounds
        self.why = why
        self.addresses = addresses


class Resolver:
    """Names to resolve through `servers` (packed IPv4 addresses); `rng` draws query IDs."""

    def __init__(
        self, servers: Sequence[bytes], rng: RandomSource, max_names: int = MAX_NAMES
    ) -> None:
        self.servers, self.rng, self.max_names = tuple(servers), rng, max_names
        self.names: dict[str, _Name] = {}  # in the order first wanted
        self._refused: set[str] = set()  # logged once as not asked
        self._said_no_servers = False

    def want(self, names: Iterable[str]) -> list[Outcome]:
        """Resolve exactly `names` from now on: new ones at the next `poll`, the others
        forgotten. Returns a line for each name refused (once per name), or the one line
        that no server is configured."""
        wanted = set(names)
        for gone in self.names.keys() - wanted:
            del self.names[gone]
        self._refused &= wanted
        if not self.servers:
            return self._no_servers() if wanted else []
        refused = []
        for name in sorted(wanted - self.names.keys() - self._refused):
            problem = _problem(name, len(self.names) >= self.max_names, self.max_names)
            if problem:
                self._refused.add(name)
                refused.append(Outcome(name, None, f"dns: {name}: {problem}; stays unresolved"))
            else:
                self.names[name] = _Name()
        return refused

    def known(self, name: str) -> tuple[IPv4Address, ...] | None:
        """The addresses of `name` from its last answer, if there was one."""
        entry = self.names.get(name)
        return None if entry is None else entry.addresses

    def poll(self, now: float) -> tuple[list[Query], list[Outcome]]:
        """The queries to send now (new names, retries, TTLs run out) and the rounds that
        failed: queries that timed out count as failed tries first."""
        queries, outcomes = [], []
        for name, entry in self.names.items():
            if entry.query_id is not None and now >= entry.deadline:
                server = IPv4Address(entry.server)
                outcome = self._failed(name, entry, f"no answer from {server}", now)
                if outcome is not None:
                    outcomes.append(outcome)
            if entry.query_id is None and now >= entry.due:
                queries.append(self._ask(name, entry, now))
        return queries, outcomes

    def receive(self, server: bytes, message: bytes, now: float) -> Outcome | None:
        """Take a response from `server` (its UDP payload, from port 53): the outcome of the
        query it answers (None: a failed try that does not end the round, retried at the
        next poll). Raises DnsMismatch if it answers no outstanding query, DnsError if it
        cannot be read; either way nothing changes."""
        ident = message_id(message)
        waiting = [
            (name, entry)
            for name, entry in self.names.items()
            if entry.query_id is not None and entry.query_id == ident and entry.server == server
        ]
        if not waiting:
            raise DnsMismatch(f"no query outstanding to {IPv4Address(server)} with ID {ident}")
        for name, entry in waiting[:-1]:  # IDs are random: two at once are rare, not impossible
            try:
                return self._answered(name, entry, message, now)
            except DnsMismatch:
                continue
        name, entry = waiting[-1]
        return self._answered(name, entry, message, now)

    # -- transitions -----------------------------------------------------------------------

    def _ask(self, name: str, entry: _Name, now: float) -> Query:
        entry.query_id = self.rng.randrange(1 << 16)
        entry.server = self.servers[(entry.rounds + entry.tries) % len(self.servers)]
        entry.deadline = now + QUERY_TIMEOUT
        return Query(name, entry.server, build_query(entry.query_id, name))

    def _answered(self, name: str, entry: _Name, message: bytes, now: float) -> Outcome | None:
        assert entry.query_id is not None
        response = parse_response(message, entry.query_id, name)
        if response.truncated:
            return self._failed(name, entry, "a truncated answer (TC)", now)
        if response.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
            return self._failed(name, entry, f"{response.rcode_name} from the server", now)
        entry.query_id, entry.tries, entry.rounds = None, 0, 0
        entry.addresses = response.addresses
        if not response.addresses:
            entry.due = now + MIN_TTL
            why = "NXDOMAIN" if response.rcode == RCODE_NXDOMAIN else "no A record"
            return Outcome(name, (), f"dns: {name} -> no address ({why}, ttl {MIN_TTL:.0f} s)")
        ttl = min(MAX_TTL, max(MIN_TTL, float(response.ttl)))
        entry.due = now + ttl
        listed = ",".join(str(address) for address in response.addresses)
        return Outcome(name, response.addresses, f"dns: {name} -> {listed} (ttl {ttl:.0f} s)")

    def _failed(self, name: str, entry: _Name, why: str, now: float) -> Outcome | None:
        """A failed try: the next one at once, or after the round's last the back-off."""
        entry.query_id, entry.why = None, why
        entry.tries += 1
        if entry.tries < MAX_TRIES:
            entry.due = now
            return None
        wait = min(MAX_TTL, RETRY_BASE * 2**entry.rounds)
        entry.tries, entry.rounds, entry.due = 0, entry.rounds + 1, now + wait
        kept = "" if entry.addresses is None else "; the addresses known stay"
        return Outcome(
            name,
            None,
            f"dns: {name}: failed after {MAX_TRIES} tries ({why}){kept}; again in {wait:.0f} s",
        )

    def _no_servers(self) -> list[Outcome]:
        if self._said_no_servers:
            return []
        self._said_no_servers = True
        line = "dns: no upstream DNS servers (nat.dns_servers): dsthost rules stay unresolved"
        return [Outcome("", None, line)]


def _problem(name: str, full: bool, max_names: int) -> str:
    """Why `name` is not asked ("" if it is)."""
    try:
        build_query(0, name)
    except ValueError as error:
        return f"not a DNS name ({error})"
    return f"over the {max_names} names natvm resolves" if full else ""
