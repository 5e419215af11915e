"""ARP for one interface (RFC 826): answering for our address, and resolving next hops, bounded.

Theory of operation: a neighbour is learned from an ARP packet that asks for our address, or
from one whose sender we already hold or are resolving (RFC 826's merge rule), and only when its
address is a host of the interface's subnet (or an on-link address outside it: a /32's gateway).
A pinned neighbour (a netvm client, whose MAC the toolstack gives) never expires. A resolved
neighbour is trusted for `reachable_time` seconds after it last spoke ARP to us; after that it
is still used for `retry_interval * max_tries` seconds while `tick` asks it again (like Linux's
STALE/PROBE states), so a live flow never waits on a refresh. A packet for a next hop whose link
address is unknown waits in a small per-hop queue (at most `queue_per_hop` packets, at most
`max_pending` hops), while a request is sent every `retry_interval` seconds up to `max_tries`
times; then the queued packets are dropped. All of it is driven by `now`, passed in. What it
drops after taking it (packets given up on, an ARP packet not for us) it counts through
`count_drop`, with reasons of its own ("arp-queue-full", "arp-unresolved", "arp-not-for-us");
an ARP packet it refuses outright raises `Drop`.
"""

import math
from collections.abc import Callable

from appliance.addresses import Subnet
from appliance.packet import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    ETHERTYPE_IPV4,
    Arp,
    Drop,
    build_arp_frame,
    ethernet_header,
)


class _Pending:
    __slots__ = ("next_try", "packets", "tries")

    def __init__(self, next_try: float = 0.0, tries: int = 0) -> None:
        self.packets: list[bytes] = []
        self.next_try = next_try
        self.tries = tries


