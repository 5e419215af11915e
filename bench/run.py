"""The benchmark's driver: topology, alternating runs, the table, the JSON file.

Per run and per NAT, two phases, each on a freshly started NAT so that neither sees the other's
state: first the table-scale workload, then the traffic workloads (ping first, while idle). For
Linux, "fresh" means its conntrack table in the router namespace is flushed; for natvm, a new
process. natvm runs ops-config.json with the table limits raised (``BENCH_LIMITS``): 100k
mappings from one LAN host is above the default per-host limit, and the benchmark measures speed
and memory, not the refusal of flows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from image import qemu
from tests.support import CONFIG, REPO
from tests.support.routers import HostAppliance, KernelNat, Nat
from tests.support.topology import Attach, Topology, session_prefix, topology

from . import report
from . import vm as vm_mode
from .mappings import DISCARD_PORT
from .workloads import (
    WORKLOADS,
    BenchError,
    Context,
    Measurement,
    Router,
    Settings,
    start_connection_server,
)

OUTPUT = REPO / "build" / "bench"
BENCH_LIMITS = {"max_flows": 262144, "max_flows_per_host": 262144}
DISCARD_RULES = f"""
table ip natvm_bench {{
    chain input {{
        type filter hook input priority filter; policy accept;
        th dport {DISCARD_PORT} drop
    }}
}}
"""
TOOLS = ("ip", "nft", "iperf3", "ping", "ss", "ethtool")
METHOD = {
    "tcp": "iperf3 -c from lan-a to the WAN host, receiver's rate; slow start omitted",
    "udp": "iperf3 -u from lan-a: the highest delivered rate with <1% loss, from a bisection of "
    "the offered rate (first probe: the sender flat out; 'sender-bound' if that loses <1%); "
    "delivered = datagrams reaching the WAN host's UDP layer (its SNMP counters)",
    "conn": "Python epoll client in lan-a, 16 in flight, each connect + server FIN + client FIN",
    "ping": "median RTT of ping -i 0.01 from lan-a to the WAN host after 3 warm-up pings",
    "table": "mappings split evenly UDP/TCP-SYN from lan-a's ports, to a port the WAN host drops; "
    "natvm: growth of the process's VmRSS; kernel: growth of the nf_conntrack slab "
    "(/proc/slabinfo, machine-wide; excludes conntrack extensions and the hash table)",
}
# What a reader of host-mode figures must know: where each NAT's work lands.
HOST_METHOD = (
    "veth delivers a frame in its sender's context, so the receiving host's kernel work (bridge, "
    "TCP/UDP receive, waking the reader) runs inside natvm's sendmsg, on natvm's CPU, and for "
    "Linux's NAT inside the sending host's send; natvm is one process on one CPU, Linux's "
    "forwarding runs on every CPU that sends"
)


@dataclasses.dataclass(frozen=True)
class Options:
    runs: int = 3
    quick: bool = False
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    # Linux's defaults (checksum offload, TSO, GSO on the hosts) and GRO on wan0/lan0: what a
    # router would run with. Off, every NAT handles MTU-sized frames one by one. Host mode only:
    # the VM's taps have no offloads.
    offloads: bool = True
    busy_poll_us: int = 0  # natvm's busy_poll_us (the kernel has no counterpart to set)
    vm: bool = False  # both NATs inside the VM on taps: natvm's image vs the reference image


class SetupError(Exception):
    """The benchmark cannot start as asked (not root, a tool missing, a bad option)."""


def options(
    runs: int, quick: bool, workloads: str, offloads: bool, busy_poll_us: int, vm: bool
) -> Options:
    """``invoke bench``'s options, checked along with the host it runs on."""
    if os.geteuid() != 0:
        raise SetupError("bench builds network namespaces: run it as root")
    if missing := missing_tools(vm):
        raise SetupError(f"missing tools: {', '.join(missing)} (apt-get install them)")
    names = parse_workloads(workloads)
    runs = 1 if quick and runs == Options.runs else runs  # --quick alone: one run
    if runs < 1:
        raise SetupError("--runs must be at least 1")
    return Options(runs, quick, names, offloads, busy_poll_us, vm)


