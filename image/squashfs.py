"""natvm's root filesystem: the build's entries as a read-only squashfs, written by mksquashfs.

Why not an initramfs: the kernel unpacks an initramfs whole into memory at boot and keeps every
file there for good (13.8 MB for natvm's), which set the smallest guest natvm could run in. The
squashfs is a read-only virtio disk under QEMU (image/qemu.py), there with its blocks stored
uncompressed in a qcow2 that QEMU decompresses (image/qcow2.py), and under Xen and Qubes the initrd
the boot loader hands over (xl's `ramdisk`, Qubes' `initramfs`), which the kernel copies, still
compressed, into a RAM disk and mounts as the root (its built-in command line says
`root=/dev/ram0`, image/kernel/). Python then decompresses only the blocks it reads, into the
page cache, which the kernel may drop again under memory pressure.

Rules: the entries are written into a scratch folder, device nodes as mksquashfs pseudo files (so
the build needs no root), and mksquashfs's output depends only on the files, these options and
its version: owner 0:0, every timestamp 0, no extended attributes, sorted (its default since 4.4
is reproducible), so the build stays byte-identical.
"""

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from image import cpio
from image.command import require, run

# zstd level 19 in 128 KiB blocks: 8 % larger than xz, and Python's start, which waits on reading
# its files for the first time, 2-3 s faster under TCG (README: figures).
COMPRESSION = ("-comp", "zstd", "-Xcompression-level", "19", "-b", "128K")
# For QEMU's root disk, which QEMU decompresses itself (image/qcow2.py): nothing compressed.
UNCOMPRESSED = ("-noI", "-noD", "-noF", "-noX", "-b", "128K")
OPTIONS = (
    "-noappend", "-all-root", "-all-time", "0", "-mkfs-time", "0",
    "-no-xattrs", "-no-exports", "-quiet", "-no-progress",
)  # fmt: skip
PACKAGE = "squashfs-tools"


def _pseudo(entry: cpio.Entry) -> str:
    """A device node as a mksquashfs pseudo definition: name, type, mode, owner, numbers."""
    kind = "c" if stat.S_ISCHR(entry.mode) else "b"
    major, minor = entry.rdev
    return f"{entry.path} {kind} {stat.S_IMODE(entry.mode):o} 0 0 {major} {minor}"


def _write_tree(entries: Iterable[cpio.Entry], root: Path) -> list[str]:
    """Write `entries` under `root`; returns the device nodes as pseudo definitions."""
    devices = []
    for entry in cpio.with_parents(entries):  # sorted, every parent listed before its files
        path = root / entry.path
        if stat.S_ISDIR(entry.mode):
            path.mkdir()
        elif stat.S_ISLNK(entry.mode):
            os.symlink(entry.data.decode(), path)
        elif stat.S_ISREG(entry.mode):
            path.write_bytes(entry.data)
        else:
            devices.append(_pseudo(entry))
            continue
        if not stat.S_ISLNK(entry.mode):  # a symlink's own mode means nothing on Linux
            os.chmod(path, stat.S_IMODE(entry.mode))
    return devices


def image(entries: Iterable[cpio.Entry], compression: tuple[str, ...] = COMPRESSION) -> bytes:
    """The squashfs holding `entries` (paths relative to /)."""
    [blob] = images(entries, (compression,))
    return blob


def images(entries: Iterable[cpio.Entry], compressions: Sequence[tuple[str, ...]]) -> list[bytes]:
    """A squashfs of `entries` in each of `compressions`, from one tree written once."""
    mksquashfs = require("mksquashfs", PACKAGE)
    with tempfile.TemporaryDirectory(prefix="natvm-rootfs-") as scratch:
        tree, out = Path(scratch) / "root", Path(scratch) / "rootfs.squashfs"
        tree.mkdir()
        os.chmod(tree, 0o755)  # the root directory's mode, whatever the umask
        devices = _write_tree(entries, tree)
        pseudo = [arg for line in devices for arg in ("-p", line)]
        blobs = []
        for compression in compressions:
            argv = [mksquashfs, str(tree), str(out), *compression, *OPTIONS, *pseudo]
            run(argv, hint=PACKAGE)
            blobs.append(out.read_bytes())
        return blobs


def read(blob: bytes) -> list[cpio.Entry]:
    """The entries of a squashfs, sorted by path (for tests). Device nodes are read from
    unsquashfs's listing, so this needs no root either."""
    unsquashfs = require("unsquashfs", PACKAGE)
    with tempfile.TemporaryDirectory(prefix="natvm-rootfs-") as scratch:
        image_file, tree = Path(scratch) / "rootfs.squashfs", Path(scratch) / "root"
        image_file.write_bytes(blob)
        listing = run([unsquashfs, "-lln", "-d", "", str(image_file)])
        devices = [_device(line) for line in listing.splitlines() if line[:1] in ("c", "b")]
        # Extract all but the device nodes (creating those would need root).
        subprocess.run(
            [unsquashfs, "-q", "-n", "-d", str(tree), "-ignore-errors", str(image_file)],
            capture_output=True,
            check=False,
        )
        found = list(devices)
        device_paths = {device.path for device in devices}
        for path in sorted(tree.rglob("*")):
            name = str(path.relative_to(tree))
            mode = path.lstat().st_mode
            if name in device_paths:
                continue
            if stat.S_ISLNK(mode):
                found.append(cpio.Entry(name, mode, os.readlink(path).encode()))
            elif stat.S_ISREG(mode):
                found.append(cpio.Entry(name, mode, path.read_bytes()))
            elif stat.S_ISDIR(mode):
                found.append(cpio.Entry(name, mode))
        return sorted(found, key=lambda e: e.path)


def _device(line: str) -> cpio.Entry:
    """An entry from an `unsquashfs -lln` line: `crw------- 0/0  5,  1 1970-01-01 00:00 /dev/x`."""
    fields = line.replace(",", " ").split()
    kind = stat.S_IFCHR if fields[0][0] == "c" else stat.S_IFBLK
    perm = _permissions(fields[0][1:])
    return cpio.Entry(fields[-1].lstrip("/"), kind | perm, rdev=(int(fields[2]), int(fields[3])))


def _permissions(text: str) -> int:
    """`rw-r--r--` as a number (device nodes carry no set-id or sticky bits here)."""
    return sum(1 << (8 - i) for i, c in enumerate(text) if c != "-")
