"""What must hold after every frame the fuzzer hands the engine.

Emitted frames (`check_emitted`): each is a well-formed Ethernet frame from the side's own MAC;
an ARP one is the appliance's own; an IPv4 one has a valid header checksum, a total length equal
to the frame's, fits the MTU (a TCP aggregate with segmentation offload excepted), carries the
WAN address as its source on the WAN side and a LAN host as its destination on the LAN side, has
sound TCP/UDP/ICMP lengths and a valid L4 checksum, and an ICMP error's quote has a valid header
checksum and, when quoted whole, a valid L4 checksum. A frame that leaves with a partial checksum
(an offload) is checked as its receiver sees it, after completing the sum as the NIC would.

L4 checksums are checked only while the program is *trusted*: when every frame so far that told
the engine its checksum was already verified (DATA_VALID) or partial (NEEDS_CSUM) told the truth,
as a kernel does (`claims_hold`). A mutated frame that lies to it may come out with a bad
checksum, and rightly: the engine cannot know.

The engine's state (`check_state`): both directions of every mapping present and agreeing, every
session in its mapping and in the expiry heap, the counts (sessions in all, per LAN host, per
host's forwards) equal to a recount, the budgets (`max_flows`, `max_flows_per_host`) respected,
free ports resting apart from used ones; reassembly and ARP queues within their bounds and their
accounts equal to a recount.

`scapy_check` is the second opinion, on a sample: scapy recomputes every checksum of a frame.
"""

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Network

from appliance.engine import Nat
from appliance.flows import Mapping, Session, internal_key
from appliance.frames import Offload, Side
from fuzz import wire

ICMP_ERRORS = (3, 11, 12)


@dataclass(frozen=True)
class View:
    """What the oracle knows of the appliance: its addresses, MACs and MTU."""

    macs: dict[Side, bytes]
    ips: dict[Side, bytes]
    lan_net: IPv4Network
    mtu: int

    def is_lan_host(self, addr: bytes | bytearray) -> bool:
        value = int.from_bytes(addr, "big")
        net = self.lan_net
        return (
            value & int(net.netmask) == int(net.network_address)
            and value != int(net.network_address)
            and value != int(net.broadcast_address)
        )


def check_emitted(
    view: View, side: Side, frame: bytes, offload: Offload | None, trusted: bool, quotes: bool
) -> None:
    """`trusted`: check L4 checksums; `quotes`: and those of whole quotes in ICMP errors."""
    where = f"{side} frame {frame[:96].hex()}{'...' if len(frame) > 96 else ''}"
    assert len(frame) >= 14, f"runt {where}"
    assert frame[6:12] == view.macs[side], f"wrong source MAC: {where}"
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == wire.ETHERTYPE_ARP:
        _check_arp(view, side, frame, where)
        return
    assert ethertype == wire.ETHERTYPE_IPV4, f"ethertype {ethertype:#x}: {where}"
    packet = bytearray(frame[14:])
    _check_header(packet, where)
    gso = offload is not None and offload.gso_size
    if gso:
        assert packet[9] == wire.TCP and not _is_fragment(packet), f"aggregate not TCP: {where}"
    else:
        assert len(packet) <= view.mtu, f"{len(packet)} bytes over the MTU {view.mtu}: {where}"
    if side is Side.WAN:
        assert packet[12:16] == view.ips[Side.WAN], f"WAN source is not the WAN address: {where}"
    else:
        assert view.is_lan_host(packet[16:20]), f"LAN destination not a LAN host: {where}"
    if _is_fragment(packet):
        assert offload is None, f"a fragment with an offload: {where}"
        if int.from_bytes(packet[6:8], "big") & wire.MF:
            assert (len(packet) - (packet[0] & 15) * 4) % 8 == 0, f"fragment size: {where}"
        return
    if offload is not None and offload.needs_csum:
        assert packet[9] in (wire.TCP, wire.UDP), f"offload on protocol {packet[9]}: {where}"
        complete(packet)
    _check_l4(packet, trusted, trusted and quotes, where)


