"""natvm's own kernel: Debian's kernel source, `make tinyconfig`, a checked-in fragment, cached.

Why: Debian's cloud kernel is 14 MB and reserves about 48 MiB of a guest for drivers and tables
natvm never uses. natvm needs a few things from a kernel (virtio or Xen NICs, AF_PACKET, a
console, netback for a net VM, what Python calls), so it builds one with exactly those, all
built in: no modules, so no load order and nothing to load at boot.

How: the pinned `linux-source-6.1` package (image/packages.lock) is unpacked once into the cache
(`~/.cache/natvm/linux-source-<digest>/`). A kernel is `make tinyconfig`, then the fragments of
image/kernel/ merged on top (scripts/kconfig/merge_config.sh) and `make olddefconfig`; every
option a fragment asks for must then be set as asked (Kconfig silently drops an option whose
dependencies are missing, so that is checked here), then `make bzImage`. The result is cached
under `kernel-<key>/`, the key being the source's sha256, the fragments' text and the build's
fixed environment: only a changed fragment or source builds again. The build's own timestamp,
user, host and build number are fixed (the kernel's reproducible-builds rules), and it always
runs in the same folder, so two builds of one key are byte-identical.

`make`'s output goes to `build.log` beside the kernel; on failure its tail is in the error.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from image import debs, kconfig
from image.command import require
from image.errors import ImageError
from image.lock import Pin

FRAGMENTS = Path(__file__).with_name("kernel")
PRODUCT = ("natvm.config",)
# The kernel-NAT reference of `invoke bench --vm`: natvm's kernel plus netfilter and nftables.
REFERENCE = ("natvm.config", "reference.config")
# Fixed inputs of the kernel's version string (Documentation/kbuild/reproducible-builds.rst).
BUILD_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "2026-01-01 00:00:00 UTC",
    "KBUILD_BUILD_USER": "natvm",
    "KBUILD_BUILD_HOST": "natvm",
    "KBUILD_BUILD_VERSION": "1",
    "LC_ALL": "C",
}
# Host tools a kernel build runs, and the Debian package that has each.
TOOLS = {
    "make": "make",
    "gcc": "gcc",
    "bc": "bc",
    "bison": "bison",
    "flex": "flex",
    "xz": "xz-utils",
    "tar": "tar",
    "dpkg-deb": "dpkg",
}
PROGRESS_SECONDS = 30.0
LOG_TAIL_LINES = 15
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Kernel:
    """A built kernel in the cache: `vmlinuz` (bzImage), its `.config`, and how it was had."""

    folder: Path
    release: str
    cached: bool  # True: found in the cache, not built now

    @property
    def vmlinuz(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.folder / "config"


def fragment_options(fragments: Sequence[str]) -> dict[str, str]:
    """Every option the fragments ask for, later fragments winning."""
    options: dict[str, str] = {}
    for name in fragments:
        options |= kconfig.parse((FRAGMENTS / name).read_text())
    return options


def unmet(built: dict[str, str], wanted: dict[str, str]) -> list[str]:
    """The options asked for that the built config does not have as asked, as "CONFIG_X=y (n)"."""
    return [
        f"{name}={value} ({built.get(name, 'not set')})"
        for name, value in wanted.items()
        if built.get(name, "n") != value
    ]


def cache_key(source: Pin, fragments: Sequence[str]) -> str:
    digest = hashlib.sha256(source.sha256.encode())
    digest.update(repr(sorted(BUILD_ENV.items())).encode())
    for name in fragments:
        digest.update(name.encode() + b"\0" + (FRAGMENTS / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def unpack_source(source: Pin, progress: Progress) -> Path:
    """The kernel source tree of the pinned package, unpacked once into the cache."""
    tree = debs.cache_dir() / f"linux-source-{source.sha256[:16]}"
    if (tree / "Makefile").exists():
        return tree
    deb = debs.fetch(source, debs.cache_dir() / "debs")
    started = time.monotonic()
    staging = tree.with_name(tree.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # The package holds one tarball, usr/src/linux-source-6.1.tar.xz; its top folder is dropped.
    tarball = f"./usr/src/{source.name}.tar.xz"
    script = (
        f'set -euo pipefail; dpkg-deb --fsys-tarfile "$1" | tar -xO "{tarball}" '
        f'| tar -xJ --strip-components=1 -C "$2"'
    )
    result = subprocess.run(
        ["bash", "-c", script, "bash", deb, staging],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not (staging / "Makefile").exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageError(f"unpacking {deb.name} failed: {result.stderr.strip()[-300:]}")
    staging.rename(tree)
    progress(f"unpacked {source.name} {source.version} ({time.monotonic() - started:.0f} s)")
    return tree


def _make(tree: Path, work: Path, targets: list[str], log: Path, progress: Progress) -> None:
    """`make` in `tree` building into `work`, output appended to `log`; a line every 30 s."""
    argv = ["make", "-C", str(tree), f"O={work}", f"-j{os.cpu_count() or 1}", *targets]
    env = {**os.environ, **BUILD_ENV}
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                status = proc.wait(timeout=PROGRESS_SECONDS)
                break
            except subprocess.TimeoutExpired:
                steps = sum(1 for _ in log.open(errors="replace"))
                elapsed = time.monotonic() - started
                progress(f"make {' '.join(targets)}: {elapsed:.0f} s, {steps} log lines")
    if status != 0:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        raise ImageError(
            f"`make {' '.join(targets)}` failed ({status}); the end of {log}:\n" + "\n".join(tail)
        )


def build(source: Pin, fragments: Sequence[str], progress: Progress) -> Kernel:
    """The kernel of `fragments` over tinyconfig, from the cache or built now. Two builds of
    one kernel at once (two `invoke build`s, a test and a build) take turns: the second finds
    the first one's kernel in the cache."""
    folder = debs.cache_dir() / f"kernel-{cache_key(source, fragments)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder.with_name(folder.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "vmlinuz").exists():
            return Kernel(folder, (folder / "release").read_text().strip(), cached=True)
        return _build(source, fragments, folder, progress)


