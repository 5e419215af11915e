"""`invoke build`: a flat list of named steps, each taking the one `Build` context.

Outputs under build/: vmlinuz; the root filesystem twice, the same files: root.qcow2 for QEMU and
libvirt (an uncompressed squashfs in a qcow2 of zstd clusters, which QEMU decompresses:
image/qcow2.py) and initramfs for Xen and Qubes (a zstd squashfs, their RAM disk); SHA256SUMS,
manifest.json, and deployment files (libvirt.xml and libvirt-define.sh, xen.cfg and
xen-create.sh, qubes/, run-qemu.sh). Nothing in
the outputs depends on the time, the host or the build directory, so a rebuild from the same lock
and sources is byte-identical, and build/ works wherever it is copied.

The kernel is natvm's own (image/kbuild.py: Debian's source, tinyconfig and image/kernel/, all
built in), built once and then taken from the cache.

`Build(reference=True)` (`invoke build --reference`) writes build/reference/: the same kernel plus
netfilter and nftables, the same appliance, nft and an /init of its own that makes Linux the NAT
(image/reference.py), the kernel-NAT baseline of `invoke bench --vm`. It has no deployment files:
it is a benchmark tool, not a product.
"""

import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from image import cpio, debs, deploy, initramfs, kbuild, lock, qcow2, qemu, squashfs
from image.lock import Pin

_Context = TypeVar("_Context")

SOURCE = Path(__file__).resolve().parent.parent
OUTPUT = SOURCE / "build"
REFERENCE_OUTPUT = OUTPUT / "reference"
DEMO_TAPS = ("natvm-wan0", "natvm-lan0")


@dataclass
class Build:
    """The context every step reads and fills in."""

    config: Path
    vm: deploy.Deployment
    out: Path = OUTPUT
    tree: Path = SOURCE  # natvm's source tree
    pins: list[Pin] = field(default_factory=list)
    root: Path = Path()
    source: Pin | None = None  # the kernel source package
    kernel: kbuild.Kernel | None = None
    contents: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    reference: bool = False  # the kernel-NAT reference image (nft, a kernel with nftables)
    say: Callable[[str], None] = print  # progress within a step (the kernel build's)

    @property
    def fragments(self) -> tuple[str, ...]:
        return kbuild.REFERENCE if self.reference else kbuild.PRODUCT


def packages(b: Build) -> None:
    pinned = lock.load()
    b.pins = lock.reference_pins(pinned) if b.reference else lock.product_pins(pinned)
    b.source = lock.source_pin(pinned)
    b.root = debs.extract(b.pins)


def kernel(b: Build) -> None:
    assert b.source is not None, "the packages step pins the source"
    b.kernel = kbuild.build(b.source, b.fragments, b.say)
    shutil.copyfile(b.kernel.vmlinuz, b.out / "vmlinuz")


def _category(path: str) -> str:
    """What an initramfs entry is, for the report of what takes the space."""
    for prefix, name in (
        ("usr/bin", "python3.11 binary"),
        ("usr/sbin/nft", "nft (reference image)"),
        ("opt/natvm/image", "kernel-NAT program (reference image)"),
        ("usr/lib/python3.11/lib-dynload", "stdlib extensions (.so)"),
        ("usr/lib/python3.11", "stdlib bytecode"),
        ("opt/natvm", "appliance"),
    ):
        if path.startswith(prefix):
            return name
    return "shared libraries" if ".so" in path else "other"


def image(b: Build) -> None:
    with tempfile.TemporaryDirectory(prefix="natvm-pyc-") as scratch:
        inputs = initramfs.Inputs(b.root, b.tree, b.config, Path(scratch), b.reference)
        entries = initramfs.entries(inputs)
    compressions = (squashfs.COMPRESSION, squashfs.UNCOMPRESSED)
    xen_root, qemu_root = squashfs.images(entries, compressions)
    (b.out / "initramfs").write_bytes(xen_root)
    (b.out / qemu.ROOT_FILE).write_bytes(qcow2.image(qemu_root))
    counts: Counter[str] = Counter()
    for entry in cpio.with_parents(entries):
        counts[_category(entry.path)] += len(entry.data)
    b.contents = dict(counts.most_common())
    b.sizes["files"] = sum(counts.values())


