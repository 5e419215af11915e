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

Checksums on the forwarding path are updated incrementally (RFC 1624); checksums of packets the
appliance builds or whose embedded header it rewrites are computed from scratch.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network

from appliance.checksum import addr_sum, checksum_after, word
from appliance.config import ApplianceConfig
from appliance.flows import FlowTable, PortAllocator, TableFull
from appliance.fragments import Reassembler, fragment
from appliance.neighbours import Neighbours
from appliance.packet import (
    ARP_REPLY,
    ARP_REQUEST,
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
    build_arp_frame,
    build_icmp_error,
    check_l4,
    ethernet_header,
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


class Side(StrEnum):
    WAN = "wan"
    LAN = "lan"


Output = list[tuple[Side, bytes]]


@dataclass(frozen=True, slots=True)
class Offload:
    """What a virtio_net_hdr says of a frame, as the engine needs it (the shell encodes it).

    `needs_csum`: the TCP/UDP checksum field holds only the (non-complemented) pseudo-header sum;
    the kernel finishes it on transmit. `gso_size`: a TCP aggregate (GRO/TSO) that the kernel cuts
    into segments of that many payload bytes on transmit (0: a single frame). `ecn`: the
    aggregate's segments carry CWR on the first one only (gso_type ECN). A received frame whose
    checksum is partial leaves, translated, with the same offload, so the kernel completes it.
    """

    needs_csum: bool = False
    gso_size: int = 0
    ecn: bool = False


OffloadOutput = list[tuple[Side, bytes, Offload | None]]


@dataclass
class Counters:
    frames_in: dict[Side, int] = field(default_factory=lambda: dict.fromkeys(Side, 0))
    frames_out: dict[Side, int] = field(default_factory=lambda: dict.fromkeys(Side, 0))
    translated: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("tcp", "udp", "icmp"), 0)
    )
    drops: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    icmp_errors_sent: int = 0
    aggregates: int = 0  # TCP aggregates (GRO/TSO) received and translated whole

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + count

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def line(self, flows: int) -> str:
        """One log line: everything a reader of the console needs to see the NAT working."""
        parts = [
            f"{side}_in={self.frames_in[side]} {side}_out={self.frames_out[side]}" for side in Side
        ]
        parts.append(f"flows={flows}")
        parts += [f"nat_{proto}={count}" for proto, count in self.translated.items()]
        parts.append(f"icmp_errors_sent={self.icmp_errors_sent} aggregates={self.aggregates}")
        parts += [f"refused_{reason}={count}" for reason, count in sorted(self.refused.items())]
        parts.append(f"dropped={sum(self.drops.values())}")
        parts += [f"drop_{reason}={count}" for reason, count in sorted(self.drops.items())]
        return "stats " + " ".join(parts)


@dataclass(slots=True)
class FrameContext:
    """What the full path knows of the frame it handles, and the frames it has to send: passed
    down from `_run` to whichever method needs it (`start` and `tick` use one with no frame).

    `offload`: the frame's checksum was left for an offload (`handle_offload`): partial, so not
    checked, and finished by whoever sends the frame. `l4_verified`: the kernel has verified the
    TCP/UDP checksum.
    """

    out: OffloadOutput = field(default_factory=list)
    offload: Offload | None = None
    l4_verified: bool = False

    @property
    def partial(self) -> bool:
        return self.offload is not None

    def check_l4(self, ip: Ipv4) -> None:
        # ICMP checksums are always done in software, so only TCP/UDP can be partial.
        check_l4(ip, verify_checksum=not (self.partial or self.l4_verified) or ip.proto == ICMP)

    def is_aggregate(self, ip: Ipv4) -> bool:
        """A TCP packet with a partial checksum may exceed the MTU: the kernel cuts it."""
        return self.partial and ip.proto == TCP


class _Subnet:
    __slots__ = ("broadcast", "mask", "network")

    def __init__(self, network: IPv4Network) -> None:
        self.network = int(network.network_address)
        self.mask = int(network.netmask)
        self.broadcast = int(network.broadcast_address)

    def __contains__(self, addr: bytes) -> bool:
        return int.from_bytes(addr, "big") & self.mask == self.network

    def is_host(self, addr: bytes) -> bool:
        value = int.from_bytes(addr, "big")
        return value & self.mask == self.network and value not in (self.network, self.broadcast)


