"""The Qubes-style net VM: client VMs on interfaces that come and go, around the NAT. Pure.

Theory of operation. In netvm mode (`nat.netvm`) the downstream is not one LAN NIC but one
interface per client VM (Xen netback's `vifD.N`), a *port*, named by its interface, each with
exactly one client: a /32 inside Nics[1]'s subnet, whose own address is the gateway the clients
use (Qubes' /qubes-netvm-gateway). The uplink's port is `WAN`. `NetVm` keeps the clients by port
and wraps one `Nat` whose LAN is all of them: a frame from a client passes the client's checks
here and goes to the NAT as if from its LAN (addressed to the NAT's inner MAC); a LAN frame the
NAT sends goes out on the port of the client its destination belongs to, from that port's MAC.
The NAT's LAN neighbours are the clients, pinned at attach (their MAC comes with them), so it
never asks ARP on a port. The rules follow Qubes (qubes-core-agent-linux network/vif-route-qubes
and qubes-antispoof.nft; qubes-mirage-firewall client_eth.ml and firewall.ml):

  anti-spoofing  an IPv4 frame whose source is not its port's client, or an ARP packet whose
                 sender is not, is dropped ("spoofed-source", "spoofed-arp"), counted in total
                 and per client (`Client.drops`).
  proxy ARP      an ARP request on a port for any address but the client's own is answered with
                 the port's MAC: a client with a /32 reaches everything through the gateway (Qubes
                 clients pin the gateway's MAC to fe:ff:ff:ff:ff:ff, netback's vif MAC, and never
                 ask). A request for the client's own address (a duplicate address probe) is not.
  isolation      a frame from one client to another client address is dropped
                 ("client-to-client"), as Qubes' own net VMs do: their forward chain drops every
                 new connection towards a client interface unless a custom rule accepted it
                 first (qubes-core-agent-linux network/qubes-ipv4.nft, `oifgroup 2 counter
                 drop`). qubes-mirage-firewall instead applies the sender's QubesDB rules to it
                 (rules.ml, `from_client`), which may accept; natvm keeps Qubes' own net VMs'
                 drop ahead of the rules. A port forward on the WAN address that leads to a
                 client is an explicit rule, so clients reach it through the WAN address
                 (hairpinning) like anyone.
  rules          a client address may have a rule set (appliance/rules.py, from QubesDB's
                 /qubes-firewall/<ip>/; `set_rules`, kept by address so that rules may come
                 before or after the client's port). A packet that starts a flow (its NAT
                 session does not exist yet) is decided by it; a drop is counted ("firewall",
                 in total and per client) and answered with ICMP destination unreachable,
                 administratively prohibited (3/13) from the gateway address, as Qubes' `reject
                 with icmp type admin-prohibited`. Packets of flows that exist, ICMP errors (the
                 NAT relates them to their flow), later fragments (their first one was decided)
                 and packets to the gateway address itself are not (Qubes: `ct state
                 established,related accept` first; its input chain is not the forward chain).
                 DNS to a virtual address is decided with the upstream server as destination,
                 what Qubes' forward chain sees after its DNAT; specialtarget=dns means the
                 upstream servers. A client address without a rule set is not restricted.
  DNS            UDP and TCP to port 53 of 10.139.1.1 and 10.139.1.2 (Qubes' virtual DNS servers)
                 go to the first and the second configured upstream server (the first for both
                 if only one is given): the destination is rewritten (DNAT) before the NAT, and
                 the source of a reply to that client endpoint is set back to the address it
                 asked, from a record per client endpoint (`Client.dns`, bounded; records whose
                 flow the table no longer holds go at `tick`). No upstream server:
                 "dns-no-upstream". Anything else to those addresses: "not-dns". ICMP errors
                 about such a query are not translated back.
  dsthost        the host names of the rule sets in force are natvm's own to resolve
                 (appliance/resolver.py, the state machine; Qubes: "dsthost needs a DNS lookup
                 from the net VM"): at `tick` its queries leave from the WAN address and a UDP
                 port reserved in the flow table (`resolver_port`) to the upstream servers, and
                 a UDP packet from the uplink to that port is the resolver's, taken before the
                 NAT sees it; what it does not take is counted ("dns-mismatched",
                 "dns-malformed"). Each outcome is put in force (`resolve_host`) and noted for
                 the shell's log (`notes`).
  detach         the client's flows, neighbour entry and DNS records go; other clients' stay.
"""

