"""PID 1 in the image: the duties an init system would have, then the appliance itself.

Theory of operation: the kernel runs /init (a Python script) with the console as stdio; it calls
`main`, which mounts /proc, /sys and /dev (the kernel has every driver built in: there are no
modules to load), waits for the NICs, names the first WAN
and the second LAN (by bus address order: PCI under QEMU, vif number under Xen), brings them up
with *no* IP configuration and sysctls that keep the kernel's own stack off them, reads the baked
ops-config.json with `natvm.*` overrides from the kernel command line, and runs the appliance
as its child process, which it supervises.

Supervision: the appliance runs in a forked child (copy-on-write: nothing is imported again), the
one process the kernel's OOM killer may pick (oom_score_adj 1000; PID 1 it never kills, and
without another candidate it would panic). When the child dies, PID 1 says how (exit status or
signal) and how often, and starts it again: at once after a long life, else after a back-off
doubling up to `RESTART_DELAY_MAX`. The child keeps its flows in `STATE_DIR` (a tmpfs) and a
new one restores them, so established connections survive. A child that exits with
`EXIT_FATAL` found something restarting cannot fix (a NIC it cannot use): that, and any failure
of PID 1's own duties (a bad configuration included), is logged in one line and the VM reboots
(`reboot(RB_AUTOBOOT)`), so the hypervisor sees it; `panic=-1` covers a crash of PID 1 itself.
A clean stop (SIGTERM to PID 1, passed on to the child) powers the VM off.

Rules: PID 1 must never hang and never exit silently. Boot entropy: /dev/urandom exists in the
root filesystem before /dev is mounted (so Python's hash seed never waits), and virtio-rng feeds the
kernel under QEMU.

Everything here imports at module level, but for a net VM's modules (`NET_VM_MODULES`: its shell
and engine, Xen's and QubesDB's), which `boot` imports only when the configuration asks for a net
VM: a two-NIC appliance never loads them (a tenth of a second and more in the guest's
`-X importtime`). The image builder finds the stdlib modules the image needs by importing this
module and those.
"""

import functools
import gc
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from appliance import config as config_module
from appliance import libc, linux, memcg, shell
from appliance.config import ConfigError

if TYPE_CHECKING:
    from appliance import netvmshell, qubesdblink

# Imported by `boot` in PID 1, before the fork, so that every child shares them.
NET_VM_MODULES = (
    "appliance.driverdomain",
    "appliance.netvmshell",
    "appliance.qubesdblink",
    "appliance.xenstore",
)

CONFIG_FILE = "/etc/natvm/ops-config.json"
NIC_WAIT_SECONDS = 30.0
NIC_ROLES = ("WAN", "LAN")  # in bus order
REBOOT_DELAY_SECONDS = 3.0
STATE_DIR = "/run/natvm"  # a tmpfs: memory, gone with the VM
EXIT_FATAL = 78  # the child's exit status for "restarting cannot help" (sysexits' EX_CONFIG)
RESTART_DELAY_FIRST, RESTART_DELAY_MAX = 0.5, 30.0  # seconds
STABLE_SECONDS = 30.0  # a child that lived this long is restarted at once
# How long the net VM waits for QubesDB's database at start: dom0 answers in well under a
# second; nested under TCG here, a few.
QUBESDB_WAIT = 15.0

_MOUNTS = (
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2"),  # the NAT's memory limit (appliance/memcg.py)
    # The root is read-only (image/squashfs.py): STATE_DIR lives on /run; /tmp as Linux has it
    # (the benchmark's reference image writes its ruleset there).
    ("tmpfs", "/run", "tmpfs"),
    ("tmpfs", "/tmp", "tmpfs"),
)
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_RB_AUTOBOOT, _RB_POWER_OFF = 0x01234567, 0x4321FEDC

# Written before a NIC goes up: no IPv6 (no SLAAC, DAD or router solicitations), never answer
# ARP, never forward or answer ICMP. The NICs have no address, so this is a second fence.
_GLOBAL_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
    "net/ipv4/conf/all/arp_ignore": "8",
    "net/ipv4/ip_forward": "0",
    "net/ipv4/icmp_echo_ignore_all": "1",
}
_NIC_SYSCTLS = ("net/ipv6/conf/{}/disable_ipv6=1", "net/ipv4/conf/{}/arp_ignore=8")


