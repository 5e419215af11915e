"""`invoke build --xen-host`: the Xen tier's test dom0, built into build/xen-host/.

Test equipment, not product: Debian's Xen 4.17 hypervisor, Debian's generic kernel of the product
kernel's version (it has CONFIG_XEN_DOM0) and a small dom0 root, all from the pinned packages of
image/packages.lock (`lock.xen_host_pins`). Neither image takes any of it.

Outputs (a flat list of named steps, as image/build.py; nothing depends on the time or the host,
so two builds are byte-identical):
  xen        the hypervisor, gunzipped: QEMU's multiboot loader takes no compressed kernel
  vmlinuz    the dom0 kernel
  initramfs  the dom0 root: the product's python3.11 running image/dom0/ as /init, xl, xenstored,
             xenconsoled, xenconsole, xen-init-dom0, xenstore-read/-write, vchan-socket-proxy
             and their libraries,
             the kernel modules a dom0 backend needs, xl.conf and the vif hotplug script
  client/vmlinuz, client/initramfs
             the client VMs of the net VM tests (image/xenclient.py): Debian's cloud kernel and
             a busybox initramfs with its netfront
  SHA256SUMS, manifest.json
The guest (natvm's build/: xen.cfg and the files it names) is not in it: image/xenboot.py appends
it at boot as a second archive, so one dom0 boots any build of natvm.
"""

import gzip
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from image import build, cpio, debs, initramfs, kconfig, kmod, lock, runtime, xenclient
from image.elf import Elf
from image.errors import ImageError
from image.lock import Pin

SOURCE = Path(__file__).resolve().parent.parent
OUTPUT = SOURCE / "build" / "xen-host"
HYPERVISOR = "boot/xen-4.17-amd64.gz"
XEN_BIN = "usr/lib/xen-4.17/bin"
# xl creates domains and attaches consoles (through xenconsole), xenstored and xenconsoled are
# the daemons it talks to, xen-init-dom0 writes the dom0's own xenstore entries; the vif
# hotplug script reads and writes xenstore with xenstore-read and -write.
PROGRAMS = (
    *(f"{XEN_BIN}/{name}" for name in ("xl", "xenstored", "xenconsoled", "xenconsole")),
    f"{XEN_BIN}/xen-init-dom0",
    "usr/bin/xenstore-read",
    "usr/bin/xenstore-write",
    "usr/bin/xenstore-ls",  # for the tests: a driver domain's backend entries, read from dom0
    # for the tests' QubesDB (tests/xen/qubesdb_server.py): a vchan server (libxenvchan)
    f"{XEN_BIN}/vchan-socket-proxy",
)
DLOPENED = ("libgcc_s.so.1",)  # glibc loads it when a thread of xl exits: no DT_NEEDED names it
# Event channels, grant tables and privcmd for the toolstack, xenfs for xenstored, netback for
# the guest's vifs, bridges, QEMU's virtio NICs and the virtio-serial control port.
MODULES = (
    "xen_evtchn",
    "xen_gntdev",
    "xen_gntalloc",
    "xen_privcmd",
    "xenfs",
    "xen_netback",
    "bridge",
    "virtio_pci",
    "virtio_net",
    "virtio_console",
)
DOM0_OPTIONS = {
    "CONFIG_XEN_DOM0": ("y", "running as Xen's dom0"),
    "CONFIG_HVC_XEN": ("y", "the hvc0 console"),
    "CONFIG_XEN_BACKEND": ("y", "backend drivers"),
    "CONFIG_XEN_NETDEV_BACKEND": ("m", "the guest's vifs (netback)"),
    "CONFIG_XENFS": ("m", "/proc/xen for xenstored"),
    "CONFIG_XEN_DEV_EVTCHN": ("m", "/dev/xen/evtchn"),
    "CONFIG_XEN_GNTDEV": ("m", "/dev/xen/gntdev"),
    "CONFIG_XEN_PRIVCMD": ("m", "/dev/xen/privcmd for xl"),
    "CONFIG_BRIDGE": ("m", "bridges for the vifs"),
    "CONFIG_VIRTIO_CONSOLE": ("m", "the control channel"),
    "CONFIG_UNIX98_PTYS": ("y", "xenconsoled's ptys"),
}
ENTRY = ("image.dom0.init", "image.dom0.vif")
APP_DIR = "opt/dom0"
VIF_SCRIPT = "vif-test-bridge"
MODULE_LIST = "etc/dom0/modules"
INIT = """#!/usr/bin/python3.11 -SI
# The test dom0's /init (see image/dom0/init.py).
import sys
sys.path.insert(0, "/opt/dom0")
from image.dom0.init import main
main()
"""
VIF = """#!/usr/bin/python3.11 -SI
# The test dom0's vif hotplug script (see image/dom0/vif.py).
import os
import sys
sys.path.insert(0, "/opt/dom0")
from image.dom0.vif import main
sys.exit(main(sys.argv, os.environ))
"""
# xl's global configuration: our hotplug script for every vif without a script of its own, no
# ballooning (dom0_mem fixes the dom0's memory), and the lock where the dom0 has a /run.
XL_CONF = f"""vif.default.script="{VIF_SCRIPT}"
autoballoon="off"
lockfile="/run/xl.lock"
"""
OUTPUTS = ("xen", "vmlinuz", "initramfs", "client/vmlinuz", "client/initramfs")


