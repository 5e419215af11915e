"""Fixtures for the image tests: the extracted pinned packages and a built image.

These need the pinned Debian packages: the first run downloads them with `apt-get download`
into ~/.cache/natvm (about 80 MB), later runs reuse the cache.
"""

from pathlib import Path

import pytest

from image import build, debs, lock
from tests.support.imagebuild import build_image


@pytest.fixture(scope="session")
def package_root() -> Path:
    return debs.extract(lock.product_pins(lock.load()))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> build.Build:
    return build_image(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def built_reference(tmp_path_factory: pytest.TempPathFactory) -> build.Build:
    return build_image(tmp_path_factory.mktemp("reference"), reference=True)
