"""The kernel-NAT reference: Linux forwards and translates, configured as the appliance is.

Why: `invoke bench --vm` compares natvm with Linux's NAT *inside the same VM* (same kernel, same
virtio NICs, same QEMU settings), so the difference is the NAT and nothing else. This is
benchmark scaffolding, not product: a guest program that only the reference initramfs
(`invoke build --reference`) carries, with /usr/sbin/nft and the nftables modules. Its /init
calls `main`, which does PID 1's duties as natvm's /init does (appliance/init.py) and then
`run` where natvm would run its shell. The host side of `image/` never imports it: it is copied.

`run` gives the NICs the addresses of ops-config.json (WAN address/prefix and default route via
the gateway, LAN address/prefix) with ioctls, turns forwarding on, loads `ruleset` with nft and
prints the appliance's READY line. `ruleset` is also what the host-mode reference
(tests/routers.py KernelNat) loads, built from the config: masquerade out of the WAN NIC within
the configured port range, each port forward as DNAT (a range maps one-to-one), hairpin SNAT,
and a forward filter that admits new flows from the LAN and forwarded ports only. Linux's own
filtering is address-and-port-dependent whatever `filtering` says, and its timeouts are its own.

The pure parts (`ruleset`, `sysctls`, `ifreq_address`, `rtentry_default_route`) are
unit-tested on the host; the rest is thin I/O.
"""

import os
import select
import signal
import socket
import struct
import time
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from types import FrameType

from appliance import init, linux, shell
from appliance.config import ApplianceConfig, PortForward

NFT = "/usr/sbin/nft"
RULESET_FILE = "/tmp/natvm-reference.nft"
TABLE = "natvm_reference"
NFT_TIMEOUT = 30.0  # seconds: nft never takes this long; PID 1 must not wait for ever

_SIOCSIFADDR, _SIOCSIFNETMASK, _SIOCADDRT = 0x8916, 0x891C, 0x890B
_RTF_UP, _RTF_GATEWAY = 0x1, 0x2
# struct rtentry (x86_64): pad1, dst, gateway, genmask, flags, pad2, pad3, pad4, metric, dev,
# mtu, window, irtt; native alignment gives the C layout and "0L" its trailing padding.
_RTENTRY = "@L16s16s16sHhLPhPLLH0L"


class ReferenceError(init.InitError):
    """Linux's NAT could not be set up; a one-line reason (PID 1 logs it and reboots)."""


def _dnat(forward: PortForward, wan: IPv4Address) -> str:
    proto, host = forward.protocol.value, forward.lan_host
    first, last = forward.external_first, forward.external_last
    if first == last:
        return f"ip daddr {wan} {proto} dport {first} dnat to {host}:{forward.lan_first}"
    match = f"ip daddr {wan} {proto} dport {first}-{last}"
    if forward.lan_first == first:
        return f"{match} dnat to {host}"  # the ports stay as they are
    # nft 1.0 has no port offset: a shifted range is a map, one element per port.
    pairs = ", ".join(f"{p} : {forward.lan_port(p)}" for p in range(first, last + 1))
    return f"{match} dnat to {host} : {proto} dport map {{ {pairs} }}"