@dataclass
class XenHost:
    """The context every step reads and fills in."""

    out: Path = OUTPUT
    source: Path = SOURCE
    pins: list[Pin] = field(default_factory=list)
    client_pins: list[Pin] = field(default_factory=list)
    root: Path = Path()
    kernel_release: str = ""
    hypervisor: str = ""  # the pinned hypervisor package's version
    sizes: dict[str, int] = field(default_factory=dict)


def packages(h: XenHost) -> None:
    h.pins = lock.xen_host_pins(lock.load())
    h.root = debs.extract(h.pins)
    h.hypervisor = next(p.version for p in h.pins if p.name == lock.XEN_MATCHING[0])


def hypervisor(h: XenHost) -> None:
    compressed = h.root / HYPERVISOR
    if not compressed.exists():
        raise ImageError(f"{compressed.name} is not in the pinned {lock.XEN_MATCHING[0]}")
    (h.out / "xen").write_bytes(gzip.decompress(compressed.read_bytes()))


def kernel(h: XenHost) -> None:
    vmlinuz = sorted((h.root / "boot").glob("vmlinuz-*"))[0]
    h.kernel_release = vmlinuz.name.removeprefix("vmlinuz-")
    options = kconfig.read(h.root / "boot" / f"config-{h.kernel_release}")
    lacking = kconfig.missing(options, DOM0_OPTIONS)
    if lacking:
        raise ImageError(
            f"the dom0 kernel {h.kernel_release} lacks {', '.join(lacking)}",
            "pin a generic linux-image package in image/packages.lock",
        )
    shutil.copyfile(vmlinuz, h.out / "vmlinuz")


def _skeleton() -> list[cpio.Entry]:
    return [
        *(cpio.directory(d) for d in ("proc", "sys", "dev", "run", "guest")),
        *(cpio.directory(d) for d in ("run/xen", "var/lib/xen", "var/log/xen", "var/lock")),
        cpio.directory("tmp", 0o1777),
        cpio.symlink("var/run", "/run"),
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.char_device("dev/urandom", 1, 9, 0o444),
        cpio.file("init", INIT.encode(), 0o755),
        cpio.file(f"etc/xen/scripts/{VIF_SCRIPT}", VIF.encode(), 0o755),
        cpio.file("etc/xen/xl.conf", XL_CONF.encode()),
    ]


def _copied(root: Path, paths: list[str]) -> list[cpio.Entry]:
    return [entry for path in paths for entry in initramfs._copy(root, path)]


def _toolstack(root: Path) -> list[cpio.Entry]:
    binaries = [root / path for path in PROGRAMS]
    libraries = runtime.libraries(root, binaries)
    libraries += runtime.libraries(root, [runtime._find_library(root, n) for n in DLOPENED])
    libraries += [runtime._find_library(root, name) for name in DLOPENED]
    return _copied(root, [*PROGRAMS, *(str(p.relative_to(root)) for p in libraries)])


