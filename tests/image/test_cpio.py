"""The newc writer: read back by our reader and by GNU cpio, deterministic, kernel-shaped."""

import shutil
import stat
import subprocess

import pytest

from image import cpio

ENTRIES = [
    cpio.file("usr/bin/tool", b"#!/bin/true\n", 0o755),
    cpio.symlink("init", "usr/bin/tool"),
    cpio.char_device("dev/console", 5, 1),
    cpio.file("etc/empty", b""),
    cpio.file("etc/odd", b"abc"),  # a size that needs padding
]


def test_round_trip_adds_parents_and_sorts() -> None:
    members = list(cpio.read(cpio.archive(ENTRIES)))
    assert [m.path for m in members] == sorted(m.path for m in members)
    assert {"usr", "usr/bin", "etc", "dev"} <= {m.path for m in members}
    by_path = {m.path: m for m in members}
    assert by_path["usr/bin/tool"].data == b"#!/bin/true\n"
    assert stat.S_IMODE(by_path["usr/bin/tool"].mode) == 0o755
    assert stat.S_ISLNK(by_path["init"].mode) and by_path["init"].data == b"usr/bin/tool"
    assert stat.S_ISCHR(by_path["dev/console"].mode) and by_path["dev/console"].rdev == (5, 1)
    assert stat.S_ISDIR(by_path["usr"].mode)
    assert by_path["etc/odd"].data == b"abc"


def test_same_entries_same_bytes_in_any_order() -> None:
    assert cpio.archive(ENTRIES) == cpio.archive(list(reversed(ENTRIES)))


def test_members_are_four_byte_aligned_and_end_with_trailer() -> None:
    blob = cpio.archive(ENTRIES)
    assert len(blob) % 4 == 0
    assert b"TRAILER!!!" in blob[-128:]


def test_gnu_cpio_lists_it() -> None:
    tool = shutil.which("cpio")
    if tool is None:
        pytest.fail("cpio is not installed (image/host-packages.txt lists it)")
    listing = subprocess.run(
        [tool, "-itv"], input=cpio.archive(ENTRIES), capture_output=True, check=True
    ).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in listing.splitlines()}  # fmt: skip
    assert set(lines) == {m.path for m in cpio.read(cpio.archive(ENTRIES))}
    assert lines["dev/console"].startswith("crw")
    assert "root     root" in lines["usr/bin/tool"]
    assert "1970" in lines["usr/bin/tool"]  # mtime fixed at SOURCE_DATE_EPOCH 0
