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
PACKAGES = (
    "python3.11-minimal",  # /usr/bin/python3.11
    "libpython3.11-minimal",  # the core stdlib (os, socket, struct, ...)
    "libpython3.11-stdlib",  # json, dataclasses, ctypes and its _ctypes extension
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
_HEADER = "# natvm image packages: name version sha256 (amd64; refresh with `invoke lock`)\n"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    @property
    def deb_name(self) -> str:
        """The file name `apt-get download` gives the package (':' in versions becomes %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_amd64.deb"


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


def product_pins(pins: list[Pin]) -> list[Pin]:
    """The pins of the product image: all but the reference image's extra packages."""
    return [pin for pin in pins if pin.name not in REFERENCE_PACKAGES]


def reference_pins(pins: list[Pin]) -> list[Pin]:
    """The pins of the reference image: the product's and nft's; fails if nft is not pinned."""
    missing = sorted(set(REFERENCE_PACKAGES) - {pin.name for pin in pins})
    if missing:
        raise ImageError(f"the lock file pins no {', '.join(missing)}", "run `invoke lock`")
    return pins


def kernel_pin(pins: list[Pin]) -> Pin:
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
    """Pin the candidate versions of the kernel, `PACKAGES` and `REFERENCE_PACKAGES`, write the
    lock, return it."""
    require("apt-cache", "apt")
    depends = _show(KERNEL_META)["Depends"]
    kernel = re.match(r"(linux-image-[\w.-]+)", depends)
    if kernel is None:
        raise ImageError(f"cannot find the kernel package in {KERNEL_META}'s Depends: {depends}")
    names = (*PACKAGES, *REFERENCE_PACKAGES)
    pins = [_pin(kernel.group(1)), *(_pin(name) for name in names)]
    path.write_text(format_pins(pins))
    return pins
