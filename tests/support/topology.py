"""Test hosts in network namespaces, wired to the appliance's two NICs.

Theory of operation
-------------------
Every host is a network namespace named ``PREFIX + role`` (the prefix is unique per test session,
``natvm-t<pid>-``), so two sessions never collide and leftovers are easy to find::

    lan-a  10.77.0.10 eth0 --+                                 +-- eth0 192.0.2.1/24    wan
    lan-b  10.77.0.11 eth0 --+-- br-lan --[lan NIC]  [wan NIC]-- br-wan       lo 198.51.100.10/32
                                 `------------ router ------------'               203.0.113.10/32

The two bridges live in the router namespace; what plugs the appliance into them is the only thing
that differs between tiers (``Attach``):

- ``VETH`` (host mode): veth pairs ``wan0``/``wan0-br`` and ``lan0``/``lan0-br``; the appliance runs
  as a host process in the router namespace and opens ``wan0`` and ``lan0``.
- ``TAP`` (VM mode): persistent taps ``tap-wan`` and ``tap-lan`` enslaved to the bridges; QEMU,
  started with ``ip netns exec ROUTER``, opens them.
- ``ROOT_BRIDGES`` (libvirt): no router namespace; the bridges themselves are in the root
  namespace, named as the caller says (libvirt.xml's), for a hypervisor there to plug its NICs
  into. They carry no address (IPv6 off, no ARP answers for the machine's own addresses), their
  only other ports are the host veths, whose root-namespace ends are named ``gw-PID``,
  ``host-a-PID`` and ``host-b-PID``, and their alias is the topology's prefix: a later session
  removes them if the session that made them is gone, and refuses bridges of the same names
  that are not a test's.

The WAN namespace is the gateway host and the servers at once: the server addresses are local to it
(on lo), it has no default route, and it reaches 192.0.2.0/24 on link. Nothing routes out
of the machine: no namespace has a link to the root namespace but through the root bridges of
``ROOT_BRIDGES``, which route nothing.

A netvm topology (``build_netvm``) has no bridges: the appliance's uplink ``wan0`` is a veth to
the WAN namespace, and each client is a namespace whose ``eth0`` is a veth to ``vifN.0`` in the
router namespace, as Xen's netback gives a Qubes net VM one ``vif`` per client VM: the ``vif`` has
netback's MAC fe:ff:ff:ff:ff:ff, the client a /32 (10.137.0.1N), a route to the gateway address
10.137.0.1 on its link, a default route through it, and the gateway's MAC pinned (Qubes'
``setup-ip``), so it never asks ARP for it.

Rules
-----
- Checksum offload, TSO, GSO and GRO are off on every veth end, so the appliance sees complete
  checksums and MTU-sized frames: AF_PACKET reads frames after GRO, and a sender's TSO segments
  and partial checksums cross veths and bridges as they are.
  Except with ``offloads=True`` (host mode only): then the hosts' veths keep checksum offload,
  TSO and GSO on, and the appliance's ``wan0``/``lan0`` have GRO on, so TCP crosses as
  aggregates of up to 64 KiB with partial checksums (the appliance's PACKET_VNET_HDR path).
- IPv6 is off in every namespace before any link exists, so raised links make no IPv6 noise.
- Namespaces are created explicitly and opened with ``flags=0``: a typo fails instead of creating
  an empty namespace. Links are waited for by state, never by sleeping.
- ``Topology.destroy`` ends every process started with ``spawn`` and removes every namespace, which
  takes every veth, bridge and tap with it, then the root bridges if there are any.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from scapy.layers.l2 import Ether

LAN_NETWORK = "10.77.0.0/24"
APPLIANCE_LAN = "10.77.0.1"
APPLIANCE_WAN = "192.0.2.2"
GATEWAY = "192.0.2.1"
CLIENT_A = "10.77.0.10"
CLIENT_B = "10.77.0.11"
SERVER_A = "198.51.100.10"
SERVER_B = "203.0.113.10"

SESSION_PREFIX_PATTERN = re.compile(r"^natvm-t(\d+)-")
LINK_TIMEOUT = 5.0
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # not in the socket module; root may exceed rmem_max with it
OFFLOADS_OFF = ("tx", "off", "tso", "off", "gso", "off", "gro", "off")
BRIDGES = ("br-wan", "br-lan")  # in the router namespace


class Attach(enum.StrEnum):
    """How the appliance's two NICs are plugged into the bridges."""

    VETH = "veth"
    TAP = "tap"
    ROOT_BRIDGES = "root-bridges"


