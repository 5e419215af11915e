"""The initramfs: the appliance, the Python runtime it needs, config, /init.

Assembled in small steps, each returning cpio entries. natvm's images write them as a squashfs
(image/squashfs.py: the root filesystem, read-only); the Xen tier's dom0 and clients, which boot
Debian's kernels, as a gzip'd cpio initramfs (`cpio.archive`, `compress`).
Layout in the image:
  /init                       a Python script: hands over to appliance.init (PID 1 duties)
  /sbin/poweroff              a Python script: SIGTERM to PID 1 (hypervisor shutdown requests)
  /usr/bin/python3.11, /lib*  the interpreter, its loader and libraries (Debian packages)
  /usr/lib/python3.11         sourceless .pyc of the stdlib modules the appliance loads
  /opt/natvm/appliance        the appliance, as .pyc
  /etc/natvm/ops-config.json  the baked configuration
  /dev/console, /dev/urandom  so Python has a console and randomness before /dev is mounted
The reference initramfs (`Inputs.reference`, for `invoke bench --vm`) adds /usr/sbin/nft, the
libraries it links and /opt/natvm/image/reference.pyc, and its /init
runs that program instead: PID 1's same duties, then Linux forwards and translates in place of
the appliance (see image/reference.py). natvm's own initramfs holds none of it.
"""

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.init import NET_VM_MODULES
from image import cpio, runtime
from image.elf import Elf

CONFIG_PATH = "etc/natvm/ops-config.json"
NFT = "usr/sbin/nft"  # the reference image's only extra program
# The collector is off while the program imports: importing makes no garbage, and its passes over
# the growing heap were a tenth of the import time (0.1 s of the boot under TCG).
INIT = """#!/usr/bin/python3.11 -SI
# {comment}
import gc, sys
gc.disable()
sys.path.insert(0, "/opt/natvm")
from {module} import main
gc.enable()
main()
"""


@dataclass(frozen=True)
class Entry:
    """The module whose `main` /init calls; importing it also finds the stdlib it needs."""

    module: str
    comment: str
    also: tuple[str, ...] = ()  # modules it imports only on some paths, with their stdlib

    def init(self) -> str:
        return INIT.format(comment=self.comment, module=self.module)


PRODUCT = Entry(
    "appliance.init",
    "natvm's /init: the appliance does PID 1's duties itself (see appliance/init.py).",
    NET_VM_MODULES,
)
REFERENCE = Entry(
    "image.reference",
    "The kernel-NAT reference's /init: PID 1's duties, then Linux as the NAT "
    "(see image/reference.py).",
)
# The kernel runs /sbin/poweroff when the hypervisor asks for a shutdown (Xen's `xl shutdown`
# calls orderly_poweroff): ask PID 1 to stop, as SIGTERM does on a host.
POWEROFF = """#!/usr/bin/python3.11 -SI
import os
import signal
os.kill(1, signal.SIGTERM)
"""


@dataclass(frozen=True)
class Inputs:
    """What goes in: the extracted packages, the tree holding `appliance/`, the config."""

    root: Path
    source: Path
    config: Path
    scratch: Path  # compiled bytecode is written here before it is archived
    reference: bool = False  # the reference image: its own /init and nft

    @property
    def entry(self) -> Entry:
        return REFERENCE if self.reference else PRODUCT


def _copy(root: Path, path: str) -> Iterator[cpio.Entry]:
    """The entry for `root/path` with its permissions, following symlinks inside `root`."""
    real = root / path
    while real.is_symlink():
        target = os.readlink(real)
        yield cpio.symlink(str(real.relative_to(root)), target)
        real = (root / target.lstrip("/")) if target.startswith("/") else real.parent / target
    yield cpio.file(str(real.relative_to(root)), real.read_bytes(), real.stat().st_mode & 0o7777)


def skeleton(inputs: Inputs) -> list[cpio.Entry]:
    return [
        cpio.directory("proc"),
        cpio.directory("sys"),
        cpio.directory("tmp", 0o1777),
        cpio.directory("run"),  # a tmpfs's mount point (the root is read-only)
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.char_device("dev/urandom", 1, 9, 0o444),
        cpio.file("init", inputs.entry.init().encode(), 0o755),
        cpio.file("sbin/poweroff", POWEROFF.encode(), 0o755),
    ]


def _image_path(inputs: Inputs, file: Path) -> str:
    """Where module source `file` goes in the image (as .pyc, or as-is for extensions)."""
    if file.is_relative_to(inputs.source):
        relative = str(Path(runtime.APP_DIR) / file.relative_to(inputs.source))
    else:
        relative = str(file.relative_to(inputs.root))
    return relative + "c" if relative.endswith(".py") else relative


def python(inputs: Inputs) -> list[cpio.Entry]:
    """The interpreter, its libraries, the stdlib modules and the appliance, compiled (and in
    the reference image, the reference program: found by importing it, as the stdlib is)."""
    found = runtime.modules(inputs.root, inputs.source, (inputs.entry.module, *inputs.entry.also))
    found.pop("__main__", None)  # the build's own job script (image/target_job.py), not the image's
    sources = {*found.values(), *(inputs.source / "appliance").rglob("*.py")}
    compiled = sorted(f for f in sources if f.suffix == ".py")
    extensions = sorted(f for f in sources if f.suffix == ".so")
    jobs = [
        (f, inputs.scratch / _image_path(inputs, f), "/" + _image_path(inputs, f)[:-1])
        for f in compiled
    ]
    runtime.compile_to(inputs.root, jobs)
    binary = inputs.root / runtime.PYTHON
    interpreter = Elf(binary.read_bytes()).interpreter() or ""
    entries = [*_copy(inputs.root, runtime.PYTHON), *_copy(inputs.root, interpreter.lstrip("/"))]
    for library in runtime.libraries(inputs.root, [binary, *extensions]):
        entries += _copy(inputs.root, str(library.relative_to(inputs.root)))
    entries += [cpio.file(_image_path(inputs, f), f.read_bytes()) for f in extensions]
    entries += [
        cpio.file(_image_path(inputs, f), (inputs.scratch / _image_path(inputs, f)).read_bytes())
        for f in compiled
    ]
    entries.append(cpio.directory(runtime.STDLIB + "/lib-dynload"))  # exec-prefix landmark
    return entries


def reference_userland(inputs: Inputs) -> list[cpio.Entry]:
    """nft and the libraries it needs, only in the reference image."""
    if not inputs.reference:
        return []
    entries = list(_copy(inputs.root, NFT))
    for library in runtime.libraries(inputs.root, [inputs.root / NFT]):
        entries += _copy(inputs.root, str(library.relative_to(inputs.root)))
    return entries


def configuration(inputs: Inputs) -> list[cpio.Entry]:
    return [cpio.file(CONFIG_PATH, inputs.config.read_bytes())]


STEPS = (skeleton, python, reference_userland, configuration)


def entries(inputs: Inputs) -> list[cpio.Entry]:
    out: list[cpio.Entry] = []
    for step in STEPS:
        out += step(inputs)
    return out


def compress(archive: bytes) -> bytes:
    return gzip.compress(archive, compresslevel=9, mtime=0)