class Neighbours:
    def __init__(
        self,
        mac: bytes,
        ip: bytes,
        subnet: Subnet,
        count_drop: Callable[[str, int], None],
        reachable_time: float = 300.0,
        retry_interval: float = 1.0,
        max_tries: int = 3,
        queue_per_hop: int = 8,
        max_pending: int = 256,
        max_entries: int = 4096,
        on_link: frozenset[bytes] = frozenset(),
    ) -> None:
        self.mac, self.ip, self.subnet, self.on_link = mac, ip, subnet, on_link
        self.count_drop = count_drop  # (reason, packets)
        self.reachable_time, self.retry_interval, self.max_tries = (
            reachable_time,
            retry_interval,
            max_tries,
        )
        self.queue_per_hop, self.max_pending, self.max_entries = (
            queue_per_hop,
            max_pending,
            max_entries,
        )
        self._cache: dict[bytes, tuple[bytes, float]] = {}  # ip -> (mac, expires)
        self._pending: dict[bytes, _Pending] = {}
        self._stale: set[bytes] = set()  # used past reachable_time: to be asked again

    def receive(self, arp: Arp, now: float) -> list[bytes]:
        """Take an ARP packet received on this interface; returns the frames to send: the
        packets that were waiting for its sender, and a reply if it asks for our address."""
        if not self.subnet.is_host(arp.sender_ip) and arp.sender_ip not in self.on_link:
            raise Drop("arp-foreign-sender")
        if arp.sender_ip == self.ip:
            raise Drop("arp-address-conflict")
        for_us = arp.target_ip == self.ip
        frames = []
        if for_us or self.knows(arp.sender_ip):
            learned = self.learn(arp.sender_ip, arp.sender_mac, now)
            frames = [self.frame(mac, packet) for mac, packet in learned]
        if not for_us:
            # Counted, not raised: the packets that waited for the sender still go.
            self.count_drop("arp-not-for-us", 1)
        elif arp.op == ARP_REQUEST:
            frames.append(
                build_arp_frame(ARP_REPLY, self.mac, self.ip, arp.sender_mac, arp.sender_ip)
            )
        return frames

    def send(self, next_hop: bytes, packets: list[bytearray], now: float) -> list[bytes]:
        """The frames that carry IPv4 `packets` to `next_hop`: at once when its MAC is known;
        else the packets wait, and the frames are ARP requests for it."""
        mac = self.lookup(next_hop, now)
        if mac is not None:
            return [self.frame(mac, packet) for packet in packets]
        return [
            request for packet in packets for request in self.enqueue(next_hop, bytes(packet), now)
        ]

    def frame(self, mac: bytes, packet: bytes | bytearray) -> bytes:
        """An IPv4 packet in an Ethernet frame from this interface to `mac`."""
        return ethernet_header(mac, self.mac, ETHERTYPE_IPV4) + packet

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        entry = self._cache.get(ip)
        if entry is None:
            return None
        mac, expires = entry
        if now > expires:
            if now > expires + self.retry_interval * self.max_tries:
                del self._cache[ip]
                self._stale.discard(ip)
                return None
            self._stale.add(ip)
        return mac

    def fresh(self, ip: bytes, now: float) -> bytes | None:
        """The MAC of `ip` while it needs nothing (not stale); else None, with no side effect."""
        entry = self._cache.get(ip)
        if entry is None or now > entry[1]:
            return None
        return entry[0]

    def learn(self, ip: bytes, mac: bytes, now: float) -> list[tuple[bytes, bytes]]:
        """Record `ip` at `mac`; returns the (mac, packet) pairs that were waiting for it."""
        if len(self._cache) >= self.max_entries and ip not in self._cache:
            self._evict(now)
        self._cache[ip] = (mac, now + self.reachable_time)
        self._stale.discard(ip)
        pending = self._pending.pop(ip, None)
        return [] if pending is None else [(mac, packet) for packet in pending.packets]

    def pin(self, ip: bytes, mac: bytes) -> list[tuple[bytes, bytes]]:
        """Record `ip` at `mac` for good (no ARP ever asks it again); returns the (mac, packet)
        pairs that were waiting for it."""
        waiting = self.learn(ip, mac, 0.0)
        self._cache[ip] = (mac, math.inf)
        return waiting

    def forget(self, ip: bytes) -> None:
        """Drop what is known of `ip`, and the packets waiting for it (not counted: their
        receiver is gone)."""
        self._cache.pop(ip, None)
        self._pending.pop(ip, None)
        self._stale.discard(ip)

    def knows(self, ip: bytes) -> bool:
        """Whether `ip` is cached or being resolved (RFC 826: update only entries we hold)."""
        return ip in self._cache or ip in self._pending

    def enqueue(self, ip: bytes, packet: bytes, now: float) -> list[bytes]:
        """Hold `packet` for `ip`; returns ARP request frames to send now."""
        pending = self._pending.get(ip)
        if pending is None:
            if len(self._pending) >= self.max_pending:
                self.count_drop("arp-queue-full", 1)
                return []
            pending = self._pending[ip] = _Pending()
        if len(pending.packets) >= self.queue_per_hop:
            self.count_drop("arp-queue-full", 1)
            return []
        pending.packets.append(packet)
        return self._maybe_request(ip, pending, now)

    def tick(self, now: float) -> list[bytes]:
        """Retry or give up on pending resolutions; returns ARP request frames to send."""
        frames = [self.request_frame(ip) for ip in self._stale if ip in self._cache]
        self._stale.clear()
        for ip, pending in list(self._pending.items()):
            if pending.next_try > now:
                continue
            if pending.tries >= self.max_tries:
                if pending.packets:
                    self.count_drop("arp-unresolved", len(pending.packets))
                del self._pending[ip]
                continue
            frames.extend(self._maybe_request(ip, pending, now))
        return frames

    def request_frame(self, ip: bytes) -> bytes:
        return build_arp_frame(ARP_REQUEST, self.mac, self.ip, BROADCAST_MAC, ip)

    def _maybe_request(self, ip: bytes, pending: _Pending, now: float) -> list[bytes]:
        if pending.next_try > now or pending.tries >= self.max_tries:
            return []
        pending.tries += 1
        pending.next_try = now + self.retry_interval
        return [self.request_frame(ip)]

    def _evict(self, now: float) -> None:
        for ip in [ip for ip, (_, expires) in self._cache.items() if expires < now]:
            del self._cache[ip]
        if len(self._cache) >= self.max_entries:
            del self._cache[next(iter(self._cache))]  # the oldest learned
