"""The engine's fast path: established TCP and UDP flows, translated in one pass.

Theory of operation. Most frames belong to a flow the table already holds, and translating one
only sets an address and a port, decrements the TTL and adjusts two checksums by amounts fixed
by the mapping (RFC 1624). `FastPath.outbound` and `FastPath.inbound` do exactly that in one
pass over the frame, without building an `Ipv4` or patching field by field. They are valid, and
byte for byte equal to the engine's full path (tests/unit/test_fastpath.py), because they only
act when the full path would take its plain forwarding branch:
  - to our MAC (not broadcast); IPv4 without options (IHL 5); neither fragment nor reserved
    flag; the total length fits the frame and the MTU; TTL above 1; header checksum valid;
  - TCP or UDP with a sound header and a valid checksum (UDP may carry none), or a
    checksum left partial for the kernel (`Nat.handle_offload`: not checked, only its
    pseudo-header part adjusted, and a TCP aggregate may exceed the MTU);
  - the addresses pass the full path's source and destination checks (`Nat._from_lan`,
    `Nat._from_wan`), and the next hop's MAC is cached and fresh (nothing to queue, nothing to
    refresh);
  - the session exists (a new one takes the full path); `FlowTable.refresh` then moves its
    TCP state and timer exactly as `FlowTable.outbound`/`inbound` would.
Anything else returns None before any state has changed, and `Nat.handle` runs the full path.

Unsolicited frames from the WAN are the other common case, and the cheapest to refuse: a TCP or
UDP frame that passes the same checks but whose external port has neither a mapping nor a port
forward is dropped here as `filtered`, exactly as the full path would drop it, once its checksum
is known good (a bad one goes on to the full path, which names that reason instead). A flood of
them must cost no more than forwarding does, or it starves the flows that are established.
The checksum arithmetic is rewrite.py's, summed: RFC 1624 eqn. 3 applied to several words at
once gives the same 16 bits as applying it word by word (a fold of a fold is the fold).
"""

from appliance.addresses import Addresses, is_special
from appliance.checksum import addr_sum, checksum_after, word
from appliance.counters import Counters
from appliance.flows import FlowTable
from appliance.frames import LAN, WAN, Offload, Side
from appliance.neighbours import Neighbours
from appliance.packet import TCP, UDP

# RFC 1624 term of the TTL decrement: ~(ttl << 8 | proto) + ((ttl - 1) << 8 | proto), any TTL.
_TTL_TERM = 0xFEFF
# What `inbound` returns for an unsolicited frame it dropped (counted), as opposed to None.
DROPPED: tuple[()] = ()


class FastPath:
    """Works on the engine's table, neighbours and counters; has no state of its own."""

    def __init__(
        self,
        addresses: Addresses,
        mtu: int,
        macs: dict[Side, bytes],
        table: FlowTable,
        neighbours: dict[Side, Neighbours],
        counters: Counters,
    ) -> None:
        self.wan_ip, self.lan_ip, self.gateway, self.wan_net, self.lan_net = addresses
        self._wan_sum = addr_sum(self.wan_ip, 0)
        self.mtu, self.macs = mtu, macs
        self.table, self.neighbours, self.counters = table, neighbours, counters

    def outbound(
        self, frame: bytes, now: float, verified: bool = False, offload: Offload | None = None
    ) -> tuple[Side, bytes] | None:
        """A frame from the LAN translated to go out on the WAN, or None: the full path's."""
        l4_len = self._plain_l4_len(frame, self.macs[LAN], offload)
        if l4_len < 0:
            return None
        src, dst = frame[26:30], frame[30:34]
        if not self.lan_net.is_host(src) or src == self.lan_ip:
            return None
        if is_special(dst) or dst in self.lan_net or dst == self.wan_ip:
            return None
        next_hop = dst if dst in self.wan_net else self.gateway
        if next_hop is None:
            return None
        proto, int_port = frame[23], (frame[34] << 8) | frame[35]
        mapping = self.table.lookup_out(proto, src, int_port)
        if mapping is None:
            return None
        mac = self.neighbours[WAN].fresh(next_hop, now)
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
        return self._emit(WAN, buf, mac, proto, addr_term, port_term, offload)

    def inbound(
        self, frame: bytes, now: float, verified: bool = False, offload: Offload | None = None
    ) -> tuple[Side, bytes] | tuple[()] | None:
        """A frame from the WAN translated to go to a LAN host; DROPPED for an unsolicited one
        (counted); or None: the full path's."""
        l4_len = self._plain_l4_len(frame, self.macs[WAN], offload)
        if l4_len < 0 or frame[30:34] != self.wan_ip:
            return None
        src = frame[26:30]
        if src in self.lan_net or src == self.wan_ip or src == self.lan_ip or is_special(src):
            return None
        proto, ext_port = frame[23], (frame[36] << 8) | frame[37]
        mapping = self.table.lookup_in(proto, ext_port)
        if mapping is None:
            if self.table.is_forwarded(proto, ext_port):
                return None  # a new session of a port forward: the full path makes it
            if not (verified or _l4_checksum_valid(frame, l4_len)):
                return None
            self.counters.drop("filtered")
            return DROPPED
        int_addr = mapping.int_addr
        mac = self.neighbours[LAN].fresh(int_addr, now)
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
        return self._emit(LAN, buf, mac, proto, addr_term, port_term, offload)

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

    def _emit(
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


def _l4_checksum_valid(frame: bytes, l4_len: int) -> bool:
    """`check_l4`'s checksum test for the fast path, which checks it last (it reads the whole
    segment: a frame of a new flow should not pay for it twice). The sum of all words with the
    pseudo-header is 0 modulo 0xFFFF (an odd last byte counts as a high byte)."""
    proto = frame[23]
    if proto == UDP and frame[40] == 0 and frame[41] == 0:
        return True  # the sender computed no checksum (RFC 768)
    segment = int.from_bytes(frame[34 : 34 + l4_len], "big") << (8 * (l4_len & 1))
    return (segment + int.from_bytes(frame[26:34], "big") + proto + l4_len) % 0xFFFF == 0
