"""natvm's kernel builds the same twice: a second build from nothing, in a cache of its own,
gives the cached kernel byte for byte (about 7 minutes on 2 cores)."""

import shutil
from pathlib import Path

import pytest

from image import build, debs, kbuild, lock


def test_two_kernel_builds_are_byte_identical(
    built: build.Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert built.kernel is not None
    downloads = debs.cache_dir() / "debs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "natvm").mkdir()
    (tmp_path / "natvm" / "debs").symlink_to(downloads)  # the same source package, not fetched
    lines: list[str] = []
    try:
        again = kbuild.build(lock.source_pin(lock.load()), kbuild.PRODUCT, lines.append)
        assert not again.cached and debs.cache_dir() in again.folder.parents
        assert again.vmlinuz.read_bytes() == built.kernel.vmlinuz.read_bytes()
        assert again.config.read_text() == built.kernel.config.read_text()
        # The build said what it was doing while it did it.
        assert any(line.startswith("unpacked linux-source-6.1") for line in lines), lines
        assert any(line.startswith("built kernel ") for line in lines), lines
    finally:
        shutil.rmtree(tmp_path / "natvm", ignore_errors=True)  # 1.3 GB of source
