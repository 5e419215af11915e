"""The translation table: mappings, sessions, filtering, TCP state and expiry.

Rules (RFC 4787 UDP, RFC 5382 TCP, RFC 5508 ICMP query, RFC 6888, RFC 7857):
- A *mapping* binds an internal endpoint (protocol, LAN address, port or echo id) to one external
  port on the WAN address, whatever the destination: endpoint-independent mapping (4787 REQ-1,
  5382 REQ-1, 5508 REQ-1a). An external port belongs to at most one mapping: no port overloading
  (4787 REQ-3). The internal port is kept when free (port preservation), else a free port of the
  same parity is chosen (4787 REQ-4), from the same range class (below 1024 or not; REQ-3a).
- A *session* is one remote endpoint of a mapping. Filtering compares an inbound packet's source
  with the mapping's sessions: endpoint-independent (anyone), address-dependent (a remote address
  the internal endpoint has sent to) or address-and-port-dependent (4787 REQ-8, 5382 REQ-3).
- Each session has its own idle timer, refreshed by traffic in either direction (outbound refresh
  is required by 4787 REQ-6; inbound refresh is allowed); ICMP errors never refresh (5508 REQ-6).
  A mapping lives while any of its sessions does. TCP sessions follow a state table: established
  connections get the long timeout, opening and closing ones the transitory one (5382 REQ-5).
- Nothing from the WAN creates a mapping, except a configured port forward, which is a mapping
  with a fixed external port and endpoint-independent filtering.
- The table is bounded in total and per LAN host; a refused flow is the caller's to report.
  Sessions of port forwards count against a budget of their own per LAN host, so a flood at a
  forward cannot take the host's budget for its own connections; when that budget is full, a new
  SYN evicts the oldest half-open connection opened from outside (a SYN cache's defence: spoofed
  SYNs never complete, a real client's handshake completes before its turn comes).
- Expiry is incremental: each session has one entry in a heap keyed by the time it was due, and
  refreshing only moves `expires` forward; `expire(now)` pops due entries and re-queues the
  refreshed ones, so no packet ever pays for a scan.
- A freed external port rests for `port_reuse_delay` before reuse (RFC 6888 REQ-8).
- A `Journal`, when attached, hears of every session that is new or changes TCP state and of
  every one removed (a few calls per connection, none per packet otherwise), so that a restarted
  appliance can `restore` them (appliance/flowstate.py).
"""

import heapq
import os
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol as Interface

from appliance.config import Filtering, NatSettings, PortForward, Protocol
from appliance.packet import ICMP, TCP, TCP_FIN, TCP_RST, TCP_SYN, UDP

_FORWARD_PROTOCOLS = {TCP: Protocol.TCP, UDP: Protocol.UDP}


class TcpState(IntEnum):
    NONE = 0  # not TCP, or nothing seen yet
    SYN_OUT = 1  # SYN seen from the LAN side only
    SYN_IN = 2  # SYN seen from the WAN side only
    ESTABLISHED = 3
    FIN_OUT = 4  # half closed by the LAN side
    FIN_IN = 5  # half closed by the WAN side
    CLOSING = 6  # FIN seen both ways
    CLOSED = 7  # RST seen
    PICKED_UP = 8  # a mid-stream segment from the LAN (e.g. after a restart), no answer yet
    SYN_OUT_ANSWERED = 9  # the LAN's SYN answered from the WAN; the LAN's last ACK not yet seen
    SYN_IN_ANSWERED = 10  # the WAN's SYN answered from the LAN; the WAN's last ACK not yet seen


class TcpEvent(IntEnum):
    OUT_SYN = 0
    IN_SYN = 1
    OUT_FIN = 2
    IN_FIN = 3
    RST = 4
    OUT_OTHER = 5
    IN_OTHER = 6


