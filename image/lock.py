"""The lock file: which Debian packages go into the image, at which version, with which sha256.

`image/packages.lock` has one `name version sha256` line per package. `refresh` re-pins every
package of `PACKAGES` to the candidate version of the host's apt sources, taking the sha256 from
the package index (`apt-cache show`), so locking downloads nothing.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from image.command import require, run
from image.errors import ImageError

LOCK_FILE = Path(__file__).with_name("packages.lock")
# Resolved to the versioned kernel package at lock time. Debian's cloud flavour, made for VMs
# (virtio, Xen PVH and netfront, no bare-metal drivers), has a third of the generic kernel's
# .bss (5.4 vs 17.3 MiB, resident for the VM's life): 12.3 MiB more for the guest.
KERNEL_META = "linux-image-cloud-amd64"
# natvm's own kernel is built from Debian's source of that kernel's upstream version
# (image/kbuild.py); the cloud kernel itself boots only the Xen tier's clients, and its generic
# flavour the tier's dom0.
SOURCE_PREFIX = "linux-source-"
PACKAGES = (
    "python3.11-minimal",  # /usr/bin/python3.11
    "libpython3.11-minimal",  # the core stdlib (os, socket, struct, ...)
    "libpython3.11-stdlib",  # json and the _ctypes extension
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",  # needed by _ctypes
)
# Only in the reference image (`invoke build --reference`): nft and the libraries it links, for
# the kernel-NAT reference mode the VM benchmark compares natvm with. The product image never
# takes these (`product_pins`), so its contents and manifest do not depend on them.
REFERENCE_PACKAGES = (
    "nftables",  # /usr/sbin/nft
    "libnftables1",
    "libnftnl11",
    "libmnl0",
    "libxtables12",
    "libjansson4",
    "libgmp10",
    "libedit2",  # nft's command-line editing; linked even when reading a file
    "libbsd0",
    "libmd0",
    "libtinfo6",
)
# Only in the test dom0 of the Xen tier (`invoke build --xen-host`, image/xenhost.py): Xen's
# hypervisor, its toolstack and the libraries they link. With the product's Python runtime
# (PACKAGES) and the generic flavour of the product's kernel (`dom0_kernel_name`), that is the
# whole dom0. Test equipment: neither image takes these (`product_pins`, `reference_pins`).
XEN_HOST_PACKAGES = (
    "xen-hypervisor-4.17-amd64",  # /boot/xen-4.17-amd64.gz
    "xen-utils-4.17",  # xl, xenstored, xenconsoled, xenconsole, xen-init-dom0
    "xenstore-utils",  # xenstore-read and -write, for the vif hotplug script
    "libxenmisc4.17",  # libxenlight, libxenctrl, libxenguest, libxlutil
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
    "libyajl2",
    "liblzma5",
    "libzstd1",
    "libuuid1",
    "libgcc-s1",  # libgcc_s.so.1: glibc dlopens it when xl's threads exit, no DT_NEEDED names it
)
# Only in the Xen tier's client VMs (image/xenclient.py), with the cloud kernel: a shell and
# the network tools (ip, ping, wget, nslookup) in one static binary. Test equipment too.
CLIENT_PACKAGES = ("busybox-static",)
# The hypervisor and the toolstack talk through interfaces private to one Xen release: their
# versions must match.
XEN_MATCHING = ("xen-hypervisor-4.17-amd64", "xen-utils-4.17")
_HEADER = "# natvm image packages: name version sha256 (amd64; refresh with `invoke lock`)\n"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    @property
    def deb_name(self) -> str:
        """The file name `apt-get download` gives the package (':' in versions becomes %3a);
        the kernel source is the one architecture-independent package."""
        arch = "all" if self.name.startswith(SOURCE_PREFIX) else "amd64"
        return f"{self.name}_{self.version.replace(':', '%3a')}_{arch}.deb"


def parse(text: str) -> list[Pin]:
    pins = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3 or not re.fullmatch(r"[0-9a-f]{64}", fields[2]):
            raise ImageError(f"{LOCK_FILE.name}:{number}: expected `name version sha256`")
        pins.append(Pin(*fields))
    return pins


def format_pins(pins: list[Pin]) -> str:
    return _HEADER + "".join(f"{p.name} {p.version} {p.sha256}\n" for p in pins)


def load(path: Path = LOCK_FILE) -> list[Pin]:
    if not path.exists():
        raise ImageError(f"{path} is missing", "run `invoke lock`")
    return parse(path.read_text())


def dom0_kernel_name(kernel: Pin) -> str:
    """The test dom0's kernel package: the generic flavour of the product's kernel, the same
    upstream version (the cloud flavour has no CONFIG_XEN_DOM0)."""
    return kernel.name.replace("-cloud-amd64", "-amd64")


def _xen_host_only(pins: list[Pin]) -> set[str]:
    """Names of the pins that only the test dom0 takes."""
    shared = {*PACKAGES, *REFERENCE_PACKAGES}
    only = {name for name in (*XEN_HOST_PACKAGES, *CLIENT_PACKAGES) if name not in shared}
    kernels = [pin for pin in pins if pin.name.startswith("linux-image-")]
    return only | ({dom0_kernel_name(kernels[0])} if kernels else set())


def _kernels(pins: list[Pin]) -> set[str]:
    """Names of the kernel packages: the images build their own kernel from the source."""
    return {p.name for p in pins if p.name.startswith(("linux-image-", SOURCE_PREFIX))}


def product_pins(pins: list[Pin]) -> list[Pin]:
    """The pins of the product image's userland: all but the kernels, the reference image's and
    the test dom0's."""
    excluded = {*REFERENCE_PACKAGES, *_xen_host_only(pins), *_kernels(pins)}
    return [pin for pin in pins if pin.name not in excluded]


