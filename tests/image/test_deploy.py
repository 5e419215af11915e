"""Deployment files, parsed back: libvirt XML, xl config, the QubesOS install script."""

import ast
import os
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from appliance import config
from image import build, deploy, qemu
from image.dom0 import init, xlcfg

VM = deploy.Deployment(128, 1, ("br-up", "br-down"), Path("/k/vmlinuz"), Path("/k/initramfs"))


def test_libvirt_domain_boots_the_kernel_directly_with_a_read_only_root_and_two_nics() -> None:
    domain = ET.fromstring(deploy.libvirt_xml(VM))
    assert domain.findtext("memory") == "128" and domain.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert domain.findtext("vcpu") == "1"
    assert domain.get("type") == "kvm"
    assert domain.findtext("os/kernel") == "@BUILD_DIR@/vmlinuz"  # libvirt-define.sh fills it in
    assert domain.find("os/initrd") is None
    cmdline = (domain.findtext("os/cmdline") or "").split()
    assert {"console=ttyS0", "root=/dev/vda", "ro"} <= set(cmdline)
    [disk] = domain.findall("devices/disk")
    assert disk.find("source").get("file") == "@BUILD_DIR@/root.qcow2"  # type: ignore[union-attr]
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2"}  # type: ignore[union-attr]
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert disk.find("readonly") is not None
    interfaces = domain.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["bridge", "bridge"]
    assert [i.find("source").get("bridge") for i in interfaces] == ["br-up", "br-down"]  # type: ignore[union-attr]
    assert [i.find("model").get("type") for i in interfaces] == ["virtio", "virtio"]  # type: ignore[union-attr]
    assert [i.find("mac").get("address") for i in interfaces] == list(qemu.MACS)  # type: ignore[union-attr]
    assert domain.findtext("on_crash") == "restart"


def test_libvirt_define_script_checks_its_argument() -> None:
    script = deploy.libvirt_define_script()
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)
    run = subprocess.run(["sh", "-c", script, "libvirt-define.sh", "xen"], capture_output=True)
    assert run.returncode == 2 and b"usage:" in run.stderr


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_deployment_files_work_from_a_copy_of_the_build(built: build.Build, tmp_path: Path) -> None:
    """build/ copied elsewhere: libvirt-define.sh defines libvirt.xml with the copy's kernel and
    root disk, and run-qemu.sh boots them, whatever the current directory (stand-ins for virsh
    and QEMU record what they get). Neither file names the build directory."""
    copy = tmp_path / "elsewhere" / "natvm"
    shutil.copytree(built.out, copy)
    for name in ("libvirt.xml", "libvirt-define.sh", "run-qemu.sh", "xen.cfg", "xen-create.sh"):
        assert str(built.out) not in (copy / name).read_text(), name
    stand_ins, record = tmp_path / "bin", tmp_path / "record"
    stand_ins.mkdir()
    record.mkdir()
    _stand_in(stand_ins, "virsh", f'echo "$@" > {record}/virsh; cat > {record}/domain.xml')
    _stand_in(stand_ins, qemu.QEMU, f'pwd > {record}/cwd; printf "%s\\n" "$@" > {record}/qemu')
    env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}"}

    for argv, domain_type in (([], "kvm"), (["qemu"], "qemu")):
        subprocess.run([copy / "libvirt-define.sh", *argv], cwd="/", env=env, check=True)
        assert (record / "virsh").read_text() == "define /dev/stdin\n"
        domain = ET.parse(record / "domain.xml").getroot()
        assert domain.get("type") == domain_type
        kernel = Path(domain.findtext("os/kernel") or "")
        disk = Path(domain.find("devices/disk/source").get("file") or "")  # type: ignore[union-attr]
        assert (kernel, disk) == (copy.resolve() / "vmlinuz", copy.resolve() / "root.qcow2")

    subprocess.run([copy / "run-qemu.sh"], cwd="/", env=env, check=True)
    cwd = Path((record / "cwd").read_text().strip())
    argv = (record / "qemu").read_text().splitlines()
    assert cwd / argv[argv.index("-kernel") + 1] == copy.resolve() / "vmlinuz"
    drive = dict(p.split("=", 1) for p in argv[argv.index("-drive") + 1].split(","))
    assert cwd / drive["file"] == copy.resolve() / "root.qcow2"


def test_xen_create_sh_from_a_copy_of_the_build_runs_the_dom0s_command_line(
    built: build.Build, tmp_path: Path
) -> None:
    """build/ copied elsewhere: xen-create.sh, run from /, gives xl the copy's xen.cfg and the
    absolute paths of the copy's kernel and ramdisk as overrides (as xl reads them, the last
    setting of a key winning), then its own arguments; and its command line is the one the Xen
    tier's dom0 runs on the shipped file, which has no shell to run the script."""
    copy = tmp_path / "elsewhere" / "natvm"
    shutil.copytree(built.out, copy)
    stand_ins, record = tmp_path / "bin", tmp_path / "xl-argv"
    stand_ins.mkdir()
    _stand_in(stand_ins, "xl", f'printf "%s\\n" "$@" > {record}')
    env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}"}

    subprocess.run([copy / "xen-create.sh", "-c"], cwd="/", env=env, check=True)
    *argv, own = record.read_text().splitlines()
    assert own == "-c"
    assert argv == init.create_command(copy.resolve() / "xen.cfg")[1:]
    command, cfg, *overrides = argv
    assert (command, Path(cfg)) == ("create", copy.resolve() / "xen.cfg")
    settings = (copy / "xen.cfg").read_text() + "".join(line + "\n" for line in overrides)
    for key, name in (("kernel", "vmlinuz"), ("ramdisk", "initramfs")):
        assert Path(xlcfg.string(settings, key)) == copy.resolve() / name


