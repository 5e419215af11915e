"""What the build puts in the image: modules in order, a complete runtime, identical rebuilds."""

import gzip
import os
import stat
import subprocess
from pathlib import Path

from image import build, cpio, kconfig, kmod, runtime
from image.elf import Elf
from tests.support.imagebuild import build_image


def test_modules_come_after_their_dependencies(package_root: Path) -> None:
    order = kmod.load_order(kmod.modules_dir(package_root))
    names = [ko.name[:-3].replace("-", "_") for ko in order]
    assert {"virtio_net", "virtio_pci", "virtio_rng", "xen_netfront"} <= set(names)
    assert {"xen_netback", "xen_evtchn", "xen_gntdev"} <= set(names)  # the net VM's
    for position, ko in enumerate(order):
        depends = Elf(ko.read_bytes()).modinfo().get("depends", "")
        assert all(names.index(dep) < position for dep in depends.split(",") if dep)


def test_kernel_has_what_qemu_and_xen_need(built: build.Build) -> None:
    assert built.xen_missing == []
    config = kconfig.read(next((built.root / "boot").glob("config-*")))
    assert kconfig.missing(config, kconfig.BOOT) == []


def extract(archive: bytes, into: Path) -> None:
    """Unpack our own archive with our reader, as the kernel would (no root needed)."""
    for entry in cpio.read(archive):
        target = into / entry.path
        if stat.S_ISDIR(entry.mode):
            target.mkdir(exist_ok=True)
        elif stat.S_ISLNK(entry.mode):
            target.symlink_to(entry.data.decode())
        elif stat.S_ISREG(entry.mode):
            target.write_bytes(entry.data)
            target.chmod(stat.S_IMODE(entry.mode))


def run_from_image(root: Path, program: str, *args: str) -> list[str]:
    """The command line that runs `program` of an extracted image with the image's own loader
    and libraries, none of the host's."""
    libraries = ":".join(str(root / d) for d in runtime.LIBDIRS)
    return [str(root / runtime.LOADER), "--library-path", libraries, str(root / program), *args]


def test_the_image_runtime_imports_the_appliance_from_its_own_files(
    built: build.Build, tmp_path: Path
) -> None:
    extract(gzip.decompress((built.out / "initramfs").read_bytes()), tmp_path)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import appliance.init, appliance.shell, appliance.config;"
        "print('\\n'.join(str(getattr(m, '__file__', None)) for m in sys.modules.values()))"
    )
    app = str(tmp_path / runtime.APP_DIR)
    argv = run_from_image(tmp_path, runtime.PYTHON, "-S", "-c", probe, app)
    env = {"PYTHONHOME": str(tmp_path / "usr"), "PYTHONDONTWRITEBYTECODE": "1"}
    files = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    loaded = [f for f in files.split() if f != "None"]
    assert loaded and all(f.startswith(str(tmp_path)) for f in loaded), loaded


def test_init_is_an_executable_python_script(built: build.Build) -> None:
    archive = gzip.decompress((built.out / "initramfs").read_bytes())
    members = {m.path: m for m in cpio.read(archive)}
    assert members["init"].data.startswith(b"#!/usr/bin/python3.11 ")
    assert members["init"].mode & 0o111
    assert stat.S_ISCHR(members["dev/console"].mode)
    loader = Elf(members[runtime.PYTHON].data).interpreter() or ""
    assert loader.lstrip("/") in members  # the ELF interpreter, through its symlink


def test_initramfs_is_small(built: build.Build) -> None:
    assert (built.out / "initramfs").stat().st_size <= 8 * 2**20


def test_two_builds_are_byte_identical(built: build.Build, tmp_path: Path) -> None:
    again = build_image(tmp_path)
    for name in build.OUTPUTS:
        assert (built.out / name).read_bytes() == (again.out / name).read_bytes(), name
    assert os.path.getsize(again.out / "manifest.json") > 0