# (state, event) -> next state; pairs not listed keep the state. Simultaneous open (5382 REQ-2)
# is SYN_OUT + IN_SYN, the same as a SYN-ACK answer. A connection is established only once the
# opener's last ACK of the handshake is seen (RFC 5382 REQ-5: a partially open connection gets the
# transitory timeout), so a SYN and a SYN-ACK cannot hold a mapping for two hours, and a
# connection picked up mid-stream only once the far end answers.
# Half-closed connections (FIN one way) are in the closing phase, which RFC 5382 section 5 gives
# the transitory timeout; traffic on them refreshes it.
_TCP_TRANSITIONS = {
    (TcpState.NONE, TcpEvent.OUT_SYN): TcpState.SYN_OUT,
    (TcpState.NONE, TcpEvent.IN_SYN): TcpState.SYN_IN,
    (TcpState.NONE, TcpEvent.OUT_FIN): TcpState.FIN_OUT,
    (TcpState.NONE, TcpEvent.IN_FIN): TcpState.FIN_IN,
    (TcpState.NONE, TcpEvent.OUT_OTHER): TcpState.PICKED_UP,
    (TcpState.PICKED_UP, TcpEvent.IN_OTHER): TcpState.ESTABLISHED,
    (TcpState.PICKED_UP, TcpEvent.OUT_SYN): TcpState.SYN_OUT,
    (TcpState.SYN_OUT, TcpEvent.IN_SYN): TcpState.SYN_OUT_ANSWERED,
    (TcpState.SYN_OUT_ANSWERED, TcpEvent.OUT_OTHER): TcpState.ESTABLISHED,
    (TcpState.SYN_OUT_ANSWERED, TcpEvent.OUT_FIN): TcpState.FIN_OUT,
    (TcpState.SYN_IN, TcpEvent.OUT_SYN): TcpState.SYN_IN_ANSWERED,
    (TcpState.SYN_IN_ANSWERED, TcpEvent.IN_OTHER): TcpState.ESTABLISHED,
    (TcpState.SYN_IN_ANSWERED, TcpEvent.IN_FIN): TcpState.FIN_IN,
    (TcpState.ESTABLISHED, TcpEvent.OUT_FIN): TcpState.FIN_OUT,
    (TcpState.ESTABLISHED, TcpEvent.IN_FIN): TcpState.FIN_IN,
    (TcpState.FIN_OUT, TcpEvent.IN_FIN): TcpState.CLOSING,
    (TcpState.FIN_IN, TcpEvent.OUT_FIN): TcpState.CLOSING,
    (TcpState.CLOSING, TcpEvent.OUT_SYN): TcpState.SYN_OUT,
    (TcpState.CLOSED, TcpEvent.OUT_SYN): TcpState.SYN_OUT,
    (TcpState.CLOSED, TcpEvent.IN_SYN): TcpState.SYN_IN,
}
for _state in TcpState:
    _TCP_TRANSITIONS[(_state, TcpEvent.RST)] = TcpState.CLOSED


def tcp_event(flags: int, outbound: bool) -> TcpEvent:
    if flags & TCP_RST:
        return TcpEvent.RST
    if flags & TCP_SYN:
        return TcpEvent.OUT_SYN if outbound else TcpEvent.IN_SYN
    if flags & TCP_FIN:
        return TcpEvent.OUT_FIN if outbound else TcpEvent.IN_FIN
    return TcpEvent.OUT_OTHER if outbound else TcpEvent.IN_OTHER


class Session:
    """One remote endpoint of a mapping, with its TCP state and idle timer."""

    __slots__ = ("due", "expires", "mapping", "remote_addr", "remote_port", "state")

    mapping: "Mapping"

    def __init__(self, remote_addr: bytes, remote_port: int) -> None:
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.state = TcpState.NONE
        self.expires = 0.0
        self.due = 0.0  # the time of this session's entry in the expiry heap

    def __lt__(self, other: "Session") -> bool:
        # Heap entries are (due, session): sessions due at the same time are in no order.
        return False


_VACANT = b""  # the remote address of a mapping whose own session slot is free