def deployment(b: Build) -> None:
    if b.reference:
        return  # the reference image is booted by the benchmark only
    (b.out / "libvirt.xml").write_text(deploy.libvirt_xml(b.vm))
    _write_script(b.out / "libvirt-define.sh", deploy.libvirt_define_script())
    xen_cfg = deploy.xl_config(b.vm)
    (b.out / deploy.XEN_CFG).write_text(xen_cfg)
    _write_script(b.out / "xen-create.sh", deploy.xen_create_script(xen_cfg))
    kernels = b.out / "qubes" / "vm-kernels" / deploy.NAME
    kernels.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initramfs"):
        shutil.copyfile(b.out / name, kernels / name)
    (b.out / "qubes" / "install.sh").write_text(deploy.qubes_script(b.vm))
    # Paths relative to the script's folder, which it changes to: build/ may be copied anywhere.
    machine = qemu.Machine(
        Path("vmlinuz"), Path(qemu.ROOT_FILE), b.vm.memory_mib, b.vm.cpus, DEMO_TAPS
    )
    lines = qemu.format_command(qemu.command(machine))
    script = (
        f"#!/bin/sh\n# Boot natvm on existing taps {' and '.join(DEMO_TAPS)}, from this folder.\n"
        f'cd "$(dirname "$0")"\nexec {lines}\n'
    )
    _write_script(b.out / "run-qemu.sh", script)


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(b: Build) -> None:
    assert b.kernel is not None and b.source is not None, "the kernel step ran"
    sums = {name: _sha256(b.out / name) for name in outputs(b)}
    document = {
        "name": deploy.NAME,
        "kernel": {
            "release": b.kernel.release,
            "source": {"name": b.source.name, "version": b.source.version},
            "fragments": [f"image/kernel/{name}" for name in b.fragments],
            "options": kbuild.fragment_options(b.fragments),
        },
        "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in b.pins],
        "files": {
            name: {"sha256": s, "size": (b.out / name).stat().st_size} for name, s in sums.items()
        },
        "initramfs": {
            "format": "squashfs",
            "compression": " ".join(squashfs.COMPRESSION),
            **b.sizes,
            "contents": b.contents,
        },
        qemu.ROOT_FILE: {
            "format": "qcow2 of an uncompressed squashfs",
            "compression": f"zstd {qcow2.ZSTD[0]}, {1 << qcow2.CLUSTER_BITS} bytes a cluster",
        },
    }
    (b.out / "manifest.json").write_text(json.dumps(document, indent=2) + "\n")
    (b.out / "SHA256SUMS").write_text("".join(f"{s}  {n}\n" for n, s in sums.items()))


OUTPUTS = (
    "vmlinuz",
    qemu.ROOT_FILE,
    "initramfs",
    "libvirt.xml",
    "libvirt-define.sh",
    "xen.cfg",
    "xen-create.sh",
    "run-qemu.sh",
    "qubes/install.sh",
    "qubes/vm-kernels/natvm/vmlinuz",
    "qubes/vm-kernels/natvm/initramfs",
)
REFERENCE_OUTPUTS = ("vmlinuz", qemu.ROOT_FILE)


def outputs(b: Build) -> tuple[str, ...]:
    return REFERENCE_OUTPUTS if b.reference else OUTPUTS


STEPS: tuple[Callable[[Build], None], ...] = (packages, kernel, image, deployment, manifest)


def run(b: Build, progress: Callable[[str, float], None]) -> None:
    """Run every step, reporting each one's name and duration."""
    run_steps(STEPS, b, b.out, progress)


def run_steps(
    steps: tuple[Callable[[_Context], None], ...],
    context: _Context,
    out: Path,
    progress: Callable[[str, float], None],
) -> None:
    """A build as a flat list of named steps over one context, each timed (any image's)."""
    out.mkdir(parents=True, exist_ok=True)
    for step in steps:
        started = time.monotonic()
        step(context)
        progress(step.__name__, time.monotonic() - started)
