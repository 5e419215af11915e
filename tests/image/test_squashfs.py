"""The root filesystem writer: what goes in comes back out, byte-identical every time, no root."""

import stat

from image import cpio, squashfs

ENTRIES = [
    cpio.file("usr/bin/tool", b"#!/bin/true\n", 0o755),
    cpio.symlink("init", "usr/bin/tool"),
    cpio.char_device("dev/console", 5, 1),
    cpio.char_device("dev/urandom", 1, 9, 0o444),
    cpio.directory("tmp", 0o1777),
    cpio.file("etc/empty", b""),
    cpio.file("etc/big", bytes(range(256)) * 2048),  # more than one 128 KiB block
]


def test_every_entry_comes_back_with_its_type_mode_and_content() -> None:
    found = {e.path: e for e in squashfs.read(squashfs.image(ENTRIES))}
    for entry in ENTRIES:
        assert found[entry.path] == entry, entry.path
    # parents the entries did not list are added, as the kernel will not make them
    assert found["usr/bin"].mode == stat.S_IFDIR | 0o755


def test_two_writes_are_byte_identical_whatever_the_order() -> None:
    assert squashfs.image(ENTRIES) == squashfs.image(list(reversed(ENTRIES)))


def test_the_image_is_compressed() -> None:
    blob = squashfs.image(ENTRIES)
    assert blob[:4] == b"hsqs"  # the squashfs magic, little-endian
    assert len(blob) < len(ENTRIES[-1].data) // 4
