"""QEMU's root disk (image/qcow2.py), checked by qemu-img, which reads it as QEMU does."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from image import build, qcow2, squashfs


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def written(tmp_path: Path, raw: bytes, cluster_bits: int) -> tuple[Path, Path]:
    raw_file, disk = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    raw_file.write_bytes(raw)
    disk.write_bytes(qcow2.image(raw, cluster_bits))
    return raw_file, disk


def assert_valid_and_same(raw_file: Path, disk: Path) -> None:
    check = qemu_img("check", "-f", "qcow2", str(disk))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    same = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw_file), str(disk))
    assert (same.returncode, same.stdout.strip()) == (0, "Images are identical."), same.stderr


def test_a_disk_reads_back_byte_for_byte_with_its_zero_cluster_left_unallocated(
    tmp_path: Path,
) -> None:
    cluster = 1 << 16
    text = b"natvm root disk " * (cluster // 16)
    raw = os.urandom(cluster) + bytes(cluster) + text + text[: cluster // 2]  # a partial last one
    raw_file, disk = written(tmp_path, raw, 16)
    assert_valid_and_same(raw_file, disk)
    info = json.loads(qemu_img("info", "--output=json", str(disk)).stdout)
    assert info["virtual-size"] == len(raw)
    assert info["cluster-size"] == cluster
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    extents = json.loads(qemu_img("map", "--output=json", str(disk)).stdout)
    zero = [e for e in extents if e["start"] <= cluster < e["start"] + e["length"]]
    assert [(e["data"], e["zero"]) for e in zero] == [(False, True)]


def test_small_clusters_take_several_l2_tables(tmp_path: Path) -> None:
    """512-byte clusters: an L2 table maps 64 of them, so 200 need four tables (and the frames
    fill the header's and the L1 table's clusters around them)."""
    raw = b"".join(i.to_bytes(2, "big") * 256 for i in range(200))
    raw_file, disk = written(tmp_path, raw, 9)
    assert_valid_and_same(raw_file, disk)


def test_layout_refuses_frames_that_do_not_cover_the_disk() -> None:
    with pytest.raises(ValueError, match="2 frames for 300000 bytes in 131072-byte clusters"):
        qcow2.layout(300_000, [b"x", b"y"], 17)


def test_the_built_root_disk_is_the_uncompressed_squashfs_of_the_initramfs_files(
    built: build.Build, tmp_path: Path
) -> None:
    disk = built.out / "root.qcow2"
    check = qemu_img("check", "-f", "qcow2", str(disk))
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    raw = tmp_path / "root.squashfs"
    convert = qemu_img("convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw))
    assert convert.returncode == 0, convert.stderr
    superblock = subprocess.run(
        ["unsquashfs", "-s", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    assert "Data is uncompressed" in superblock and "Inodes are uncompressed" in superblock
    blob = raw.read_bytes()
    assert squashfs.read(blob) == squashfs.read((built.out / "initramfs").read_bytes())