def ruleset(config: ApplianceConfig, wan: str, lan: str) -> str:
    """The nftables ruleset that makes Linux the NAT `config` describes, on NICs `wan`, `lan`."""
    address, nat = config.wan.address.ip, config.nat
    prerouting = [_dnat(forward, address) for forward in nat.port_forwards]
    ping_filter = "" if nat.ping_on_wan else f'iifname "{wan}" icmp type echo-request drop'
    lines = [
        f"table ip {TABLE} {{",
        "    chain prerouting {",
        "        type nat hook prerouting priority dstnat; policy accept;",
        *(f"        {rule}" for rule in prerouting),
        "    }",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        # nft takes a port range only after a transport match; ICMP keeps its own ids.
        f'        oifname "{wan}" meta l4proto {{ tcp, udp }} masquerade to '
        f":{nat.port_first}-{nat.port_last}",
        f'        oifname "{wan}" masquerade',
        # Hairpinning: a LAN host reaching a forward through the WAN address gets the answer
        # from the WAN address, as it expects, not straight from the other LAN host.
        f'        oifname "{lan}" ip saddr {config.lan.address.network} ct status dnat '
        f"snat to {address}",
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "        ct state invalid drop",
        "        ct state established,related accept",
        f'        iifname "{lan}" oifname "{wan}" accept',
        "        ct status dnat accept",
        "    }",
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        *([f"        {ping_filter}"] if ping_filter else []),
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def sysctls(wan: str, lan: str) -> dict[str, str]:
    """Sysctls (path under /proc/sys -> value) of a plain Linux router on `wan` and `lan`."""
    return {
        "net/ipv6/conf/all/disable_ipv6": "1",
        "net/ipv6/conf/default/disable_ipv6": "1",
        "net/ipv4/ip_forward": "1",
        # Hairpinned flows leave the NIC they came in on: no ICMP redirects for them.
        "net/ipv4/conf/all/send_redirects": "0",
        f"net/ipv4/conf/{lan}/send_redirects": "0",
        f"net/ipv4/conf/{wan}/send_redirects": "0",
    }


def _sockaddr_in(address: IPv4Address) -> bytes:
    return struct.pack("=H2x4s8x", socket.AF_INET, address.packed)


def ifreq_address(name: str, address: IPv4Address) -> bytes:
    """struct ifreq holding `address` for interface `name` (SIOCSIFADDR, SIOCSIFNETMASK)."""
    try:
        return linux.ifreq(name, _sockaddr_in(address))
    except ValueError as error:
        raise ReferenceError(str(error)) from None


def rtentry_default_route(gateway: IPv4Address) -> bytes:
    """struct rtentry for SIOCADDRT: 0.0.0.0/0 via `gateway` (the kernel picks the NIC)."""
    anywhere = _sockaddr_in(IPv4Address(0))
    flags = _RTF_UP | _RTF_GATEWAY
    return struct.pack(
        _RTENTRY, 0, anywhere, _sockaddr_in(gateway), anywhere, flags, 0, 0, 0, 0, 0, 0, 0, 0
    )


def _ioctl(request: int, argument: bytes, what: str) -> None:
    try:
        linux.ioctl(request, argument)
    except OSError as error:
        raise ReferenceError(f"{what}: {os.strerror(error.errno or 0)}") from None


def set_address(name: str, interface: IPv4Interface) -> None:
    """Address then netmask: SIOCSIFADDR alone would give a classful mask."""
    _ioctl(_SIOCSIFADDR, ifreq_address(name, interface.ip), f"address {interface} on {name}")
    _ioctl(_SIOCSIFNETMASK, ifreq_address(name, interface.netmask), f"netmask on {name}")


def add_default_route(gateway: IPv4Address) -> None:
    _ioctl(_SIOCADDRT, rtentry_default_route(gateway), f"default route via {gateway}")


def require_nft(nft: str = NFT) -> None:
    if not os.access(nft, os.X_OK):
        raise ReferenceError(f"the kernel NAT reference needs {nft}, which this image lacks")


def load_ruleset(text: str, nft: str = NFT, path: str = RULESET_FILE) -> None:
    """`nft -f` the ruleset; its first error line becomes the exception's message."""
    require_nft(nft)
    Path(path).write_text(text)
    read_end, write_end = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2)]
    try:
        pid = os.posix_spawn(nft, [nft, "-f", path], {}, file_actions=actions)
    finally:
        os.close(write_end)
    output = _read_all(read_end, NFT_TIMEOUT)
    if output is None:
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    if output is None:
        raise ReferenceError(f"nft -f {path} did not finish in {NFT_TIMEOUT:.0f} s")
    if os.waitstatus_to_exitcode(status) != 0:
        first = next((line for line in output.splitlines() if line.strip()), "no output")
        raise ReferenceError(f"nft -f {path} failed: {first.strip()}")


def _read_all(fd: int, timeout: float) -> str | None:
    """Everything written to pipe `fd` until its writer closes it, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)
    finally:
        os.close(fd)


def _mac(name: str) -> str:
    return Path(f"/sys/class/net/{name}/address").read_text().strip()


def ready_line(config: ApplianceConfig, wan: str, lan: str, macs: tuple[str, str]) -> str:
    """The appliance's READY line, so that every waiter works unchanged."""
    return shell.ready_line(config, wan, lan, macs) + " (kernel NAT reference)"


def run(config: ApplianceConfig, wan: str, lan: str) -> None:
    """Make Linux the NAT of `config`, say READY, and wait for SIGTERM (then return)."""
    init.log(
        f"kernel NAT reference: WAN {wan} {config.wan.address}  LAN {lan} {config.lan.address}"
    )
    require_nft()  # before touching anything
    linux.write_sysctls(sysctls(wan, lan))
    set_address(wan, config.wan.address)
    set_address(lan, config.lan.address)
    for name in (wan, lan):
        linux.bring_up(name)
    if config.wan.gateway is not None:
        add_default_route(config.wan.gateway)
    load_ruleset(ruleset(config, wan, lan))
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    shell.log_line(ready_line(config, wan, lan, (_mac(wan), _mac(lan))))
    while not stopping:
        time.sleep(1.0)
    shell.log_line("stopped")


def main() -> None:
    """The reference image's /init: PID 1's duties, then Linux as the NAT. Never returns."""
    init.main(run)
