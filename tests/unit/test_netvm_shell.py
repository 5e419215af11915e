"""The shell's ports and readers change while its loop runs: what the xenstore watcher relies on.
Datagram socket pairs stand in for the interfaces' AF_PACKET sockets (no root needed); the
engine is the real NetVm."""

import os
import socket
import threading
from ipaddress import IPv4Address

from scapy.layers.l2 import ARP, Ether

from appliance.config import ApplianceConfig, apply_overrides
from appliance.frames import WAN
from appliance.netvm import NetVm
from appliance.netvmshell import NetVmShell
from appliance.shell import NO_VNET_HDR, Shell
from tests.unit.nat_harness import WAN_MAC, mac_bytes

CLIENT_MAC, PORT_MAC = "00:16:3e:5e:6c:0a", "fe:ff:ff:ff:ff:ff"


def test_a_port_added_by_a_reader_is_served_until_a_reader_stops_the_loop(
    demo_config: ApplianceConfig,
) -> None:
    config = apply_overrides(demo_config, {"natvm.netvm": ["1"]})
    netvm = NetVm(config, mac_bytes(WAN_MAC))
    wan, _wan_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    vif, vif_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    vif.setblocking(False)
    vif_peer.settimeout(5)
    lines: list[str] = []
    shell = Shell(netvm, {WAN: wan}, lines.append, stats_interval=60)
    events, wake = os.pipe()
    attached = threading.Event()

    def on_event() -> None:  # the watcher's part: attach, then stop
        if os.read(events, 1) == b"a":
            netvm.attach_client(
                "vif1.0", IPv4Address("10.77.0.10"), mac_bytes(CLIENT_MAC), mac_bytes(PORT_MAC), 0
            )
            shell.add_port("vif1.0", vif, None)
            attached.set()
        else:
            shell.stopping = True

    replies: list[bytes] = []

    def client() -> None:
        os.write(wake, b"a")
        assert attached.wait(5)
        request = Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENT_MAC) / ARP(
            op=1, hwsrc=CLIENT_MAC, psrc="10.77.0.10", pdst="10.77.0.1"
        )
        vif_peer.send(NO_VNET_HDR + bytes(request))
        replies.append(vif_peer.recv(2048))
        os.write(wake, b"s")

    shell.add_reader(events, on_event)
    thread = threading.Thread(target=client)
    thread.start()
    shell.serve()  # in the main thread: it takes the signal wake-up fd
    thread.join(5)
    reply = Ether(replies[0][len(NO_VNET_HDR) :])
    assert reply[ARP].op == 2 and reply[ARP].hwsrc == PORT_MAC and reply.dst == CLIENT_MAC
    shell.remove_port("vif1.0")
    assert vif.fileno() == -1 and "vif1.0" not in shell.sockets
    shell.close()
    os.close(events)
    os.close(wake)


def test_what_the_engine_notes_is_logged_once_a_second(demo_config: ApplianceConfig) -> None:
    config = apply_overrides(demo_config, {"natvm.netvm": ["1"]})
    netvm = NetVm(config, mac_bytes(WAN_MAC))
    wan, wan_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    openings, openings_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    lines: list[str] = []
    shell = NetVmShell(netvm, (wan, openings), lines.append, 60, 1 << 16)
    netvm.notes.append("dns: s.example -> 192.0.2.10 (ttl 60 s)")
    for tick in shell._tickers:  # what the loop calls once a second
        tick()
    assert lines == ["dns: s.example -> 192.0.2.10 (ttl 60 s)"] and netvm.notes == []
    for sock in (wan, wan_peer, openings, openings_peer):
        sock.close()
