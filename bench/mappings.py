"""Live NAT mappings in bulk, for the table-scale workload.

A mapping is an internal endpoint (protocol, LAN address, port). One LAN host has 64k ports per
protocol and the WAN address has 64k external ports per protocol (no port overloading), so the
mappings are split evenly between UDP datagrams and TCP SYNs from lan-a's ports 1024 and up, each
sent once, to a WAN port that the WAN host drops silently (``DISCARD_PORT``): no answer comes back
to move a TCP mapping out of its opening state or to close anything.

Frames are built here with struct (scapy is far too slow for 100k) and injected with AF_PACKET.
The sender is self-clocked: after each small burst it waits until the WAN host's IP receive
counter shows the burst arrived, so neither NAT loses frames to a full receive buffer; a frame
that does not arrive within ``STALL`` is counted as lost and the figure uses the arrived count.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

from tests.support.topology import Topology

DISCARD_PORT = 9
FIRST_PORT = 1024
BURST = 64  # frames; well under what a default AF_PACKET receive buffer holds
STALL = 0.2  # seconds without progress before the rest of a burst counts as lost
IPPROTO = {"udp": socket.IPPROTO_UDP, "tcp": socket.IPPROTO_TCP}


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(proto: str, src: bytes, dst: bytes, sport: int, macs: bytes) -> bytes:
    """An Ethernet frame: a UDP datagram with 8 bytes of payload, or a TCP SYN."""
    number = IPPROTO[proto]
    if proto == "udp":
        l4 = struct.pack("!HHHH", sport, DISCARD_PORT, 16, 0) + b"natvm-bm"
        offset = 6
    else:
        l4 = struct.pack(
            "!HHIIBBHHH", sport, DISCARD_PORT, sport * 7919, 0, 5 << 4, 0x02, 64240, 0, 0
        )
        offset = 16
    pseudo = src + dst + struct.pack("!BBH", 0, number, len(l4))
    l4 = l4[:offset] + struct.pack("!H", checksum(pseudo + l4) or 0xFFFF) + l4[offset + 2 :]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), sport, 0, 64, number, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return macs + b"\x08\x00" + ip + l4


def frames(
    first: int, count: int, src: str, dst: str, dst_mac: str, src_mac: str
) -> Iterator[bytes]:
    """Frames for mappings number ``first`` to ``first + count - 1``, alternating UDP and TCP."""
    macs = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    src_b, dst_b = IPv4Address(src).packed, IPv4Address(dst).packed
    for number in range(first, first + count):
        proto = ("udp", "tcp")[number % 2]
        yield frame(proto, src_b, dst_b, FIRST_PORT + number // 2, macs)


def snmp(pid: int, group: str) -> dict[str, int]:
    """The SNMP counters of ``group`` ("Ip", "Udp", ...) in the namespace of process ``pid``."""
    with open(f"/proc/{pid}/net/snmp") as counters:
        names, values = (line.split()[1:] for line in counters if line.startswith(group + ":"))
    return dict(zip(names, map(int, values), strict=True))


def ip_received(pid: int) -> int:
    return snmp(pid, "Ip")["InReceives"]


def inject_counted(
    topo: Topology, ns: str, ifname: str, batch: Iterator[bytes], wan_pid: int
) -> int:
    """Send ``batch`` in self-clocked bursts; returns how many reached the WAN host."""
    base = sent = ip_received(wan_pid)
    count = 0
    with topo.socket(ns, socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((ifname, 0))
        burst: list[bytes] = []
        for data in batch:
            burst.append(data)
            if len(burst) == BURST:
                arrived = _send_burst(sock, burst, sent, wan_pid)
                sent, count = sent + arrived, count + len(burst)
                burst.clear()
                if not arrived:
                    break  # nothing gets through (the NAT died?): do not wait STALL per burst
        else:
            sent += _send_burst(sock, burst, sent, wan_pid)
            count += len(burst)
    # The odd packet of other traffic (a TCP retransmission, say) may have been counted too.
    return min(ip_received(wan_pid) - base, count)


def _send_burst(sock: socket.socket, burst: list[bytes], sent: int, wan_pid: int) -> int:
    for data in burst:
        sock.send(data)
    target, arrived = sent + len(burst), ip_received(wan_pid)
    progress = time.monotonic()
    while arrived < target and time.monotonic() - progress < STALL:
        time.sleep(0.0005)
        now_arrived = ip_received(wan_pid)
        if now_arrived != arrived:
            arrived, progress = now_arrived, time.monotonic()
    # Lost frames are not resent: the next burst starts from what actually arrived.
    return arrived - sent
