"""Building the image from tests: into a directory of the test's own, from ops-config.json."""

from pathlib import Path

from appliance.config import load_config
from image import build, deploy
from tests.support import CONFIG


def deployment(out: Path) -> deploy.Deployment:
    config = load_config(CONFIG)
    bridges = (config.wan.bridge or "natvm-wan", config.lan.bridge or "natvm-lan")
    return deploy.Deployment(
        config.memory_mib, config.cpus, bridges, out / "vmlinuz", out / "initramfs"
    )


def build_image(out: Path, reference: bool = False) -> build.Build:
    """Run every build step into `out`; the first run downloads the pinned packages.
    `reference`: the kernel-NAT reference image (nft, nftables modules) instead."""
    b = build.Build(CONFIG, deployment(out), out=out, reference=reference)
    build.run(b, lambda name, seconds: None)
    return b
