"""The kernel-NAT reference image holds nft, its libraries, a kernel with nftables built in and
its own /init program (image/reference.py); the product image holds none of them, no mode word
leads to them, and its pinned packages do not change."""

import json
import subprocess
from pathlib import Path

from image import build, cpio, initramfs, kconfig, lock, runtime
from tests.image.test_image_contents import extract, run_from_image
from tests.support.imagebuild import rootfs_entries

NFT_LIBRARIES = ("libnftables.so.1", "libnftnl.so.11", "libmnl.so.0", "libedit.so.2")
NFT_OPTIONS = ("NF_TABLES", "NFT_NAT", "NFT_MASQ", "NFT_CT", "NF_CONNTRACK", "NF_NAT")
REFERENCE_PROGRAM = f"{runtime.APP_DIR}/image/reference.pyc"


def _members(b: build.Build) -> dict[str, cpio.Entry]:
    return {m.path: m for m in rootfs_entries(b)}


def _kernel_options(b: build.Build) -> dict[str, str]:
    assert b.kernel is not None
    return kconfig.read(b.kernel.config)


def _names(members: dict[str, cpio.Entry]) -> set[str]:
    return {Path(path).name for path in members}


def test_the_reference_image_has_nft_its_libraries_and_nftables_in_its_kernel(
    built_reference: build.Build, built: build.Build
) -> None:
    members = _members(built_reference)
    assert members[initramfs.NFT].mode & 0o111
    assert set(NFT_LIBRARIES) <= _names(members)
    options = _kernel_options(built_reference)
    assert all(options.get(f"CONFIG_{name}") == "y" for name in NFT_OPTIONS)
    # Like for like: the reference kernel has everything natvm's has (it adds netfilter).
    built_in = {name for name, value in _kernel_options(built).items() if value == "y"}
    assert not [name for name in built_in if options.get(name) != "y"]
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
    assert not [name for name in NFT_OPTIONS if _kernel_options(built).get(f"CONFIG_{name}") == "y"]
    assert not [path for path in members if "reference" in path]  # nor the reference program
    assert b"from appliance.init import main\n" in members["init"].data
    appliance = [m for path, m in members.items() if path.startswith(runtime.APP_DIR)]
    assert appliance and not [m.path for m in appliance if b"natvm.mode" in m.data]
    pinned = {p["name"] for p in json.loads((built.out / "manifest.json").read_text())["packages"]}
    assert not pinned & set(lock.REFERENCE_PACKAGES)


def test_the_reference_nft_runs_from_the_images_own_files(
    built_reference: build.Build, tmp_path: Path
) -> None:
    extract(rootfs_entries(built_reference), tmp_path)
    argv = run_from_image(tmp_path, initramfs.NFT, "--version")
    version = subprocess.run(argv, env={}, capture_output=True, text=True, check=True).stdout
    assert version.startswith("nftables v1.")