def _check_arp(view: View, side: Side, frame: bytes, where: str) -> None:
    assert len(frame) == 60, f"ARP frame of {len(frame)} bytes: {where}"
    body = frame[14:42]
    assert body[:6] == bytes.fromhex("000108000604"), f"ARP header: {where}"
    assert body[6:8] in (b"\x00\x01", b"\x00\x02"), f"ARP op: {where}"
    assert body[8:14] == view.macs[side] and body[14:18] == view.ips[side], f"ARP sender: {where}"


def _check_header(packet: bytearray, where: str) -> None:
    assert len(packet) >= 20 and packet[0] >> 4 == 4, f"not IPv4: {where}"
    header_len = (packet[0] & 15) * 4
    assert 20 <= header_len <= len(packet), f"header length {header_len}: {where}"
    total = int.from_bytes(packet[2:4], "big")
    assert total == len(packet), f"total length {total} != {len(packet)}: {where}"
    assert wire.ones_sum(packet[:header_len]) == 0xFFFF, f"bad IP header checksum: {where}"
    assert packet[8] > 0, f"TTL 0 sent: {where}"
    assert not packet[6] & 0x80, f"reserved flag sent: {where}"


def _is_fragment(packet: bytes | bytearray) -> bool:
    return bool(int.from_bytes(packet[6:8], "big") & 0x3FFF)


def complete(packet: bytearray) -> None:
    """Finish a partial TCP/UDP checksum as the NIC (or the kernel's software fallback) does:
    the sum of the segment from the transport header on, the field holding the pseudo-header's
    sum, complemented into the field."""
    header_len = (packet[0] & 15) * 4
    at = header_len + wire.CHECK_FIELD[packet[9]]
    assert at + 2 <= len(packet), "partial checksum field beyond the packet"
    value = ~wire.ones_sum(memoryview(packet)[header_len:]) & 0xFFFF
    if packet[9] == wire.UDP and value == 0:
        value = 0xFFFF
    packet[at : at + 2] = value.to_bytes(2, "big")


def l4_verdict(packet: bytes | bytearray) -> bool | None:
    """Whether a whole datagram's transport header and checksum are sound; None for another
    protocol."""
    header_len, proto = (packet[0] & 15) * 4, packet[9]
    segment = memoryview(packet)[header_len:]
    if proto == wire.TCP:
        if len(segment) < 20 or not 20 <= (segment[12] >> 4) * 4 <= len(segment):
            return False
    elif proto == wire.UDP:
        if len(segment) < 8 or int.from_bytes(segment[4:6], "big") != len(segment):
            return False
        if segment[6] == 0 and segment[7] == 0:
            return True
    elif proto == wire.ICMP:
        if len(segment) < 8:
            return False
        return wire.ones_sum(segment) == 0xFFFF
    else:
        return None
    pseudo = wire.pseudo_sum(bytes(packet[12:16]), bytes(packet[16:20]), proto, len(segment))
    total = wire.ones_sum(segment) + pseudo
    return (total & 0xFFFF) + (total >> 16) == 0xFFFF


def _check_l4(packet: bytearray, trusted: bool, quotes: bool, where: str) -> None:
    verdict = l4_verdict(packet)
    assert verdict is not False or not trusted, f"bad L4 header or checksum: {where}"
    header_len = (packet[0] & 15) * 4
    if packet[9] != wire.ICMP or packet[header_len] not in ICMP_ERRORS:
        return
    quote = packet[header_len + 8 :]
    if len(quote) < 20:
        return  # the engine only translates errors with a whole quoted header
    quoted_header = (quote[0] & 15) * 4
    assert quote[0] >> 4 == 4 and 20 <= quoted_header <= len(quote), f"quote: {where}"
    assert wire.ones_sum(quote[:quoted_header]) == 0xFFFF, f"bad quoted IP checksum: {where}"
    quoted_total = int.from_bytes(quote[2:4], "big")
    if quotes and quoted_total == len(quote) and not _is_fragment(quote):
        assert l4_verdict(quote) is not False, f"bad quoted L4 checksum: {where}"


