"""The Linux calls natvm makes on its network interfaces: ifreq packing, link flags, ethtool
features and sysctls. An I/O module, for the shell (a host process) and init (PID 1) alike.

Every call names the interface and takes a socket of its own (an AF_INET datagram socket, as
ip(8) and ethtool(8) use): these run a few times at start-up, never per frame, so the extra
socket costs nothing and no caller has to have one. Failures are the OSError of the ioctl; a
name that cannot fit a struct ifreq is a ValueError before any call is made.
"""

import _socket  # not socket: see appliance/shell.py
import array
import errno
import fcntl
import os
import struct

# <linux/sockios.h>, <linux/if.h>, <linux/ethtool.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCETHTOOL = 0x8913, 0x8914, 0x8946
IFF_UP = 0x1
ETHTOOL_GFLAGS, ETHTOOL_SFLAGS = 0x25, 0x26
ETH_FLAG_LRO = 1 << 15

IFNAMSIZ = 16  # with the terminating NUL
IFREQ_UNION = 24  # the largest member of struct ifreq's union (struct ifmap)


def ifreq(name: str, payload: bytes = b"") -> bytes:
    """struct ifreq: interface `name`, then `payload` as the start of its union."""
    encoded = name.encode()
    if not 0 < len(encoded) < IFNAMSIZ:
        raise ValueError(f"interface name {name!r} does not fit an ifreq")
    return struct.pack(f"{IFNAMSIZ}s", encoded) + payload.ljust(IFREQ_UNION, b"\x00")


def ioctl(request: int, argument: bytes) -> bytes:
    """`request` on a fresh AF_INET datagram socket; returns the kernel's copy of `argument`."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        return fcntl.ioctl(sock, request, argument)
    finally:
        sock.close()


def bring_up(name: str) -> None:
    """Set IFF_UP on interface `name` (if not set), leaving its other flags as they are."""
    (flags,) = struct.unpack_from("H", ioctl(SIOCGIFFLAGS, ifreq(name)), IFNAMSIZ)
    if not flags & IFF_UP:
        ioctl(SIOCSIFFLAGS, ifreq(name, struct.pack("H", flags | IFF_UP)))


def _ethtool(name: str, command: int, value: int = 0) -> int | None:
    """struct ethtool_value `command` on `name`: its value, or None if the driver has none."""
    # ifreq's union holds a pointer to the struct: an array's buffer gives one without ctypes,
    # and the kernel writes the answer there.
    request = array.array("B", struct.pack("II", command, value))
    address, _ = request.buffer_info()
    try:
        ioctl(SIOCETHTOOL, ifreq(name, struct.pack("P", address)))
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            return None  # the driver has no such offload: nothing to turn off
        raise
    return int(struct.unpack_from("II", request)[1])


def disable_lro(name: str) -> None:
    """Turn LRO off on `name`: LRO's merged frames, unlike GRO's, are not fit to forward (the
    kernel's own forwarding turns it off too)."""
    flags = _ethtool(name, ETHTOOL_GFLAGS)
    if flags is not None and flags & ETH_FLAG_LRO:
        _ethtool(name, ETHTOOL_SFLAGS, flags & ~ETH_FLAG_LRO)


def write_sysctls(settings: dict[str, str], proc_sys: str = "/proc/sys") -> None:
    """Write each sysctl (path under /proc/sys -> value) the kernel has; skip the others."""
    for key, value in settings.items():
        target = os.path.join(proc_sys, key)
        if os.path.exists(target):  # no IPv6 in the kernel means nothing to disable
            write_text(target, value)


# The files natvm reads and writes are the kernel's (/proc, /sys, cgroups) and a few of its own:
# plain strings and these two, not pathlib, which with its imports cost 0.15 s of every boot
# under TCG.
def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
