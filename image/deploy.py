"""Deployment files for the built kernel + initramfs: libvirt, Xen `xl`, and QubesOS.

All are generated from one `Deployment` (`deployment` takes it from ops-config.json as the
appliance's config parser reads it): memory, CPUs, the bridges of the WAN and LAN NICs
(`RunConfig.Nics[].BridgeName`). NIC order is the role: the first interface is WAN, the second LAN,
as the image's init maps them.

libvirt.xml names no build directory, so it works wherever build/ is copied: libvirt needs
absolute kernel and disk paths, so the file holds `@BUILD_DIR@` where its folder's path goes, and
libvirt-define.sh, beside it, puts in the path of the folder it is in and runs `virsh define`.
xen.cfg names vmlinuz and initramfs relative to itself, and xen-create.sh, beside it, runs
`xl create` with their absolute paths as overrides (image/dom0/xlcfg.py says why: xl's restart on
reboot); the Xen tier's dom0 runs the same command line on the file as built.
"""

import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path, PurePosixPath
from typing import Protocol

from image import qemu
from image.dom0 import xlcfg

NAME = "natvm"
XEN_MACS = ("00:16:3e:4e:41:01", "00:16:3e:4e:41:02")  # Xen's OUI; WAN, LAN
XEN_CMDLINE = ("console=hvc0", "panic=-1", "quiet")
# A Qubes net VM serves client vifs (netvm mode), and has no LAN for the baked port forward.
NETVM_WORDS = ("natvm.netvm=1", "natvm.forward=none")
QUBES_KERNEL_DIR = "/var/lib/qubes/vm-kernels"
DEFAULT_BRIDGES = ("natvm-wan", "natvm-lan")  # for a NIC without BridgeName
BUILD_DIR = "@BUILD_DIR@"  # in libvirt.xml: the absolute path of its folder
# libvirt's domain type for each QEMU accelerator: libvirt.xml has kvm's, libvirt-define.sh can
# swap in tcg's for a host without usable KVM.
LIBVIRT_TYPES = {"kvm": "kvm", "tcg": "qemu"}
XEN_CFG = "xen.cfg"


class NicSettings(Protocol):
    """One of `RunConfig.Nics[]`, as `appliance.config.Nic` holds it."""

    @property
    def address(self) -> IPv4Interface: ...
    @property
    def gateway(self) -> IPv4Address | None: ...
    @property
    def bridge(self) -> str | None: ...


class RunSettings(Protocol):
    """What the host side reads of ops-config.json's `RunConfig`, as
    `appliance.config.ApplianceConfig` holds it. A protocol, not that class: image/ copies the
    appliance into the image and never imports it."""

    @property
    def wan(self) -> NicSettings: ...
    @property
    def lan(self) -> NicSettings: ...
    @property
    def memory_mib(self) -> int: ...
    @property
    def cpus(self) -> int: ...


@dataclass(frozen=True)
class Deployment:
    memory_mib: int
    cpus: int
    bridges: tuple[str, str]  # WAN, LAN
    kernel: Path  # where the files are (or will be) on the hypervisor host
    initrd: Path


def deployment(settings: RunSettings, out: Path) -> Deployment:
    """The deployment of the kernel and initramfs built into `out`."""
    wan, lan = DEFAULT_BRIDGES
    bridges = (settings.wan.bridge or wan, settings.lan.bridge or lan)
    return Deployment(
        settings.memory_mib, settings.cpus, bridges, out / "vmlinuz", out / "initramfs"
    )


def _element(parent: ET.Element, tag: str, text: str = "", **attributes: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attributes)
    if text:
        child.text = text
    return child


LIBVIRT_NOTE = f"""
  natvm's libvirt domain. {BUILD_DIR} stands for the absolute path of this file's folder (libvirt
  needs absolute kernel and disk paths): libvirt-define.sh, in the same folder, puts it in and
  runs virsh define. The folder must be readable by libvirt's QEMU user (libvirt-qemu on Debian).
"""


