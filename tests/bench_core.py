"""How many packets a second the pure core translates on this machine: a figure, not a test.

    python tests/bench_core.py [--flows 1000] [--packets 100000] [--runs 3] [--netvm]

The engine gets resolved neighbours and `--flows` open flows per protocol first; then each
workload hands it `--packets` prebuilt frames (cycling over the flows' frames) and is timed with
`time.perf_counter`, best of `--runs`. Every frame must come out translated (or, in the last
workload, unsolicited SYNs to a closed port, be dropped as filtered), or the run fails.
Frames are built with scapy, so the figures cover only `Nat.handle`. With `--netvm`, the engine
in netvm mode (`NetVm.handle`) with each LAN host a client on a port of its own; a frame's port is
found by its source address, a dict lookup included in the figures.
"""

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from appliance.config import ApplianceConfig, apply_overrides, load_config
from appliance.counters import Counters
from appliance.engine import Nat, Side
from appliance.netvm import NetVm
from appliance.packet import ARP_REPLY, build_arp_frame

ROOT = Path(__file__).resolve().parents[1]

WAN_MAC, LAN_MAC, GATEWAY_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:01:01"
SERVER = "198.51.100.10"
PAYLOAD = bytes(range(64))
NOW = 1000.0
HOSTS = 50  # flows are spread over this many LAN hosts, 10.77.0.100 and up


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def host(index: int) -> str:
    return f"10.77.0.{100 + index % HOSTS}"


def host_mac(index: int) -> str:
    return f"02:00:00:00:04:{index % HOSTS:02x}"


class Engine(Protocol):
    config: ApplianceConfig
    counters: Counters

    def handle(self, side: Side, frame: bytes, now: float) -> Sequence[tuple[str, bytes]]: ...


class ClientsByAddress:
    """A NetVm behind `Nat.handle`'s signature: a LAN frame goes in on its sender's port."""

    def __init__(self, netvm: NetVm, ports: dict[bytes, str]) -> None:
        self.netvm, self.ports = netvm, ports
        self.config, self.counters = netvm.config, netvm.counters

    def handle(self, side: Side, frame: bytes, now: float) -> Sequence[tuple[str, bytes]]:
        port = Side.WAN if side is Side.WAN else self.ports[frame[26:30]]
        return self.netvm.handle(port, frame, now)


def resolved_netvm() -> ClientsByAddress:
    """The engine in netvm mode, its gateway resolved and the LAN hosts attached as clients."""
    config = apply_overrides(load_config(ROOT / "ops-config.json"), {"natvm.netvm": ["1"]})
    netvm = NetVm(config, mac(WAN_MAC))
    assert config.wan.gateway is not None
    gateway = build_arp_frame(
        ARP_REPLY,
        mac(GATEWAY_MAC),
        config.wan.gateway.packed,
        mac(WAN_MAC),
        config.wan.address.ip.packed,
    )
    netvm.handle(Side.WAN, gateway, NOW)
    ports = {}
    for index in range(HOSTS):
        address = IPv4Address(host(index))
        port = f"vif{index}.0"
        netvm.attach_client(port, address, mac(host_mac(index)), mac(LAN_MAC), NOW)
        ports[address.packed] = port
    return ClientsByAddress(netvm, ports)


def resolved_nat() -> Nat:
    """An engine whose gateway and LAN hosts answered ARP already."""
    config = load_config(ROOT / "ops-config.json")
    nat = Nat(config, mac(WAN_MAC), mac(LAN_MAC))
    wan_ip, lan_ip = config.wan.address.ip.packed, config.lan.address.ip.packed
    assert config.wan.gateway is not None
    gateway = build_arp_frame(
        ARP_REPLY, mac(GATEWAY_MAC), config.wan.gateway.packed, mac(WAN_MAC), wan_ip
    )
    nat.handle(Side.WAN, gateway, NOW)
    for index in range(HOSTS):
        address = bytes(map(int, host(index).split(".")))
        frame = build_arp_frame(ARP_REPLY, mac(host_mac(index)), address, mac(LAN_MAC), lan_ip)
        nat.handle(Side.LAN, frame, NOW)
    return nat


def lan_frame(index: int, l4: object) -> bytes:
    return bytes(Ether(dst=LAN_MAC, src=host_mac(index)) / IP(src=host(index), dst=SERVER) / l4)