class Mapping(Session):
    """An internal endpoint bound to an external port, and its sessions.

    Most mappings only ever have one session, so a mapping *is* its first session (it inherits
    the session's fields; `mapping.mapping is mapping`, a property rather than a stored
    reference, which would make every mapping a cycle that only the cyclic garbage collector
    frees), and further sessions, rare, sit in `others`. That saves a dict, a key tuple and an
    object per mapping (the table's memory is one of the appliance's figures). When the
    mapping's own session goes while others live, its slot is vacant (`remote_addr` is
    `_VACANT`, which no 4-byte address equals) until the next new session fills it.
    """

    __slots__ = ("ext_port", "forwarded", "int_addr", "int_port", "others", "proto")

    def __init__(
        self, proto: int, int_addr: bytes, int_port: int, ext_port: int, forwarded: bool
    ) -> None:
        super().__init__(_VACANT, 0)
        self.proto = proto
        self.int_addr = int_addr
        self.int_port = int_port
        self.ext_port = ext_port
        self.forwarded = forwarded
        self.others: dict[tuple[bytes, int], Session] | None = None

    @property
    def mapping(self) -> "Mapping":
        return self

    @mapping.setter
    def mapping(self, value: "Mapping") -> None:
        """Nothing to store: copy.deepcopy and pickle restore slots by name, `mapping` among
        them, with the copy itself as the value."""

    def session(self, remote_addr: bytes, remote_port: int) -> Session | None:
        """The session with that remote endpoint, if there is one."""
        if self.remote_port == remote_port and self.remote_addr == remote_addr:
            return self
        others = self.others
        return None if others is None else others.get((remote_addr, remote_port))

    def sessions(self) -> list[Session]:
        own: list[Session] = [] if self.remote_addr is _VACANT else [self]
        return own + list(self.others.values()) if self.others else own


# The internal index's keys are single ints rather than tuples: a tuple of three objects costs
# 80 bytes where an int costs 32, for every mapping.
def internal_key(proto: int, int_addr: bytes, int_port: int) -> int:
    return (proto << 48) | (int.from_bytes(int_addr, "big") << 16) | int_port


class PortIndex:
    """Mappings by external port (or echo id) for one protocol.

    The port space is only 65536 wide, so an array indexed by port costs a pointer per mapping
    where a dict costs a key and an entry, about 80 bytes. It is split into pages of 256 made
    on first use, so a small table stays small (and cheap to copy).
    """

    __slots__ = ("_pages",)

    def __init__(self) -> None:
        self._pages: list[list[Mapping | None] | None] = [None] * 256

    def get(self, port: int) -> Mapping | None:
        page = self._pages[port >> 8]
        return None if page is None else page[port & 0xFF]

    def put(self, port: int, mapping: Mapping | None) -> None:
        page = self._pages[port >> 8]
        if page is None:
            page = self._pages[port >> 8] = [None] * 256
        page[port & 0xFF] = mapping


_REMOTE_CACHE = 4096
# NONE: a session just made, before its first packet has set its state.
_HALF_OPEN_IN = (TcpState.NONE, TcpState.SYN_IN, TcpState.SYN_IN_ANSWERED)


class TableFull(Exception):
    """A new flow was refused: `reason` is "table-full", "host-limit" or "no-free-port"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RandomSource(Interface):
    """Where random choices come from: an integer in [0, stop). `random.Random` is one (tests
    seed it); `SystemRandomSource` is the default."""

    def randrange(self, stop: int, /) -> int: ...


class SystemRandomSource:
    """The OS's random source, drawn uniformly below `stop` (rejection sampling, as
    `random.SystemRandom` does). Not `random.SystemRandom` itself: importing `random` took
    30 ms in the guest's `-X importtime`, for one method."""

    def randrange(self, stop: int, /) -> int:
        bits = (stop - 1).bit_length()
        size = (bits + 7) // 8
        while True:
            drawn = int.from_bytes(os.urandom(size)) >> (8 * size - bits)
            if drawn < stop:
                return drawn


