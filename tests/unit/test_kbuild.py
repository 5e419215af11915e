"""The kernel build's pure parts: what a fragment asks for, what a built config lacks, and the
cache key that decides when a kernel is built again."""

from pathlib import Path

import pytest

from image import kbuild, kconfig
from image.lock import Pin

SOURCE = Pin("linux-source-6.1", "6.1.192-2", "a" * 64)


def test_a_fragment_reads_set_and_unset_options() -> None:
    options = kconfig.parse("# why\nCONFIG_PACKET=y\n# CONFIG_IPV6 is not set\nCONFIG_NR_CPUS=8\n")
    assert options == {"CONFIG_PACKET": "y", "CONFIG_IPV6": "n", "CONFIG_NR_CPUS": "8"}


def test_an_option_kconfig_dropped_or_changed_is_reported_with_what_was_built() -> None:
    built = {"CONFIG_PACKET": "y", "CONFIG_NR_CPUS": "64", "CONFIG_IPV6": "y"}
    wanted = {"CONFIG_PACKET": "y", "CONFIG_NR_CPUS": "8", "CONFIG_IPV6": "n", "CONFIG_XEN": "y"}
    assert kbuild.unmet(built, wanted) == [
        "CONFIG_NR_CPUS=8 (64)",
        "CONFIG_IPV6=n (y)",
        "CONFIG_XEN=y (not set)",
    ]
    assert (
        kbuild.unmet(
            {**built, "CONFIG_NR_CPUS": "8", "CONFIG_XEN": "y", "CONFIG_IPV6": "n"}, wanted
        )
        == []
    )


def test_an_option_left_out_of_the_config_counts_as_not_set() -> None:
    assert kbuild.unmet({}, {"CONFIG_IPV6": "n"}) == []


def test_the_reference_kernel_is_natvms_plus_netfilter() -> None:
    product = kbuild.fragment_options(kbuild.PRODUCT)
    reference = kbuild.fragment_options(kbuild.REFERENCE)
    assert product.items() <= reference.items()
    added = reference.keys() - product.keys()
    assert added and all(("NF" in name or "NETFILTER" in name) for name in added), added


def test_the_fragment_asks_for_what_the_image_uses() -> None:
    options = kbuild.fragment_options(kbuild.PRODUCT)
    for name in ("VIRTIO_NET", "VIRTIO_PCI", "XEN_PVH", "XEN_NETDEV_FRONTEND",
                 "XEN_NETDEV_BACKEND", "XEN_DEV_EVTCHN", "XEN_GNTDEV", "PACKET", "MEMCG",
                 "DEVTMPFS", "SERIAL_8250_CONSOLE", "HVC_XEN", "BLK_DEV_RAM", "VIRTIO_BLK",
                 "SQUASHFS"):  # fmt: skip
        assert options[f"CONFIG_{name}"] == "y", name


def test_only_a_changed_fragment_or_source_builds_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.config").write_text("CONFIG_PACKET=y\n")
    (tmp_path / "b.config").write_text("CONFIG_NF_TABLES=y\n")
    monkeypatch.setattr(kbuild, "FRAGMENTS", tmp_path)
    key = kbuild.cache_key(SOURCE, ("a.config",))
    assert kbuild.cache_key(SOURCE, ("a.config",)) == key
    assert kbuild.cache_key(SOURCE, ("a.config", "b.config")) != key
    assert kbuild.cache_key(Pin(SOURCE.name, "6.1.192-3", "b" * 64), ("a.config",)) != key
    (tmp_path / "a.config").write_text("CONFIG_PACKET=y\nCONFIG_UNIX=y\n")
    assert kbuild.cache_key(SOURCE, ("a.config",)) != key