def claims_hold(frame: bytes, offload: Offload | None, verified: bool) -> bool:
    """Whether a frame's checksum claims are true, as a kernel's are: `verified` (DATA_VALID)
    only of a whole TCP/UDP datagram whose checksum is right; a partial checksum (NEEDS_CSUM)
    only on a whole TCP/UDP datagram whose field holds the pseudo-header's sum, and a TCP one
    for an aggregate. Frames that make no claim hold trivially."""
    if not verified and offload is None:
        return True
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return offload is None  # an offload names a TCP/UDP checksum: on anything else it lies
    packet = frame[14:]
    header_len, total = (packet[0] & 15) * 4, int.from_bytes(packet[2:4], "big")
    if packet[0] >> 4 != 4 or header_len < 20 or not header_len <= total <= len(packet):
        return offload is None
    packet = packet[:total]
    proto = packet[9]
    if _is_fragment(packet) or proto not in (wire.TCP, wire.UDP):
        return offload is None and proto not in (wire.TCP, wire.UDP)
    if offload is None:
        return l4_verdict(packet) is True
    if offload.gso_size and proto != wire.TCP:
        return False
    at = header_len + wire.CHECK_FIELD[proto]
    if at + 2 > len(packet):
        return False
    pseudo = wire.pseudo_sum(packet[12:16], packet[16:20], proto, len(packet) - header_len)
    return int.from_bytes(packet[at : at + 2], "big") == pseudo


