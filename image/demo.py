"""`invoke run`: boot the image under QEMU between a LAN and a WAN namespace, show NAT working.

Wiring (the same shape as tests.support.topology; nothing links to the root namespace, and no
namespace has a default route, so no packet can leave the machine). The addresses are
ops-config.json's (see `addresses`); with the shipped file:

    natvm-demo-lan  lan0 10.77.0.10/24 -+                        +- wan0 192.0.2.1/24 natvm-demo-wan
                                   br-lan -[tap]- VM -[tap]- br-wan  lo 198.51.100.10/32 (HTTP)
                      `--------------- natvm-demo-router ---------------'

QEMU runs in the router namespace (`ip netns exec`), where it opens the two taps by name.
With `taps` or `bridges` the demo namespaces are skipped and the VM is attached as asked.
"""

import contextlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from image import qemu
from image.command import require, run
from image.deploy import RunSettings
from image.errors import ImageError

PREFIX = "natvm-demo-"
ROUTER, WAN, LAN = (PREFIX + role for role in ("router", "wan", "lan"))
TAPS = ("tap-wan", "tap-lan")
SERVER = "198.51.100.10"  # on the WAN host's lo: a server beyond the appliance's gateway
# Routed from the LAN host through the appliance, with the WAN subnet: RFC 5737's documentation
# ranges, where the WAN side lives (SERVER is in one).
DOCUMENTATION_NETWORKS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
LAN_HOST_NUMBER = 10  # the LAN host's address in its subnet: ops-config.json forwards ports there
READY_TIMEOUT = 180.0
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")  # SeaBIOS and the kernel clear the screen


@dataclass(frozen=True)
class Addresses:
    """The demo hosts' addresses, on the subnets of ops-config.json's NICs."""

    lan_host: IPv4Interface
    wan_host: IPv4Interface  # the appliance's gateway, which also answers for SERVER
    appliance_lan: IPv4Address  # the LAN host's router
    wan_network: IPv4Network


@dataclass(frozen=True)
class Options:
    memory_mib: int
    cpus: int
    addresses: Addresses
    taps: tuple[str, ...] = ()  # existing taps: WAN, LAN
    bridges: tuple[str, ...] = ()  # existing bridges: WAN, LAN


def options(
    config: Path,
    settings: RunSettings,
    memory_mib: int = 0,
    cpus: int = 0,
    taps: str = "",
    bridged: bool = False,
) -> Options:
    """`invoke run`'s options over the settings read from `config`: a 0 takes the config's
    value; an ImageError names an option that cannot work."""
    chosen = Options(
        memory_mib=memory_mib or settings.memory_mib,
        cpus=cpus or settings.cpus,
        addresses=addresses(settings),
        taps=tuple(taps.split(",")) if taps else (),
        bridges=(settings.wan.bridge or "", settings.lan.bridge or "") if bridged else (),
    )
    if chosen.taps and len(chosen.taps) != 2:
        raise ImageError("--taps takes two names: WAN,LAN")
    if chosen.bridges and not all(chosen.bridges):
        raise ImageError(f"{config} names no BridgeName for both NICs (needed by --bridged)")
    return chosen


def addresses(settings: RunSettings) -> Addresses:
    """The WAN host is the appliance's gateway (else the first free address of the WAN subnet),
    the LAN host the LAN subnet's address LAN_HOST_NUMBER (else its first free one)."""
    wan, lan, gateway = settings.wan.address, settings.lan.address, settings.wan.gateway
    wan_host = IPv4Interface((gateway, wan.network.prefixlen)) if gateway else _host_on(wan, 1)
    return Addresses(_host_on(lan, LAN_HOST_NUMBER), wan_host, lan.ip, wan.network)


def _host_on(nic: IPv4Interface, number: int) -> IPv4Interface:
    """Address `number` of `nic`'s subnet for a demo host, else the first that is not `nic`'s."""
    numbered = list(itertools.islice(nic.network.hosts(), number))[-1:]  # hosts() starts at 1
    for address in itertools.chain(numbered, nic.network.hosts()):
        if address != nic.ip:
            return IPv4Interface((address, nic.network.prefixlen))
    raise ImageError(f"the subnet {nic.network} has no address left for a demo host")


def say(message: str, started: float | None = None) -> None:
    timing = f" ({time.monotonic() - started:.1f} s)" if started is not None else ""
    print(f"natvm: {message}{timing}", flush=True)


def _ip(*args: str) -> None:
    run(["ip", *args])


