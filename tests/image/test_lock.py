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
    # All the product's and nft's: the lock also holds the Xen tier's dom0, which neither takes.
    product = {p.name for p in lock.product_pins(pins)}
    assert {p.name for p in lock.reference_pins(pins)} == product | set(lock.REFERENCE_PACKAGES)
    with pytest.raises(ImageError, match=r"pins no .*\bnftables\b"):
        lock.reference_pins(lock.product_pins(pins))


def test_neither_image_takes_the_xen_tiers_dom0_nor_its_clients() -> None:
    pins = lock.load()
    dom0 = {p.name for p in lock.xen_host_pins(pins)} - set(lock.PACKAGES)
    dom0 |= {p.name for p in lock.xen_client_pins(pins)}
    assert set(lock.CLIENT_PACKAGES) <= dom0
    assert lock.dom0_kernel_name(lock.kernel_pin(pins)) in dom0
    for image_pins in (lock.product_pins(pins), lock.reference_pins(pins)):
        assert not {p.name for p in image_pins} & dom0
