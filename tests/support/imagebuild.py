"""Building the image from tests: into a directory of the test's own, from ops-config.json."""

from pathlib import Path

from appliance.config import load_config
from image import build, deploy
from tests.support import CONFIG


def build_image(out: Path, reference: bool = False) -> build.Build:
    """Run every build step into `out`; the first run downloads the pinned packages.
    `reference`: the kernel-NAT reference image (nft, nftables modules) instead."""
    vm = deploy.deployment(load_config(CONFIG), out)
    b = build.Build(CONFIG, vm, out=out, reference=reference)
    build.run(b, lambda name, seconds: None)
    return b