def libvirt_xml(vm: Deployment) -> str:
    """A libvirt domain: direct kernel boot, the root filesystem on a read-only virtio disk, two
    virtio NICs on bridges, serial console."""
    domain = ET.Element("domain", type=LIBVIRT_TYPES["kvm"])
    _element(domain, "name", NAME)
    _element(domain, "memory", str(vm.memory_mib), unit="MiB")
    _element(domain, "vcpu", str(vm.cpus))
    os_ = _element(domain, "os")
    _element(os_, "type", "hvm", arch="x86_64", machine="pc")
    _element(os_, "kernel", f"{BUILD_DIR}/vmlinuz")
    _element(os_, "cmdline", qemu.kernel_cmdline())
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "restart")):
        _element(domain, f"on_{event}", action)
    devices = _element(domain, "devices")
    # The root filesystem as a read-only virtio disk, as qemu.command attaches it.
    disk = _element(devices, "disk", type="file", device="disk")
    _element(disk, "driver", name="qemu", type="qcow2")
    _element(disk, "source", file=f"{BUILD_DIR}/{qemu.ROOT_FILE}")
    _element(disk, "target", dev=qemu.ROOT_DISK, bus="virtio")
    _element(disk, "readonly")
    for bridge, mac in zip(vm.bridges, qemu.MACS, strict=True):
        interface = _element(devices, "interface", type="bridge")
        _element(interface, "source", bridge=bridge)
        _element(interface, "mac", address=mac)
        _element(interface, "model", type="virtio")
        _element(interface, "rom", enabled="no")
    serial = _element(devices, "serial", type="pty")
    _element(serial, "target", port="0")
    console = _element(devices, "console", type="pty")
    _element(console, "target", type="serial", port="0")
    rng = _element(devices, "rng", model="virtio")
    _element(rng, "backend", "/dev/urandom", model="random")
    _element(devices, "memballoon", model="none")
    ET.indent(domain)
    note = ET.tostring(ET.Comment(LIBVIRT_NOTE), encoding="unicode")
    return note + "\n" + ET.tostring(domain, encoding="unicode") + "\n"


def _this_folder(allowed: str, syntax: str) -> str:
    """Shell lines that set $dir to the absolute path of the script's folder, or stop if that path
    has a character other than `allowed` (a bracket expression's), space and '-', which `syntax`
    would take for syntax."""
    return f"""dir=$(cd "$(dirname "$0")" && pwd -P)
case $dir in
  *[!{allowed}\\ -]*)  # a character that {syntax} would take for syntax
    echo "$0: move this folder to a path without special characters, not: $dir" >&2; exit 1 ;;
esac
"""


def libvirt_define_script() -> str:
    """libvirt-define.sh: defines libvirt.xml from the folder it is in, wherever that is now."""
    kvm, tcg = LIBVIRT_TYPES["kvm"], LIBVIRT_TYPES["tcg"]
    folder = _this_folder("A-Za-z0-9._/+,:=@~", "sed or XML")
    return f"""#!/bin/sh
# Define {NAME} as a libvirt domain from libvirt.xml in this folder, wherever the folder is now:
# {BUILD_DIR} in libvirt.xml becomes this folder's absolute path. As root:
#   sh libvirt-define.sh [{kvm}|{tcg}] && virsh start {NAME}
# ({tcg}: QEMU's emulation, slower, for a host without usable KVM)
set -eu
type=${{1:-{kvm}}}
case $type in {kvm}|{tcg}) ;; *) echo "usage: $0 [{kvm}|{tcg}]" >&2; exit 2 ;; esac
{folder}sed -e "s|{BUILD_DIR}|$dir|g" -e "s|<domain type=\\"{kvm}\\">|<domain type=\\"$type\\">|" \\
  "$dir/libvirt.xml" | virsh define /dev/stdin
"""