@dataclass(frozen=True)
class Host:
    """A test host: its namespace, its one interface, its address and MAC address."""

    ns: str
    ifname: str
    address: str
    mac: str


@dataclass
class Topology:
    """The namespaces of one test session; see the module docstring for the wiring."""

    prefix: str
    attach: Attach
    router_ns: str | None  # None with ROOT_BRIDGES: the router side is the root namespace
    lan_a: Host
    lan_b: Host
    wan: Host
    appliance_wan: str  # what the appliance's NICs are or plug into: veths, taps or root bridges
    appliance_lan: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def router(self) -> str:
        """The router namespace, where the appliance or QEMU runs."""
        if self.router_ns is None:
            raise AssertionError(f"{self.attach} has no router namespace: it is the root one")
        return self.router_ns

    @property
    def namespaces(self) -> list[str]:
        hosts = [self.wan.ns, self.lan_a.ns, self.lan_b.ns]
        return hosts if self.router_ns is None else [self.router_ns, *hosts]

    def run(
        self, ns: str, *argv: str, timeout: float = 30, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in namespace ``ns``; a failure names the whole command."""
        command = ["ip", "netns", "exec", ns, *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def spawn(self, ns: str, *argv: str, **popen_args: Any) -> subprocess.Popen[bytes]:
        """Start a long-running process in ``ns``; ``destroy`` ends it if the caller does not."""
        # `ip netns exec` execs the command, so the Popen's pid is the command's own.
        process: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], **popen_args
        )
        self.processes.append(process)
        return process

    def socket(self, ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket living in namespace ``ns``, usable from this process."""
        sock: socket.socket = netns.create_socket(ns, family, kind, proto, flags=0)
        return sock

    def destroy(self) -> None:
        """End the processes, then remove the namespaces (and with them every link)."""
        for process in self.processes:
            stop_process(process)
        self.processes.clear()
        for name in self.namespaces:
            with contextlib.suppress(FileNotFoundError):
                netns.remove(name)
        if self.attach is Attach.ROOT_BRIDGES:
            _remove_root_bridges((self.appliance_wan, self.appliance_lan), self.prefix)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


CLIENT_GATEWAY = "10.137.0.1"  # the gateway address netvm clients use
CLIENT_SUBNET = "10.137.0.0/16"
VIF_MAC = "fe:ff:ff:ff:ff:ff"  # netback's MAC on a vif
NUD_PERMANENT = 0x80
SCOPE_LINK = 253


@dataclass
class NetVmTopology(Topology):
    """A topology of ``build_netvm``: the uplink and one namespace per client, each on its own
    ``vif``. ``lan_a`` and ``lan_b`` are the first two clients; ``appliance_lan`` is empty."""

    clients: list[Host] = field(default_factory=list)
    vifs: list[str] = field(default_factory=list)  # the router's end of each client's link

    @property
    def namespaces(self) -> list[str]:
        return [self.router, self.wan.ns, *(client.ns for client in self.clients)]


def _create_namespaces(names: Iterable[str], created: list[str]) -> None:
    """Create each namespace with the test sysctls, listing in `created` those made (for the
    caller to remove if what follows fails)."""
    for name in names:
        netns.create(name)
        created.append(name)
        _set_sysctls(name)


def build_netvm(prefix: str, clients: int) -> NetVmTopology:
    """Create the router, WAN and `clients` client namespaces and their links; on any failure,
    remove what was made and re-raise."""
    remove_stale_namespaces()
    roles = ["router", "wan", *(f"client-{n}" for n in range(1, clients + 1))]
    names = {role: prefix + role for role in roles}
    vifs = [f"vif{n}.0" for n in range(1, clients + 1)]
    created: list[str] = []
    try:
        _create_namespaces(names.values(), created)
        router = names["router"]
        with IPRoute(netns=router, flags=0) as ipr:
            _add_link(ipr, "wan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": names["wan"]})
            _set_up(ipr, "wan0")
            for n, vif in enumerate(vifs, 1):
                peer = {"ifname": "eth0", "net_ns_fd": names[f"client-{n}"]}
                index = _add_link(ipr, vif, kind="veth", peer=peer)
                ipr.link("set", index=index, address=VIF_MAC)
                _set_up(ipr, vif)
        _disable_offloads(router, ["wan0", *vifs])
        wan = _configure_wan_host(names["wan"], offloads=False)
        hosts = [
            _configure_client(names[f"client-{n}"], f"10.137.0.{10 + n}")
            for n in range(1, clients + 1)
        ]
    except BaseException:
        for name in created:
            netns.remove(name)
        raise
    return NetVmTopology(
        prefix=prefix,
        attach=Attach.VETH,
        router_ns=router,
        lan_a=hosts[0],
        lan_b=hosts[1],
        wan=wan,
        appliance_wan="wan0",
        appliance_lan="",
        clients=hosts,
        vifs=vifs,
    )


