"""The soak's I/O: the traffic loops, the sampler, the table (see the package's docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import CONFIG
from tests.support.routers import HostAppliance
from tests.support.services import Services, running_services
from tests.support.topology import (
    SERVER_A,
    SERVER_B,
    Attach,
    Topology,
    session_prefix,
    topology,
)

from .judge import SHOULD_NOT_MOVE, Sample, failures, rss_growth

TOOLS = ("ip", "ethtool", "ss", "iperf3", "curl", "dig", "dnsmasq", "ping")
WARMUP = 60.0  # seconds: the table fills with the first minute's flows
IPERF_TURN = 10  # seconds of TCP, then of UDP, in turns
TCP_RATE = "20M"  # bits/s: a few thousand frames/s through the appliance
UDP_RATE = "5M"
UDP_LENGTH = "1200"
# Each short connection holds a mapping for the transitory timeout (240 s), each DNS query one for
# the UDP timeout (300 s): the table fills until about the fifth minute, past the one-minute
# warm-up, to about 400 flows at these rates (~1 KiB of RSS each: ~2 % growth, under the limit).
HTTP_PER_MINUTE = 60
DNS_INTERVAL = 2.0  # seconds between queries
PING_INTERVAL = "0.2"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class Tally:
    """What one kind of traffic achieved: exchanges that succeeded and failed, bytes moved."""

    ok: int = 0
    failed: int = 0
    bytes: int = 0


@dataclass
class Report:
    samples: list[Sample]
    traffic: dict[str, Tally]
    failures: list[str] = field(default_factory=list)


class Traffic:
    """The traffic loops, each a thread from ``start`` until ``stop`` (and its current exchange)
    ends; their tallies are read once they have stopped."""

    def __init__(self, topo: Topology, services: Services, seconds: float) -> None:
        self.topo, self.services, self.seconds = topo, services, seconds
        self.deadline = time.monotonic() + seconds
        self.stopping = threading.Event()
        self.tallies = {kind: Tally() for kind in ("iperf-tcp", "iperf-udp", "http", "dns", "ping")}
        self._threads = [
            threading.Thread(target=loop, daemon=True)
            for loop in (self._iperf, self._http, self._dns)
        ]
        self._ping: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._ping = self.topo.spawn(
            self.topo.lan_b.ns,
            "ping", "-q", "-i", PING_INTERVAL, "-w", str(int(self.seconds)), SERVER_B,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert self._ping is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            out, _ = self._ping.communicate(timeout=10)
            match = PING_SUMMARY.search(out.decode(errors="replace"))
            if match:
                sent, received = int(match.group(1)), int(match.group(2))
                self.tallies["ping"] = Tally(ok=received, failed=sent - received)

    def _remaining(self) -> float:
        return 0.0 if self.stopping.is_set() else self.deadline - time.monotonic()

    def _iperf(self) -> None:
        udp = False
        while (remaining := self._remaining()) >= 2:
            seconds = str(int(min(IPERF_TURN, remaining)))
            extra = ["-u", "-b", UDP_RATE, "-l", UDP_LENGTH] if udp else ["-b", TCP_RATE]
            run = self.topo.run(
                self.topo.lan_a.ns,
                "iperf3", "-c", SERVER_A, "-p", str(self.services.iperf_port), "-t", seconds,
                "-J", "--connect-timeout", "3000", *extra,
                timeout=IPERF_TURN + 30, check=False,
            )  # fmt: skip
            self._count_iperf(self.tallies["iperf-udp" if udp else "iperf-tcp"], run)
            udp = not udp

    def _count_iperf(self, tally: Tally, run: subprocess.CompletedProcess[str]) -> None:
        try:
            end = json.loads(run.stdout)["end"]
            moved = int((end.get("sum_received") or end["sum"])["bytes"])
        except (ValueError, KeyError, TypeError):
            moved = 0
        if run.returncode == 0 and moved > 0:
            tally.ok, tally.bytes = tally.ok + 1, tally.bytes + moved
        else:
            tally.failed += 1
            self.stopping.wait(1.0)  # the server may still be ending the last test

    def _http(self) -> None:
        tally = self.tallies["http"]
        while (remaining := self._remaining()) >= 2:
            count = max(1, int(min(60.0, remaining) * HTTP_PER_MINUTE / 60))
            # One curl, `count` requests at a fixed rate; the server speaks HTTP/1.0 and closes
            # each connection, so every request is a new TCP connection through the NAT.
            run = self.topo.run(
                self.topo.lan_b.ns,
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--max-time", "5",
                "--rate", f"{HTTP_PER_MINUTE}/m", f"http://{SERVER_B}/index.html?n=[1-{count}]",
                timeout=90, check=False,
            )  # fmt: skip
            codes = run.stdout.split()
            good = codes.count("200")
            tally.ok, tally.failed = tally.ok + good, tally.failed + count - good

    def _dns(self) -> None:
        tally, services = self.tallies["dns"], self.services
        while self._remaining() >= 1:
            run = self.topo.run(
                self.topo.lan_a.ns,
                "dig", "+short", "+tries=1", "+time=2", f"@{SERVER_A}", services.dns_name,
                timeout=10, check=False,
            )  # fmt: skip
            if run.stdout.split() == [services.dns_answer]:
                tally.ok += 1
            else:
                tally.failed += 1
            self.stopping.wait(DNS_INTERVAL)


def sample(pid: int, started: float, appliance: HostAppliance) -> Sample:
    """RSS and CPU time from /proc (the process's own view), counters from its stats line."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return Sample(time.monotonic() - started, rss, cpu, appliance.counters())


HEADER = (
    f"{'t (s)':>6} {'RSS KiB':>8} {'CPU %':>5} {'flows':>6} {'wan_in':>9} {'wan_out':>9} "
    f"{'lan_in':>9} {'lan_out':>9} {'dropped':>7} {'errors':>6}"
)


def row(current: Sample, previous: Sample | None) -> str:
    """One line of the table; CPU % is of one core since the previous sample."""
    cpu = 0.0
    if previous is not None and current.at > previous.at:
        cpu = 100 * (current.cpu_seconds - previous.cpu_seconds) / (current.at - previous.at)
    c = current.counter
    errors = sum(c(name) for name in SHOULD_NOT_MOVE)
    return (
        f"{current.at:6.0f} {current.rss_kib:8} {cpu:5.1f} {c('flows'):6} {c('wan_in'):9} "
        f"{c('wan_out'):9} {c('lan_in'):9} {c('lan_out'):9} {c('dropped'):7} {errors:6}"
    )


def soak_through(
    topo: Topology,
    services: Services,
    minutes: float,
    interval: float,
    echo: Callable[[str], None],
    warmup: float = WARMUP,
) -> Report:
    """Start an appliance in `topo`, load it for `minutes` while sampling it every `interval`
    seconds (each sample `echo`-ed as a table row), stop it; the report holds the verdict."""
    appliance = HostAppliance(topo, CONFIG)
    appliance.start()
    assert appliance.pid is not None
    samples: list[Sample] = []
    found: list[str] = []
    traffic = Traffic(topo, services, minutes * 60)
    started = time.monotonic()
    echo(HEADER)
    traffic.start()
    try:
        for at in _ticks(started, minutes * 60, interval):
            if not appliance.alive():
                found.append(f"the appliance died after {at:.0f} s; its last lines:")
                found += appliance.output()[-5:]
                break
            samples.append(sample(appliance.pid, started, appliance))
            echo(row(samples[-1], samples[-2] if len(samples) > 1 else None))
    finally:
        traffic.stop()
        status = appliance.stop()
    if status != 0 and not found:
        found.append(f"the appliance exited with status {status} on SIGTERM")
    if not found:
        successes = {kind: tally.ok for kind, tally in traffic.tallies.items()}
        found = failures(samples, warmup, successes)
    return Report(samples, traffic.tallies, found)


def _ticks(started: float, seconds: float, interval: float) -> Iterator[float]:
    """Seconds since `started` at every `interval`, on a fixed grid, the last at `seconds`."""
    at = 0.0
    while at < seconds:
        at = min(at + interval, seconds)
        time.sleep(max(0.0, started + at - time.monotonic()))
        yield at


def summary(report: Report, warmup: float) -> list[str]:
    """The lines after the table: memory, flows, frames, traffic, the watched counters."""
    samples = report.samples
    lines = []
    if len(samples) >= 2:
        last = samples[-1]
        with contextlib.suppress(ValueError):
            growth = rss_growth(samples, warmup)
            lines.append(
                f"RSS: {growth.baseline.rss_kib} KiB at {growth.baseline.at:.0f} s, "
                f"{growth.final.rss_kib} KiB at the end ({growth.percent:+.1f} %), "
                f"peak {max(s.rss_kib for s in samples)} KiB"
            )
            # A leak keeps growing once the table is steady; the fill does not.
            half = rss_growth(samples, last.at / 2)
            lines.append(f"RSS over the second half: {half.percent:+.1f} %")
        flows = [s.counter("flows") for s in samples]
        lines.append(f"flows: min {min(flows)}, max {max(flows)}, at the end {flows[-1]}")
        c = last.counter
        lines.append(
            f"frames: wan in {c('wan_in')} out {c('wan_out')}, lan in {c('lan_in')} out "
            f"{c('lan_out')}, dropped {c('dropped')}; CPU {last.cpu_seconds:.0f} s "
            f"({100 * last.cpu_seconds / last.at:.1f} % of a core)"
        )
        drops = {k: v for k, v in last.counters.items() if k.startswith(("drop_", "refused_"))}
        lines.append(
            "drops by reason: " + (", ".join(f"{k}={v}" for k, v in drops.items()) or "none")
        )
        watched = ", ".join(f"{name}={c(name)}" for name in SHOULD_NOT_MOVE)
        lines.append(f"should not move: {watched}")
    for kind, tally in report.traffic.items():
        moved = f", {tally.bytes / 2**20:.1f} MiB" if tally.bytes else ""
        lines.append(f"{kind}: {tally.ok} ok, {tally.failed} failed{moved}")
    return lines


@contextlib.contextmanager
def soak_topology() -> Iterator[tuple[Topology, Services]]:
    """The namespaces (named ``natvm-t<pid>-soak-``) and their servers, removed afterwards."""
    with (
        topology(session_prefix() + "soak-", Attach.VETH) as topo,
        tempfile.TemporaryDirectory(prefix="natvm-soak-") as work,
        running_services(topo, Path(work)) as services,
    ):
        yield topo, services