def _python(root: Path, source: Path, scratch: Path) -> list[cpio.Entry]:
    """python3.11, its libraries, and the stdlib modules and image.dom0 compiled, as the
    product's initramfs.python does for the appliance."""
    found = runtime.modules(root, source, ENTRY)
    found.pop("__main__", None)  # the build's own job script
    sources = {*found.values(), *(source / "image" / "dom0").glob("*.py")}
    compiled = sorted(f for f in sources if f.suffix == ".py")
    extensions = sorted(f for f in sources if f.suffix == ".so")

    def image_path(file: Path) -> str:
        if file.is_relative_to(source):
            return str(Path(APP_DIR) / file.relative_to(source)) + "c"
        relative = str(file.relative_to(root))
        return relative + "c" if relative.endswith(".py") else relative

    runtime.compile_to(
        root, [(f, scratch / image_path(f), "/" + image_path(f)[:-1]) for f in compiled]
    )
    binary = root / runtime.PYTHON
    interpreter = (Elf(binary.read_bytes()).interpreter() or "").lstrip("/")
    libraries = runtime.libraries(root, [binary, *extensions])
    entries = _copied(
        root, [runtime.PYTHON, interpreter, *(str(p.relative_to(root)) for p in libraries)]
    )
    entries += [cpio.file(image_path(f), f.read_bytes()) for f in extensions]
    entries += [cpio.file(image_path(f), (scratch / image_path(f)).read_bytes()) for f in compiled]
    entries.append(cpio.directory(runtime.STDLIB + "/lib-dynload"))  # exec-prefix landmark
    return entries


def _modules(root: Path) -> list[cpio.Entry]:
    order = kmod.load_order(kmod.modules_dir(root), MODULES)
    paths = [str(ko.relative_to(root)) for ko in order]
    listing = "".join(f"/{p}\n" for p in paths).encode()
    return [
        cpio.file(MODULE_LIST, listing),
        *(cpio.file(p, (root / p).read_bytes()) for p in paths),
    ]


def root(h: XenHost) -> None:
    with tempfile.TemporaryDirectory(prefix="natvm-dom0-pyc-") as scratch:
        python = _python(h.root, h.source, Path(scratch))
    entries = [*_skeleton(), *_toolstack(h.root), *python, *_modules(h.root)]
    archive = cpio.archive(entries)
    (h.out / "initramfs").write_bytes(initramfs.compress(archive))
    h.sizes["initramfs uncompressed"] = len(archive)


def client(h: XenHost) -> None:
    h.client_pins = lock.xen_client_pins(lock.load())
    root = debs.extract(h.client_pins)
    (h.out / "client").mkdir(exist_ok=True)
    (h.out / "client" / "vmlinuz").write_bytes(xenclient.vmlinuz(root))
    (h.out / "client" / "initramfs").write_bytes(xenclient.archive(root))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(h: XenHost) -> None:
    sums = {name: _sha256(h.out / name) for name in OUTPUTS}
    document = {
        "name": "natvm test dom0 (Xen tier; test equipment, not the product)",
        "hypervisor": h.hypervisor,
        "kernel": h.kernel_release,
        "packages": [
            {"name": p.name, "version": p.version, "sha256": p.sha256}
            for p in (*h.pins, *h.client_pins)
        ],
        "files": {
            name: {"sha256": s, "size": (h.out / name).stat().st_size} for name, s in sums.items()
        },
        "initramfs": {"compression": "gzip -9", **h.sizes},
    }
    (h.out / "manifest.json").write_text(json.dumps(document, indent=2) + "\n")
    (h.out / "SHA256SUMS").write_text("".join(f"{s}  {n}\n" for n, s in sums.items()))


STEPS: tuple[Callable[[XenHost], None], ...] = (
    packages,
    hypervisor,
    kernel,
    root,
    client,
    manifest,
)


def run(h: XenHost, progress: Callable[[str, float], None]) -> None:
    """Run every step, reporting each one's name and duration."""
    build.run_steps(STEPS, h, h.out, progress)