class PortAllocator:
    """Chooses external ports: the internal one when free, else a random free one, of the same
    parity when there is one (RFC 4787 REQ-4; refusing a flow while ports of the other parity
    are free would be worse than breaking parity).

    The random source is injected so tests are deterministic; the table takes the allocator
    itself injected, as mirage-nat's does.
    """

    def __init__(self, first: int, last: int, rng: RandomSource) -> None:
        self.first, self.last, self.rng = first, last, rng

    def choose(self, wanted: int, is_free: Callable[[int], bool]) -> int | None:
        low, high = self._range_class(wanted)
        if low <= wanted <= high and is_free(wanted):
            return wanted
        ranges = (
            [(low, high)]
            if (low, high) == (self.first, self.last)
            else [(low, high), (self.first, self.last)]
        )
        for range_low, range_high in ranges:
            for parity in (wanted & 1, (wanted & 1) ^ 1):
                port = self._random_free(range_low, range_high, parity, is_free)
                if port is not None:
                    return port
        return None

    def _random_free(
        self, low: int, high: int, parity: int, is_free: Callable[[int], bool]
    ) -> int | None:
        base = low + ((low ^ parity) & 1)  # the first port in [low, high] with that parity
        if base > high:
            return None
        span = (high - base) // 2 + 1
        start = self.rng.randrange(span)
        for step in range(span):
            port = base + 2 * ((start + step) % span)
            if is_free(port):
                return port
        return None

    def _range_class(self, wanted: int) -> tuple[int, int]:
        # RFC 4787 REQ-3a: ports below 1024 map below 1024 and others above, where the configured
        # range allows. The default range, 1024-65535, has no low class: the operator decides
        # (configure 1-65535 to keep the classes apart).
        if wanted < 1024 and self.first < 1024:
            return self.first, min(self.last, 1023)
        if wanted >= 1024 and self.last >= 1024:
            return max(self.first, 1024), self.last
        return self.first, self.last


class Journal(Interface):
    """What a table tells about its sessions, for saving them outside the process."""

    def saved(self, session: Session) -> None:
        """`session` is new, or its TCP state changed."""

    def removed(self, session: Session) -> None:
        """`session` left the table (called before its fields are reused)."""


