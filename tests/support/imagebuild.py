"""Building the image from tests: into a directory of the test's own, from ops-config.json."""

import subprocess
from pathlib import Path

from appliance.config import load_config
from image import build, deploy
from tests.support import CONFIG


def build_image(out: Path, reference: bool = False) -> build.Build:
    """Run every build step into `out`; the first run downloads the pinned packages.
    `reference`: the kernel-NAT reference image (nft, a kernel with nftables) instead."""
    vm = deploy.deployment(load_config(CONFIG), out)
    b = build.Build(CONFIG, vm, out=out, reference=reference, say=lambda line: None)
    build.run(b, lambda name, seconds: None)
    return b


def initramfs_archive(b: build.Build) -> bytes:
    """The built image's initramfs, uncompressed (with the zstd tool, as Python has none)."""
    compressed = (b.out / "initramfs").read_bytes()
    return subprocess.run(["zstd", "-dc"], input=compressed, capture_output=True, check=True).stdout