def _in(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _sysctl(ns: str, *settings: str) -> None:
    run(_in(ns, "sysctl", "-qw", *settings))


def _namespaces() -> None:
    for ns in (ROUTER, WAN, LAN):
        if Path("/run/netns", ns).exists():
            _ip("netns", "del", ns)  # left by an interrupted run; the names are ours
        _ip("netns", "add", ns)
        _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        _ip("-n", ns, "link", "set", "lo", "up")


def _side(bridge: str, tap: str, host_ns: str, host_if: str, address: str) -> None:
    r = ("-n", ROUTER)
    _ip(*r, "link", "add", bridge, "type", "bridge")
    _ip(*r, "tuntap", "add", "mode", "tap", "name", tap)
    _ip(
        *r,
        "link",
        "add",
        f"{host_if}-br",
        "type",
        "veth",
        "peer",
        "name",
        host_if,
        "netns",
        host_ns,
    )
    for port in (tap, f"{host_if}-br"):
        _ip(*r, "link", "set", port, "master", bridge, "up")
    _ip(*r, "link", "set", bridge, "up")
    _ip("-n", host_ns, "addr", "add", address, "dev", host_if)
    _ip("-n", host_ns, "link", "set", host_if, "up")


def build_topology(hosts: Addresses) -> None:
    _namespaces()
    _side("br-wan", TAPS[0], WAN, "wan0", str(hosts.wan_host))
    _side("br-lan", TAPS[1], LAN, "lan0", str(hosts.lan_host))
    _ip("-n", WAN, "addr", "add", f"{SERVER}/32", "dev", "lo")
    for net in dict.fromkeys((str(hosts.wan_network), *DOCUMENTATION_NETWORKS)):  # once each
        _ip("-n", LAN, "route", "add", net, "via", str(hosts.appliance_lan))


def destroy_topology() -> None:
    for ns in (ROUTER, WAN, LAN):
        if Path("/run/netns", ns).exists():
            subprocess.run(["ip", "netns", "del", ns], check=False)


def machine(options: Options, out: Path, accel: str) -> qemu.Machine:
    taps = options.taps or TAPS
    return qemu.Machine(
        out / "vmlinuz",
        out / qemu.ROOT_FILE,
        options.memory_mib,
        options.cpus,
        (taps[0], taps[1]),
        accel,
    )


def command(options: Options, out: Path, accel: str) -> list[str]:
    argv = qemu.command(machine(options, out, accel))
    return argv if options.taps or options.bridges else _in(ROUTER, *argv)


def show_command(options: Options, out: Path) -> str:
    accel = qemu.choose_accel(out / "vmlinuz") if (out / "vmlinuz").exists() else "tcg"
    shown = qemu.format_command(qemu.command(machine(options, out, accel)))
    return shown if options.taps or options.bridges else f"{shlex.join(_in(ROUTER))} \\\n{shown}"


class Console:
    """QEMU's serial console, echoed as it comes; `wait_for` blocks until a line starts so."""

    def __init__(self, proc: "subprocess.Popen[str]") -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: "subprocess.Popen[str]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = _ESCAPES.sub("", line).rstrip()
            print(f"  vm | {text}", flush=True)
            with self.changed:
                self.lines.append(text)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # end of output
            self.changed.notify_all()

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    if prefix in line:
                        return line
                if self.lines[-1:] == [""] or not self.changed.wait(deadline - time.monotonic()):
                    raise ImageError(
                        f"the VM did not print {prefix!r} within {timeout:.0f} s",
                        "see its console above",
                    )
                if time.monotonic() > deadline:
                    raise ImageError(f"no {prefix!r} from the VM within {timeout:.0f} s")


@contextlib.contextmanager
def booted(argv: list[str]) -> Iterator[Console]:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield Console(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def http_server(wanted: bool) -> Iterator[None]:
    if not wanted:
        yield
        return
    with tempfile.TemporaryDirectory() as docroot:
        Path(docroot, "index.html").write_text("hello from the WAN side\n")
        server = [sys.executable, "-m", "http.server", "80", "--bind", SERVER, "-d", docroot]
        argv = _in(WAN, *server)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def show_nat(hosts: Addresses) -> None:
    started = time.monotonic()
    ping = run(_in(LAN, "ping", "-c", "3", "-i", "0.3", "-W", "5", SERVER)).splitlines()
    say(f"LAN {hosts.lan_host.ip} -> ping {SERVER}: {ping[-2]}", started)
    started = time.monotonic()
    body = run(_in(LAN, "curl", "-sS", "--max-time", "20", f"http://{SERVER}/"))
    say(f"LAN {hosts.lan_host.ip} -> http://{SERVER}/: {body.strip()!r}", started)


def _attach_bridges(bridges: tuple[str, ...]) -> None:
    for tap, bridge in zip(TAPS, bridges, strict=True):
        _ip("tuntap", "add", "mode", "tap", "name", tap)
        _ip("link", "set", tap, "master", bridge, "up")


def preflight(task: str) -> None:
    """What every demo needs before it touches anything: its tools, and root."""
    for tool, package in (("ip", "iproute2"), (qemu.QEMU, "qemu-system-x86"), ("curl", "curl")):
        require(tool, package)
    if os.geteuid() != 0:
        raise ImageError(f"{task} needs root (namespaces and taps)", "run it with sudo")


def run_demo(options: Options, out: Path) -> None:
    """Build the wiring, boot, wait for READY, show NAT, stay until Ctrl-C, tear down."""
    preflight("invoke run")
    started = time.monotonic()
    accel = qemu.choose_accel(out / "vmlinuz")
    say(
        f"accelerator: {accel.upper()}" + ("" if accel == "kvm" else " (KVM unusable here)"),
        started,
    )
    demo = not options.taps and not options.bridges
    try:
        started = time.monotonic()
        if demo:
            build_topology(options.addresses)
            say(f"namespaces {LAN} and {WAN} wired through {ROUTER}", started)
        elif options.bridges:
            _attach_bridges(options.bridges)
        started = time.monotonic()
        with booted(command(options, out, accel)) as console, http_server(demo):
            say(f"booting: {shlex.join(command(options, out, accel))}")
            console.wait_for("READY", READY_TIMEOUT)
            say("appliance READY", started)
            if demo:
                show_nat(options.addresses)
            say("running; Ctrl-C stops the VM and removes the wiring")
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                while console.proc.poll() is None:
                    time.sleep(0.5)
    finally:
        if demo:
            destroy_topology()
        elif options.bridges:
            for tap in TAPS:
                subprocess.run(["ip", "link", "del", tap], check=False)
        say("stopped and cleaned up")
