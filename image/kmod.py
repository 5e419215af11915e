"""The kernel modules the image loads, and the order to load them in.

Debian's kernel package ships no `modules.dep` (depmod makes it at install time), so the
dependencies come from each module's own `.modinfo` (`depends=`), which is what depmod reads too.
The result is the order `modules.dep` implies: every module after the modules it needs.
"""

from pathlib import Path

from image.elf import Elf
from image.errors import ImageError

# virtio_net and virtio_pci for QEMU/libvirt, virtio-rng for boot entropy, xen-netfront for Xen.
# As a Qubes-style net VM (a Xen driver domain), xen-netback makes the client VMs' vifs, and
# /dev/xen/evtchn and /dev/xen/gntdev are what a stdlib program reaches Xen's event channels and
# grant tables through (vchan, for QubesDB). Loaded always, not only in the net VM mode: outside
# Xen they refuse to load (ENODEV, as xen-netfront does), and under Xen, at READY in a 128 MiB
# PVH guest, they cost 0.1 MiB of slab (MemAvailable 52 of 92 MiB with them or without; their
# .ko files leave the rootfs once loaded, as every module's). One list, no second switch.
WANTED = (
    "virtio_pci",
    "virtio_net",
    "virtio_rng",
    "xen_netfront",
    "xen_netback",
    "xen_evtchn",
    "xen_gntdev",
)
# The reference image only: nftables with NAT chains, masquerade, DNAT/SNAT and conntrack matches.
REFERENCE = ("nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_ct")


def modules_dir(root: Path) -> Path:
    """The one `lib/modules/<version>` of the extracted kernel package."""
    found = sorted((root / "lib" / "modules").glob("*/kernel"))
    if len(found) != 1:
        raise ImageError(f"expected one kernel under {root}/lib/modules, found {len(found)}")
    return found[0].parent


def _index(moddir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores, as the kernel names them) -> its .ko file."""
    return {ko.name[:-3].replace("-", "_"): ko for ko in sorted(moddir.rglob("*.ko"))}


def _depends(ko: Path) -> list[str]:
    value = Elf(ko.read_bytes()).modinfo().get("depends", "")
    # Named as in the .ko file ("xen-privcmd"): as the index names it, dashes as underscores.
    return [name.replace("-", "_") for name in value.split(",") if name]


def load_order(moddir: Path, wanted: tuple[str, ...] = WANTED) -> list[Path]:
    """The .ko files of `wanted` and everything they depend on, dependencies first."""
    index = _index(moddir)
    order: list[Path] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name not in index:
            raise ImageError(f"kernel module {name} (needed by {chain or 'the image'}) not found")
        if index[name] in order:
            return
        for dep in _depends(index[name]):
            visit(dep, (*chain, name))
        order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order
