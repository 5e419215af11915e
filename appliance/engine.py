"""The NAT engine: one frame in, frames out. Pure: `now` is a parameter, nothing is logged.

Theory of operation. `Nat.handle(side, frame, now)` takes one Ethernet frame received on the
WAN or LAN side and returns the frames to send, each with its side; a frame that is not forwarded
leaves a reason in `counters.drops`. `Nat.tick(now)` runs the timers (ARP retries, flow expiry,
fragment expiry) and returns frames too. The engine is a router with NAPT on its WAN address:

  LAN -> WAN   anti-spoofing, TTL and MTU checks (RFC 1812), then the source becomes the WAN
               address and a mapped port (flows.py); then to the gateway, or on-link.
  WAN -> LAN   only traffic to the WAN address that matches a mapping admitted by filtering (or a
               port forward) gets its destination restored and goes to the LAN host.
  LAN -> WAN address   hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): translated outbound first,
               then inbound, so the receiver sees the sender's external address and port.
  ICMP errors  translated both ways with the embedded header restored (RFC 5508 REQ-4, REQ-5).
  Own address  ARP and ICMP echo are answered; everything else to the appliance is dropped.

Checksums on the forwarding path are updated incrementally (RFC 1624, rewrite.py); checksums of
packets the appliance builds or whose embedded header it rewrites are computed from scratch.
Frames of established TCP and UDP flows take a shortcut proven equal to all this (fastpath.py).
The rest, the full path, hands a `FrameContext` down from method to method: what is known of
the frame, and the frames to send.
"""

from appliance.addresses import Addresses, is_special
from appliance.config import ApplianceConfig
from appliance.counters import Counters
from appliance.fastpath import FastPath
from appliance.flows import FlowTable, PortAllocator, TableFull
from appliance.fragments import Reassembler, fragment
from appliance.frames import LAN, Offload, OffloadOutput, Output, Side
from appliance.neighbours import Neighbours
from appliance.packet import (
    BROADCAST_MAC,
    CODE_ADMIN_PROHIBITED,
    CODE_FRAGMENTATION_NEEDED,
    CODE_NET_UNREACHABLE,
    ETH_HEADER_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ICMP,
    ICMP_DEST_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_ERROR_TYPES,
    ICMP_TIME_EXCEEDED,
    IP_OFFSET_MASK,
    TCP,
    UDP,
    Drop,
    Ipv4,
    build_icmp_error,
    check_l4,
    fill_ip_checksum,
    fill_l4_checksum,
    parse_arp,
    parse_ipv4,
    proto_name,
)
from appliance.rewrite import (
    decrement_ttl,
    dst_port_offset,
    embedded,
    embedded_ports,
    query_ports,
    reply_ports,
    rewrite_embedded,
    rewrite_endpoint,
    source_port_offset,
)
from appliance.segments import segment_tcp

# The engine's interface; the types of its frames live in frames.py, which the fast path shares.
__all__ = ["Nat", "Offload", "OffloadOutput", "Output", "Side"]


class FrameContext:
    """What the full path knows of the frame it handles, and the frames it has to send (each
    counted into `counters` as it is emitted). Made by `_run` for one frame and passed down to
    whichever method needs it; `start` and `tick` use one with no frame.

    `offload`: the frame's checksum was left for an offload (`handle_offload`): partial, so not
    checked, and finished by whoever sends the frame. `l4_verified`: the kernel has verified the
    TCP/UDP checksum.
    """

    __slots__ = ("counters", "l4_verified", "offload", "out")

    def __init__(
        self, counters: Counters, offload: Offload | None = None, l4_verified: bool = False
    ) -> None:
        self.counters = counters
        self.offload = offload
        self.l4_verified = l4_verified
        self.out: OffloadOutput = []

    @property
    def partial(self) -> bool:
        return self.offload is not None

    def emit(self, side: Side, frame: bytes, offload: Offload | None = None) -> None:
        self.counters.frames_out[side] += 1
        self.out.append((side, frame, offload))

    def check_l4(self, ip: Ipv4) -> None:
        # ICMP checksums are always done in software, so only TCP/UDP can be partial.
        check_l4(ip, verify_checksum=not (self.partial or self.l4_verified) or ip.proto == ICMP)

    def is_aggregate(self, ip: Ipv4) -> bool:
        """A TCP packet with a partial checksum may exceed the MTU: the kernel cuts it."""
        return self.partial and ip.proto == TCP

    def keeps_offload(self, ip: Ipv4, mtu: int) -> bool:
        """Whether `ip` can leave with the frame's offload, for the kernel to finish."""
        offload = self.offload
        if offload is None or ip.proto not in (TCP, UDP) or ip.is_fragment:
            return False
        # Segmentation is for TCP only: a peer's GSO type on anything else (netback passes a
        # client's on) must not go out to the kernel with the datagram.
        return ip.proto == TCP if offload.gso_size else len(ip.buf) <= mtu


