"""What the build puts in the image: natvm's own kernel with every option its fragment asks
for, a complete runtime, the size budget, identical rebuilds."""

import ast
import json
import marshal
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

from image import build, cpio, initramfs, kbuild, kconfig, runtime
from image.elf import Elf
from tests.support.imagebuild import build_image, rootfs_entries


def test_the_kernel_has_every_option_its_fragment_asks_for(built: build.Build) -> None:
    assert built.kernel is not None
    config = kconfig.read(built.kernel.config)
    wanted = kbuild.fragment_options(kbuild.PRODUCT)
    assert kbuild.unmet(config, wanted) == []
    # What the image needs from it, whichever way the fragment is written:
    for option in ("VIRTIO_NET", "XEN_PVH", "XEN_NETDEV_FRONTEND", "XEN_NETDEV_BACKEND", "PACKET"):
        assert config[f"CONFIG_{option}"] == "y", option
    assert config.get("CONFIG_MODULES", "n") == "n"  # all built in: nothing to load at boot
    manifest = json.loads((built.out / "manifest.json").read_text())["kernel"]
    assert manifest["options"] == wanted
    assert manifest["release"] == built.kernel.release


def test_the_image_holds_no_kernel_modules(built: build.Build) -> None:
    paths = [entry.path for entry in rootfs_entries(built)]
    assert paths and not [path for path in paths if path.endswith(".ko") or "modules" in path]


def extract(entries: list[cpio.Entry], into: Path) -> None:
    """Write the image's files under `into` (no root needed: device nodes are left out)."""
    for entry in entries:
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
    extract(rootfs_entries(built), tmp_path)
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
    members = {m.path: m for m in rootfs_entries(built)}
    assert members["init"].data.startswith(b"#!/usr/bin/python3.11 ")
    assert members["init"].mode & 0o111
    assert stat.S_ISCHR(members["dev/console"].mode)
    loader = Elf(members[runtime.PYTHON].data).interpreter() or ""
    assert loader.lstrip("/") in members  # the ELF interpreter, through its symlink


def test_init_imports_with_the_collector_off_and_runs_main_with_it_on(tmp_path: Path) -> None:
    (tmp_path / "program.py").write_text(
        "import gc\nIMPORTED_WITH_GC = gc.isenabled()\n"
        "def main():\n    print(IMPORTED_WITH_GC, gc.isenabled())\n"
    )
    script = tmp_path / "init"
    script.write_text(initramfs.INIT.format(comment="test", module="program"))
    run = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, "False True\n"), run.stderr


def test_the_image_is_smaller_than_the_unikernel_it_competes_with(built: build.Build) -> None:
    """Issue 13's budget: vmlinuz at most 3 MiB, with the root filesystem at most 7 MiB, below
    qubes-mirage-firewall's 7.45 MB: QEMU's root disk and Xen's initramfs alike."""
    kernel = (built.out / "vmlinuz").stat().st_size
    assert kernel <= 3 * 2**20
    for root in ("root.qcow2", "initramfs"):
        assert kernel + (built.out / root).stat().st_size <= 7 * 2**20, root


def test_two_builds_are_byte_identical(built: build.Build, tmp_path: Path) -> None:
    again = build_image(tmp_path)
    for name in build.OUTPUTS:
        assert (built.out / name).read_bytes() == (again.out / name).read_bytes(), name
    assert os.path.getsize(again.out / "manifest.json") > 0


def test_the_bytecode_keeps_line_numbers_but_no_column_ranges(built: build.Build) -> None:
    """Compiled with -X no_debug_ranges and -OO (image/runtime.py, image/target_job.py)."""
    [engine] = [e for e in rootfs_entries(built) if e.path == "opt/natvm/appliance/engine.pyc"]
    code = marshal.loads(engine.data[16:])  # after the magic, flags and source hash
    positions = [p for c in (code, *_nested(code)) for p in c.co_positions()]
    assert positions and all(column is None for _, _, column, _ in positions)
    assert any(line is not None for line, _, _, _ in positions)
    source = (build.SOURCE / "appliance" / "engine.py").read_text()
    docstring = ast.get_docstring(ast.parse(source), clean=False)
    assert docstring and docstring not in code.co_consts  # -OO leaves docstrings out


def _nested(code: types.CodeType) -> list[types.CodeType]:
    found = [c for c in code.co_consts if hasattr(c, "co_positions")]
    return [n for c in found for n in (c, *_nested(c))]