def _configure_client(ns: str, address: str) -> Host:
    with IPRoute(netns=ns, flags=0) as ipr:
        index = _bring_up_host_link(ns, ipr, offloads=False)
        ipr.addr("add", index=index, address=address, prefixlen=32)
        ipr.route("add", dst=f"{CLIENT_GATEWAY}/32", oif=index, scope=SCOPE_LINK)
        ipr.route("add", dst="0.0.0.0/0", gateway=CLIENT_GATEWAY, oif=index)
        ipr.neigh("replace", dst=CLIENT_GATEWAY, lladdr=VIF_MAC, ifindex=index, state=NUD_PERMANENT)
        return Host(ns, "eth0", address, _mac(ipr, index))


@contextlib.contextmanager
def netvm_topology(prefix: str, clients: int) -> Iterator[NetVmTopology]:
    """``build_netvm`` then ``destroy``, whatever happens in between."""
    built = build_netvm(prefix, clients)
    try:
        yield built
    finally:
        built.destroy()


def session_prefix() -> str:
    return f"natvm-t{os.getpid()}-"


def build(
    prefix: str, attach: Attach, offloads: bool = False, bridges: tuple[str, str] = BRIDGES
) -> Topology:
    """Create the namespaces and links; on any failure, remove what was made and re-raise.
    ``bridges``: the names of the WAN and LAN bridges."""
    remove_stale_namespaces()
    hosts = ("wan", "lan-a", "lan-b")
    roles = hosts if attach is Attach.ROOT_BRIDGES else ("router", *hosts)
    names = {role: prefix + role for role in roles}
    created: list[str] = []
    try:
        _create_namespaces(names.values(), created)
        appliance_wan, appliance_lan = _wire_router(prefix, names, attach, offloads, bridges)
        lan_a = _configure_lan_host(names["lan-a"], CLIENT_A, offloads)
        lan_b = _configure_lan_host(names["lan-b"], CLIENT_B, offloads)
        wan = _configure_wan_host(names["wan"], offloads)
    except BaseException:
        for name in created:
            netns.remove(name)
        if attach is Attach.ROOT_BRIDGES:
            _remove_root_bridges(bridges, prefix)
        raise
    return Topology(
        prefix=prefix,
        attach=attach,
        router_ns=names.get("router"),
        lan_a=lan_a,
        lan_b=lan_b,
        wan=wan,
        appliance_wan=appliance_wan,
        appliance_lan=appliance_lan,
    )


def left_by_a_gone_session(name: str) -> bool:
    """Whether ``name`` starts with the prefix of a test session whose process is gone."""
    match = SESSION_PREFIX_PATTERN.match(name)
    return match is not None and not os.path.exists(f"/proc/{match.group(1)}")


def remove_stale_namespaces() -> None:
    """Remove namespaces left by test sessions whose process is gone (a crash, a kill -9),
    after killing the processes that session had started in them."""
    for name in netns.listnetns():
        if left_by_a_gone_session(name):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            netns.remove(name)


def _set_sysctls(ns: str) -> None:
    settings = [
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
        # Time Exceeded and Port Unreachable answers must not be rate limited between tests.
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv4.icmp_msgs_per_sec=100000",
    ]
    if os.path.exists("/proc/sys/net/bridge"):
        # br_netfilter (built into this kernel) would pass bridged frames through the router
        # namespace's IP hooks: the kernel reference's rules and conntrack must not see them.
        settings += [
            f"net.bridge.bridge-nf-call-{t}=0" for t in ("iptables", "ip6tables", "arptables")
        ]
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings], check=True)


