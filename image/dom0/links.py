"""The dom0's network plumbing through ioctls (there is no `ip` or `brctl` in the test dom0):
bridges, bridge ports, links up, and the NICs QEMU gave it, in PCI order."""

import fcntl
import socket
import struct
from pathlib import Path

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_SIOCBRADDBR, _SIOCBRADDIF = 0x89A0, 0x89A2
_SIOCSIFTXQLEN = 0x8943
_IFNAMSIZ = 16


def _ifreq(name: str, value: bytes = b"") -> bytes:
    return struct.pack(f"{_IFNAMSIZ}s24s", name.encode(), value)


def set_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        (flags,) = struct.unpack_from("16xH", fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq(name)))
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | _IFF_UP)))


def set_queue_length(name: str, frames: int) -> None:
    """The length of the link's transmit queue (`ip link set NAME txqueuelen FRAMES`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCSIFTXQLEN, _ifreq(name, struct.pack("i", frames)))


def add_bridge(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCBRADDBR, name.encode().ljust(_IFNAMSIZ, b"\0"))


def enslave(bridge: str, port: str) -> None:
    """Make `port` a port of `bridge`."""
    index = struct.pack("i", socket.if_nametoindex(port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCBRADDIF, _ifreq(bridge, index))


def nics(sysfs: Path = Path("/sys/class/net")) -> list[str]:
    """The NICs with a device behind them (QEMU's, not bridges or vifs), in device path order:
    the PCI order of QEMU's -device options."""
    devices = {link.name: (link / "device").resolve() for link in sysfs.iterdir()}
    pci = {name: str(path) for name, path in devices.items() if "/pci" in str(path)}
    return sorted(pci, key=lambda name: (pci[name], name))
