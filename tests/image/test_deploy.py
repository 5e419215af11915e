"""Deployment files, parsed back: libvirt XML, xl config, the QubesOS install script."""

import ast
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from image import deploy, qemu

VM = deploy.Deployment(128, 1, ("br-up", "br-down"), Path("/k/vmlinuz"), Path("/k/initramfs"))


def test_libvirt_domain_boots_the_kernel_directly_with_two_bridged_nics() -> None:
    domain = ET.fromstring(deploy.libvirt_xml(VM))
    assert domain.findtext("memory") == "128" and domain.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert domain.findtext("vcpu") == "1"
    assert domain.findtext("os/kernel") == "/k/vmlinuz"
    assert domain.findtext("os/initrd") == "/k/initramfs"
    assert "console=ttyS0" in (domain.findtext("os/cmdline") or "")
    interfaces = domain.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["bridge", "bridge"]
    assert [i.find("source").get("bridge") for i in interfaces] == ["br-up", "br-down"]  # type: ignore[union-attr]
    assert [i.find("model").get("type") for i in interfaces] == ["virtio", "virtio"]  # type: ignore[union-attr]
    assert [i.find("mac").get("address") for i in interfaces] == list(qemu.MACS)  # type: ignore[union-attr]
    assert domain.findtext("on_crash") == "restart"


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
    assert settings["kernel"] == "/k/vmlinuz" and settings["ramdisk"] == "/k/initramfs"
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
    assert ["qvm-features", "natvm", "qubes-firewall", "1"] in commands
    assert "/var/lib/qubes/vm-kernels/natvm" in script


def test_every_hypervisor_boots_with_the_memory_saving_options() -> None:
    """Without lockdown the kernel's tracefs takes 8.7 MiB: small guests would not boot."""
    assert "lockdown=confidentiality" in qemu.LEAN
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
        assert set(qemu.LEAN) <= set(cmdline.split()), where