def parse_workloads(text: str) -> tuple[str, ...]:
    """``--workloads a,b`` in the canonical order; raises SetupError naming an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        raise SetupError(f"unknown workload {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    return tuple(name for name in WORKLOADS if name in names) if names else tuple(WORKLOADS)


def missing_tools(vm: bool = False) -> list[str]:
    tools = (*TOOLS, qemu.QEMU) if vm else TOOLS
    return [tool for tool in tools if shutil.which(tool) is None]


# --- the two NATs --------------------------------------------------------------------------


def natvm_config(directory: Path, busy_poll_us: int = 0) -> Path:
    document = json.loads(CONFIG.read_text())
    document["ManifestPassthrough"]["nat"].update(BENCH_LIMITS, busy_poll_us=busy_poll_us)
    path = directory / "bench-config.json"
    path.write_text(json.dumps(document, indent=2))
    return path


def flush_conntrack(topo: Topology) -> None:
    code = "from pyroute2 import Conntrack; Conntrack().flush()"
    topo.run(topo.router, sys.executable, "-c", code)


def start_fresh(topo: Topology, kind: str, config: Path) -> HostAppliance | KernelNat:
    """The NAT ``kind``, started with empty state."""
    router: HostAppliance | KernelNat
    if kind == "natvm":
        router = HostAppliance(topo, config)
        # As in the image (/run/natvm): the flows saved as they change, so their cost is
        # measured; a new directory each start, as a new VM's is empty.
        state = tempfile.mkdtemp(prefix="state-", dir=config.parent)
        router.command += ["--state-dir", state]
    else:
        flush_conntrack(topo)
        router = KernelNat(topo)
    router.start()
    return router


def memory(router: Router) -> int:
    if isinstance(router, HostAppliance):
        with open(f"/proc/{router.pid}/status") as status:
            rss = [line for line in status if line.startswith("VmRSS:")]
        if not rss:
            raise BenchError(f"natvm (pid {router.pid}) has no VmRSS: it exited")
        return int(rss[0].split()[1]) * 1024
    with open("/proc/slabinfo") as slabinfo:
        for line in slabinfo:
            fields = line.split()
            if fields[0] == "nf_conntrack":
                return int(fields[2]) * int(fields[3])  # num_objs * objsize
    raise BenchError("no nf_conntrack cache in /proc/slabinfo")


# --- measuring -----------------------------------------------------------------------------


Starter = Callable[[Topology, str, Path], Nat]  # (topology, kind, natvm config) -> started NAT


def measure(
    ctx: Context, kind: str, names: tuple[str, ...], config: Path, start: Starter = start_fresh
) -> dict[str, Any]:
    """Every figure of ``names`` through NAT ``kind``: the table phase, then the traffic phase.

    A NAT that dies is noted on the figure it died during and restarted for the next workload;
    one that does not start fails the workloads it was for, and the run goes on.
    """
    figures: dict[str, Any] = {}
    traffic = tuple(name for name in names if name != "table")
    for phase in [p for p in (("table",) if "table" in names else (), traffic) if p]:
        router = _start(start, ctx, kind, config)
        try:
            for name in phase:
                if isinstance(router, str):
                    figures.update(_failed(kind, name, router))
                    continue
                measured = _measure_one(ctx, kind, name, router)
                if not router.alive():
                    tail = " | ".join(router.output()[-3:])
                    for figure in measured.values():
                        figure["note"] += f" {kind} died; its last output: {tail}"
                    router.stop()
                    router = _start(start, ctx, kind, config)
                figures.update(measured)
        finally:
            if not isinstance(router, str):
                router.stop()
    return figures


def _start(start: Starter, ctx: Context, kind: str, config: Path) -> Nat | str:
    """The started NAT, or why it did not start (one line)."""
    try:
        return start(ctx.topo, kind, config)
    except (AssertionError, OSError, subprocess.SubprocessError, ValueError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        return f"{kind} did not start: {first_line[:300]}"


def _failed(kind: str, name: str, reason: str) -> dict[str, Any]:
    print(f"    {kind:<6} {name:<8} failed: {reason}", flush=True)
    return {name: dataclasses.asdict(Measurement(None, f"failed: {reason}"))}


def _measure_one(ctx: Context, kind: str, name: str, router: Nat) -> dict[str, Any]:
    started = time.monotonic()
    try:
        measured = WORKLOADS[name](ctx, router)
    except (BenchError, AssertionError, OSError, subprocess.SubprocessError, KeyError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        measured = {name: Measurement(None, f"failed: {first_line[:300]}")}
    shown = ", ".join(f"{figure}={_short(m.value)}" for figure, m in measured.items())
    print(f"    {kind:<6} {name:<8} {shown}  ({time.monotonic() - started:.1f} s)", flush=True)
    return {figure: dataclasses.asdict(m) for figure, m in measured.items()}


def _short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def prepare(topo: Topology, settings: Settings) -> Context:
    """The WAN host's discard port and the connection server, which also anchors WAN counters."""
    subprocess.run(
        ["ip", "netns", "exec", topo.wan.ns, "nft", "-f", "-"],
        input=DISCARD_RULES, text=True, check=True, timeout=30,
    )  # fmt: skip
    anchor = start_connection_server(topo)
    return Context(topo, settings, anchor.pid, memory)


