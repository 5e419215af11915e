"""PID 1 of the Xen tier's test dom0: the Xen daemons, one bridge per QEMU NIC, the guest.

Theory of operation: PID 1 forks a worker and does nothing but reap children (xl's per-domain
daemons and the hotplug scripts are reparented to it), powering off when the worker ends. The
worker mounts what the toolstack needs (devpts: xenconsoled hands out ptys; xenfs on /proc/xen:
xenstored reads its ring from it), loads the kernel modules in dependency order, starts xenstored,
writes dom0's own xenstore entries (xen-init-dom0), starts xenconsoled, and bridges each of
QEMU's NICs (in PCI order) to the bridge the guest's vif of the same position names (natvm's
xen.cfg: WAN first). It prints READY_LINE, serves the control channel (control.py), runs
`xl create` on the guest's configuration as shipped (/guest/xen.cfg), with the command line of
natvm's xen-create.sh (`xlcfg.create_args`: the files it names made absolute against its folder),
and streams the guest's console with
`xl console`, each line prefixed with the domain's name and "| ", re-attaching whenever xl
restarts the domain; so it does for every other guest that appears (created through the control
channel).

Console lines: the dom0's own start with "dom0: ", the guest's with "<name>| ", Xen's with
"(XEN)"; image/xenboot.py splits them again on the host.
"""

import ctypes
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from image.dom0 import control, links, xlcfg

XEN_BIN = Path("/usr/lib/xen-4.17/bin")
XL = str(XEN_BIN / "xl")
GUEST_DIR = Path("/guest")
GUEST_CFG = GUEST_DIR / "xen.cfg"
MODULE_LIST = Path("/etc/dom0/modules")
XENSTORED_SOCKET = Path("/run/xenstored/socket")
READY_LINE = "dom0: ready"
WAIT_SECONDS = 30.0

_MOUNTS = (
    ("proc", "/proc", "proc", ""),
    ("sysfs", "/sys", "sysfs", ""),
    ("devtmpfs", "/dev", "devtmpfs", ""),
    ("devpts", "/dev/pts", "devpts", "ptmxmode=0666"),
)
_SYS_FINIT_MODULE = 313  # x86_64
_RB_POWER_OFF = 0x4321FEDC
_EEXIST = 17
# No IPv6 on the bridges and NICs: the test namespaces must see no frames the guest did not send.
_SYSCTLS = {"net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1"}


class Dom0Error(Exception):
    """A step of the dom0's start failed; the message says which."""


def log(message: str) -> None:
    print(f"dom0: {message}", flush=True)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    data = options.encode() if options else None
    if _libc().mount(source.encode(), target.encode(), fstype.encode(), 0, data) != 0:
        raise Dom0Error(f"mount {fstype} on {target}: {os.strerror(ctypes.get_errno())}")


def load_modules(listing: Path = MODULE_LIST) -> None:
    for path in listing.read_text().split():
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = _libc().syscall(_SYS_FINIT_MODULE, fd, b"", 0)
        finally:
            os.close(fd)
        if result != 0 and ctypes.get_errno() != _EEXIST:
            raise Dom0Error(f"loading {path}: {os.strerror(ctypes.get_errno())}")


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise Dom0Error(f"no {what} after {WAIT_SECONDS:.0f} s")
        time.sleep(0.05)


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
        raise Dom0Error(f"{' '.join(argv)} failed ({proc.returncode}): {output}")
    return proc.stdout


def start_daemons() -> None:
    subprocess.Popen([str(XEN_BIN / "xenstored"), "--no-fork", "--pid-file", "/run/xenstored.pid"])
    wait_until(XENSTORED_SOCKET.exists, "xenstored socket")
    run(str(XEN_BIN / "xen-init-dom0"))
    # overflow-data=keep: what the guest prints before `xl console` attaches is kept, not dropped.
    subprocess.Popen([str(XEN_BIN / "xenconsoled"), "--interactive", "--overflow-data=keep"])


def bridge_nics(bridges: list[str]) -> list[str]:
    """Bridge each of QEMU's NICs to the bridge of the vif at the same position."""
    for key, value in _SYSCTLS.items():
        Path("/proc/sys", key).write_text(value)
    wait_until(lambda: len(links.nics()) >= len(bridges), f"{len(bridges)} NICs")
    pairs = list(zip(links.nics(), bridges, strict=False))
    for nic, bridge in pairs:
        links.add_bridge(bridge)
        links.enslave(bridge, nic)
        links.set_up(nic)
        links.set_up(bridge)
    return [f"{nic}->{bridge}" for nic, bridge in pairs]