class Nat:
    def __init__(
        self,
        config: ApplianceConfig,
        wan_mac: bytes,
        lan_mac: bytes,
        allocator: PortAllocator | None = None,
    ) -> None:
        self.config = config
        addresses = Addresses.of(config)
        self.wan_ip, self.lan_ip, self.gateway, self.wan_net, self.lan_net = addresses
        self.mtu = config.nat.mtu
        self.macs = {Side.WAN: wan_mac, Side.LAN: lan_mac}
        self.counters = Counters()
        self.neighbours = {
            Side.WAN: Neighbours(
                wan_mac, self.wan_ip, self.wan_net, self.counters.drop, on_link=_on_link(addresses)
            ),
            Side.LAN: Neighbours(lan_mac, self.lan_ip, self.lan_net, self.counters.drop),
        }
        self.table = FlowTable(config.nat, allocator)
        self.reassemblers = {Side.WAN: Reassembler(), Side.LAN: Reassembler()}
        # RFC 1812 4.3.2.8: a flood of expiring or oversize packets must not turn the appliance
        # into an amplifier.
        self.icmp_errors = _TokenBucket(rate=100.0, burst=200.0)
        self.fast_path = FastPath(
            addresses, self.mtu, self.macs, self.table, self.neighbours, self.counters
        )

    # -- entry points ----------------------------------------------------------------------

    def handle(self, side: Side, frame: bytes, now: float, l4_verified: bool = False) -> Output:
        """Process one received frame with complete checksums; returns the frames to send.

        `l4_verified`: the kernel has verified the TCP/UDP checksum (DATA_VALID): not redone.
        A frame whose checksum was left for an offload goes to `handle_offload` instead.
        """
        self.counters.frames_in[side] += 1
        fast = (
            self.fast_path.outbound(frame, now, l4_verified)
            if side is LAN
            else self.fast_path.inbound(frame, now, l4_verified)
        )
        if fast is not None:
            return [fast] if fast else []
        return self._full(side, frame, now, l4_verified)

    def handle_offload(
        self, side: Side, frame: bytes, now: float, offload: Offload
    ) -> OffloadOutput:
        """`handle` for a frame whose TCP/UDP checksum was left for an offload
        (`offload.needs_csum`: a local sender, Xen netfront, a guest's GRO), perhaps a TCP
        aggregate far over the MTU: translated with its checksum left partial (only the
        pseudo-header's addresses change it) and returned with the offload the kernel must
        finish on transmit. The MTU checks do not apply to an aggregate: the kernel cuts it into
        segments that fit. Frames for which the offload cannot be kept (the next hop's MAC is not
        known yet, so they wait in a queue) get complete checksums, and aggregates are cut into
        segments in software (segments.py)."""
        self.counters.frames_in[side] += 1
        if offload.gso_size:
            self.counters.aggregates += 1
        fast = (
            self.fast_path.outbound(frame, now, True, offload)
            if side is LAN
            else self.fast_path.inbound(frame, now, True, offload)
        )
        if fast is not None:
            return [(fast[0], fast[1], offload)] if fast else []
        return self._run(side, frame, now, False, offload)

    def _full(self, side: Side, frame: bytes, now: float, l4_verified: bool = False) -> Output:
        """Every frame the fast path does not take: the whole of the engine's behaviour."""
        return [(s, f) for s, f, _ in self._run(side, frame, now, l4_verified)]

    def _run(
        self,
        side: Side,
        frame: bytes,
        now: float,
        l4_verified: bool,
        offload: Offload | None = None,
    ) -> OffloadOutput:
        ctx = FrameContext(self.counters, offload, l4_verified)
        try:
            self._frame(ctx, side, frame, now)
        except Drop as drop:
            self.counters.drop(drop.reason)
        return ctx.out

    def start(self, now: float) -> Output:
        """Frames to send at start-up: a gratuitous ARP on each side (so neighbours that cached
        an earlier incarnation update at once) and a request for the gateway."""
        ctx = FrameContext(self.counters)
        for side, neighbours in self.neighbours.items():
            ctx.emit(side, neighbours.request_frame(neighbours.ip))
        if self.gateway is not None:
            ctx.emit(Side.WAN, self.neighbours[Side.WAN].request_frame(self.gateway))
        return [(s, f) for s, f, _ in ctx.out]

    def tick(self, now: float) -> Output:
        """Run the timers; call about once a second. Returns the frames to send."""
        ctx = FrameContext(self.counters)
        for side, neighbours in self.neighbours.items():
            for frame in neighbours.tick(now):
                ctx.emit(side, frame)
        self.table.expire(now)
        for reassembler in self.reassemblers.values():
            reassembler.expire(now)
        return [(s, f) for s, f, _ in ctx.out]

    # -- link layer ------------------------------------------------------------------------

    def _frame(self, ctx: FrameContext, side: Side, frame: bytes, now: float) -> None:
        if len(frame) < ETH_HEADER_LEN:
            raise Drop("truncated-ethernet")
        dst_mac = frame[:6]
        if dst_mac != self.macs[side] and dst_mac != BROADCAST_MAC:
            raise Drop("not-our-mac")
        ethertype = (frame[12] << 8) | frame[13]
        if ethertype == ETHERTYPE_IPV4:
            ip = parse_ipv4(bytearray(memoryview(frame)[ETH_HEADER_LEN:]))  # one copy
            if side is Side.LAN:
                self._from_lan(ctx, ip, now)
            else:
                self._from_wan(ctx, ip, now)
        elif ethertype == ETHERTYPE_ARP:
            for reply in self.neighbours[side].receive(parse_arp(frame[ETH_HEADER_LEN:]), now):
                ctx.emit(side, reply)
        else:
            raise Drop("unsupported-ethertype")

    def _send_ip(
        self, ctx: FrameContext, side: Side, ip: Ipv4, next_hop: bytes, now: float
    ) -> None:
        """Send on `side` via `next_hop`: with the frame's offload, for the kernel to finish,
        or else with complete checksums and cut to the MTU (only DF-clear gets here oversized,
        or a TCP aggregate)."""
        neighbours = self.neighbours[side]
        if ctx.keeps_offload(ip, self.mtu):
            mac = neighbours.lookup(next_hop, now)
            if mac is not None:
                ctx.emit(side, neighbours.frame(mac, ip.buf), ctx.offload)
                return
        for frame in neighbours.send(next_hop, _cut(ip, self.mtu, ctx.partial), now):
            ctx.emit(side, frame)

    def _wan_next_hop(self, dst: bytes) -> bytes | None:
        return dst if dst in self.wan_net else self.gateway

    def _next_hop_back(self, side: Side, src: bytes) -> bytes | None:
        """The next hop towards the sender `src` of a packet received on `side`."""
        return src if side is Side.LAN else self._wan_next_hop(src)

    # -- IP: from the LAN ------------------------------------------------------------------

    def _from_lan(self, ctx: FrameContext, ip: Ipv4, now: float) -> None:
        if not self.lan_net.is_host(ip.src) or ip.src == self.lan_ip:
            raise Drop("spoofed-source")
        dst = ip.dst
        if (
            is_special(dst)
            or dst == b"\xff\xff\xff\xff"
            or (dst in self.lan_net and not (self.lan_net.is_host(dst)))
        ):
            raise Drop("broadcast-or-multicast")
        whole = self._whole(Side.LAN, ip, now)
        if whole is None:
            return
        ip = whole
        ctx.check_l4(ip)
        if dst == self.lan_ip or (dst == self.wan_ip and _is_echo_request(ip)):
            self._to_self(ctx, Side.LAN, ip, now)
        elif dst in self.lan_net:
            raise Drop("lan-to-lan")
        else:
            self._forward_out(ctx, ip, now)

    def _forward_out(self, ctx: FrameContext, ip: Ipv4, now: float) -> None:
        if ip.ttl <= 1:
            self._icmp_error(ctx, Side.LAN, ICMP_TIME_EXCEEDED, 0, ip, now)
            return
        hairpin = ip.dst == self.wan_ip
        next_hop = None if hairpin else self._wan_next_hop(ip.dst)
        if not hairpin and next_hop is None:
            self._icmp_error(ctx, Side.LAN, ICMP_DEST_UNREACHABLE, CODE_NET_UNREACHABLE, ip, now)
            return
        if len(ip.buf) > self.mtu and ip.dont_fragment and not ctx.is_aggregate(ip):
            self._icmp_error(
                ctx, Side.LAN, ICMP_DEST_UNREACHABLE, CODE_FRAGMENTATION_NEEDED, ip, now, self.mtu
            )
            return
        if ip.proto == ICMP and ip.buf[ip.header_len] in ICMP_ERROR_TYPES:
            self._error_out(ctx, ip, now)
            return
        int_port, remote_port, flags = query_ports(ip)
        try:
            session = self.table.outbound(
                ip.proto, ip.src, int_port, ip.dst, remote_port, now, flags
            )
        except TableFull as refusal:
            self._refuse(ctx, Side.LAN, refusal, ip, now)
            return
        rewrite_endpoint(
            ip, 12, self.wan_ip, source_port_offset(ip), session.mapping.ext_port, ctx.partial
        )
        decrement_ttl(ip)
        self.counters.translated[proto_name(ip.proto)] += 1
        if hairpin:
            self._translate_in(ctx, ip, now, hairpin=True)
        else:
            assert next_hop is not None
            self._send_ip(ctx, Side.WAN, ip, next_hop, now)

    def _error_out(self, ctx: FrameContext, ip: Ipv4, now: float) -> None:
        """RFC 5508 REQ-5: an error from a LAN host about a packet that came in through the NAT."""
        inner = embedded(ip)
        if inner.dst != ip.src:
            raise Drop("icmp-error-mismatch")
        int_port, remote_port = embedded_ports(inner, receiver=True)
        mapping = self.table.lookup_out(inner.proto, inner.dst, int_port)
        if mapping is None or mapping.session(inner.src, remote_port) is None:
            raise Drop("icmp-error-no-mapping")
        rewrite_embedded(ip, inner, 16, self.wan_ip, dst_port_offset(inner), mapping.ext_port)
        rewrite_endpoint(ip, 12, self.wan_ip, None, 0)
        decrement_ttl(ip)
        self.counters.translated["icmp"] += 1
        if ip.dst == self.wan_ip:
            self._translate_in(ctx, ip, now, hairpin=True)
            return
        next_hop = self._wan_next_hop(ip.dst)
        if next_hop is None:
            raise Drop("no-route")
        self._send_ip(ctx, Side.WAN, ip, next_hop, now)

    # -- IP: from the WAN ------------------------------------------------------------------

    def _from_wan(self, ctx: FrameContext, ip: Ipv4, now: float) -> None:
        src = ip.src
        if (
            src in self.lan_net
            or src in (self.wan_ip, self.lan_ip)
            or is_special(src)
            or src == b"\xff\xff\xff\xff"
        ):
            raise Drop("spoofed-source")
        if ip.dst != self.wan_ip:
            raise Drop("not-for-us")
        whole = self._whole(Side.WAN, ip, now)
        if whole is None:
            return
        ctx.check_l4(whole)
        if _is_echo_request(whole):
            if not self.config.nat.ping_on_wan:
                raise Drop("ping-on-wan-disabled")
            self._to_self(ctx, Side.WAN, whole, now)
            return
        self._translate_in(ctx, whole, now, hairpin=False)

    def _translate_in(self, ctx: FrameContext, ip: Ipv4, now: float, hairpin: bool) -> None:
        """Inbound translation of a packet to the WAN address (from the WAN, or hairpinned)."""
        if ip.proto == ICMP and ip.buf[ip.header_len] in ICMP_ERROR_TYPES:
            self._error_in(ctx, ip, now, hairpin)
            return
        if ip.proto == ICMP and ip.buf[ip.header_len] != ICMP_ECHO_REPLY:
            raise Drop("unsupported-icmp")
        ext_port, remote_port, flags = reply_ports(ip)
        if not hairpin and ip.ttl <= 1:
            # Filter first, without refreshing: an expiring probe at a closed port must meet the
            # same silence as any other unsolicited packet.
            if not self.table.admits(ip.proto, ext_port, ip.src, remote_port, flags):
                raise Drop("filtered")
            self._icmp_error(ctx, Side.WAN, ICMP_TIME_EXCEEDED, 0, ip, now)
            return
        try:
            session = self.table.inbound(ip.proto, ext_port, ip.src, remote_port, now, flags)
        except TableFull as refusal:
            if hairpin:  # already translated: the sender cannot be told about its own packet
                self.counters.refuse(refusal.reason)
                raise Drop("refused-hairpin") from None
            self._refuse(ctx, Side.WAN, refusal, ip, now)
            return
        if session is None:
            raise Drop("filtered")
        mapping = session.mapping
        oversized = len(ip.buf) > self.mtu and not ctx.is_aggregate(ip)
        if not hairpin and oversized and ip.dont_fragment:
            self._icmp_error(
                ctx, Side.WAN, ICMP_DEST_UNREACHABLE, CODE_FRAGMENTATION_NEEDED, ip, now, self.mtu
            )
            return
        rewrite_endpoint(
            ip, 16, mapping.int_addr, dst_port_offset(ip), mapping.int_port, ctx.partial
        )
        if not hairpin:
            decrement_ttl(ip)
            self.counters.translated[proto_name(ip.proto)] += 1
        self._send_ip(ctx, Side.LAN, ip, mapping.int_addr, now)

    def _error_in(self, ctx: FrameContext, ip: Ipv4, now: float, hairpin: bool) -> None:
        """RFC 5508 REQ-4: an error about a packet we sent out; restore it for the LAN host."""
        if not hairpin and ip.ttl <= 1:
            raise Drop("ttl-expired-icmp-error")
        inner = embedded(ip)
        if inner.src != self.wan_ip:
            raise Drop("icmp-error-mismatch")
        ext_port, remote_port = embedded_ports(inner, receiver=False)
        mapping = self.table.lookup_in(inner.proto, ext_port)
        if mapping is None or mapping.session(inner.dst, remote_port) is None:
            raise Drop("icmp-error-no-mapping")
        rewrite_embedded(
            ip, inner, 12, mapping.int_addr, source_port_offset(inner), mapping.int_port
        )
        rewrite_endpoint(ip, 16, mapping.int_addr, None, 0)
        if not hairpin:
            decrement_ttl(ip)
            self.counters.translated["icmp"] += 1
        self._send_ip(ctx, Side.LAN, ip, mapping.int_addr, now)

    # -- the appliance's own traffic -------------------------------------------------------

    def _to_self(self, ctx: FrameContext, side: Side, ip: Ipv4, now: float) -> None:
        if not _is_echo_request(ip):
            raise Drop("to-appliance")
        next_hop = self._next_hop_back(side, ip.src)
        if next_hop is None:
            raise Drop("no-route")
        self._send_ip(ctx, side, _echo_reply(ip), next_hop, now)

    def _icmp_error(
        self,
        ctx: FrameContext,
        side: Side,
        icmp_type: int,
        code: int,
        original: Ipv4,
        now: float,
        mtu: int = 0,
    ) -> None:
        """Answer `original` with an ICMP error from the appliance's address on `side`
        (RFC 1812 4.3.2.7 limits); `mtu`: a Fragmentation Needed's next-hop MTU (RFC 1191)."""
        reason = f"icmp-{'time-exceeded' if icmp_type == ICMP_TIME_EXCEEDED else 'unreachable'}"
        self.counters.drop(reason)
        if original.flags_offset & IP_OFFSET_MASK or _is_icmp_error(original):
            return  # never an error about a later fragment or about an error
        if not self.icmp_errors.take(now):
            self.counters.drop("icmp-rate-limited")
            return
        src = self.lan_ip if side is Side.LAN else self.wan_ip
        error = build_icmp_error(icmp_type, code, src, original.buf, rest_of_header=mtu)
        next_hop = self._next_hop_back(side, original.src)
        if next_hop is None:
            return
        self.counters.icmp_errors_sent += 1
        self._send_ip(ctx, side, error, next_hop, now)

    def _refuse(
        self, ctx: FrameContext, side: Side, refusal: TableFull, ip: Ipv4, now: float
    ) -> None:
        """RFC 5508 REQ-8: a flow refused for lack of room gets ICMP 3/13; existing flows go on."""
        self.counters.refuse(refusal.reason)
        self._icmp_error(ctx, side, ICMP_DEST_UNREACHABLE, CODE_ADMIN_PROHIBITED, ip, now)

    def _whole(self, side: Side, ip: Ipv4, now: float) -> Ipv4 | None:
        if not ip.is_fragment:
            return ip
        datagram = self.reassemblers[side].add(ip, now)
        return None if datagram is None else parse_ipv4(datagram)