def _wire_router(
    prefix: str,
    names: dict[str, str],
    attach: Attach,
    offloads: bool,
    bridge_names: tuple[str, str],
) -> tuple[str, str]:
    router = names.get("router")  # None: the root namespace
    with IPRoute() if router is None else IPRoute(netns=router, flags=0) as ipr:
        if router is None:
            _claim_root_bridge_names(ipr, bridge_names)
        bridges = {name: _add_bridge(ipr, name, router, prefix) for name in bridge_names}
        wan_bridge, lan_bridge = bridges.values()
        suffix = "" if router else f"-{os.getpid()}"  # root names are the machine's: unique ones
        hosts = {
            f"gw{suffix}": ("wan", wan_bridge),
            f"host-a{suffix}": ("lan-a", lan_bridge),
            f"host-b{suffix}": ("lan-b", lan_bridge),
        }
        for port, (role, bridge) in hosts.items():
            _add_link(ipr, port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": names[role]})
            if router is None:
                _disable_ipv6(port)
            _set_up(ipr, port, master=bridge)
        if attach is Attach.VETH:
            nics = ("wan0", "lan0")
            for nic, bridge in zip(nics, bridges.values(), strict=True):
                _add_link(ipr, nic, kind="veth", peer=f"{nic}-br")
                _set_up(ipr, f"{nic}-br", master=bridge)
                _set_up(ipr, nic)
            offload_ends = [*hosts, *nics, *(f"{nic}-br" for nic in nics)]
        elif attach is Attach.TAP:
            nics = ("tap-wan", "tap-lan")
            for nic, bridge in zip(nics, bridges.values(), strict=True):
                subprocess.run(
                    [*_in(router), "ip", "tuntap", "add", nic, "mode", "tap"], check=True
                )
                _set_up(ipr, nic, master=bridge)
            offload_ends = list(hosts)
        else:
            nics = bridge_names  # the hypervisor plugs its NICs into them
            offload_ends = list(hosts)
        for index in bridges.values():
            ipr.link("set", index=index, state="up")
    if not offloads:
        _disable_offloads(router, offload_ends)
    elif attach is Attach.VETH:
        for nic in nics:
            _ethtool(router, nic, "gro", "on")
    else:
        raise ValueError("offloads=True is for host mode (the VM's taps have no offloads)")
    return nics


def _in(ns: str | None) -> list[str]:
    """The argv prefix that runs a command in namespace ``ns`` (None: the root namespace)."""
    return [] if ns is None else ["ip", "netns", "exec", ns]


def _disable_ipv6(ifname: str) -> None:
    """In the root namespace, where IPv6 stays on for the machine's own links: before ``ifname``
    is up, so it never gets a link-local address."""
    setting = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if setting.exists():
        setting.write_text("1")


def _add_bridge(ipr: IPRoute, name: str, router: str | None, prefix: str) -> int:
    index = _add_link(ipr, name, kind="bridge")
    if router is None:
        _disable_ipv6(name)
        # The machine's own addresses are local on every link: without NOARP the bridge would
        # answer ARP for them, and the test hosts could reach the machine through it.
        ipr.link("set", index=index, ifalias=prefix, arp=False)
    return index


def _claim_root_bridge_names(ipr: IPRoute, names: tuple[str, str]) -> None:
    """Remove root bridges of these names that a session now gone made; refuse any other link
    of these names (a deployment's real bridges, another session's)."""
    for name in names:
        for index in ipr.link_lookup(ifname=name):
            if not left_by_a_gone_session(_alias(ipr, index)):
                raise FileExistsError(
                    f"{name} already exists in the root namespace (a deployment's bridge, or a "
                    f"running test session's): these test namespaces need the name"
                )
            ipr.link("del", index=index)


def _remove_root_bridges(names: tuple[str, str], prefix: str) -> None:
    """Delete the root bridges of these names that carry ``prefix`` as their alias."""
    with IPRoute() as ipr:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                if _alias(ipr, index) == prefix:
                    ipr.link("del", index=index)


def _alias(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get("ifalias") or "")


def _add_link(ipr: IPRoute, ifname: str, **spec: object) -> int:
    ipr.link("add", ifname=ifname, **spec)
    (index,) = ipr.link_lookup(ifname=ifname)
    return int(index)


def _set_up(ipr: IPRoute, ifname: str, master: int | None = None) -> None:
    (index,) = ipr.link_lookup(ifname=ifname)
    extra = {} if master is None else {"master": master}
    ipr.link("set", index=index, state="up", **extra)


def _disable_offloads(ns: str | None, ifnames: Iterable[str]) -> None:
    for ifname in ifnames:
        _ethtool(ns, ifname, *OFFLOADS_OFF)


def _ethtool(ns: str | None, ifname: str, *features: str) -> None:
    subprocess.run([*_in(ns), "ethtool", "-K", ifname, *features], check=True, capture_output=True)


def _configure_lan_host(ns: str, address: str, offloads: bool) -> Host:
    with IPRoute(netns=ns, flags=0) as ipr:
        index = _bring_up_host_link(ns, ipr, offloads)
        ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway=APPLIANCE_LAN)
        return Host(ns, "eth0", address, _mac(ipr, index))