def _require(pins: list[Pin], names: set[str]) -> None:
    missing = sorted(names - {pin.name for pin in pins})
    if missing:
        raise ImageError(f"the lock file pins no {', '.join(missing)}", "run `invoke lock`")


def reference_pins(pins: list[Pin]) -> list[Pin]:
    """The pins of the reference image: the product's and nft's; fails if nft is not pinned."""
    _require(pins, set(REFERENCE_PACKAGES))
    excluded = {*_xen_host_only(pins), *_kernels(pins)}
    return [pin for pin in pins if pin.name not in excluded]


def xen_host_pins(pins: list[Pin]) -> list[Pin]:
    """The pins of the test dom0: its kernel, Xen and the product's Python runtime; fails if one
    is not pinned or the hypervisor's and the toolstack's versions differ."""
    kernel = dom0_kernel_name(kernel_pin(pins))
    _require(pins, {kernel, *XEN_HOST_PACKAGES, *PACKAGES})
    wanted = {kernel, *XEN_HOST_PACKAGES, *PACKAGES}
    chosen = [pin for pin in pins if pin.name in wanted]
    versions = {pin.name: pin.version for pin in chosen if pin.name in XEN_MATCHING}
    if len(set(versions.values())) != 1:
        pinned = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
        raise ImageError(f"Xen's hypervisor and toolstack differ: {pinned}", "run `invoke lock`")
    return chosen


def xen_client_pins(pins: list[Pin]) -> list[Pin]:
    """The pins of the Xen tier's client VMs: Debian's cloud kernel and busybox."""
    _require(pins, set(CLIENT_PACKAGES))
    return [kernel_pin(pins), *(pin for pin in pins if pin.name in CLIENT_PACKAGES)]


def source_name(kernel: Pin) -> str:
    """The source package of `kernel`'s upstream version: 6.1.192-2 -> linux-source-6.1."""
    return SOURCE_PREFIX + ".".join(kernel.version.split(".")[:2])


def source_pin(pins: list[Pin]) -> Pin:
    """The kernel source natvm's kernel is built from."""
    for pin in pins:
        if pin.name.startswith(SOURCE_PREFIX):
            return pin
    raise ImageError("the lock file pins no linux-source package", "run `invoke lock`")


def kernel_pin(pins: list[Pin]) -> Pin:
    """Debian's cloud kernel, the first linux-image pin (`refresh` writes the dom0's after it):
    only the Xen tier's clients boot it; it fixes the version of the kernel source and of the
    dom0's kernel."""
    for pin in pins:
        if pin.name.startswith("linux-image-"):
            return pin
    raise ImageError("the lock file pins no linux-image package", "run `invoke lock`")


def _show(name: str, version: str = "") -> dict[str, str]:
    """The first stanza of `apt-cache show`, for the candidate version unless one is given."""
    spec = f"{name}={version}" if version else name
    if not version:
        policy = run(["apt-cache", "policy", name])
        match = re.search(r"Candidate: (\S+)", policy)
        if match is None or match.group(1) == "(none)":
            raise ImageError(f"apt has no candidate for {name}", "run `apt-get update`")
        spec = f"{name}={match.group(1)}"
    stanza = run(["apt-cache", "show", spec], hint="run `apt-get update`").split("\n\n")[0]
    return dict(re.findall(r"^([\w-]+): (.*)$", stanza, flags=re.MULTILINE))


def _pin(name: str) -> Pin:
    fields = _show(name)
    return Pin(fields["Package"], fields["Version"], fields["SHA256"])


def refresh(path: Path = LOCK_FILE) -> list[Pin]:
    """Pin the candidate versions of the kernel, `PACKAGES`, `REFERENCE_PACKAGES`,
    `XEN_HOST_PACKAGES` and `CLIENT_PACKAGES`, and the dom0 kernel and the kernel source at the
    kernel's version; write the lock, return it."""
    require("apt-cache", "apt")
    depends = _show(KERNEL_META)["Depends"]
    kernel = re.match(r"(linux-image-[\w.-]+)", depends)
    if kernel is None:
        raise ImageError(f"cannot find the kernel package in {KERNEL_META}'s Depends: {depends}")
    product_kernel = _pin(kernel.group(1))
    dom0_kernel = _show(dom0_kernel_name(product_kernel), product_kernel.version)
    source = _show(source_name(product_kernel), product_kernel.version)
    names = dict.fromkeys((*PACKAGES, *REFERENCE_PACKAGES, *XEN_HOST_PACKAGES, *CLIENT_PACKAGES))
    pins = [
        product_kernel,
        *(_pin(name) for name in names),
        Pin(dom0_kernel["Package"], dom0_kernel["Version"], dom0_kernel["SHA256"]),
        Pin(source["Package"], source["Version"], source["SHA256"]),
    ]
    path.write_text(format_pins(pins))
    return pins