def bench(options: Options, say: Callable[[str], None] = print) -> Path:
    """Run the benchmark, print the table, write the JSON; returns the JSON's path."""
    started, clock, load_before = datetime.now(UTC), time.monotonic(), os.getloadavg()[0]
    settings = Settings.quick() if options.quick else Settings()
    runs: list[dict[str, Any]] = []
    natvm_settings = {**BENCH_LIMITS, "busy_poll_us": options.busy_poll_us}
    vm = vm_mode.setup(natvm_settings, CONFIG) if options.vm else None
    mode = _mode(vm)
    if vm is not None:  # the VM's taps carry no offloads
        options = dataclasses.replace(options, offloads=False)
    offloads = options.offloads
    busy = f"; natvm busy-polls {options.busy_poll_us} us" if options.busy_poll_us else ""
    say(f"natvm bench: {options.runs} run(s) of {', '.join(options.workloads)}"
        f"{' (quick)' if options.quick else ''}; Linux NAT vs natvm, alternating; "
        f"offloads {'on' if offloads else 'off'}{busy}; {mode['label']}")  # fmt: skip
    # VM mode measures no table (see bench/vm.py): those figures are n/a, with the reason.
    names = tuple(n for n in options.workloads if not (vm and n == "table"))
    with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="natvm-bench-") as tmp:
        config = natvm_config(Path(tmp), options.busy_poll_us)
        start = vm_mode.starter(vm, Path(tmp)) if vm else start_fresh
        attach = Attach.TAP if vm else Attach.VETH
        with topology(session_prefix(), attach, offloads) as topo:
            ctx = prepare(topo, settings)
            for number in range(options.runs):
                order = ("kernel", "natvm") if number % 2 == 0 else ("natvm", "kernel")
                say(f"  run {number + 1}/{options.runs}")
                run: dict[str, Any] = {"order": list(order)}
                for kind in order:
                    run[kind] = measure(ctx, kind, names, config, start)
                    if vm:
                        run[kind].update(vm_mode.not_applicable(options.workloads))
                runs.append(run)
    seconds, load = time.monotonic() - clock, (load_before, os.getloadavg()[0])
    document = _document(options, settings, started, seconds, load, runs)
    path = _write({"mode": mode, **document}, started)
    say("")
    say(mode["label"])
    say(report.table(runs))
    say("")
    method = {**METHOD, "vm": vm_mode.METHOD} if vm else {**METHOD, "host": HOST_METHOD}
    for line in [*report.notes(runs), *(f"{k}: {v}" for k, v in method.items())]:
        say(f"  {line}")
    say(
        f"  machine: {os.cpu_count()} CPUs; 1-min load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after (other processes compete with the benchmark when it is high)"
    )
    say(f"took {seconds:.0f} s; wrote {path.relative_to(REPO)}")
    return path


def _mode(vm: vm_mode.VmSetup | None) -> dict[str, Any]:
    """Where the NATs ran, for the header and the JSON."""
    if vm is None:
        return {"name": "host", "label": "host mode: both NATs in the router namespace on veths"}
    label = f"{vm.label}; kernel = Linux NAT in the reference image, natvm = natvm's image"
    return {"name": "vm", "accelerator": vm.accel, "emulated": vm.accel == "tcg",
            "memory_mib": vm.memory_mib, "cpus": vm.cpus, "label": label}  # fmt: skip


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C does, so every ``finally`` removes what it made."""
    owner = os.getpid()

    def unwind(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            # A forked helper (pyroute2 forks to create namespaces) must just die, as it would
            # without this handler, not run the rest of the benchmark.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _document(
    options: Options,
    settings: Settings,
    started: datetime,
    seconds: float,
    load: tuple[float, float],
    runs: list[Any],
) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "options": dataclasses.asdict(options),
        "settings": dataclasses.asdict(settings),
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before_after": load,
        },
        "natvm_limits": BENCH_LIMITS,
        "method": METHOD,
        "runs": runs,
        "summary": report.summary(runs),
    }


def _write(document: dict[str, Any], started: datetime) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
