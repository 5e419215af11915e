"""The Xen tier's test dom0 (`invoke build --xen-host`): pinned, complete, reproducible, and
kept out of the product image."""

import gzip
import struct
import subprocess
from pathlib import Path

import pytest

from image import build, cpio, lock, runtime, xenclient, xenhost
from image.elf import Elf
from image.errors import ImageError
from tests.image.test_image_contents import extract
from tests.support.imagebuild import rootfs_entries

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192  # the header must sit in the image's first 8 KiB


def build_xen_host(out: Path) -> xenhost.XenHost:
    h = xenhost.XenHost(out=out)
    xenhost.run(h, lambda name, seconds: None)
    return h


@pytest.fixture(scope="module")
def xen_host(tmp_path_factory: pytest.TempPathFactory) -> xenhost.XenHost:
    return build_xen_host(tmp_path_factory.mktemp("xen-host"))


def members(h: xenhost.XenHost) -> dict[str, cpio.Entry]:
    archive = gzip.decompress((h.out / "initramfs").read_bytes())
    return {entry.path: entry for entry in cpio.read(archive)}


def test_two_builds_are_byte_identical(xen_host: xenhost.XenHost, tmp_path: Path) -> None:
    again = build_xen_host(tmp_path)
    for name in (*xenhost.OUTPUTS, "SHA256SUMS", "manifest.json"):
        assert (xen_host.out / name).read_bytes() == (again.out / name).read_bytes(), name


def test_the_hypervisor_is_uncompressed_for_qemus_multiboot_loader(
    xen_host: xenhost.XenHost,
) -> None:
    head = (xen_host.out / "xen").read_bytes()[:MULTIBOOT_SEARCH]
    magics = [struct.unpack_from("<I", head, at)[0] for at in range(0, len(head) - 3, 4)]
    assert MULTIBOOT_MAGIC in magics


def test_hypervisor_and_toolstack_are_one_xen_release(xen_host: xenhost.XenHost) -> None:
    versions = {p.name: p.version for p in xen_host.pins}
    assert versions["xen-hypervisor-4.17-amd64"] == versions["xen-utils-4.17"]
    product_kernel = lock.kernel_pin(lock.load())
    assert versions[lock.dom0_kernel_name(product_kernel)] == product_kernel.version


def test_the_dom0_root_has_the_toolstack_and_every_library_it_links(
    xen_host: xenhost.XenHost,
) -> None:
    found = members(xen_host)
    programs = [*xenhost.PROGRAMS, runtime.PYTHON]
    assert set(programs) <= set(found)
    names = {Path(path).name for path in found}
    for program in programs:
        assert set(Elf(found[program].data).needed()) <= names, program
    assert set(xenhost.DLOPENED) <= names
    assert found["init"].data.startswith(b"#!/usr/bin/python3.11 ")
    assert found[f"etc/xen/scripts/{xenhost.VIF_SCRIPT}"].mode & 0o111
    assert f'vif.default.script="{xenhost.VIF_SCRIPT}"' in found["etc/xen/xl.conf"].data.decode()


def test_the_dom0_modules_are_listed_after_their_dependencies(xen_host: xenhost.XenHost) -> None:
    found = members(xen_host)
    listed = found[xenhost.MODULE_LIST].data.decode().split()
    names = [Path(path).name.removesuffix(".ko").replace("-", "_") for path in listed]
    assert set(xenhost.MODULES) <= set(names)
    for position, path in enumerate(listed):
        depends = Elf(found[path.lstrip("/")].data).modinfo().get("depends", "")
        for dep in filter(None, depends.split(",")):
            assert names.index(dep.replace("-", "_")) < position, (path, dep)


def test_the_dom0_programs_run_from_its_own_libraries(
    xen_host: xenhost.XenHost, tmp_path: Path
) -> None:
    """Each program starts (prints its usage) with the dom0's loader and libraries only."""
    extract(list(cpio.read(gzip.decompress((xen_host.out / "initramfs").read_bytes()))), tmp_path)
    libraries = ":".join(str(tmp_path / d) for d in runtime.LIBDIRS)
    loader = str(tmp_path / runtime.LOADER)
    for program in xenhost.PROGRAMS:
        argv = [loader, "--library-path", libraries, str(tmp_path / program), "-h"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert "error while loading shared libraries" not in proc.stderr, proc.stderr
        assert proc.returncode != 127, (program, proc.stderr)


def test_nothing_of_the_dom0_enters_the_product(built: build.Build) -> None:
    pins = lock.load()
    only_dom0 = {p.name for p in lock.xen_host_pins(pins)} - {p.name for p in built.pins}
    assert "xen-hypervisor-4.17-amd64" in only_dom0 and lock.dom0_kernel_name(pins[0]) in only_dom0
    manifest = (built.out / "manifest.json").read_text()
    assert not [name for name in only_dom0 if f'"{name}"' in manifest]
    paths = [entry.path for entry in rootfs_entries(built)]
    # the dom0's xenstore is its daemon, library and tools; natvm's own client of the protocol
    # (appliance/xenstore.py) is product code, as xen-netback is (a net VM's vifs); busybox is the
    # client VMs'
    xenstore = ("xenstored", "libxenstore", "bin/xenstore-")
    dom0_files = ("xen-4.17", "libxen", *xenstore, "busybox", "opt/dom0", "etc/xen")
    assert [p for p in paths if any(part in p for part in dom0_files)] == []


def test_a_missing_xen_package_is_one_line_naming_it() -> None:
    pins = [p for p in lock.load() if p.name != "xen-utils-4.17"]
    with pytest.raises(ImageError) as caught:
        lock.xen_host_pins(pins)
    assert caught.value.message == "the lock file pins no xen-utils-4.17"
    assert "invoke lock" in caught.value.hint


def test_a_hypervisor_of_another_release_than_the_toolstack_is_refused() -> None:
    pins = [
        lock.Pin(p.name, "4.17.0-1", p.sha256) if p.name == "xen-hypervisor-4.17-amd64" else p
        for p in lock.load()
    ]
    with pytest.raises(ImageError, match="hypervisor and toolstack differ"):
        lock.xen_host_pins(pins)


def test_the_client_initramfs_is_busybox_its_init_and_netfront(xen_host: xenhost.XenHost) -> None:
    archive = gzip.decompress((xen_host.out / "client" / "initramfs").read_bytes())
    found = {entry.path: entry for entry in cpio.read(archive)}
    assert found["init"].data.startswith(b"#!/bin/busybox sh\n") and found["init"].mode & 0o111
    busybox = Elf(found[xenclient.BUSYBOX].data)
    assert busybox.interpreter() is None and busybox.needed() == []  # static: nothing else needed
    listed = found[xenclient.MODULE_LIST].data.decode().split()
    assert listed[-1].endswith("/xen-netfront.ko")
    assert all(path.lstrip("/") in found for path in listed)
    cloud_kernel = lock.kernel_pin(lock.load())
    assert [p.name for p in xen_host.client_pins] == [cloud_kernel.name, "busybox-static"]


def test_the_client_init_is_valid_shell() -> None:
    proc = subprocess.run(["sh", "-n"], input=xenclient.INIT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