class FlowTable:
    def __init__(self, settings: NatSettings, allocator: PortAllocator | None = None) -> None:
        """`allocator` chooses external ports; by default, over the configured range."""
        self.settings = settings
        self.journal: Journal | None = None
        # The OS's random source by default: RFC 6056 randomises ports so that an off-path
        # attacker cannot guess a mapping's port (a fixed seed handed out the same sequence at
        # every start). Tests inject a seeded allocator.
        self.allocator = allocator or PortAllocator(
            settings.port_first, settings.port_last, SystemRandomSource()
        )
        self.by_internal: dict[int, Mapping] = {}  # by internal_key()
        self._forwarded_ports = frozenset(
            (proto, port)
            for proto, wanted in _FORWARD_PROTOCOLS.items()
            for forward in settings.port_forwards
            if forward.protocol == wanted
            for port in range(forward.external_first, forward.external_last + 1)
        )
        self.by_external = {proto: PortIndex() for proto in (TCP, UDP, ICMP)}
        self.sessions_per_host: dict[bytes, int] = {}  # sessions of unforwarded mappings
        self.forwarded_per_host: dict[bytes, int] = {}  # sessions of port-forward mappings
        # Per LAN host, the sessions opened from outside through a forward, oldest first, as
        # (session, remote address, remote port): the candidates for eviction under a SYN flood.
        # Entries go stale (established, closed, reused); they are skipped and compacted away.
        self._opened_inbound: dict[bytes, deque[tuple[Session, bytes, int]]] = {}
        self._host_addrs: dict[bytes, bytes] = {}
        self._remote_addrs: dict[bytes, bytes] = {}
        self.session_count = 0
        self._heap: list[tuple[float, Session]] = []
        self._resting: deque[tuple[float, int, int]] = deque()  # (free at, proto, port)
        self._resting_ports: set[tuple[int, int]] = set()
        self.reserved: set[tuple[int, int]] = set()  # (proto, port) of the appliance's own
        t = settings.timeouts
        self._timeouts = {UDP: t.udp, ICMP: t.icmp_query}
        self._tcp_established, self._tcp_transitory = t.tcp_established, t.tcp_transitory

    # -- lookups ---------------------------------------------------------------------------

    def lookup_out(self, proto: int, int_addr: bytes, int_port: int) -> Mapping | None:
        """The mapping of an internal endpoint, if there is one; never refreshes."""
        return self.by_internal.get(internal_key(proto, int_addr, int_port))

    def lookup_in(self, proto: int, ext_port: int) -> Mapping | None:
        """The mapping of an external port (or echo id), if there is one; never refreshes."""
        return self.by_external[proto].get(ext_port)

    def is_forwarded(self, proto: int, ext_port: int) -> bool:
        """Whether a port forward covers this external port (a set lookup: the fast path asks
        it of every unsolicited frame)."""
        return (proto, ext_port) in self._forwarded_ports

    def outbound(
        self,
        proto: int,
        int_addr: bytes,
        int_port: int,
        remote_addr: bytes,
        remote_port: int,
        now: float,
        tcp_flags: int = 0,
    ) -> Session:
        """The session for a packet leaving the LAN, created if new; raises TableFull."""
        mapping = self.lookup_out(proto, int_addr, int_port)
        session = None if mapping is None else mapping.session(remote_addr, remote_port)
        if session is None:
            forwarded = (
                mapping.forwarded
                if mapping is not None
                else self._forward_for_internal(proto, int_addr, int_port) is not None
            )
            self._check_room(int_addr, now, forwarded)
            if mapping is None:
                mapping = self._new_mapping(proto, int_addr, int_port)
            session = self._new_session(mapping, remote_addr, remote_port)
        self._touch(session, now, tcp_flags, outbound=True)
        return session

    def inbound(
        self,
        proto: int,
        ext_port: int,
        remote_addr: bytes,
        remote_port: int,
        now: float,
        tcp_flags: int = 0,
    ) -> Session | None:
        """The session an inbound packet belongs to, or None when filtering drops it; raises
        TableFull when a flow the filter admits finds no room.

        An unsolicited SYN (no mapping, or filtered) gets None for good: RFC 5382 REQ-4a lets
        security policy override REQ-4's SHOULD (Port Unreachable after 6 s), and a firewall
        that stays silent does not help port scans.
        """
        mapping = self.lookup_in(proto, ext_port)
        session = None if mapping is None else mapping.session(remote_addr, remote_port)
        if session is None:
            session = self._inbound_session(
                proto, ext_port, mapping, remote_addr, remote_port, now, tcp_flags
            )
            if session is None:
                return None
        self._touch(session, now, tcp_flags, outbound=False)
        return session

    def admits(
        self, proto: int, ext_port: int, remote_addr: bytes, remote_port: int, tcp_flags: int
    ) -> bool:
        """Whether `inbound` would let this packet through; changes nothing."""
        mapping = self.lookup_in(proto, ext_port)
        if mapping is not None and mapping.session(remote_addr, remote_port) is not None:
            return True
        if proto == TCP and not tcp_flags & TCP_SYN:
            return False
        if mapping is None:
            return self._forward_for_external(proto, ext_port) is not None
        return self._admits(mapping, remote_addr)

    def _inbound_session(
        self,
        proto: int,
        ext_port: int,
        mapping: Mapping | None,
        remote_addr: bytes,
        remote_port: int,
        now: float,
        tcp_flags: int,
    ) -> Session | None:
        forward = None
        if mapping is None:
            forward = self._forward_for_external(proto, ext_port)
            if forward is None:
                return None
        elif not self._admits(mapping, remote_addr):
            return None
        if proto == TCP and not tcp_flags & TCP_SYN:
            return None  # only a SYN may open a TCP session from outside
        if mapping is not None:
            int_addr, forwarded = mapping.int_addr, mapping.forwarded
        else:
            assert forward is not None
            int_addr, forwarded = forward.lan_host.packed, True
        self._check_room(int_addr, now, forwarded)
        if mapping is None:
            assert forward is not None
            lan_port = forward.lan_port(ext_port)
            assert lan_port is not None
            mapping = self._insert_mapping(proto, int_addr, lan_port, ext_port, forwarded=True)
        session = self._new_session(mapping, remote_addr, remote_port)
        if forwarded and proto == TCP:
            self._remember_opened_inbound(int_addr, session)
        return session

    def refresh(
        self,
        mapping: Mapping,
        remote_addr: bytes,
        remote_port: int,
        now: float,
        tcp_flags: int,
        outbound: bool,
    ) -> bool:
        """For the engine's fast path: what `outbound` or `inbound` do when the session exists
        (TCP state and timer), and True; False, touching nothing, when it does not."""
        session = mapping.session(remote_addr, remote_port)
        if session is None:
            return False
        self._touch(session, now, tcp_flags, outbound)
        return True

    def __len__(self) -> int:
        return self.session_count

    def drop_host(self, int_addr: bytes, now: float) -> int:
        """Remove every session of the LAN host `int_addr` (a netvm client that detached);
        returns how many went. A scan of the table: detaching is rare, frames are not."""
        mappings = [m for m in self.by_internal.values() if m.int_addr == int_addr]
        removed = 0
        for mapping in mappings:
            for session in mapping.sessions():
                self._remove_session(session, now)
                removed += 1
        return removed

    def all_sessions(self) -> list[Session]:
        """Every session in the table (for a snapshot)."""
        return [session for mapping in self.by_internal.values() for session in mapping.sessions()]

    def restore(
        self,
        proto: int,
        int_addr: bytes,
        int_port: int,
        ext_port: int,
        remote_addr: bytes,
        remote_port: int,
        state: TcpState,
        now: float,
    ) -> bool:
        """Put back a session an earlier run of the appliance held, with its external port and
        TCP state and a timer that starts now (when it was last refreshed is not saved: an idle
        flow lives at most one timeout longer). False, changing nothing, when it no longer fits:
        its port taken or outside the range, its forward gone, no room, not a valid state."""
        if proto not in (TCP, UDP, ICMP) or (proto != TCP and state is not TcpState.NONE):
            return False
        mapping = self.lookup_out(proto, int_addr, int_port)
        if mapping is not None:
            if mapping.ext_port != ext_port or mapping.session(remote_addr, remote_port):
                return False
            forwarded = mapping.forwarded
        else:
            fits = self._restorable_port(proto, int_addr, int_port, ext_port)
            if fits is None:
                return False
            forwarded = fits
        try:
            self._check_room(int_addr, now, forwarded)
        except TableFull:
            return False
        if mapping is None:
            mapping = self._insert_mapping(proto, int_addr, int_port, ext_port, forwarded)
        session = self._new_session(mapping, remote_addr, remote_port)
        session.state = state
        self._queue(session, now + self._timeout(proto, state))
        session.expires = session.due
        if forwarded and proto == TCP and state in _HALF_OPEN_IN:
            self._remember_opened_inbound(mapping.int_addr, session)
        return True

    def _restorable_port(
        self, proto: int, int_addr: bytes, int_port: int, ext_port: int
    ) -> bool | None:
        """Whether a restored mapping would be a port forward's (True) or not (False), or None
        when its external port is no longer what this configuration would give it."""
        forward = self._forward_for_internal(proto, int_addr, int_port)
        if forward is not None:
            return True if forward[1] == ext_port else None
        in_range = self.settings.port_first <= ext_port <= self.settings.port_last
        return False if in_range and self._port_free(proto, ext_port) else None

    # -- expiry ----------------------------------------------------------------------------

    def expire(self, now: float, budget: int = 10000) -> int:
        """Remove up to `budget` sessions whose timers ran out; returns how many went."""
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= now and budget > 0:
            due, session = heapq.heappop(heap)
            if due != session.due:
                continue  # a stale entry: the session was re-queued earlier or removed
            if session.expires > now:
                self._queue(session, session.expires)
            else:
                self._remove_session(session, now)
                removed += 1
                budget -= 1
        resting = self._resting
        while resting and resting[0][0] <= now:
            _, proto, port = resting.popleft()
            self._resting_ports.discard((proto, port))
        return removed

    # -- internals -------------------------------------------------------------------------

    def _check_room(self, int_addr: bytes, now: float, forwarded: bool) -> None:
        if self.session_count >= self.settings.max_flows:
            self.expire(now)
            if self.session_count >= self.settings.max_flows:
                raise TableFull("table-full")
        if forwarded:
            full = self.forwarded_per_host.get(int_addr, 0) >= self.settings.max_flows_per_host
            if full and not self._evict_half_open(int_addr, now):
                raise TableFull("forward-limit")
        elif self.sessions_per_host.get(int_addr, 0) >= self.settings.max_flows_per_host:
            raise TableFull("host-limit")

    def _evict_half_open(self, int_addr: bytes, now: float) -> bool:
        """Make room in the host's full forward budget (for any new flow of its forwards, TCP or
        UDP, either way) by evicting its oldest half-open TCP session opened from outside;
        False if it has none."""
        opened = self._opened_inbound.get(int_addr)
        while opened:
            session, remote_addr, remote_port = opened.popleft()
            if _still_half_open(session, remote_addr, remote_port):
                self._remove_session(session, now)
                return True
        return False

    def _remember_opened_inbound(self, int_addr: bytes, session: Session) -> None:
        opened = self._opened_inbound.setdefault(int_addr, deque())
        opened.append((session, session.remote_addr, session.remote_port))
        if len(opened) > 2 * self.settings.max_flows_per_host:
            # Established and closed entries are never evicted: drop them, so the queue stays
            # within twice the budget at amortised constant cost per new session.
            live = [entry for entry in opened if _still_half_open(*entry)]
            opened.clear()
            opened.extend(live)

    def _new_mapping(self, proto: int, int_addr: bytes, int_port: int) -> Mapping:
        forward = self._forward_for_internal(proto, int_addr, int_port)
        if forward is not None:
            # The forwarded host's own traffic from the forwarded port leaves from the forward's
            # external port: one mapping per internal endpoint, whichever side opened it.
            return self._insert_mapping(proto, int_addr, int_port, forward[1], forwarded=True)
        ext_port = self.allocator.choose(int_port, lambda port: self._port_free(proto, port))
        if ext_port is None:
            raise TableFull("no-free-port")
        return self._insert_mapping(proto, int_addr, int_port, ext_port, forwarded=False)

    def _insert_mapping(
        self, proto: int, int_addr: bytes, int_port: int, ext_port: int, forwarded: bool
    ) -> Mapping:
        # One bytes object per LAN host, not one per mapping (freed with the host's last one).
        int_addr = self._host_addrs.setdefault(int_addr, int_addr)
        mapping = Mapping(proto, int_addr, int_port, ext_port, forwarded)
        self.by_internal[internal_key(proto, int_addr, int_port)] = mapping
        self.by_external[proto].put(ext_port, mapping)
        return mapping

    def reserve(self, proto: int) -> int | None:
        """An external port of the allocator's range for the appliance's own use (its DNS
        queries), never given to a mapping; chosen at random like a mapping's (RFC 6056).
        None if none is free."""
        first, last = self.settings.port_first, self.settings.port_last
        wanted = first + self.allocator.rng.randrange(last - first + 1)
        port = self.allocator.choose(wanted, lambda port: self._port_free(proto, port))
        if port is not None:
            self.reserved.add((proto, port))
        return port

    def _port_free(self, proto: int, port: int) -> bool:
        return (
            self.by_external[proto].get(port) is None
            and (proto, port) not in self._resting_ports
            and (proto, port) not in self.reserved
            and self._forward_for_external(proto, port) is None
        )

    def _forward_for_external(self, proto: int, ext_port: int) -> PortForward | None:
        wanted = _FORWARD_PROTOCOLS.get(proto)
        for forward in self.settings.port_forwards:
            if (
                forward.protocol == wanted
                and forward.external_first <= ext_port <= forward.external_last
            ):
                return forward
        return None

    def _forward_for_internal(
        self, proto: int, int_addr: bytes, int_port: int
    ) -> tuple[PortForward, int] | None:
        wanted = _FORWARD_PROTOCOLS.get(proto)
        for forward in self.settings.port_forwards:
            if forward.protocol != wanted or forward.lan_host.packed != int_addr:
                continue
            ext_port = forward.external_first + int_port - forward.lan_first
            if forward.external_first <= ext_port <= forward.external_last:
                return forward, ext_port
        return None

    def _admits(self, mapping: Mapping, remote_addr: bytes) -> bool:
        filtering = self.settings.filtering
        if mapping.forwarded or filtering is Filtering.ENDPOINT_INDEPENDENT:
            return True
        if filtering is Filtering.ADDRESS_DEPENDENT:
            return any(session.remote_addr == remote_addr for session in mapping.sessions())
        return False  # address-and-port dependent: only an existing session admits

    def _new_session(self, mapping: Mapping, remote_addr: bytes, remote_port: int) -> Session:
        # Many sessions go to the same few servers: share their address objects. The cache is
        # only that (a session keeps its own reference), so emptying it when full is harmless.
        remotes = self._remote_addrs
        if len(remotes) >= _REMOTE_CACHE and remote_addr not in remotes:
            remotes.clear()
        remote_addr = remotes.setdefault(remote_addr, remote_addr)
        session: Session
        if mapping.remote_addr is _VACANT:
            session = mapping
            session.remote_addr, session.remote_port = remote_addr, remote_port
            session.state, session.expires, session.due = TcpState.NONE, 0.0, 0.0
        else:
            session = Session(remote_addr, remote_port)
            session.mapping = mapping
            if mapping.others is None:
                mapping.others = {}
            mapping.others[(remote_addr, remote_port)] = session
        self.session_count += 1
        host = mapping.int_addr
        budget = self.forwarded_per_host if mapping.forwarded else self.sessions_per_host
        budget[host] = budget.get(host, 0) + 1
        return session

    def _touch(self, session: Session, now: float, tcp_flags: int, outbound: bool) -> None:
        proto = session.mapping.proto
        saved = session.due == 0.0  # a new session is saved once its first packet set its state
        if proto == TCP:
            event = tcp_event(tcp_flags, outbound)
            state = _TCP_TRANSITIONS.get((session.state, event), session.state)
            if state is not session.state:
                session.state, saved = state, True
            timeout = (
                self._tcp_established if state is TcpState.ESTABLISHED else self._tcp_transitory
            )
        else:
            timeout = self._timeouts[proto]
        session.expires = now + timeout
        if session.due == 0.0 or session.expires < session.due:
            self._queue(session, session.expires)
        if saved and self.journal is not None:
            self.journal.saved(session)

    def _timeout(self, proto: int, state: TcpState) -> float:
        if proto != TCP:
            return self._timeouts[proto]
        return self._tcp_established if state is TcpState.ESTABLISHED else self._tcp_transitory

    def _queue(self, session: Session, due: float) -> None:
        session.due = due
        heapq.heappush(self._heap, (due, session))

    def _remove_session(self, session: Session, now: float) -> None:
        if self.journal is not None:
            self.journal.removed(session)
        session.due = -1.0  # any heap entry left for it is stale
        mapping = session.mapping
        if session is mapping:
            mapping.remote_addr = _VACANT
        else:
            assert mapping.others is not None
            del mapping.others[(session.remote_addr, session.remote_port)]
            if not mapping.others:
                mapping.others = None
        self.session_count -= 1
        host = mapping.int_addr
        budget = self.forwarded_per_host if mapping.forwarded else self.sessions_per_host
        left = budget[host] - 1
        if left:
            budget[host] = left
        else:
            del budget[host]
            if host not in self.sessions_per_host and host not in self.forwarded_per_host:
                self._host_addrs.pop(host, None)
                self._opened_inbound.pop(host, None)
        if mapping.remote_addr is _VACANT and mapping.others is None:
            del self.by_internal[internal_key(mapping.proto, mapping.int_addr, mapping.int_port)]
            self.by_external[mapping.proto].put(mapping.ext_port, None)
            if not mapping.forwarded:
                self._resting.append(
                    (now + self.settings.port_reuse_delay, mapping.proto, mapping.ext_port)
                )
                self._resting_ports.add((mapping.proto, mapping.ext_port))


def _still_half_open(session: Session, remote_addr: bytes, remote_port: int) -> bool:
    """Whether a remembered inbound session is still in the table, still the same connection (a
    mapping's own slot is reused by later sessions) and still waiting for its handshake."""
    return (
        session.due != -1.0
        and session.remote_addr == remote_addr
        and session.remote_port == remote_port
        and session.state in _HALF_OPEN_IN
    )
