"""The workloads: each measures one or more figures through whatever forwards in the router.

Every workload is a function ``(Context, router) -> {figure: Measurement}``; ``WORKLOADS`` names
them for ``--workloads`` and ``FIGURES`` says how each figure reads (unit, which way is better).
Clients run in lan-a, servers in the WAN namespace on the documentation addresses. iperf3 gets
a fresh one-shot server per measurement, so an aborted test cannot leave it busy for the next.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.services import wait_listening
from tests.support.topology import (
    APPLIANCE_LAN,
    SERVER_A,
    SERVER_B,
    Topology,
    neighbour_mac,
    stop_process,
)

from . import mappings

IPERF_PORT = 5301
CONNECTIONS_PORT = 8001
CONNECTIONS_SCRIPT = Path(__file__).with_name("connections.py")
CONCURRENCY = 16
MAX_LOSS = 1.0  # percent: the UDP rate search's pass mark
TABLE_STEPS = (10_000, 100_000)


class Router(Protocol):
    kind: str

    def alive(self) -> bool: ...


class BenchError(Exception):
    """A workload could not produce its figure; the message says why."""


@dataclass(frozen=True)
class Settings:
    """How long and how often: the defaults, or short ones for ``--quick``."""

    tcp_seconds: int = 5
    tcp_omit: int = 1  # seconds of slow start left out of the figure
    udp_probe_seconds: int = 2
    udp_steps: int = 5  # bisection steps after the first two probes
    connection_seconds: float = 5.0
    pings: int = 50

    @classmethod
    def quick(cls) -> Settings:
        return cls(tcp_seconds=2, tcp_omit=0, udp_probe_seconds=1, udp_steps=2,
                   connection_seconds=2.0, pings=20)  # fmt: skip


@dataclass
class Context:
    topo: Topology
    settings: Settings
    wan_pid: int  # a process in the WAN namespace, whose /proc/PID/net shows its counters
    memory: Callable[[Router], int]  # bytes the router's NAT state takes, as far as visible


@dataclass
class Measurement:
    value: float | None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    higher_is_better: bool


FIGURES = {
    "tcp1": Figure("TCP bulk, 1 stream", "Mbit/s", True),
    "tcp4": Figure("TCP bulk, 4 streams", "Mbit/s", True),
    "udp64": Figure("UDP 64 B, <1% loss", "pps", True),
    "udp1400": Figure("UDP 1400 B, <1% loss", "pps", True),
    "conn": Figure("new TCP connections", "conn/s", True),
    "ping": Figure("ping RTT, median", "us", False),
    "table10k": Figure("state, 10k mappings", "MiB", False),
    "table100k": Figure("state, 100k mappings", "MiB", False),
    "per_mapping": Figure("state per mapping", "bytes", False),
}


# --- iperf3 --------------------------------------------------------------------------------


def iperf(ctx: Context, seconds: int, *args: str) -> dict[str, Any]:
    """One iperf3 client run from lan-a against a one-shot server; its JSON ``end`` section."""
    topo = ctx.topo
    server = topo.spawn(
        topo.wan.ns, "iperf3", "-s", "-1", "-B", SERVER_A, "-p", str(IPERF_PORT),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(topo, topo.wan.ns, "t", IPERF_PORT)
        command = ["iperf3", "-c", SERVER_A, "-p", str(IPERF_PORT), "-J", "-t", str(seconds),
                   "--connect-timeout", "5000"]  # fmt: skip
        result = topo.run(topo.lan_a.ns, *command, *args, timeout=seconds + 30, check=False)
    finally:
        stop_process(server, grace=2)
        topo.processes.remove(server)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 {' '.join(args)}: {result.stderr.strip()[:200]}") from None
    if "error" in data:
        raise BenchError(f"iperf3 {' '.join(args)}: {data['error']}")
    return dict(data["end"])


def tcp_bulk(streams: int) -> Callable[[Context, Router], dict[str, Measurement]]:
    def measure(ctx: Context, router: Router) -> dict[str, Measurement]:
        s = ctx.settings
        args = ["-P", str(streams)] + (["-O", str(s.tcp_omit)] if s.tcp_omit else [])
        end = iperf(ctx, s.tcp_seconds, *args)
        mbits = end["sum_received"]["bits_per_second"] / 1e6
        retransmits = end["sum_sent"].get("retransmits")
        return {f"tcp{streams}": Measurement(mbits, details={"retransmits": retransmits})}

    return measure


@dataclass(frozen=True)
class Probe:
    offered_pps: float  # what the sender managed to send
    delivered_pps: float  # what reached the WAN host's UDP layer, whether the server kept it
    loss_percent: float
    receiver_drops: int  # of those, dropped by the server's full socket buffer


def udp_arrived(ctx: Context) -> tuple[int, int]:
    """UDP datagrams that reached the WAN host (delivered, buffer full or no port); buffer drops."""
    udp = mappings.snmp(ctx.wan_pid, "Udp")
    return udp["InDatagrams"] + udp["InErrors"] + udp["NoPorts"], udp["RcvbufErrors"]


def udp_probe(ctx: Context, length: int, pps: float | None) -> Probe:
    """iperf3 UDP at ``pps`` datagrams per second (``None``: as fast as the sender goes).

    Delivery is counted at the WAN host's UDP layer, not by the iperf3 server: what a NAT
    forwarded counts even when the one-threaded server falls behind and its buffer overflows.
    """
    rate = "0" if pps is None else str(int(pps * length * 8))
    arrived, drops = udp_arrived(ctx)
    end = iperf(ctx, ctx.settings.udp_probe_seconds, "-u", "-l", str(length), "-b", rate)
    arrived_after, drops_after = udp_arrived(ctx)
    sent = end["sum_sent"]
    seconds, packets = sent["seconds"] or 1.0, max(1, sent["packets"])
    delivered = min(arrived_after - arrived, packets)
    loss = 100.0 * (packets - delivered) / packets
    return Probe(packets / seconds, delivered / seconds, loss, drops_after - drops)


def udp_rate(length: int) -> Callable[[Context, Router], dict[str, Measurement]]:
    """Delivered datagrams per second at under 1% loss, found by bisecting the offered rate.

    The first probe runs the sender flat out: without loss there, the figure is sender-bound and
    the search stops. Otherwise the next probe offers what was delivered under overload, and
    each further one halves the interval between the best passing and the lowest failing rate.
    """

    def measure(ctx: Context, router: Router) -> dict[str, Measurement]:
        first = udp_probe(ctx, length, None)
        probes = [first]
        name = f"udp{length}"
        if first.loss_percent < MAX_LOSS:
            note = "sender-bound (no loss at the sender's top rate)"
            return {name: Measurement(first.delivered_pps, note, _probe_details(probes))}
        low, high, rate = 0.0, first.offered_pps, first.delivered_pps
        for _ in range(ctx.settings.udp_steps + 1):
            probe = udp_probe(ctx, length, rate)
            probes.append(probe)
            if probe.loss_percent < MAX_LOSS:
                low = rate
            else:
                high = rate
            rate = (low + high) / 2
        passing = [p.delivered_pps for p in probes if p.loss_percent < MAX_LOSS]
        if not passing:
            raise BenchError(f"{name}: loss >= {MAX_LOSS}% at every offered rate")
        return {name: Measurement(max(passing), details=_probe_details(probes))}

    return measure


def _probe_details(probes: list[Probe]) -> dict[str, Any]:
    rows = [
        [round(p.offered_pps), round(p.delivered_pps), round(p.loss_percent, 2), p.receiver_drops]
        for p in probes
    ]
    return {"probes [offered pps, delivered pps, loss %, receiver buffer drops]": rows}


# --- connections, ping ---------------------------------------------------------------------


def start_connection_server(topo: Topology) -> subprocess.Popen[bytes]:
    server = topo.spawn(
        topo.wan.ns, sys.executable, str(CONNECTIONS_SCRIPT), "server", SERVER_A,
        str(CONNECTIONS_PORT), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_listening(topo, topo.wan.ns, "t", CONNECTIONS_PORT)
    return server


def connections(ctx: Context, router: Router) -> dict[str, Measurement]:
    seconds = ctx.settings.connection_seconds
    argv = ["client", SERVER_A, str(CONNECTIONS_PORT), str(seconds), str(CONCURRENCY)]
    result = ctx.topo.run(
        ctx.topo.lan_a.ns, sys.executable, str(CONNECTIONS_SCRIPT), *argv, timeout=seconds + 30
    )
    report = json.loads(result.stdout)
    lost = report["failed"] + report["stalled"]
    note = f"{lost} failed or stalled" if lost else ""
    return {"conn": Measurement(report["per_second"], note, report)}


def ping(ctx: Context, router: Router) -> dict[str, Measurement]:
    topo, count = ctx.topo, ctx.settings.pings
    # Warm up: ARP on both sides and the mapping exist before the measured pings.
    topo.run(topo.lan_a.ns, "ping", "-c", "3", "-i", "0.01", "-W", "1", SERVER_A, check=False)
    out = topo.run(
        topo.lan_a.ns, "ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", SERVER_A,
        timeout=count + 10, check=False,
    ).stdout  # fmt: skip
    times = [float(t) * 1000 for t in re.findall(r"time=([\d.]+) ms", out)]
    if not times:
        raise BenchError(f"ping: no replies:\n{out[-300:]}")
    lost = count - len(times)
    note = f"{lost} of {count} lost" if lost else ""
    return {"ping": Measurement(statistics.median(times), note, {"replies": len(times)})}


# --- table scale ---------------------------------------------------------------------------


def table(ctx: Context, router: Router) -> dict[str, Measurement]:
    """State memory at 10k and 100k live mappings, from a fresh NAT (see ``mappings``)."""
    topo = ctx.topo
    topo.run(topo.lan_a.ns, "ping", "-c", "1", "-W", "2", APPLIANCE_LAN, check=False)
    router_mac = neighbour_mac(topo.lan_a.ns, APPLIANCE_LAN)
    baseline = ctx.memory(router)
    result: dict[str, Measurement] = {}
    made = 0
    for step in TABLE_STEPS:
        batch = mappings.frames(made, step - made, topo.lan_a.address, SERVER_B,
                                router_mac, topo.lan_a.mac)  # fmt: skip
        made += mappings.inject_counted(topo, topo.lan_a.ns, topo.lan_a.ifname, batch, ctx.wan_pid)
        grown = ctx.memory(router) - baseline
        note = "" if made == step else f"only {made} of {step} frames arrived"
        details = {"mappings": made, "bytes": grown, "baseline_bytes": baseline}
        result[f"table{step // 1000}k"] = Measurement(grown / 2**20, note, details)
    if made:
        result["per_mapping"] = Measurement(grown / made, details={"mappings": made})
    return result


WORKLOADS: dict[str, Callable[[Context, Router], dict[str, Measurement]]] = {
    "table": table,
    "ping": ping,
    "tcp1": tcp_bulk(1),
    "tcp4": tcp_bulk(4),
    "udp64": udp_rate(64),
    "udp1400": udp_rate(1400),
    "conn": connections,
}
