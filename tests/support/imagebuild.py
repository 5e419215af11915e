"""Building the image from tests: into a directory of the test's own, from ops-config.json."""

from pathlib import Path

from appliance.config import load_config
from image import build, cpio, deploy, squashfs
from tests.support import CONFIG


def build_image(out: Path, reference: bool = False) -> build.Build:
    """Run every build step into `out`; the first run downloads the pinned packages.
    `reference`: the kernel-NAT reference image (nft, a kernel with nftables) instead."""
    vm = deploy.deployment(load_config(CONFIG), out)
    b = build.Build(CONFIG, vm, out=out, reference=reference, say=lambda line: None)
    build.run(b, lambda name, seconds: None)
    return b


def rootfs_entries(b: build.Build) -> list[cpio.Entry]:
    """The files of the built image's root filesystem (build/initramfs, a squashfs)."""
    return squashfs.read((b.out / "initramfs").read_bytes())