def control_port(sysfs: Path = Path("/sys/class/virtio-ports")) -> Path | None:
    """The device of the control channel's virtio-serial port, if QEMU gave the dom0 one."""
    ports = sysfs.glob("*/name") if sysfs.is_dir() else iter(())
    for name in ports:
        if name.read_text().strip() == control.PORT_NAME:
            return Path("/dev", name.parent.name)
    return None


def serve_control(device: Path) -> None:
    """Answer requests, one line each, for as long as the dom0 runs. A read of 0 bytes means no
    host is connected (yet, or any more): wait and read again."""
    fd = os.open(device, os.O_RDWR)
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            time.sleep(0.2)
            continue
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                response = control.answer(control.decode(line))
            except ValueError as error:
                response = {"status": -1, "output": f"bad request: {error}"}
            os.write(fd, control.encode(response))


def follow_console(name: str) -> None:
    """Stream the console of domain `name` with a prefix, across xl's restarts of it."""
    while True:
        if subprocess.run([XL, "domid", name], capture_output=True).returncode != 0:
            time.sleep(0.2)
            continue
        # xenconsole leaves when its stdin ends: give it one that never does.
        never, keep = os.pipe()
        proc = subprocess.Popen(
            [XL, "console", name], stdin=never, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip("\r\n")
            print(f"{name}| {text}", flush=True)
        proc.wait()
        os.close(never)
        os.close(keep)


def domain_names(listing: str) -> list[str]:
    """The guests' names in `xl list` output (its header and Domain-0 left out)."""
    rows = [line.split() for line in listing.splitlines()[1:]]
    return [row[0] for row in rows if row and row[0] != "Domain-0"]


def follow_consoles() -> None:
    """Stream the console of every guest that appears, whoever created it (the guest of
    /guest/xen.cfg, or domains the host creates through the control channel)."""
    followed: set[str] = set()
    while True:
        listing = subprocess.run([XL, "list"], capture_output=True, text=True).stdout
        for name in set(domain_names(listing)) - followed:
            followed.add(name)
            threading.Thread(target=follow_console, args=(name,), daemon=True).start()
        time.sleep(1.0)


def create_command(cfg: Path) -> list[str]:
    """The `xl create` command line for the configuration file `cfg`, as xen-create.sh beside
    natvm's xen.cfg runs it."""
    return [XL, *xlcfg.create_args(PurePosixPath(cfg), cfg.read_text())]


def create_guest() -> None:
    name = xlcfg.string(GUEST_CFG.read_text(), "name")
    started = time.monotonic()
    proc = subprocess.run(create_command(GUEST_CFG), capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        log(f"xl: {line}")
    if proc.returncode != 0:
        raise Dom0Error(f"xl create {GUEST_CFG} failed ({proc.returncode})")
    log(f"created {name} ({time.monotonic() - started:.1f} s)")


def work() -> None:
    for source, target, fstype, options in _MOUNTS:
        mount(source, target, fstype, options)
    log(f"init started {Path('/proc/uptime').read_text().split()[0]} s after the kernel")
    load_modules()
    mount("xenfs", "/proc/xen", "xenfs")
    start_daemons()
    bridges = xlcfg.vif_bridges(GUEST_CFG.read_text()) if GUEST_CFG.exists() else []
    bridged = bridge_nics(bridges)
    print(f"{READY_LINE}: bridges {' '.join(bridged) or 'none'}", flush=True)
    device = control_port()
    if device is not None:
        threading.Thread(target=serve_control, args=(device,), daemon=True).start()
    threading.Thread(target=follow_consoles, daemon=True).start()
    if GUEST_CFG.exists():
        create_guest()
    else:
        log(f"no {GUEST_CFG}: no guest to create")
    threading.Event().wait()  # the threads serve for as long as the dom0 runs


def main() -> None:
    """The entry point /init calls: reap every child; power off when the worker ends."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    worker = os.fork()
    if worker == 0:
        try:
            work()
        except Exception as error:  # one line for the host, then the dom0 powers off
            log(f"fatal: {type(error).__name__}: {error}")
        os._exit(1)
    while True:
        pid, status = os.wait()
        if pid == worker:
            log(f"worker ended ({status}); powering off")
            os.sync()
            _libc().reboot(_RB_POWER_OFF)