from collections.abc import Sequence
from ipaddress import IPv4Address

from appliance.addresses import is_special
from appliance.checksum import word
from appliance.config import ApplianceConfig
from appliance.dnsquery import DnsError, DnsMismatch
from appliance.engine import Nat
from appliance.flows import PortAllocator
from appliance.frames import LAN, WAN, Offload
from appliance.packet import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    CODE_ADMIN_PROHIBITED,
    ETH_HEADER_LEN,
    ICMP,
    ICMP_DEST_UNREACHABLE,
    ICMP_ECHO_REQUEST,
    ICMP_ERROR_TYPES,
    IP_MF,
    IP_OFFSET_MASK,
    TCP,
    UDP,
    Drop,
    build_arp_frame,
    build_icmp_error,
    build_ipv4,
    check_l4,
    fill_l4_checksum,
    parse_arp,
    parse_ipv4,
)
from appliance.resolver import Outcome, Resolver
from appliance.rewrite import rewrite_endpoint
from appliance.rules import Action, Firewall, RuleSet

# Where Qubes clients send DNS (qubes-core-admin: the `dns` property of a net VM's clients).
DNS_ADDRESSES = (IPv4Address("10.139.1.1"), IPv4Address("10.139.1.2"))
DNS_PORT = 53
# The MAC of the NAT's inner LAN side. Frames from clients are readdressed to it before the NAT
# sees them, and every frame the NAT sends a client leaves with the port's own MAC instead, so it
# never appears on a link.
INNER_MAC = b"\x02\x00\x00\x00\x00\x00"
DNS_RECORDS_PER_CLIENT = 1024  # client endpoints with a DNS query in flight, oldest forgotten

_IPV4, _ARP = b"\x08\x00", b"\x08\x06"

Port = str  # an interface name; `WAN` (== "wan") is the uplink's
PortOutput = list[tuple[Port, bytes]]
PortOffloadOutput = list[tuple[Port, bytes, Offload | None]]


class ClientError(ValueError):
    """A client that cannot attach, as one line naming its port."""


class Client:
    """A client VM on its port: its address and MAC (the toolstack's), the port's own MAC,
    what was dropped of its frames here, and its DNS records: (protocol, client port, upstream
    address) -> the virtual DNS address the query went to."""

    __slots__ = ("dns", "drops", "ip", "mac", "port", "port_mac")

    def __init__(self, port: Port, ip: bytes, mac: bytes, port_mac: bytes) -> None:
        self.port = port
        self.ip = ip
        self.mac = mac
        self.port_mac = port_mac
        self.drops: dict[str, int] = {}
        self.dns: dict[tuple[int, int, bytes], bytes] = {}

    @property
    def address(self) -> IPv4Address:
        return IPv4Address(self.ip)


