"""The Xen tier's client VM: what a Qubes client qube is to its net VM, as small as boots.

Test equipment, not product (built by `invoke build --xen-host` into build/xen-host/client/):
Debian's cloud kernel (pinned in image/packages.lock; natvm boots its own) and a tiny
initramfs, busybox-static and the kernel's xen-netfront with its dependencies. Not natvm's own
kernel: under the nested Xen here, clients booting it were triple-faulted at Xen's VM entry in
most runs of the tier (the emulator's nested-SVM fault, see tests/support/xenclients.py), and a
client is equipment the tier must be able to count on. Its /init is a busybox shell script that does
what Qubes' setup-ip does in a client: eth0 gets the client's /32 (`client_ip=` on the kernel
command line; the kernel hands `key=value` words without a dot to init's environment), the
gateway (`client_gw=`, the net VM's address) gets netback's MAC fe:ff:ff:ff:ff:ff pinned in the
neighbour table, the default route goes through it on-link, and DNS is 10.139.1.1 (the shell
function `setup_eth0` does it again for a vif attached anew). It prints
READY_LINE, turns the console's echo off, then runs each line that comes in on its console
(hvc0: the dom0 writes to the domain's console pty) as a shell command; the tests make each
command print a marker with its exit status.

Outputs: client/vmlinuz, client/initramfs (byte-identical from build to build, as the images).
`ClientVm.xl_config` is a client's xl configuration: one vif, `backend=<net VM>,ip=<address>`.
"""

from dataclasses import dataclass
from pathlib import Path

from image import cpio, initramfs, kmod
from image.dom0.xlcfg import quote

BUSYBOX = "bin/busybox"
MODULE_LIST = "etc/client/modules"
MODULES = ("xen_netfront",)
READY_LINE = "CLIENT READY"
DNS = "10.139.1.1"  # Qubes' first virtual DNS server, which the net VM translates
NETBACK_MAC = "fe:ff:ff:ff:ff:ff"  # xen-netback's vif MAC, the gateway's MAC for every client
NIC_WAIT_TENTHS = 300
# The cloud kernel with lockdown holds less at boot (see MEMORY_MIB).
LEAN = ("lockdown=confidentiality",)
# xl loads the kernel into the domain's memory before it boots: at 48 MiB that fails ("segment
# kernel too large (0x2e00 > 0x3000 - 0x1000 pages)"), the kernel's segment being 46 MiB; at
# 72 MiB without lockdown the kernel panics while booting ("System is deadlocked on memory").
MEMORY_MIB = 96
INIT = f"""#!/bin/busybox sh
# The Xen tier's client VM (see image/xenclient.py): a Qubes-style /32 on eth0, then the
# console's lines are its commands.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "client: fatal: $*"; poweroff -f; }}
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \\
  || fail "mounts"
for ko in $(cat /{MODULE_LIST}); do insmod "$ko" || fail "insmod $ko"; done
[ -n "$client_ip" ] && [ -n "$client_gw" ] || fail "client_ip= and client_gw= are not set"
# What Qubes' setup-ip does when a vif appears; a command of its own, for a vif attached again.
# (busybox's `ip neigh` only shows and flushes: its `arp -s` pins the gateway's MAC.)
setup_eth0() {{
  tenths=0
  until [ -e /sys/class/net/eth0 ]; do
    tenths=$((tenths + 1))
    [ $tenths -gt {NIC_WAIT_TENTHS} ] && return 1
    sleep 0.1
  done
  ip link set eth0 up && ip addr add "$client_ip/32" dev eth0 \\
    && ip route add "$client_gw/32" dev eth0 \\
    && ip route add default via "$client_gw" dev eth0 onlink \\
    && arp -i eth0 -s "$client_gw" {NETBACK_MAC}
}}
ip link set lo up
setup_eth0 || fail "eth0"
echo "nameserver {DNS}" > /etc/resolv.conf
stty -echo
echo "{READY_LINE} $client_ip via $client_gw"
# Each line in a subshell: a non-interactive shell exits on a syntax error in eval, which here
# would end PID 1 (a kernel panic) instead of the one command.
while read -r line; do (eval "$line"); done
fail "the console closed"
"""


def _skeleton() -> list[cpio.Entry]:
    return [
        *(cpio.directory(d) for d in ("bin", "proc", "sys", "dev", "etc")),
        cpio.directory("tmp", 0o1777),
        cpio.char_device("dev/console", 5, 1),
        cpio.file("init", INIT.encode(), 0o755),
    ]


def _modules(root: Path) -> list[cpio.Entry]:
    order = kmod.load_order(kmod.modules_dir(root), MODULES)
    paths = [str(ko.relative_to(root)) for ko in order]
    return [
        cpio.file(MODULE_LIST, "".join(f"/{p}\n" for p in paths).encode()),
        *(cpio.file(p, (root / p).read_bytes()) for p in paths),
    ]


def archive(root: Path) -> bytes:
    """The client's initramfs, compressed, from the extracted kernel and busybox packages."""
    busybox = cpio.file(BUSYBOX, (root / BUSYBOX).read_bytes(), 0o755)
    return initramfs.compress(cpio.archive([*_skeleton(), busybox, *_modules(root)]))


def vmlinuz(root: Path) -> bytes:
    return sorted((root / "boot").glob("vmlinuz-*"))[0].read_bytes()


@dataclass(frozen=True)
class ClientVm:
    """One client domain: its name, its Qubes-style address, the net VM's address (its
    gateway) and the net VM's domain name (the backend of its vif)."""

    name: str
    address: str
    gateway: str
    backend: str
    memory_mib: int = MEMORY_MIB

    def vif(self) -> str:
        """The vif spec, as Qubes' libvirt template gives a client (no bridge, no script: the
        backend domain sets the vif up itself)."""
        return f"backend={self.backend},ip={self.address}"

    def xl_config(self, kernel: str, ramdisk: str) -> str:
        """An xl configuration (PVH, console hvc0) booting `kernel` and `ramdisk` (dom0 paths)."""
        words = ("console=hvc0", "panic=-1", "quiet", *LEAN)
        cmdline = (*words, f"client_ip={self.address}", f"client_gw={self.gateway}")
        lines = [
            f"name = {quote(self.name)}",
            'type = "pvh"',
            f"kernel = {quote(kernel)}",
            f"ramdisk = {quote(ramdisk)}",
            f"cmdline = {quote(' '.join(cmdline))}",
            f"memory = {self.memory_mib}",
            "vcpus = 1",
            f"vif = [ {quote(self.vif())} ]",
            *(f'on_{event} = "destroy"' for event in ("poweroff", "reboot", "crash")),
        ]
        return "".join(line + "\n" for line in lines)
