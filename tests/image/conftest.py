"""Fixtures for the image tests: the extracted pinned packages and a built image.

These need the pinned Debian packages: the first run downloads them with `apt-get download`
into ~/.cache/natvm (about 80 MB), later runs reuse the cache.
"""

from pathlib import Path

import pytest

from appliance.config import load_config
from image import build, debs, deploy, lock

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "ops-config.json"


def deployment(out: Path) -> deploy.Deployment:
    config = load_config(CONFIG)
    bridges = (config.wan.bridge or "natvm-wan", config.lan.bridge or "natvm-lan")
    return deploy.Deployment(
        config.memory_mib, config.cpus, bridges, out / "vmlinuz", out / "initramfs"
    )


def build_image(out: Path) -> build.Build:
    b = build.Build(CONFIG, deployment(out), out=out)
    build.run(b, lambda name, seconds: None)
    return b


@pytest.fixture(scope="session")
def package_root() -> Path:
    return debs.extract(lock.load())


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> build.Build:
    return build_image(tmp_path_factory.mktemp("build"))