class NetVm:
    """The engine in netvm mode: `Nat`'s entry points, with ports instead of sides."""

    def __init__(
        self, config: ApplianceConfig, wan_mac: bytes, allocator: PortAllocator | None = None
    ) -> None:
        self.nat = Nat(config, wan_mac, INNER_MAC, allocator)
        self.config, self.counters, self.table = config, self.nat.counters, self.nat.table
        self.gateway, self.client_net = self.nat.lan_ip, self.nat.lan_net
        self.clients: dict[Port, Client] = {}
        self._by_ip: dict[bytes, Client] = {}
        servers = [server.packed for server in config.nat.dns_servers]
        self.dns_upstream = {
            virtual.packed: servers[min(index, len(servers) - 1)]
            for index, virtual in enumerate(DNS_ADDRESSES)
            if servers
        }
        self._upstreams = frozenset(self.dns_upstream.values())
        self.firewalls: dict[bytes, Firewall] = {}  # by client address; see `set_rules`
        # natvm's own DNS queries for the rules' host names (appliance/resolver.py), from the
        # WAN address and a UDP port reserved in the flow table once the first query goes.
        self.resolver = Resolver(servers, self.table.allocator.rng)
        self.resolver_port: int | None = None
        self._resolver_servers = frozenset(servers)
        self.notes: list[str] = []  # lines for the shell's log, taken by it once a second

    # -- clients ---------------------------------------------------------------------------

    def attach_client(
        self, port: Port, ip: IPv4Address, mac: bytes, port_mac: bytes, now: float
    ) -> PortOutput:
        """Serve the client with address `ip` and MAC `mac` on `port`, whose own MAC is
        `port_mac`. Returns frames to send (packets that waited for its address); raises
        ClientError if it cannot be served (its port or address taken, an address outside the
        clients' subnet)."""
        packed = ip.packed
        problem = self._attach_problem(port, ip, mac)
        if problem:
            raise ClientError(f"client {port} ({ip}): {problem}")
        client = Client(port, packed, bytes(mac), bytes(port_mac))
        self.clients[port], self._by_ip[packed] = client, client
        waiting = self.nat.neighbours[LAN].pin(packed, client.mac)
        self.counters.frames_out[LAN] += len(waiting)
        return [(port, self._from_port(client, packet)) for _, packet in waiting]

    def _attach_problem(self, port: Port, ip: IPv4Address, mac: bytes) -> str:
        if port == WAN:
            return f"'{WAN}' names the uplink"
        if port in self.clients:
            return f"the port already serves {self.clients[port].address}"
        if ip.packed in self._by_ip:
            return f"the address is already served on {self._by_ip[ip.packed].port}"
        if len(mac) != 6 or mac[0] & 1:
            return f"{mac.hex(':')} is not a unicast MAC address"
        if not self.client_net.is_host(ip.packed) or ip.packed == self.gateway:
            lan = self.config.lan.address
            return f"not a client address of {lan.network} (other than the gateway {lan.ip})"
        if ip in DNS_ADDRESSES:
            return "a virtual DNS address"
        return ""

    def detach_client(self, port: Port, now: float) -> Client | None:
        """Stop serving the client on `port` and drop its flows; returns it (with its counters),
        or None if the port serves no client."""
        client = self.clients.pop(port, None)
        if client is None:
            return None
        del self._by_ip[client.ip]
        self.nat.neighbours[LAN].forget(client.ip)
        self.table.drop_host(client.ip, now)
        return client

    # -- rules ---------------------------------------------------------------------------

    def set_rules(self, ip: IPv4Address, rules: RuleSet | None) -> None:
        """Put `rules` in force for new flows from client address `ip` (None: no rules, the
        client is not restricted). Flows that exist go on; the counts and the addresses of
        host names still named are kept."""
        firewall = self.firewalls.get(ip.packed)
        if rules is None:
            self.firewalls.pop(ip.packed, None)
        elif firewall is None:
            firewall = self.firewalls[ip.packed] = Firewall(rules)
        else:
            firewall.replace(rules)
        if firewall is not None and rules is not None:
            for name in rules.hosts:  # names another rule set had resolved already
                known = self.resolver.known(name)
                if known is not None:
                    firewall.resolve(name, known)
        names = set().union(*(firewall.rules.hosts for firewall in self.firewalls.values()))
        self._note(self.resolver.want(names))

    def resolve_host(self, name: str, addresses: Sequence[IPv4Address]) -> None:
        """The addresses of a dsthost name, for every rule set that names it."""
        for firewall in self.firewalls.values():
            if name in firewall.rules.hosts:
                firewall.resolve(name, addresses)

    def _note(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.addresses is not None:
                self.resolve_host(outcome.name, outcome.addresses)
            self.notes.append(outcome.line)

    # -- entry points ----------------------------------------------------------------------

    def handle(self, port: Port, frame: bytes, now: float, l4_verified: bool = False) -> PortOutput:
        """`Nat.handle` for a frame received on `port` (`WAN` or a client's)."""
        if port == WAN:
            if self.resolver_port is not None and self._is_dns_answer(frame):
                self._dns_answer(frame, now, not l4_verified)
                return []
            return self._to_ports(self.nat.handle(WAN, frame, now, l4_verified))
        inner = self._from_client(port, frame, False, now)
        if not isinstance(inner, bytes):
            return inner
        return self._to_ports(self.nat.handle(LAN, inner, now, l4_verified))

    def handle_offload(
        self, port: Port, frame: bytes, now: float, offload: Offload
    ) -> PortOffloadOutput:
        """`Nat.handle_offload` for a frame received on `port` (`WAN` or a client's)."""
        if port == WAN and self.resolver_port is not None and self._is_dns_answer(frame):
            self._dns_answer(frame, now, False)  # a partial checksum: nothing to verify
            return []
        if port != WAN:
            inner = self._from_client(port, frame, True, now)
            if not isinstance(inner, bytes):
                return [(answer_port, answer, None) for answer_port, answer in inner]
            frame = inner
        side = WAN if port == WAN else LAN
        out = []
        for out_side, sent, kept in self.nat.handle_offload(side, frame, now, offload):
            routed = self._route(out_side, sent, kept is not None)
            if routed is not None:
                out.append((routed[0], routed[1], kept))
        return out

    def start(self, now: float) -> PortOutput:
        """The NAT's start-up frames on the uplink (clients pin the gateway's MAC or ask)."""
        return [(WAN, frame) for side, frame in self.nat.start(now) if side is WAN]

    def tick(self, now: float) -> PortOutput:
        """Run the timers (the NAT's, the resolver's); call about once a second. Returns the
        frames to send."""
        out = self._to_ports(self.nat.tick(now)) + self._dns_queries(now)
        for client in self.clients.values():
            stale = [
                key
                for key in client.dns
                if self.table.lookup_out(key[0], client.ip, key[1]) is None
            ]
            for key in stale:
                del client.dns[key]
        return out

    # -- natvm's own DNS queries -----------------------------------------------------------

    def _dns_queries(self, now: float) -> PortOutput:
        """The resolver's queries due now, as frames on the uplink (or the ARP requests for
        their next hop, while they wait for it)."""
        queries, outcomes = self.resolver.poll(now)
        self._note(outcomes)
        if queries and self.resolver_port is None:
            # A port of the NAT's own range, reserved in its table: `port_range` may cover
            # every port (1-65535), so no port outside it can be counted on; reserved, the
            # allocator never hands it to a mapping, and an answer to it is never taken for a
            # client's. Chosen at random (RFC 5452 9.2: an off-path forger must guess it as
            # well as the query ID), once: one port is all a few hundred names need.
            self.resolver_port = self.table.reserve(UDP)
            if self.resolver_port is None:
                self.notes.append("dns: no free UDP port for natvm's queries; asked again later")
                return []
        if self.resolver_port is None:
            return []
        out: PortOutput = []
        neighbours = self.nat.neighbours[WAN]
        for query in queries:
            next_hop = self.nat._wan_next_hop(query.server)
            if next_hop is None:
                self.counters.drop("dns-no-route")
                continue
            udp = (
                self.resolver_port.to_bytes(2, "big")
                + DNS_PORT.to_bytes(2, "big")
                + (8 + len(query.message)).to_bytes(2, "big")
                + b"\x00\x00"
                + query.message
            )
            ip = build_ipv4(self.nat.wan_ip, query.server, UDP, udp)
            fill_l4_checksum(ip)
            for frame in neighbours.send(next_hop, [ip.buf], now):
                self.counters.frames_out[WAN] += 1
                out.append((WAN, frame))
        return out

    def _is_dns_answer(self, frame: bytes) -> bool:
        """Whether a frame from the uplink is UDP to the resolver's port on the WAN address:
        the resolver's, never the NAT's. A fragment is not (its answer fits 512 bytes)."""
        if len(frame) < ETH_HEADER_LEN + 28 or frame[12:14] != _IPV4 or frame[23] != UDP:
            return False
        if word(frame, 20) & (IP_MF | IP_OFFSET_MASK) or frame[30:34] != self.nat.wan_ip:
            return False
        start = ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
        return len(frame) >= start + 8 and word(frame, start + 2) == self.resolver_port

    def _dns_answer(self, frame: bytes, now: float, verify: bool) -> None:
        """Give a DNS answer to the resolver, and what comes of it to the rules; a packet it
        does not take is counted as dropped ("dns-mismatched", "dns-malformed", or the
        codec's reason)."""
        self.counters.frames_in[WAN] += 1
        try:
            ip = parse_ipv4(bytearray(memoryview(frame)[ETH_HEADER_LEN:]))
            check_l4(ip, verify_checksum=verify)
            if ip.src not in self._resolver_servers or word(ip.buf, ip.header_len) != DNS_PORT:
                raise Drop("dns-mismatched")
            outcome = self.resolver.receive(ip.src, bytes(ip.buf[ip.header_len + 8 :]), now)
        except Drop as drop:
            self.counters.drop(drop.reason)
            return
        except DnsMismatch:
            self.counters.drop("dns-mismatched")
            return
        except DnsError:
            self.counters.drop("dns-malformed")
            return
        if outcome is not None:
            self._note([outcome])

    # -- from a client ---------------------------------------------------------------------

    def _from_client(
        self, port: Port, frame: bytes, partial: bool, now: float
    ) -> bytes | PortOutput:
        """The frame from `port` for the NAT; or, if it ends here (counted in, as the NAT
        counts what it takes), what to send for it: an ARP answer, an ICMP error, or nothing."""
        try:
            return self._inward(port, frame, partial, now)
        except _Answered as answered:
            out = [(port, answered.frame)]
        except Drop as drop:
            self._drop(port, drop.reason)
            out = []
        self.counters.frames_in[LAN] += 1
        return out

    def _inward(self, port: Port, frame: bytes, partial: bool, now: float) -> bytes:
        """The frame from `port` for the NAT, readdressed to its inner MAC; raises Drop, or
        _Answered with the answer to an ARP request or to a packet the rules drop."""
        client = self.clients.get(port)
        if client is None:
            raise Drop("no-client")
        if len(frame) < ETH_HEADER_LEN:
            raise Drop("truncated-ethernet")
        if frame[:6] != client.port_mac and frame[:6] != BROADCAST_MAC:
            raise Drop("not-our-mac")
        ethertype = frame[12:14]
        if ethertype == _ARP:
            raise _Answered(self._proxy_arp(client, frame))
        if ethertype != _IPV4 or len(frame) < ETH_HEADER_LEN + 20:
            raise Drop("unsupported-ethertype" if ethertype != _IPV4 else "truncated-ip")
        if frame[26:30] != client.ip:
            raise Drop("spoofed-source")
        dst = frame[30:34]
        firewall = self.firewalls.get(client.ip)
        if dst in self.dns_upstream or dst in _DNS_PACKED:
            if firewall is not None:
                self._filter(client, firewall, frame, self.dns_upstream.get(dst, dst), now)
            return self._dns_out(client, frame, partial)
        if dst == self.gateway:
            return b"".join((INNER_MAC, memoryview(frame)[6:]))
        if self.client_net.is_host(dst):
            raise Drop("client-to-client")
        if firewall is not None:
            self._filter(client, firewall, frame, dst, now)
        return b"".join((INNER_MAC, memoryview(frame)[6:]))

    def _filter(
        self, client: Client, firewall: Firewall, frame: bytes, dst: bytes, now: float
    ) -> None:
        """Returns if the client's rules let the IPv4 packet in `frame` (to `dst`, after any
        DNAT) pass; else raises _Answered with ICMP 3/13 for it, or Drop("firewall")."""
        if int.from_bytes(frame[20:22], "big") & IP_OFFSET_MASK:
            return  # a later fragment: its first one was decided
        proto, start = frame[23], ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
        if len(frame) < start + 8:
            return  # too short for its ports or ICMP header: the NAT drops it
        sport = port = icmp_type = 0
        if proto == ICMP:
            icmp_type = frame[start]
            if icmp_type in ICMP_ERROR_TYPES:
                return  # related: the NAT passes it only for a flow it has
            if icmp_type == ICMP_ECHO_REQUEST:
                sport = word(frame, start + 4)  # the echo id, the NAT's "port"
        elif proto in (TCP, UDP):
            sport, port = word(frame, start), word(frame, start + 2)
        mapping = self.table.lookup_out(proto, client.ip, sport)
        if mapping is not None and mapping.session(dst, port) is not None:
            return  # established
        if firewall.decide(proto, dst, port, icmp_type, self._upstreams) is Action.ACCEPT:
            return
        if not self.nat.icmp_errors.take(now):
            raise Drop("firewall")
        self._drop(client.port, "firewall")
        error = build_icmp_error(
            ICMP_DEST_UNREACHABLE, CODE_ADMIN_PROHIBITED, self.gateway, bytearray(frame[14:])
        )
        self.counters.icmp_errors_sent += 1
        self.counters.frames_out[LAN] += 1
        raise _Answered(self._from_port(client, memoryview(error.buf)))

    def _proxy_arp(self, client: Client, frame: bytes) -> bytes:
        arp = parse_arp(frame[ETH_HEADER_LEN:])
        if arp.sender_ip != client.ip:
            raise Drop("spoofed-arp")
        if arp.op != ARP_REQUEST or arp.target_ip == client.ip or is_special(arp.target_ip):
            raise Drop("arp-not-for-us")
        self.counters.frames_out[LAN] += 1
        return build_arp_frame(ARP_REPLY, client.port_mac, arp.target_ip, arp.sender_mac, client.ip)

    def _dns_out(self, client: Client, frame: bytes, partial: bool) -> bytes:
        """A DNS query to a virtual address, sent to its upstream server instead (DNAT)."""
        ip = parse_ipv4(bytearray(memoryview(frame)[ETH_HEADER_LEN:]))
        if ip.proto not in (TCP, UDP) or ip.is_fragment or len(ip.buf) < ip.header_len + 8:
            raise Drop("not-dns")
        if word(ip.buf, ip.header_len + 2) != DNS_PORT:
            raise Drop("not-dns")
        upstream = self.dns_upstream.get(ip.dst)
        if upstream is None:
            raise Drop("dns-no-upstream")
        key = (ip.proto, word(ip.buf, ip.header_len), upstream)
        records = client.dns
        records.pop(key, None)  # re-inserted last: the oldest record is the first
        if len(records) >= DNS_RECORDS_PER_CLIENT:
            del records[next(iter(records))]
        records[key] = ip.dst
        rewrite_endpoint(ip, 16, upstream, None, 0, partial)
        return INNER_MAC + frame[6:ETH_HEADER_LEN] + ip.buf

    def _drop(self, port: Port, reason: str) -> None:
        self.counters.drop(reason)
        client = self.clients.get(port)
        if client is not None:
            client.drops[reason] = client.drops.get(reason, 0) + 1

    # -- to the ports ----------------------------------------------------------------------

    def _to_ports(self, out: Sequence[tuple[str, bytes]]) -> PortOutput:
        ports = []
        for side, frame in out:
            routed = self._route(side, frame, False)
            if routed is not None:
                ports.append(routed)
        return ports

    def _route(self, side: str, frame: bytes, partial: bool) -> tuple[Port, bytes] | None:
        """The port of a frame the NAT sends, and the frame as it leaves there; None for what
        has no port: an ARP request of the NAT's for an address no client has."""
        if side is WAN:
            return WAN, frame
        client = self._by_ip.get(frame[30:34]) if frame[12:14] == _IPV4 else None
        if client is None:
            self.counters.frames_out[LAN] -= 1
            return None
        if frame[26:30] in self._upstreams:
            frame = self._dns_back(client, frame, partial)
        return client.port, self._from_port(client, memoryview(frame)[ETH_HEADER_LEN:])

    def _from_port(self, client: Client, packet: bytes | memoryview) -> bytes:
        """An IPv4 packet in a frame from the client's port to the client."""
        return b"".join((client.mac, client.port_mac, _IPV4, packet))

    def _dns_back(self, client: Client, frame: bytes, partial: bool) -> bytes:
        """A reply from an upstream DNS server to a query sent to a virtual address gets that
        address back as its source; anything else from the server passes as it is."""
        ip = parse_ipv4(bytearray(memoryview(frame)[ETH_HEADER_LEN:]))
        if ip.proto not in (TCP, UDP) or ip.is_fragment or len(ip.buf) < ip.header_len + 4:
            return frame
        if word(ip.buf, ip.header_len) != DNS_PORT:
            return frame
        virtual = client.dns.get((ip.proto, word(ip.buf, ip.header_len + 2), ip.src))
        if virtual is None:
            return frame
        rewrite_endpoint(ip, 12, virtual, None, 0, partial)
        return frame[:ETH_HEADER_LEN] + ip.buf


_DNS_PACKED = frozenset(address.packed for address in DNS_ADDRESSES)


class _Answered(Exception):
    """A frame from a client answered here (proxy ARP), not passed to the NAT."""

    def __init__(self, frame: bytes) -> None:
        super().__init__()
        self.frame = frame
