"""The lock file and the package checks: one clear error naming what to run."""

from pathlib import Path

import pytest

from image import debs, lock
from image.errors import ImageError

PIN = lock.Pin("zlib1g", "1:1.2.13.dfsg-1", "0" * 64)


def test_format_and_parse_round_trip() -> None:
    assert lock.parse(lock.format_pins([PIN])) == [PIN]


def test_a_bad_line_names_the_line() -> None:
    with pytest.raises(ImageError, match=r"packages\.lock:2"):
        lock.parse("# header\nzlib1g 1.2 not-a-sum\n")


def test_deb_name_escapes_the_epoch_as_apt_does() -> None:
    assert PIN.deb_name == "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"


def test_a_checksum_mismatch_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / PIN.deb_name).write_bytes(b"not the package")
    with pytest.raises(ImageError, match="lock says") as caught:
        debs.fetch(PIN, tmp_path)
    assert "invoke lock" in caught.value.hint


def test_the_committed_lock_pins_a_kernel_and_python() -> None:
    names = [pin.name for pin in lock.load()]
    assert lock.kernel_pin(lock.load()).name.startswith("linux-image-")
    assert set(lock.PACKAGES) <= set(names)


def test_the_product_takes_no_reference_package_and_the_reference_takes_all() -> None:
    pins = lock.load()
    assert not {p.name for p in lock.product_pins(pins)} & set(lock.REFERENCE_PACKAGES)
    assert lock.reference_pins(pins) == pins
    with pytest.raises(ImageError, match=r"pins no .*\bnftables\b"):
        lock.reference_pins(lock.product_pins(pins))