def _build(source: Pin, fragments: Sequence[str], folder: Path, progress: Progress) -> Kernel:
    for tool, package in TOOLS.items():
        require(tool, package)
    tree = unpack_source(source, progress)
    # Always this folder for this key: the build's paths are the same every time.
    work = folder.with_name(folder.name + ".build")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    started = time.monotonic()
    _make(tree, work, ["tinyconfig"], log, progress)
    merge = [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(work)]
    merge += [str(work / ".config"), *(str(FRAGMENTS / name) for name in fragments)]
    with log.open("a") as out:
        merged = subprocess.run(merge, cwd=tree, stdout=out, stderr=subprocess.STDOUT, check=False)
    if merged.returncode != 0:
        raise ImageError(f"merging the kernel fragments failed; see {log}")
    _make(tree, work, ["olddefconfig"], log, progress)
    lacking = unmet(kconfig.read(work / ".config"), fragment_options(fragments))
    if lacking:
        raise ImageError(
            f"the kernel config lacks {', '.join(lacking)}",
            "an option's dependencies are missing from image/kernel/: see `make menuconfig`",
        )
    progress(f"compiling ({', '.join(fragments)}; make's output in {log})")
    _make(tree, work, ["bzImage"], log, progress)
    release = (work / "include/config/kernel.release").read_text().strip()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copyfile(work / "arch/x86/boot/bzImage", staging / "vmlinuz")
    shutil.copyfile(work / ".config", staging / "config")
    shutil.copyfile(log, staging / "build.log")
    (staging / "release").write_text(release + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    progress(f"built kernel {release} in {time.monotonic() - started:.0f} s")
    return Kernel(folder, release, cached=False)