class _TokenBucket:
    """Allows `rate` events a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.refilled = burst, 0.0

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.refilled)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _on_link(addresses: Addresses) -> frozenset[bytes]:
    """A gateway outside the WAN subnet (a /32's) is on the link all the same."""
    gateway = addresses.gateway
    outside = gateway is not None and not addresses.wan_net.is_host(gateway)
    return frozenset([gateway]) if outside and gateway is not None else frozenset()


def _cut(ip: Ipv4, mtu: int, partial: bool) -> list[bytearray]:
    """`ip` as packets that fit `mtu`, with complete checksums: a partial checksum finished, a
    TCP aggregate cut into segments (segments.py), anything else over the MTU fragmented."""
    if partial and ip.proto in (TCP, UDP) and not ip.is_fragment:
        if ip.proto == TCP and len(ip.buf) > mtu:
            return [segment.buf for segment in segment_tcp(ip, mtu)]
        fill_l4_checksum(ip)
    return [ip.buf] if len(ip.buf) <= mtu else fragment(ip, mtu)


def _echo_reply(request: Ipv4) -> Ipv4:
    """The appliance's answer to an ICMP echo request for one of its addresses."""
    reply = bytearray(request.buf)
    reply[12:16], reply[16:20] = request.dst, request.src
    reply[8] = 64
    header_len = request.header_len
    reply[header_len] = ICMP_ECHO_REPLY
    answer = Ipv4(reply, header_len, ICMP, request.dst, request.src, 64, 0, request.ident)
    fill_ip_checksum(reply, header_len)
    fill_l4_checksum(answer)
    return answer


def _is_echo_request(ip: Ipv4) -> bool:
    return ip.proto == ICMP and ip.buf[ip.header_len] == ICMP_ECHO_REQUEST


def _is_icmp_error(ip: Ipv4) -> bool:
    if ip.proto != ICMP:
        return False
    return len(ip.buf) <= ip.header_len or ip.buf[ip.header_len] in ICMP_ERROR_TYPES