def scapy_check(frame: bytes, offload: Offload | None) -> None:
    """scapy's recomputation of every checksum in an emitted frame (after completing a partial
    one), where scapy rebuilds the frame byte for byte (it rewrites malformed options)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Padding
    from scapy.utils import checksum

    data = bytearray(frame[14:])
    if frame[12:14] != b"\x08\x00":
        return
    if offload is not None and offload.needs_csum and not _is_fragment(data):
        complete(data)
    packet = IP(bytes(data))
    try:
        if bytes(packet) != data or Padding in packet:
            return
    except (TypeError, ValueError, IndexError):
        return
    header = bytes(data[: packet.ihl * 4])
    assert packet.chksum == checksum(header[:10] + b"\x00\x00" + header[12:]), "scapy: IP"
    layer = packet.payload
    if packet.frag or packet.flags.MF or not isinstance(layer, (TCP, UDP, ICMP)):
        return
    if isinstance(layer, UDP) and layer.chksum == 0:
        return
    clean = IP(bytes(data))
    clean.payload.chksum = None
    expected = IP(bytes(clean)).payload.chksum
    assert layer.chksum == expected, f"scapy: {layer.name} {layer.chksum:#06x} != {expected:#06x}"


# -- the engine's state --------------------------------------------------------------------------


def check_state(nat: Nat, now: float, after_tick: bool = False) -> None:
    _check_table(nat, now, after_tick)
    for side, reassembler in nat.reassemblers.items():
        _check_reassembler(side, reassembler)
    for side, neighbours in nat.neighbours.items():
        assert len(neighbours._cache) <= neighbours.max_entries, f"{side} ARP cache over bound"
        assert len(neighbours._pending) <= neighbours.max_pending, f"{side} ARP queues over bound"
        for ip, pending in neighbours._pending.items():
            assert len(pending.packets) <= neighbours.queue_per_hop, f"{side} queue {ip.hex()}"
            assert ip not in neighbours._cache or not pending.packets, f"{side} resolved, queued"


def _external_count(nat: Nat) -> int:
    """How many mappings the external indexes hold (pages are made on first use)."""
    return sum(
        len(page) - page.count(None)
        for index in nat.table.by_external.values()
        for page in filter(None, index._pages)
    )


def _check_table(nat: Nat, now: float, after_tick: bool) -> None:
    table, settings = nat.table, nat.table.settings
    assert _external_count(nat) == len(table.by_internal), "mapping counts differ by direction"
    hosts: Counter[bytes] = Counter()
    forwarded: Counter[bytes] = Counter()
    sessions = 0
    queued = {id(session) for due, session in table._heap if due == session.due}
    for key, mapping in table.by_internal.items():
        proto, port = mapping.proto, mapping.ext_port
        assert key == internal_key(proto, mapping.int_addr, mapping.int_port), "misfiled inside"
        assert table.lookup_in(proto, port) is mapping, "a mapping missing from the external index"
        assert (proto, port) not in table._resting_ports, "a used port is resting"
        if mapping.forwarded:
            assert table.is_forwarded(proto, port), "forwarded mapping on a port not forwarded"
        else:
            assert settings.port_first <= port <= settings.port_last, f"port {port} out of range"
            assert not table.is_forwarded(proto, port), "a forward's port given to a mapping"
        live = mapping.sessions()
        assert live, "a mapping without sessions"
        for session in live:
            _check_session(mapping, session, queued, now, after_tick)
        sessions += len(live)
        (forwarded if mapping.forwarded else hosts)[mapping.int_addr] += len(live)
    assert sessions == table.session_count == len(table), "session count differs from a recount"
    assert sessions <= settings.max_flows, f"{sessions} sessions over max_flows"
    assert dict(hosts) == table.sessions_per_host, "per-host counts differ from a recount"
    assert dict(forwarded) == table.forwarded_per_host, "per-forward counts differ from a recount"
    for count in (*hosts.values(), *forwarded.values()):
        assert count <= settings.max_flows_per_host, f"{count} sessions over max_flows_per_host"
    for host, opened in table._opened_inbound.items():
        assert host in forwarded or host in hosts, "inbound openings kept for a host without any"
        assert len(opened) <= 2 * settings.max_flows_per_host + 1, "openings queue unbounded"
    assert len(table._resting) == len(table._resting_ports), "resting ports counted twice"


def _check_session(
    mapping: Mapping, session: Session, queued: set[int], now: float, after_tick: bool
) -> None:
    assert session.mapping is mapping, "a session of another mapping"
    assert mapping.session(session.remote_addr, session.remote_port) is session, "lost session"
    assert id(session) in queued, "a live session with no entry in the expiry heap"
    assert session.due <= session.expires, "a session queued after it expires"
    if after_tick:
        assert session.expires > now, "a session outlived its timeout past a tick"


def _check_reassembler(side: Side, reassembler: object) -> None:
    from appliance.fragments import Reassembler

    assert isinstance(reassembler, Reassembler)
    partials = reassembler._partials
    if not partials:
        assert reassembler.held_bytes == 0 and not reassembler._per_source, f"{side} leaked"
        return
    assert len(partials) <= reassembler.max_datagrams, f"{side} reassembly over its datagrams"
    charged = sum(partial.charge for partial in partials.values())
    assert charged == reassembler.held_bytes, f"{side} reassembly bytes differ from a recount"
    assert charged <= reassembler.max_bytes, f"{side} reassembly over its bytes"
    sources = Counter(key[0] for key in partials)
    assert dict(sources) == reassembler._per_source, f"{side} per-source counts differ"
    for partial in partials.values():
        assert len(partial.starts) <= reassembler.max_pieces, f"{side} too many pieces held"
        assert partial.starts == sorted(partial.starts), f"{side} pieces out of order"
        pairs = list(zip(partial.ends, partial.starts[1:], strict=False))
        assert all(end <= start for end, start in pairs), f"{side} overlapping pieces held"