def wan_frame(wan_ip: str, l4: object) -> bytes:
    return bytes(Ether(dst=WAN_MAC, src=GATEWAY_MAC) / IP(src=SERVER, dst=wan_ip) / l4)


def one_out(nat: Engine, side: Side, frame: bytes) -> bytes:
    out = nat.handle(side, frame, NOW)
    if len(out) != 1:
        raise SystemExit(f"setup: expected one frame, got {len(out)}: {nat.counters.drops}")
    return out[0][1]


def source_port(frame: bytes) -> int:
    header_len = (frame[14] & 0x0F) * 4
    return int.from_bytes(frame[14 + header_len : 16 + header_len], "big")


def workloads(nat: Engine, flows: int) -> dict[str, tuple[Side, list[bytes]]]:
    """Open `flows` UDP and TCP flows, and return each workload's frames."""
    wan_ip = str(nat.config.wan.address.ip)
    udp_out, udp_in, tcp_out, tcp_in = [], [], [], []
    for index in range(flows):
        port = 20000 + index
        first = lan_frame(index, UDP(sport=port, dport=53) / PAYLOAD)
        ext = source_port(one_out(nat, Side.LAN, first))
        udp_out.append(first)
        udp_in.append(wan_frame(wan_ip, UDP(sport=53, dport=ext) / PAYLOAD))
        syn = lan_frame(index, TCP(sport=port, dport=80, flags="S", seq=1))
        ext = source_port(one_out(nat, Side.LAN, syn))
        one_out(nat, Side.WAN, wan_frame(wan_ip, TCP(sport=80, dport=ext, flags="SA", ack=2)))
        tcp_out.append(lan_frame(index, TCP(sport=port, dport=80, flags="A", seq=2) / PAYLOAD))
        tcp_in.append(wan_frame(wan_ip, TCP(sport=80, dport=ext, flags="A", ack=66) / PAYLOAD))
    unsolicited = [
        wan_frame(wan_ip, TCP(sport=1024 + index, dport=9999, flags="S", seq=index))
        for index in range(flows)
    ]
    return {
        "UDP out (64 B payload)": (Side.LAN, udp_out),
        "UDP in (replies)": (Side.WAN, udp_in),
        "TCP out (ACK + 64 B)": (Side.LAN, tcp_out),
        "TCP in (ACK + 64 B)": (Side.WAN, tcp_in),
        UNSOLICITED: (Side.WAN, unsolicited),
    }


UNSOLICITED = "SYN to a closed port (dropped)"


def timed(nat: Engine, side: Side, frames: list[bytes], dropped: bool = False) -> float:
    """Seconds to handle `frames`; every one must come out (or, if `dropped`, be filtered)."""
    handle, counters = nat.handle, nat.counters
    before = counters.drops.get("filtered", 0) if dropped else sum(counters.frames_out.values())
    start = time.perf_counter()
    for frame in frames:
        handle(side, frame, NOW)
    elapsed = time.perf_counter() - start
    after = counters.drops.get("filtered", 0) if dropped else sum(counters.frames_out.values())
    if after - before != len(frames):
        what = "were filtered" if dropped else "came out"
        raise SystemExit(f"only {after - before} of {len(frames)} frames {what}: {counters.drops}")
    return elapsed


def best_of(runs: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1000, help="open flows per protocol")
    parser.add_argument("--packets", type=int, default=100_000, help="frames per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per workload (best kept)")
    parser.add_argument("--netvm", action="store_true", help="the engine in netvm mode")
    args = parser.parse_args()
    nat: Engine = resolved_netvm() if args.netvm else resolved_nat()
    setup = time.perf_counter()
    loads = workloads(nat, args.flows)
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) "
        f"on {platform.machine()}, {platform.processor() or platform.system()}; "
        f"{args.flows} flows per protocol, {args.packets} frames per run, best of {args.runs} "
        f"(setup {time.perf_counter() - setup:.1f} s)"
    )
    print(f"{'workload':<32} {'packets/s':>12} {'µs/packet':>10}")
    for name, (side, frames) in loads.items():
        stream = (frames * (args.packets // len(frames) + 1))[: args.packets]
        dropped = name == UNSOLICITED
        elapsed = best_of(args.runs, lambda: timed(nat, side, stream, dropped))  # noqa: B023
        rate = len(stream) / elapsed
        print(f"{name:<32} {rate:>12,.0f} {1e6 / rate:>10.2f}")


if __name__ == "__main__":
    main()