def _is_special(addr: bytes) -> bool:
    """Addresses that are never a unicast host: this-network, loopback, multicast, class E."""
    first = addr[0]
    return first == 0 or first == 127 or first >= 224


class Nat:
    def __init__(
        self,
        config: ApplianceConfig,
        wan_mac: bytes,
        lan_mac: bytes,
        allocator: PortAllocator | None = None,
    ) -> None:
        self.config = config
        self.wan_ip = config.wan.address.ip.packed
        self.lan_ip = config.lan.address.ip.packed
        self._wan_sum = addr_sum(self.wan_ip, 0)
        self.gateway = None if config.wan.gateway is None else config.wan.gateway.packed
        self.wan_net = _Subnet(config.wan.address.network)
        self.lan_net = _Subnet(config.lan.address.network)
        self.mtu = config.nat.mtu
        self.macs = {Side.WAN: wan_mac, Side.LAN: lan_mac}
        self.counters = Counters()
        self.neighbours = {
            Side.WAN: Neighbours(wan_mac, self.wan_ip, self.counters.drop),
            Side.LAN: Neighbours(lan_mac, self.lan_ip, self.counters.drop),
        }
        self.table = FlowTable(config.nat, allocator)
        self.reassemblers = {Side.WAN: Reassembler(), Side.LAN: Reassembler()}
        self._icmp_tokens, self._icmp_refilled = _ICMP_BURST, 0.0

    # -- entry points ----------------------------------------------------------------------

    def handle(self, side: Side, frame: bytes, now: float, l4_verified: bool = False) -> Output:
        """Process one received frame with complete checksums; returns the frames to send.

        `l4_verified`: the kernel has verified the TCP/UDP checksum (DATA_VALID): not redone.
        A frame whose checksum was left for an offload goes to `handle_offload` instead.
        """
        self.counters.frames_in[side] += 1
        fast = (
            self._fast_out(frame, now, l4_verified)
            if side is Side.LAN
            else self._fast_in(frame, now, l4_verified)
        )
        if fast is not None:
            return [fast]
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
            self._fast_out(frame, now, True, offload)
            if side is Side.LAN
            else self._fast_in(frame, now, True, offload)
        )
        if fast is not None:
            return [(fast[0], fast[1], offload)]
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
        ctx = FrameContext(offload=offload, l4_verified=l4_verified)
        try:
            self._frame(ctx, side, frame, now)
        except Drop as drop:
            self.counters.drop(drop.reason)
        return ctx.out

    def start(self, now: float) -> Output:
        """Frames to send at start-up: a gratuitous ARP on each side (so neighbours that cached
        an earlier incarnation update at once) and a request for the gateway."""
        ctx = FrameContext()
        for side, neighbours in self.neighbours.items():
            self._emit(ctx, side, neighbours.request_frame(neighbours.ip))
        if self.gateway is not None:
            self._emit(ctx, Side.WAN, self.neighbours[Side.WAN].request_frame(self.gateway))
        return [(s, f) for s, f, _ in ctx.out]

    def tick(self, now: float) -> Output:
        """Run the timers; call about once a second. Returns the frames to send."""
        ctx = FrameContext()
        for side, neighbours in self.neighbours.items():
            for frame in neighbours.tick(now):
                self._emit(ctx, side, frame)
        self.table.expire(now)
        for reassembler in self.reassemblers.values():
            reassembler.expire(now)
        return [(s, f) for s, f, _ in ctx.out]

    # -- fast path: established TCP and UDP flows -------------------------------------------
    #
    # Most frames belong to a flow the table already holds, and translating one only sets an
    # address and a port, decrements the TTL and adjusts two checksums by amounts fixed by the
    # mapping (RFC 1624). `_fast_out` and `_fast_in` do exactly that in one pass over the frame,
    # without building an `Ipv4` or patching field by field. They are valid, and byte for byte
    # equal to the full path (tests/unit/test_fastpath.py), because they only act when the full
    # path would take its plain forwarding branch:
    #   - to our MAC (not broadcast); IPv4 without options (IHL 5); neither fragment nor reserved
    #     flag; the total length fits the frame and the MTU; TTL above 1; header checksum valid;
    #   - TCP or UDP with a sound header and a valid checksum (UDP may carry none), or a
    #     checksum left partial for the kernel (`handle_offload`: not checked, only its
    #     pseudo-header part adjusted, and a TCP aggregate may exceed the MTU);
    #   - the addresses pass the full path's source and destination checks (below), and the next
    #     hop's MAC is cached and fresh (nothing to queue, nothing to refresh);
    #   - the session exists (a new one takes the full path); `FlowTable.refresh` then moves its
    #     TCP state and timer exactly as `outbound`/`inbound` would.
    # Anything else returns None before any state has changed, and `handle` runs the full path.
    # The checksum arithmetic is `_patch`'s, summed: RFC 1624 eqn. 3 applied to several words at
    # once gives the same 16 bits as applying it word by word (a fold of a fold is the fold).

    def _fast_out(
        self, frame: bytes, now: float, verified: bool = False, offload: Offload | None = None
    ) -> tuple[Side, bytes] | None:
        l4_len = self._plain_l4_len(frame, self.macs[Side.LAN], offload)
        if l4_len < 0:
            return None
        src, dst = frame[26:30], frame[30:34]
        if not self.lan_net.is_host(src) or src == self.lan_ip:
            return None
        if _is_special(dst) or dst in self.lan_net or dst == self.wan_ip:
            return None
        next_hop = dst if dst in self.wan_net else self.gateway
        if next_hop is None:
            return None
        proto, int_port = frame[23], (frame[34] << 8) | frame[35]
        mapping = self.table.lookup_out(proto, src, int_port)
        if mapping is None:
            return None
        mac = self.neighbours[Side.WAN].fresh(next_hop, now)
        remote_port, flags = (frame[36] << 8) | frame[37], frame[47] if proto == TCP else 0
        if (
            mac is None
            or not (verified or _l4_checksum_valid(frame, l4_len))
            or not self.table.refresh(mapping, dst, remote_port, now, flags, True)
        ):
            return None
        ext_port = mapping.ext_port
        addr_term = (~addr_sum(frame, 26) & 0xFFFF) + self._wan_sum
        port_term = 0 if ext_port == int_port else (~int_port & 0xFFFF) + ext_port
        buf = bytearray(frame[: 34 + l4_len])
        buf[26:30] = self.wan_ip
        buf[34:36] = ext_port.to_bytes(2, "big")
        return self._fast_emit(Side.WAN, buf, mac, proto, addr_term, port_term, offload)

    def _fast_in(
        self, frame: bytes, now: float, verified: bool = False, offload: Offload | None = None
    ) -> tuple[Side, bytes] | None:
        l4_len = self._plain_l4_len(frame, self.macs[Side.WAN], offload)
        if l4_len < 0 or frame[30:34] != self.wan_ip:
            return None
        src = frame[26:30]
        if src in self.lan_net or src == self.wan_ip or src == self.lan_ip or _is_special(src):
            return None
        proto, ext_port = frame[23], (frame[36] << 8) | frame[37]
        mapping = self.table.lookup_in(proto, ext_port)
        if mapping is None:
            return None
        int_addr = mapping.int_addr
        mac = self.neighbours[Side.LAN].fresh(int_addr, now)
        remote_port, flags = (frame[34] << 8) | frame[35], frame[47] if proto == TCP else 0
        if (
            mac is None
            or not (verified or _l4_checksum_valid(frame, l4_len))
            or not self.table.refresh(mapping, src, remote_port, now, flags, False)
        ):
            return None
        int_port = mapping.int_port
        addr_term = (~self._wan_sum & 0xFFFF) + addr_sum(int_addr, 0)
        port_term = 0 if ext_port == int_port else (~ext_port & 0xFFFF) + int_port
        buf = bytearray(frame[: 34 + l4_len])
        buf[30:34] = int_addr
        buf[36:38] = int_port.to_bytes(2, "big")
        return self._fast_emit(Side.LAN, buf, mac, proto, addr_term, port_term, offload)

    def _plain_l4_len(self, frame: bytes, our_mac: bytes, offload: Offload | None) -> int:
        """The TCP/UDP segment length of a frame the fast path may take, else -1."""
        if len(frame) < 42 or frame[14] != 0x45 or frame[12:14] != b"\x08\x00":
            return -1
        total = (frame[16] << 8) | frame[17]
        # A TCP aggregate is cut to the MTU by the kernel on transmit; anything else must fit.
        aggregate = offload is not None and offload.gso_size
        if aggregate and frame[23] != TCP:
            return -1
        limit = 0xFFFF if aggregate else self.mtu
        # Flags byte: only DF (0x40) may be set; the fragment offset must be zero.
        if total > len(frame) - 14 or total > limit or frame[20] & 0xBF or frame[21]:
            return -1
        if frame[22] <= 1 or frame[:6] != our_mac:
            return -1
        if int.from_bytes(frame[14:34], "big") % 0xFFFF:
            return -1  # bad header checksum (the header is nonzero, so 0 mod 0xFFFF is valid)
        proto, l4_len = frame[23], total - 20
        if proto == TCP:
            if l4_len < 20 or not 20 <= (frame[46] >> 4) * 4 <= l4_len:
                return -1
        elif proto == UDP:
            if l4_len < 8 or (frame[38] << 8) | frame[39] != l4_len:
                return -1
        else:
            return -1
        return l4_len

    def _fast_emit(
        self,
        side: Side,
        buf: bytearray,
        mac: bytes,
        proto: int,
        addr_term: int,
        port_term: int,
        offload: Offload | None,
    ) -> tuple[Side, bytes]:
        """Finish a fast-path packet (addresses and ports already set): the frame to send."""
        buf[22] -= 1  # TTL; its checksum term is 0xFEFF, below
        buf[24:26] = checksum_after(word(buf, 24), addr_term + _TTL_TERM).to_bytes(2, "big")
        check = 50 if proto == TCP else 40
        old = word(buf, check)
        if proto == TCP or old:  # a UDP checksum of 0 means none: it stays 0
            if offload is not None:
                # A partial checksum is the pseudo-header's sum, not complemented: only the
                # address is in it (`adjust_partial`, with the terms summed).
                new = ~checksum_after(~old & 0xFFFF, addr_term) & 0xFFFF
            else:
                new = checksum_after(old, addr_term + port_term)
                if new == 0 and proto == UDP:
                    new = 0xFFFF  # RFC 768: a computed zero is sent as all ones
            buf[check : check + 2] = new.to_bytes(2, "big")
        buf[0:6] = mac
        buf[6:12] = self.macs[side]
        counters = self.counters
        counters.translated["tcp" if proto == TCP else "udp"] += 1
        counters.frames_out[side] += 1
        return side, bytes(buf)

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
            self._arp(ctx, side, frame[ETH_HEADER_LEN:], now)
        else:
            raise Drop("unsupported-ethertype")

    def _arp(self, ctx: FrameContext, side: Side, payload: bytes, now: float) -> None:
        arp = parse_arp(payload)
        neighbours = self.neighbours[side]
        subnet = self.wan_net if side is Side.WAN else self.lan_net
        if not subnet.is_host(arp.sender_ip):
            raise Drop("arp-foreign-sender")
        if arp.sender_ip == neighbours.ip:
            raise Drop("arp-address-conflict")
        for_us = arp.target_ip == neighbours.ip
        if for_us or neighbours.knows(arp.sender_ip):
            for mac, packet in neighbours.learn(arp.sender_ip, arp.sender_mac, now):
                self._emit(ctx, side, ethernet_header(mac, neighbours.mac, ETHERTYPE_IPV4) + packet)
        if not for_us:
            raise Drop("arp-not-for-us")
        if arp.op == ARP_REQUEST:
            self._emit(
                ctx,
                side,
                build_arp_frame(
                    ARP_REPLY, neighbours.mac, neighbours.ip, arp.sender_mac, arp.sender_ip
                ),
            )

    def _emit(
        self, ctx: FrameContext, side: Side, frame: bytes, offload: Offload | None = None
    ) -> None:
        self.counters.frames_out[side] += 1
        ctx.out.append((side, frame, offload))

    def _send_ip(
        self, ctx: FrameContext, side: Side, ip: Ipv4, next_hop: bytes, now: float
    ) -> None:
        """Send on `side` via `next_hop`, fragmenting over the MTU (only DF-clear gets here)."""
        neighbours = self.neighbours[side]
        mac = neighbours.lookup(next_hop, now)
        offload = ctx.offload
        if (
            offload is not None
            and mac is not None
            and ip.proto in (TCP, UDP)
            and not ip.is_fragment
            and (offload.gso_size or len(ip.buf) <= self.mtu)
        ):
            # The kernel finishes the checksum (and cuts the aggregate) on transmit.
            self._emit(
                ctx, side, ethernet_header(mac, neighbours.mac, ETHERTYPE_IPV4) + ip.buf, offload
            )
            return
        if ctx.partial and ip.proto in (TCP, UDP) and not ip.is_fragment:
            if ip.proto == TCP and len(ip.buf) > self.mtu:
                pieces = [segment.buf for segment in segment_tcp(ip, self.mtu)]
            else:
                fill_l4_checksum(ip)
                pieces = [ip.buf] if len(ip.buf) <= self.mtu else fragment(ip, self.mtu)
        else:
            pieces = [ip.buf] if len(ip.buf) <= self.mtu else fragment(ip, self.mtu)
        for piece in pieces:
            if mac is not None:
                self._emit(ctx, side, ethernet_header(mac, neighbours.mac, ETHERTYPE_IPV4) + piece)
                continue
            for request in neighbours.enqueue(next_hop, bytes(piece), now):
                self._emit(ctx, side, request)

    def _wan_next_hop(self, dst: bytes) -> bytes | None:
        return dst if dst in self.wan_net else self.gateway

    # -- IP: from the LAN ------------------------------------------------------------------

    def _from_lan(self, ctx: FrameContext, ip: Ipv4, now: float) -> None:
        if not self.lan_net.is_host(ip.src) or ip.src == self.lan_ip:
            raise Drop("spoofed-source")
        dst = ip.dst
        if (
            _is_special(dst)
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
            self._icmp_error(ctx, Side.LAN, ICMP_TIME_EXCEEDED, 0, ip, self.lan_ip, now)
            return
        hairpin = ip.dst == self.wan_ip
        next_hop = None if hairpin else self._wan_next_hop(ip.dst)
        if not hairpin and next_hop is None:
            self._icmp_error(
                ctx, Side.LAN, ICMP_DEST_UNREACHABLE, CODE_NET_UNREACHABLE, ip, self.lan_ip, now
            )
            return
        if len(ip.buf) > self.mtu and ip.dont_fragment and not ctx.is_aggregate(ip):
            self._icmp_error(
                ctx,
                Side.LAN,
                ICMP_DEST_UNREACHABLE,
                CODE_FRAGMENTATION_NEEDED,
                ip,
                self.lan_ip,
                now,
                rest_of_header=self.mtu,
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
            or _is_special(src)
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
            self._icmp_error(ctx, Side.WAN, ICMP_TIME_EXCEEDED, 0, ip, self.wan_ip, now)
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
                ctx,
                Side.WAN,
                ICMP_DEST_UNREACHABLE,
                CODE_FRAGMENTATION_NEEDED,
                ip,
                self.wan_ip,
                now,
                rest_of_header=self.mtu,
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
        reply = bytearray(ip.buf)
        reply[12:16], reply[16:20] = ip.dst, ip.src
        reply[8] = 64
        header_len = ip.header_len
        reply[header_len] = ICMP_ECHO_REPLY
        answer = Ipv4(reply, header_len, ICMP, ip.dst, ip.src, 64, 0, ip.ident)
        fill_ip_checksum(reply, header_len)
        fill_l4_checksum(answer)
        next_hop = ip.src if side is Side.LAN else self._wan_next_hop(ip.src)
        if next_hop is None:
            raise Drop("no-route")
        self._send_ip(ctx, side, answer, next_hop, now)

    def _icmp_error(
        self,
        ctx: FrameContext,
        side: Side,
        icmp_type: int,
        code: int,
        original: Ipv4,
        src: bytes,
        now: float,
        rest_of_header: int = 0,
    ) -> None:
        """Answer `original` with an ICMP error from the appliance (RFC 1812 4.3.2.7 limits)."""
        reason = f"icmp-{'time-exceeded' if icmp_type == ICMP_TIME_EXCEEDED else 'unreachable'}"
        self.counters.drop(reason)
        if original.flags_offset & IP_OFFSET_MASK or _is_icmp_error(original):
            return  # never an error about a later fragment or about an error
        if not self._icmp_allowed(now):
            self.counters.drop("icmp-rate-limited")
            return
        error = build_icmp_error(icmp_type, code, src, original.buf, rest_of_header)
        next_hop = original.src if side is Side.LAN else self._wan_next_hop(original.src)
        if next_hop is None:
            return
        self.counters.icmp_errors_sent += 1
        self._send_ip(ctx, side, error, next_hop, now)

    def _refuse(
        self, ctx: FrameContext, side: Side, refusal: TableFull, ip: Ipv4, now: float
    ) -> None:
        """RFC 5508 REQ-8: a flow refused for lack of room gets ICMP 3/13; existing flows go on."""
        self.counters.refuse(refusal.reason)
        src = self.lan_ip if side is Side.LAN else self.wan_ip
        self._icmp_error(ctx, side, ICMP_DEST_UNREACHABLE, CODE_ADMIN_PROHIBITED, ip, src, now)

    def _icmp_allowed(self, now: float) -> bool:
        # A token bucket (RFC 1812 4.3.2.8 rate limiting), so a flood of expiring or oversize
        # packets cannot turn the appliance into an amplifier.
        elapsed = max(0.0, now - self._icmp_refilled)
        self._icmp_tokens = min(_ICMP_BURST, self._icmp_tokens + elapsed * _ICMP_RATE)
        self._icmp_refilled = now
        if self._icmp_tokens < 1:
            return False
        self._icmp_tokens -= 1
        return True

    def _whole(self, side: Side, ip: Ipv4, now: float) -> Ipv4 | None:
        if not ip.is_fragment:
            return ip
        datagram = self.reassemblers[side].add(ip, now)
        return None if datagram is None else parse_ipv4(datagram)


_ICMP_RATE = 100.0  # errors per second
_ICMP_BURST = 200.0


def _is_echo_request(ip: Ipv4) -> bool:
    return ip.proto == ICMP and ip.buf[ip.header_len] == ICMP_ECHO_REQUEST


def _is_icmp_error(ip: Ipv4) -> bool:
    if ip.proto != ICMP:
        return False
    return len(ip.buf) <= ip.header_len or ip.buf[ip.header_len] in ICMP_ERROR_TYPES


def _l4_checksum_valid(frame: bytes, l4_len: int) -> bool:
    """`check_l4`'s checksum test for the fast path, which checks it last (it reads the whole
    segment: a frame of a new flow should not pay for it twice). The sum of all words with the
    pseudo-header is 0 modulo 0xFFFF (an odd last byte counts as a high byte)."""
    proto = frame[23]
    if proto == UDP and frame[40] == 0 and frame[41] == 0:
        return True  # the sender computed no checksum (RFC 768)
    segment = int.from_bytes(frame[34 : 34 + l4_len], "big") << (8 * (l4_len & 1))
    return (segment + int.from_bytes(frame[26:34], "big") + proto + l4_len) % 0xFFFF == 0


# RFC 1624 term of the TTL decrement: ~(ttl << 8 | proto) + ((ttl - 1) << 8 | proto), any TTL.
_TTL_TERM = 0xFEFF