class InitError(Exception):
    """A failure of PID 1's duties, with a one-line reason."""


def log(message: str) -> None:
    print(f"natvm: {message}", flush=True)


def uptime() -> float:
    return float(linux.read_text("/proc/uptime").split()[0])


def _check(result: int, what: str) -> None:
    if result != 0:
        raise InitError(f"{what}: {os.strerror(libc.last_error())}")


def mount_filesystems() -> None:
    for source, target, fstype in _MOUNTS:
        os.makedirs(target, exist_ok=True)
        flags = _MS_NOSUID | (0 if fstype == "devtmpfs" else _MS_NODEV | _MS_NOEXEC)
        result = libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None)
        _check(result, f"mount {fstype} on {target}")


_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def device_key(path: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for a device path: PCI addresses (fixed-width hex) compare as text, and other
    numbers by value, so "vif-2" comes before "vif-10"."""
    key: list[tuple[int, int | str]] = []
    for part in re.split(r"(\d+)", path):
        if part:
            key.append((0, int(part)) if part.isdigit() else (1, part))
    pci = _PCI_ADDRESS.findall(path)
    return tuple((2, address) for address in pci) + tuple(key)


def order_nics(devices: dict[str, str]) -> list[str]:
    """NIC names ordered by their device path (PCI address, or Xen vif number), then name."""
    return sorted(devices, key=lambda name: (device_key(devices[name]), device_key(name)))


def _device_paths(sysfs: str) -> dict[str, str]:
    found = {}
    for name in os.listdir(sysfs):
        device = os.path.join(sysfs, name, "device")
        if os.path.exists(device):
            found[name] = os.path.realpath(device)
    return found


def wait_for_nics(count: int, sysfs: str = "/sys/class/net") -> list[str]:
    deadline = time.monotonic() + NIC_WAIT_SECONDS
    while True:
        devices = _device_paths(sysfs)
        if len(devices) >= count:
            return order_nics(devices)[:count]
        if time.monotonic() > deadline:
            names = ", ".join(sorted(devices)) or "none"
            raise InitError(
                f"found {len(devices)} NIC(s) ({names}) after "
                f"{NIC_WAIT_SECONDS:.0f} s, need {count} ({', '.join(NIC_ROLES[:count])})"
            )
        time.sleep(0.05)


def nic_sysctls(names: Iterable[str]) -> dict[str, str]:
    """The sysctls (path under /proc/sys -> value) that keep the kernel off the NICs."""
    settings = dict(_GLOBAL_SYSCTLS)
    for name in names:
        for template in _NIC_SYSCTLS:
            key, value = template.format(name).split("=")
            settings[key] = value
    return settings


def memory_summary(meminfo: str) -> str:
    """ "available/total MiB" from /proc/meminfo, for the boot log (the VM's memory is small)."""
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    total, available = (int(fields[k].split()[0]) // 1024 for k in ("MemTotal", "MemAvailable"))
    return f"{available}/{total} MiB available"


# The /proc/meminfo fields the boot log breaks the guest's memory into: the files Python read from
# the squashfs root are in the page cache (Cached, which the kernel may drop again), the squashfs
# itself, under Xen, in the RAM disk (no field of its own), the flow journal on /run in Shmem, the
# kernel's objects in Slab, and the appliance's own heap is its RssAnon (its RSS also counts the
# mapped python3.11 and libraries, which are in Cached). MemTotal is what the kernel image left.
_BREAKDOWN = ("MemTotal", "MemFree", "Cached", "Shmem", "Slab", "PageTables", "KernelStack")


def memory_breakdown(meminfo: str, status: str) -> str:
    """ "MemTotal=80.0 MemFree=40.0 ... RssAnon=7.9 MiB" from /proc/meminfo and /proc/self/status,
    so that a boot log says where a small VM's memory went."""
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    own = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    parts = [
        f"{key}={int(table[key].split()[0]) / 1024:.1f}"
        for table, keys in ((fields, _BREAKDOWN), (own, ("RssAnon",)))
        for key in keys
        if key in table
    ]
    return " ".join(parts) + " MiB"


def load_configuration() -> config_module.ApplianceConfig:
    """The baked configuration with the kernel command line's natvm.* overrides."""
    baked = config_module.load_config(CONFIG_FILE)
    overrides = config_module.parse_kernel_cmdline(linux.read_text("/proc/cmdline"))
    return config_module.apply_overrides(baked, overrides)


# What PID 1 runs once its duties are done, given the configuration and the WAN and LAN NIC
# names; it returns when it stops cleanly. natvm's /init runs `run_appliance`. Only the
# benchmark's kernel-NAT reference image, whose /init is its own, passes another (Linux as the
# NAT, image/reference.py): natvm's image holds no such program and no switch to one.
Program = Callable[[config_module.ApplianceConfig, str, str], None]


def run_appliance(config: config_module.ApplianceConfig, wan: str, lan: str) -> None:
    """natvm's NAT: the NICs up with no IP configuration and the kernel's stack kept off them,
    then the shell until it stops."""
    linux.write_sysctls(nic_sysctls((wan, lan)))
    for name in (wan, lan):
        linux.bring_up(name)
    log(f"WAN {wan} {config.wan.address}  LAN {lan} {config.lan.address}  ({uptime():.2f} s)")
    meminfo = linux.read_text("/proc/meminfo")
    log(f"memory: {memory_summary(meminfo)}")
    log(f"memory: {memory_breakdown(meminfo, linux.read_text('/proc/self/status'))}")
    shell.run(config, wan, lan, state_dir=STATE_DIR)


def run_net_vm(config: config_module.ApplianceConfig, wan: str) -> None:
    """natvm as a Qubes-style net VM: the uplink up as the WAN NIC is in `run_appliance`, and
    the clients' vifs, which xen-netback creates as the toolstack adds them, served as they
    come and go (appliance/driverdomain.py). When dom0 offers QubesDB, natvm's own addresses
    and the clients' firewall rules come from it (appliance/qubesdblink.py). Interfaces created
    later inherit the `default` sysctls written here."""
    from appliance import netvmshell, qubesdblink
    from appliance.xenstore import XENBUS_DEVICE, Xenstore

    link = None
    if os.path.exists(XENBUS_DEVICE):  # else serve_vifs says what is missing
        store = Xenstore.open()  # requests at start only: closed once the link is made
        try:
            link = qubesdblink.connect(store, log)
        finally:
            store.close()
    if link is not None:
        if not link.sync(QUBESDB_WAIT):
            log(f"qubesdb: no database after {QUBESDB_WAIT:.0f} s; the configuration's addresses")
        config = qubesdblink.uplink(config, link.client.entries, log)
    linux.write_sysctls(nic_sysctls((wan,)))
    linux.bring_up(wan)
    log(f"WAN {wan} {config.wan.address}  netvm gateway {config.lan.address}  ({uptime():.2f} s)")
    meminfo = linux.read_text("/proc/meminfo")
    log(f"memory: {memory_summary(meminfo)}")
    netvmshell.run_netvm(config, wan, watch=functools.partial(serve_clients, link))


def serve_clients(link: "qubesdblink.QubesDbLink | None", served: "netvmshell.NetVmShell") -> None:
    """The sources of the net VM's clients and their rules, on the shell's loop."""
    from appliance import driverdomain, qubesdblink

    driverdomain.serve_vifs(served, log)
    if link is not None:
        qubesdblink.serve_qubesdb(served, link)


def exit_cause(status: int) -> str:
    """How a child ended, from its wait status: "exited with status 1", "killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def restart_delay(previous: float, lived: float) -> float:
    """How long to wait before starting a child again: nothing after a long life (the flows'
    gap is what matters), else twice the last wait, from RESTART_DELAY_FIRST up to the max."""
    if lived >= STABLE_SECONDS:
        return 0.0
    return min(RESTART_DELAY_MAX, max(RESTART_DELAY_FIRST, previous * 2))


def _print_traceback(error: BaseException) -> None:
    # The interpreter's own printer, not the traceback module's: importing that (and linecache,
    # tokenize) only for a crash cost 0.1 s of every boot under TCG.
    sys.__excepthook__(type(error), error, error.__traceback__)


def _child(program: Callable[[], None]) -> int:
    """The exit status of `program` run in the forked child."""
    try:
        linux.write_text("/proc/self/oom_score_adj", "1000")
        program()
    except BaseException as error:
        # What restarting cannot fix ends it with EXIT_FATAL (PID 1 then reboots); anything
        # else (a bug, no memory) with 1, and it is started again.
        fatal = isinstance(error, InitError | shell.ShellError | ConfigError)
        if not fatal:
            _print_traceback(error)
        log(f"{'fatal' if fatal else 'appliance failed'}: {error}")
        return EXIT_FATAL if fatal else 1
    return 0


def _wait(child: int) -> int:
    """Wait for `child`, reaping any other process that ends meanwhile (PID 1 inherits
    orphans); returns its wait status."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return status


def supervise(program: Callable[[], None]) -> None:
    """Run `program` in a child process, again each time it dies; returns once it stopped
    cleanly (status 0, or after SIGTERM or SIGINT, which are passed on to it). Raises InitError
    when it exits with EXIT_FATAL."""
    child, stopping, restarts, delay = 0, False, 0, 0.0

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            os.kill(child, signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    # The objects PID 1 made so far are shared with every child: frozen, the collector of
    # neither process writes into their pages, which then stay shared (not copied).
    gc.freeze()
    try:
        while not stopping:
            started = time.monotonic()
            child = os.fork()
            if child == 0:
                for signum in previous:
                    signal.signal(signum, signal.SIG_DFL)
                os._exit(_child(program))
            status = _wait(child)
            child = 0
            if stopping or status == 0:
                return
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_FATAL:
                raise InitError("the appliance cannot run (see above)")
            restarts += 1
            delay = restart_delay(delay, time.monotonic() - started)
            log(f"appliance {exit_cause(status)}; restart {restarts} in {delay:.1f} s")
            time.sleep(delay)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def boot(program: Program) -> None:
    """PID 1's duties, then `program` as a supervised child; returns when it stops cleanly."""
    mount_filesystems()
    log(f"init started {uptime():.2f} s after the kernel (python {sys.version.split()[0]})")
    config = load_configuration()
    start: Callable[[], None]
    if config.nat.netvm:  # one NIC, the uplink: the clients' vifs come later
        for name in NET_VM_MODULES:
            __import__(name)
        (uplink,) = wait_for_nics(1)
        start = functools.partial(run_net_vm, config, uplink)
    else:
        wan, lan = wait_for_nics(2)
        start = functools.partial(program, config, wan, lan)
    nat_cgroup = memcg.create_nat_cgroup(linux.read_text("/proc/meminfo"), log)

    def nat() -> None:
        memcg.enter(nat_cgroup, log)
        lock_memory()
        start()

    supervise(nat)


# The NAT child locks every page it has touched or will touch (mlockall with MCL_ONFAULT: as
# they are faulted in, none read ahead). Its code is python3.11 and libraries mapped from the
# squashfs root, page cache the kernel could otherwise evict: under a flood, the memory
# cgroup's reclaim then evicted the pages the NAT was running and it faulted them back in
# from the compressed root, again and again, and never got killed at its limit (in a 64 MiB
# guest, no kill in 240 s where the initramfs root, never evictable, gave one in 73 s). Locked,
# they cannot be reclaimed, and a child at its limit is killed at once. Anonymous memory is
# unevictable anyway (no swap).
_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4


def lock_memory(mlockall: Callable[[int], int] = libc.mlockall) -> None:
    """Lock the calling process's pages in memory as they are faulted in (see above)."""
    if mlockall(_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT) != 0:
        log(f"memory: cannot lock the NAT's pages ({os.strerror(libc.last_error())})")


def _restart(action: int) -> None:
    os.sync()
    libc.reboot(action)


def main(program: Program = run_appliance) -> None:
    """The entry point /init calls. Never returns: the VM powers off or reboots."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        boot(program)
    except BaseException as error:  # PID 1 must turn every failure into a reboot
        expected = InitError | OSError | ValueError
        if not isinstance(error, expected):
            _print_traceback(error)
        log(f"fatal: {error}; rebooting in {REBOOT_DELAY_SECONDS:.0f} s")
        time.sleep(REBOOT_DELAY_SECONDS)
        _restart(_RB_AUTOBOOT)
    log("stopped; powering off")
    _restart(_RB_POWER_OFF)