def test_xen_create_sh_refuses_a_folder_xl_would_misread(
    built: build.Build, tmp_path: Path
) -> None:
    """An '=' in the path would make xl take xen.cfg for a key=value override: one line, no xl."""
    copy = tmp_path / "a=b"
    shutil.copytree(built.out, copy)
    run = subprocess.run([copy / "xen-create.sh"], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{copy}/xen-create.sh: move this folder to a path without special characters, "
        f"not: {copy.resolve()}"
    ]


def parse_xl(text: str) -> dict[str, object]:
    """xl's config syntax is key = value with Python-like literals."""
    settings = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = ast.literal_eval(value.strip())
    return settings


def test_xl_config_is_a_pvh_guest_with_two_vifs() -> None:
    settings = parse_xl(deploy.xl_config(VM))
    assert settings["type"] == "pvh"
    # relative to the file's folder: xen-create.sh passes xl their absolute paths
    assert settings["kernel"] == "vmlinuz" and settings["ramdisk"] == "initramfs"
    assert "console=hvc0" in str(settings["cmdline"]).split()
    assert settings["memory"] == 128 and settings["vcpus"] == 1
    vifs = [dict(p.split("=") for p in vif.split(",")) for vif in settings["vif"]]  # type: ignore[attr-defined]
    assert [v["bridge"] for v in vifs] == ["br-up", "br-down"]


def test_qubes_script_creates_a_pvh_net_vm() -> None:
    script = deploy.qubes_script(VM)
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)
    commands = [shlex.split(line) for line in script.splitlines() if line.startswith("qvm-")]
    create = next(c for c in commands if c[0] == "qvm-create")
    properties = dict(
        create[i + 1].split("=", 1) for i, a in enumerate(create) if a == "--property"
    )
    assert properties["kernel"] == "natvm"
    assert properties["virt_mode"] == "pvh"
    assert properties["provides_network"] == "True" and properties["netvm"] == "sys-net"
    assert properties["memory"] == properties["maxmem"] == "128"
    assert "console=hvc0" in properties["kernelopts"].split()
    # A Qubes net VM serves its clients' vifs, and the baked LAN forward has no LAN there.
    assert {"natvm.netvm=1", "natvm.forward=none"} <= set(properties["kernelopts"].split())
    assert ["qvm-features", "natvm", "qubes-firewall", "1"] in commands
    assert "/var/lib/qubes/vm-kernels/natvm" in script


def test_every_hypervisor_boots_with_the_same_kernel_options() -> None:
    """panic=-1 (a kernel panic reboots the VM at once) and quiet everywhere, and no word natvm's
    own kernel does not know (Debian's needed lockdown=confidentiality to skip tracefs; natvm's
    has none, and the kernel hands an unknown `word=value` to /init's environment)."""
    domain = ET.fromstring(deploy.libvirt_xml(VM))
    script = deploy.qubes_script(VM)
    create = next(
        shlex.split(line) for line in script.splitlines() if line.startswith("qvm-create")
    )
    kernelopts = next(a.split("=", 1)[1] for a in create if a.startswith("kernelopts="))
    cmdlines = {
        "qemu": qemu.kernel_cmdline(),
        "libvirt": domain.findtext("os/cmdline") or "",
        "xen": str(parse_xl(deploy.xl_config(VM))["cmdline"]),
        "qubes": kernelopts,
    }
    for where, cmdline in cmdlines.items():
        words = set(cmdline.split())
        assert {"panic=-1", "quiet"} <= words, where
        assert not [word for word in words if word.startswith("lockdown=")], where


def test_the_qubes_kernel_options_make_a_valid_net_vm_of_the_shipped_configuration() -> None:
    """The words Qubes boots natvm with are applied to the baked ops-config.json at boot, with
    a downstream subnet of Qubes' client addresses: together they must not make it a
    configuration error (a net VM that reboots forever: the baked forward leads into the
    two-NIC image's LAN)."""
    baked = config.load_config(Path(__file__).resolve().parents[2] / "ops-config.json")
    qubes = (*deploy.XEN_CMDLINE, *deploy.NETVM_WORDS, "natvm.lan.ip=10.137.0.1/24")
    words = config.parse_kernel_cmdline(" ".join(qubes))
    served = config.apply_overrides(baked, words)
    assert served.nat.netvm
    assert served.nat.port_forwards == ()
