"""Checks of the kernel's build configuration (`/boot/config-<release>` in its package).

QEMU needs what makes the image boot at all; Xen PVH and QubesOS need more. A missing QEMU
option stops the build; a missing Xen option is reported, as the QEMU image still works.
"""

import re
from pathlib import Path

from image.errors import ImageError

# option -> why; "y" means built in, "m" a module is enough (the image loads it).
BOOT = {
    "CONFIG_BLK_DEV_INITRD": ("y", "an initramfs as the root"),
    "CONFIG_RD_GZIP": ("y", "a gzip-compressed initramfs"),
    "CONFIG_BINFMT_SCRIPT": ("y", "/init is a #! script"),
    "CONFIG_DEVTMPFS": ("y", "/dev"),
    "CONFIG_PACKET": ("y", "AF_PACKET sockets"),
    "CONFIG_MEMCG": ("y", "the NAT's memory cgroup (appliance/memcg.py)"),
    "CONFIG_SERIAL_8250_CONSOLE": ("y", "the ttyS0 console"),
    "CONFIG_VIRTIO_PCI": ("m", "virtio devices on PCI"),
    "CONFIG_VIRTIO_NET": ("m", "virtio-net NICs"),
}
XEN = {
    "CONFIG_XEN_PVH": ("y", "booting as a Xen PVH guest"),
    "CONFIG_XEN_NETDEV_FRONTEND": ("m", "Xen NICs (netfront)"),
    "CONFIG_HVC_XEN": ("y", "the hvc0 console"),
}


def read(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^(CONFIG_\w+)=(\S+)$", path.read_text(), flags=re.MULTILINE))


def missing(options: dict[str, str], wanted: dict[str, tuple[str, str]]) -> list[str]:
    """`wanted` options the config lacks, as "CONFIG_X (why)"."""
    out = []
    for name, (level, why) in wanted.items():
        have = options.get(name)
        if have != "y" and not (level == "m" and have == "m"):
            out.append(f"{name} ({why})")
    return out


def check(path: Path) -> list[str]:
    """Raise if the kernel cannot boot the image; return the Xen options it lacks."""
    options = read(path)
    lacking = missing(options, BOOT)
    if lacking:
        raise ImageError(
            f"kernel {path.name} lacks {', '.join(lacking)}",
            "pin another kernel package in image/packages.lock",
        )
    return missing(options, XEN)