def xl_config(vm: Deployment) -> str:
    """An `xl` config for a PVH guest: the same kernel and initramfs, console on hvc0. It names
    them relative to its own folder: xen-create.sh makes them absolute."""
    vifs = ", ".join(
        xlcfg.quote(f"mac={mac},bridge={bridge}")
        for bridge, mac in zip(vm.bridges, XEN_MACS, strict=True)
    )
    lines = [
        f"# {NAME} as a Xen PVH guest. Create it with xen-create.sh, from this folder: it gives xl",
        "# the absolute paths of the kernel and ramdisk named below, which xl needs to restart",
        "# the guest on reboot.",
        f"name = {xlcfg.quote(NAME)}",
        'type = "pvh"',
        f"kernel = {xlcfg.quote(vm.kernel.name)}",
        f"ramdisk = {xlcfg.quote(vm.initrd.name)}",
        f"cmdline = {xlcfg.quote(' '.join(XEN_CMDLINE))}",
        f"memory = {vm.memory_mib}",
        f"maxmem = {vm.memory_mib}",
        f"vcpus = {vm.cpus}",
        f"vif = [ {vifs} ]",
        'on_poweroff = "destroy"',
        'on_reboot = "restart"',
        'on_crash = "restart"',
    ]
    return "".join(line + "\n" for line in lines)


def _shell_word(arg: str) -> str:
    """`arg` in double quotes for sh, with $ left to expand: the arguments of `xl create` hold
    $dir and the build's file names, nothing else that sh would read."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def xen_create_script(cfg: str) -> str:
    """xen-create.sh: `xl create` on xen.cfg (whose text is `cfg`) from the folder it is in,
    wherever that is now."""
    command = " ".join(
        _shell_word(arg) for arg in xlcfg.create_args(PurePosixPath("$dir") / XEN_CFG, cfg)
    )
    # No '=' in the folder's path: xl would take the file for a key=value override.
    folder = _this_folder("A-Za-z0-9._/+,:@~", "xl")
    return f"""#!/bin/sh
# Create {NAME} under Xen from {XEN_CFG} in this folder, wherever the folder is now: xl gets the
# absolute paths of the kernel and ramdisk {XEN_CFG} names relative to it (xl restarts {NAME} on
# reboot from /, where a relative name finds nothing). As root:
#   sh xen-create.sh [options of xl create, key=value overrides]   (-c: attach the console)
set -eu
{folder}exec xl {command} "$@"
"""


def qubes_commands(vm: Deployment, name: str = NAME) -> list[list[str]]:
    """The dom0 commands that create the net VM (after the kernel folder is installed)."""
    properties = {
        "kernel": NAME,
        "kernelopts": " ".join((*XEN_CMDLINE, *NETVM_WORDS)),
        "memory": str(vm.memory_mib),
        "maxmem": str(vm.memory_mib),
        "vcpus": str(vm.cpus),
        "virt_mode": "pvh",
        "provides_network": "True",
        "netvm": "sys-net",
    }
    create = ["qvm-create", "--class", "StandaloneVM", "--label", "green"]
    for key, value in properties.items():
        create += ["--property", f"{key}={value}"]
    return [
        [*create, name],
        ["qvm-features", name, "qubes-firewall", "1"],
        ["qvm-features", name, "no-default-kernelopts", "1"],
    ]


def qubes_script(vm: Deployment) -> str:
    """install.sh for dom0: copies vm-kernels/natvm into place and creates the VM."""
    commands = "\n".join(shlex.join(argv) for argv in qubes_commands(vm))
    return f"""#!/bin/sh
# Install natvm as a QubesOS net VM. Run in dom0, from this folder, after copying it there:
#   qvm-run --pass-io BUILDVM 'tar -C natvm/build -c qubes' | tar -x && sh qubes/install.sh
set -eu
cd "$(dirname "$0")"
sudo mkdir -p {QUBES_KERNEL_DIR}/{NAME}
sudo cp vm-kernels/{NAME}/vmlinuz vm-kernels/{NAME}/initramfs {QUBES_KERNEL_DIR}/{NAME}/
{commands}
echo "created {NAME}: start it with 'qvm-start {NAME}', then set it as the netvm of your VMs"
"""