def _configure_wan_host(ns: str, offloads: bool) -> Host:
    with IPRoute(netns=ns, flags=0) as ipr:
        index = _bring_up_host_link(ns, ipr, offloads)
        ipr.addr("add", index=index, address=GATEWAY, prefixlen=24)
        # The server addresses go on lo (this kernel has no dummy links): local, so the
        # gateway host answers for them itself.
        (lo,) = ipr.link_lookup(ifname="lo")
        for server in (SERVER_A, SERVER_B):
            ipr.addr("add", index=lo, address=server, prefixlen=32)
        return Host(ns, "eth0", GATEWAY, _mac(ipr, index))


def _bring_up_host_link(ns: str, ipr: IPRoute, offloads: bool) -> int:
    if not offloads:
        _disable_offloads(ns, ["eth0"])
    (lo,) = ipr.link_lookup(ifname="lo")
    ipr.link("set", index=lo, state="up")
    (index,) = ipr.link_lookup(ifname="eth0")
    ipr.link("set", index=index, state="up")
    wait_for(lambda: ipr.get_links(index)[0].get("operstate") == "UP", f"{ns} eth0 up")
    return int(index)


def _mac(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get("address"))


def wait_for(condition: Callable[[], object], what: str, timeout: float = LINK_TIMEOUT) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def neighbour_mac(ns: str, address: str) -> str:
    """The MAC address that namespace ``ns`` has resolved for ``address`` (after traffic to it)."""
    with IPRoute(netns=ns, flags=0) as ipr:
        for entry in ipr.get_neighbours(dst=address):
            mac = entry.get("NDA_LLADDR")
            if mac:
                return str(mac)
    raise AssertionError(f"{ns} has no neighbour entry for {address}")


Until = Callable[[list[Ether]], object]


class Capture:
    """Every frame seen on one interface of one namespace from the moment this is created.

    The AF_PACKET socket is bound when the constructor returns, so a frame sent afterwards is
    queued in its buffer even before ``frames`` drains it: no sniffer start-up race. Frames are
    returned as scapy ``Ether`` objects; scapy only parses here, it never opens a socket.
    """

    def __init__(self, ns: str, ifname: str) -> None:
        self.where = f"{ns}:{ifname}"
        self._sock = netns.create_socket(
            ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL), flags=0
        )
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        self._sock.bind((ifname, ETH_P_ALL))
        self._sock.setblocking(False)
        self._received: list[Ether] = []
        self._sent: list[Ether] = []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _drain(self, wait: float) -> None:
        while select.select([self._sock], [], [], wait)[0]:
            data, address = self._sock.recvfrom(65536)
            frames = self._sent if address[2] == PACKET_OUTGOING else self._received
            frames.append(Ether(data))
            wait = 0

    def received(self, until: Until | None = None, timeout: float = 3.0) -> list[Ether]:
        """Frames that arrived on the interface: until ``until(frames)`` holds or ``timeout``.

        Without ``until`` it waits the whole ``timeout``: that is how a test shows that
        something did *not* arrive.
        """
        return self._collect(self._received, until, timeout)

    def sent(self, until: Until | None = None, timeout: float = 3.0) -> list[Ether]:
        """Frames the namespace sent out of the interface; same waiting rule as ``received``."""
        return self._collect(self._sent, until, timeout)

    def _collect(self, frames: list[Ether], until: Until | None, timeout: float) -> list[Ether]:
        deadline = time.monotonic() + timeout
        while True:
            self._drain(min(0.05, max(0.0, deadline - time.monotonic())))
            if (until is not None and until(frames)) or time.monotonic() >= deadline:
                return list(frames)


def inject(ns: str, ifname: str, frames: Iterable[bytes]) -> int:
    """Send raw frames out of ``ifname`` in ``ns``; returns how many the kernel accepted."""
    sent = 0
    with netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0) as sock:
        sock.bind((ifname, 0))
        for frame in frames:
            with contextlib.suppress(OSError):
                sock.send(frame)
                sent += 1
    return sent


@contextlib.contextmanager
def topology(
    prefix: str, attach: Attach, offloads: bool = False, bridges: tuple[str, str] = BRIDGES
) -> Iterator[Topology]:
    """``build`` then ``destroy``, whatever happens in between."""
    built = build(prefix, attach, offloads, bridges)
    try:
        yield built
    finally:
        built.destroy()
