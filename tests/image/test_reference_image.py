"""The kernel-NAT reference image holds nft, its libraries, the nftables modules and its own
/init program (image/reference.py); the product image holds none of them, no mode word leads
to them, and its pinned packages do not change."""

import gzip
import json
import subprocess
from pathlib import Path

from image import build, cpio, initramfs, lock, runtime
from tests.image.test_image_contents import extract, run_from_image

NFT_LIBRARIES = ("libnftables.so.1", "libnftnl.so.11", "libmnl.so.0", "libedit.so.2")
NFT_MODULES = ("nf_tables.ko", "nft_chain_nat.ko", "nft_masq.ko", "nft_nat.ko", "nf_conntrack.ko")
REFERENCE_PROGRAM = f"{runtime.APP_DIR}/image/reference.pyc"


def _members(b: build.Build) -> dict[str, cpio.Entry]:
    return {m.path: m for m in cpio.read(gzip.decompress((b.out / "initramfs").read_bytes()))}


def _names(members: dict[str, cpio.Entry]) -> set[str]:
    return {Path(path).name for path in members}


def test_the_reference_image_has_nft_its_libraries_and_modules(
    built_reference: build.Build,
) -> None:
    members = _members(built_reference)
    assert members[initramfs.NFT].mode & 0o111
    assert set(NFT_LIBRARIES) <= _names(members)
    listed = [Path(p).name for p in members[initramfs.MODULE_LIST].data.decode().split()]
    assert all(module in listed for module in NFT_MODULES)
    assert listed.index("nf_conntrack.ko") < listed.index("nft_masq.ko")  # dependencies first
    assert not (built_reference.out / "libvirt.xml").exists()  # not a product: no deployment


def test_the_reference_image_init_runs_the_reference_program(
    built_reference: build.Build,
) -> None:
    members = _members(built_reference)
    assert REFERENCE_PROGRAM in members
    assert b"from image.reference import main\n" in members["init"].data


def test_the_product_image_has_no_reference_userland(built: build.Build) -> None:
    members = _members(built)
    assert initramfs.NFT not in members
    assert not set(NFT_LIBRARIES) & _names(members)
    assert not set(NFT_MODULES) & _names(members)
    assert not [path for path in members if "reference" in path]  # nor the reference program
    assert b"from appliance.init import main\n" in members["init"].data
    appliance = [m for path, m in members.items() if path.startswith(runtime.APP_DIR)]
    assert appliance and not [m.path for m in appliance if b"natvm.mode" in m.data]
    pinned = {p["name"] for p in json.loads((built.out / "manifest.json").read_text())["packages"]}
    assert not pinned & set(lock.REFERENCE_PACKAGES)


def test_the_reference_nft_runs_from_the_images_own_files(
    built_reference: build.Build, tmp_path: Path
) -> None:
    extract(gzip.decompress((built_reference.out / "initramfs").read_bytes()), tmp_path)
    argv = run_from_image(tmp_path, initramfs.NFT, "--version")
    version = subprocess.run(argv, env={}, capture_output=True, text=True, check=True).stdout
    assert version.startswith("nftables v1.")
