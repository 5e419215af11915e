"""The QEMU command line for the image, and the choice between KVM and TCG.

The root filesystem, build/root.qcow2 (an uncompressed squashfs whose clusters QEMU decompresses:
image/qcow2.py), is a read-only virtio disk (`root=/dev/vda`), not the initrd: an initrd is
loaded by the firmware and then copied by the kernel into a RAM disk that holds it for the VM's
life, where a disk's blocks are read only when a file is, into page cache the kernel can drop.
(Xen and Qubes hand the same files over as the initrd, build/initramfs, a zstd squashfs: the
kernel's built-in command line says `root=/dev/ram0`, and `root=` here overrides it.)

The VM gets exactly two NICs, virtio-net on host tap devices (WAN first, then LAN: the image
maps roles by PCI order), a virtio-rng, and a serial console; `-nodefaults` and no `-nic` keep
QEMU from adding a default NIC, and user-mode networking is never used. `vnet_hdr=on`, as libvirt
sets it for virtio on a tap: the NICs offer checksum and segmentation offloads, so the TCP
aggregates the appliance gets from the guest's GRO go out whole for the host to cut, and the
guest checks no checksum the host vouches for. Under TCG that makes TCP through the VM about 2.5
times as fast as with plain NICs, where the guest cuts and checksums every segment itself
(`invoke bench --vm`).
"""

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
ROOT_DISK = "vda"  # the first virtio disk: the root filesystem, here and in libvirt.xml
ROOT_FILE = "root.qcow2"  # its file in build/ (image/qcow2.py)
CMDLINE = ("console=ttyS0", "panic=-1", "quiet", f"root=/dev/{ROOT_DISK}", "ro")
MACS = ("52:54:00:4e:41:01", "52:54:00:4e:41:02")  # WAN, LAN: locally administered
ROLES = ("wan", "lan")
KVM_PROBE_SECONDS = 5.0
# qboot, not QEMU's default SeaBIOS: a firmware that does no more than hand the kernel its tables
# and jump to it (no option ROMs, no disk probing, no boot menu). Linux starts about 0.1 s sooner
# under TCG (6 boots each, alternated with SeaBIOS's, in two sessions). It comes in
# qemu-system-data, which qemu-system-x86 depends on.
FIRMWARE = "/usr/share/qemu/qboot.rom"


@dataclass(frozen=True)
class Machine:
    """What a QEMU run needs. `rootfs` is the qcow2 root disk, `taps` host tap names, WAN first."""

    kernel: Path
    rootfs: Path
    memory_mib: int
    cpus: int
    taps: tuple[str, str]
    accel: str = "tcg"
    extra_cmdline: tuple[str, ...] = ()
    no_reboot: bool = False  # tests: a guest crash or reboot ends QEMU instead of looping


def root_disk(build: Path) -> Path:
    """The root disk in a build folder: root.qcow2, or the squashfs initramfs of a build from
    before it (what `invoke bench-boot --baseline` may be given)."""
    qcow2 = build / ROOT_FILE
    return qcow2 if qcow2.exists() else build / "initramfs"


def kernel_cmdline(extra: tuple[str, ...] = ()) -> str:
    return " ".join((*CMDLINE, *extra))


def _escaped(path: Path) -> str:
    """`path` as a value in a QEMU option list, where a comma separates options."""
    return str(path).replace(",", ",,")


def _nic(role: str, tap: str, mac: str) -> list[str]:
    netdev = f"tap,id={role},ifname={tap},script=no,downscript=no,vnet_hdr=on"
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev={role},mac={mac},romfile="]


def command(machine: Machine) -> list[str]:
    """The full argv; one option and its value per line."""
    argv = [
        QEMU,
        "-nodefaults",
        "-nographic",
        "-accel", machine.accel,
        "-bios", FIRMWARE,
        "-m", str(machine.memory_mib),
        "-smp", str(machine.cpus),
        "-serial", "stdio",
        "-kernel", str(machine.kernel),
        "-append", kernel_cmdline(machine.extra_cmdline),
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    for role, tap, mac in zip(ROLES, machine.taps, MACS, strict=True):
        argv += _nic(role, tap, mac)
    # After the NICs, so their PCI slots stay where they were.
    disk_format = "qcow2" if machine.rootfs.suffix == ".qcow2" else "raw"  # raw: a bare squashfs
    drive = f"file={_escaped(machine.rootfs)},if=none,id=root,format={disk_format},readonly=on"
    argv += ["-drive", drive]
    argv += ["-device", "virtio-blk-pci,drive=root"]
    if machine.no_reboot:
        argv.append("-no-reboot")
    return argv


def format_command(argv: list[str]) -> str:
    """`argv` for a shell, one option and its value per line."""
    lines: list[list[str]] = []
    for arg in argv:
        if arg.startswith("-") or not lines or len(lines[-1]) > 1 or arg == QEMU:
            lines.append([arg])
        else:
            lines[-1].append(arg)
    return " \\\n  ".join(shlex.join(line) for line in lines)


def kvm_usable(kernel: Path, timeout: float = KVM_PROBE_SECONDS) -> bool:
    """Whether a guest really runs under KVM: /dev/kvm opens *and* a kernel boots to its panic.

    The probe boots the kernel without a root disk, so it panics at once and `-no-reboot`
    ends QEMU; a guest that hangs under KVM (as on these machines) times out instead.
    """
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    argv = [QEMU, "-nodefaults", "-nographic", "-accel", "kvm", "-m", "128",
            "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1"]  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False
    booted = b"Kernel panic" in proc.stdout or b"Linux version" in proc.stdout
    return booted and time.monotonic() - started < timeout


def choose_accel(kernel: Path) -> str:
    return "kvm" if kvm_usable(kernel) else "tcg"
