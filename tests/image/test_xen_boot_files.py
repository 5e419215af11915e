"""The nested Xen boot's pure parts: reading and deriving xen.cfg, the guest's archive appended
to the dom0 initrd, QEMU's command line, the console's split, the control channel's messages."""

import stat
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from image import cpio, deploy, xenboot, xenclient
from image.dom0 import control, init, links, xlcfg
from image.errors import ImageError
from tests.image.test_qemu_command import properties, values

VM = deploy.Deployment(128, 1, ("natvm-wan", "natvm-lan"), Path("/b/vmlinuz"), Path("/b/initramfs"))
CFG = deploy.xl_config(VM)
MACHINE = xenboot.Machine(Path("/h"), Path("/w/dom0-initrd"), ("tw", "tl"), Path("/w/c.sock"))


def test_reads_what_the_dom0_needs_from_natvms_xen_cfg() -> None:
    assert xlcfg.string(CFG, "name") == "natvm"
    assert xlcfg.string(CFG, "kernel") == "vmlinuz"
    assert xlcfg.vif_bridges(CFG) == ["natvm-wan", "natvm-lan"]
    assert [spec["mac"] for spec in xlcfg.vifs(CFG)] == list(deploy.XEN_MACS)


def test_strings_are_unquoted_as_xl_writes_them() -> None:
    value = 'a "b" \\c'
    assert xlcfg.string("name = " + xlcfg.quote(value) + "\n", "name") == value


def test_a_vif_without_a_bridge_or_a_missing_setting_is_an_error() -> None:
    with pytest.raises(xlcfg.ConfigError, match="bridge"):
        xlcfg.vif_bridges('vif = [ "mac=00:16:3e:00:00:01" ]\n')
    with pytest.raises(xlcfg.ConfigError, match="'kernel'"):
        xlcfg.string('name = "x"\n', "kernel")


def test_xl_create_gets_the_files_named_relative_to_the_cfg_as_absolute_overrides() -> None:
    cfg = PurePosixPath("/srv/nat vm/xen.cfg")
    assert xlcfg.create_args(cfg, CFG) == [
        "create",
        "/srv/nat vm/xen.cfg",
        'kernel="/srv/nat vm/vmlinuz"',
        'ramdisk="/srv/nat vm/initramfs"',
    ]
    edited = CFG.replace('kernel = "vmlinuz"', 'kernel = "/boot/other"')
    assert xlcfg.create_args(cfg, edited) == [
        "create",
        "/srv/nat vm/xen.cfg",
        'ramdisk="/srv/nat vm/initramfs"',
    ]  # an absolute name needs no override


def test_the_derived_cfg_only_adds_words_to_cmdline() -> None:
    derived = xlcfg.with_cmdline_words(CFG, ("natvm.mtu=12",))
    assert xlcfg.string(derived, "cmdline") == xlcfg.string(CFG, "cmdline") + " natvm.mtu=12"
    changed = [
        (a, b) for a, b in zip(CFG.splitlines(), derived.splitlines(), strict=True) if a != b
    ]
    assert [a.split()[0] for a, _ in changed] == ["cmdline"]


def test_the_net_vm_cfg_keeps_the_uplink_vif_and_is_a_driver_domain() -> None:
    netvm = xlcfg.as_driver_domain(CFG, ("natvm.x=1",))
    assert xlcfg.vif_bridges(netvm) == ["natvm-wan"]
    assert xlcfg.vifs(netvm)[0]["mac"] == deploy.XEN_MACS[0]
    assert xlcfg.settings(netvm)["driver_domain"] == "1"
    assert xlcfg.string(netvm, "cmdline").endswith(" natvm.x=1")
    assert xlcfg.string(netvm, "kernel") == xlcfg.string(CFG, "kernel")


def test_a_client_cfg_has_one_vif_on_the_net_vm_and_its_address_for_its_init() -> None:
    vm = xenclient.ClientVm("client-a", "10.137.0.2", "10.137.0.1", "natvm")
    cfg = vm.xl_config("/b/vmlinuz", "/guest/client-initramfs")
    assert xlcfg.vifs(cfg) == [{"backend": "natvm", "ip": "10.137.0.2"}]
    words = xlcfg.string(cfg, "cmdline").split()
    assert {"client_ip=10.137.0.2", "client_gw=10.137.0.1", "console=hvc0"} <= set(words)
    assert xlcfg.string(cfg, "type") == "pvh"
    assert xlcfg.string(cfg, "ramdisk") == "/guest/client-initramfs"


def test_the_guest_archive_puts_each_file_where_xl_looks(tmp_path: Path) -> None:
    """As built, beside the cfg in /guest; an edited-in absolute path, where it says."""
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initramfs").write_bytes(b"initrd")
    (tmp_path / "xen.cfg").write_text(CFG)
    entries = {e.path: e.data for e in xenboot.guest_entries(tmp_path / "xen.cfg")}
    assert entries["guest/xen.cfg"] == CFG.encode()
    assert (entries["guest/vmlinuz"], entries["guest/initramfs"]) == (b"kernel", b"initrd")
    edited = CFG.replace('kernel = "vmlinuz"', f"kernel = {xlcfg.quote(str(tmp_path / 'vmlinuz'))}")
    (tmp_path / "xen.cfg").write_text(edited)
    entries = {e.path: e.data for e in xenboot.guest_entries(tmp_path / "xen.cfg")}
    assert entries[str(tmp_path / "vmlinuz").lstrip("/")] == b"kernel"
    assert "guest/vmlinuz" not in entries


def test_a_cfg_naming_a_missing_kernel_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "xen.cfg").write_text(CFG)
    with pytest.raises(ImageError) as caught:
        xenboot.guest_entries(tmp_path / "xen.cfg")
    assert caught.value.message.endswith("names kernel vmlinuz, which is not there")


def test_the_guest_archive_follows_the_dom0s_at_a_four_byte_boundary(tmp_path: Path) -> None:
    (tmp_path / "initramfs").write_bytes(b"\x1f\x8b" + b"x" * 5)  # a stand-in, 7 bytes
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    guest = deploy.Deployment(128, 1, VM.bridges, tmp_path / "vmlinuz", tmp_path / "initramfs")
    (tmp_path / "xen.cfg").write_text(deploy.xl_config(guest))
    xenboot.write_dom0_initrd(tmp_path, tmp_path / "xen.cfg", tmp_path / "initrd")
    blob = (tmp_path / "initrd").read_bytes()
    assert blob[:7] == (tmp_path / "initramfs").read_bytes() and blob[7:8] == b"\0"
    files = {e.path for e in cpio.read(blob[8:]) if stat.S_ISREG(e.mode)}
    assert files == {"guest/xen.cfg", "guest/vmlinuz", "guest/initramfs"}


def test_the_client_vms_files_go_in_with_the_guests(tmp_path: Path) -> None:
    (tmp_path / "initramfs").write_bytes(b"\x1f\x8b" + b"x" * 6)
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "vmlinuz").write_bytes(b"client kernel")
    (tmp_path / "client" / "initramfs").write_bytes(b"client initramfs")
    guest = deploy.Deployment(128, 1, VM.bridges, tmp_path / "vmlinuz", tmp_path / "initramfs")
    (tmp_path / "xen.cfg").write_text(deploy.xl_config(guest))
    xenboot.write_dom0_initrd(tmp_path, tmp_path / "xen.cfg", tmp_path / "initrd")
    found = {e.path: e.data for e in cpio.read((tmp_path / "initrd").read_bytes()[8:])}
    assert found[xenboot.CLIENT_KERNEL.lstrip("/")] == b"client kernel"
    assert found[xenboot.CLIENT_RAMDISK.lstrip("/")] == b"client initramfs"


def test_qemu_boots_xen_with_the_dom0_as_multiboot_modules() -> None:
    argv = xenboot.command(MACHINE)
    assert values(argv, "-accel") == ["tcg"] and values(argv, "-cpu") == ["qemu64,+svm,+npt"]
    assert values(argv, "-kernel") == ["/h/xen"]
    (modules,) = values(argv, "-initrd")
    kernel, initrd = modules.split(",")
    assert kernel.split()[0] == "/h/vmlinuz" and "console=hvc0" in kernel.split()
    assert initrd == "/w/dom0-initrd"
    assert "-no-reboot" in argv  # a dom0 that dies ends QEMU
    netdevs = [properties(v) for v in values(argv, "-netdev")]
    assert [(n[""], n["ifname"]) for n in netdevs] == [("tap", "tw"), ("tap", "tl")]
    assert f"name={control.PORT_NAME}" in values(argv, "-device")[1]


def test_commas_in_a_module_path_are_doubled() -> None:
    machine = xenboot.Machine(Path("/a,b"), Path("/w/i"), ("tw", "tl"), Path("/w/c"))
    (modules,) = values(xenboot.command(machine), "-initrd")
    assert modules.startswith("/a,,b/vmlinuz ")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(XEN) Xen version 4.17", ("xen", "(XEN) Xen version 4.17")),
        ("dom0: ready: bridges", ("dom0", "dom0: ready: bridges")),
        ("[    0.000000] Linux version", ("dom0", "[    0.000000] Linux version")),
        ("natvm| READY wan=eth0", ("natvm", "READY wan=eth0")),
        ("natvm| ", ("natvm", "")),
    ],
)
def test_console_lines_are_split_by_source(raw: str, expected: tuple[str, str]) -> None:
    assert xenboot.classify(raw) == expected


def test_control_requests_are_answered_with_one_line_each(tmp_path: Path) -> None:
    request = control.decode(control.encode({"run": ["echo", "hi"]}))
    assert control.answer(request) == {"status": 0, "output": "hi\n"}
    target = tmp_path / "x.cfg"
    assert control.answer({"write": str(target), "text": "a"}) == {"status": 0, "output": ""}
    assert target.read_text() == "a"
    binary = {"write": str(target), "base64": "AAH/"}
    assert control.answer(binary) == {"status": 0, "output": ""}
    assert target.read_bytes() == b"\x00\x01\xff"
    assert control.answer({"write": str(target), "base64": "not base64!"})["status"] == -1
    assert control.answer({"run": ["/nonexistent"]})["status"] == -1
    assert control.answer({"frobnicate": 1})["status"] == -1
    assert control.encode({"b": 1, "a": 2}) == b'{"a": 2, "b": 1}\n'


def test_the_dom0_bridges_qemus_nics_in_pci_order(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    for name, device in (
        ("eth1", "pci0000:00/0000:00:05.0/virtio2"),
        ("eth0", "pci0000:00/0000:00:04.0/virtio1"),
        ("vif1.0", "xen/vif-1-0"),
    ):
        (devices / device).mkdir(parents=True)
        (tmp_path / "net" / name).mkdir(parents=True)
        (tmp_path / "net" / name / "device").symlink_to(devices / device)
    (tmp_path / "net" / "natvm-wan").mkdir()
    assert links.nics(tmp_path / "net") == ["eth0", "eth1"]


def test_a_boot_that_ends_early_says_why_then_gives_both_tails() -> None:
    """A stand-in for QEMU prints 100 dom0 lines, 50 of natvm's and a fatal line, then exits."""
    lines = [f"dom0 line {n}" for n in range(100)] + [f"natvm| natvm line {n}" for n in range(50)]
    lines.append("dom0: fatal: Dom0Error: xl create /guest/xen.cfg failed (1)")
    script = f"import sys; print({chr(10).join(lines)!r}); sys.exit(3)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    console = xenboot.Console(proc, lambda line: None)
    with pytest.raises(xenboot.BootError) as caught:
        console.wait_for(xenboot.is_ready("natvm"), "natvm never printed READY", 30, "natvm")
    first, *rest = caught.value.message.splitlines()
    assert first == (
        "natvm never printed READY: QEMU exited (3); "
        "dom0 said: dom0: fatal: Dom0Error: xl create /guest/xen.cfg failed (1)"
    )
    dom0_tail = rest[1 : 1 + xenboot.TAIL_LINES]
    assert dom0_tail[0] == "dom0 line 61" and dom0_tail[-1].startswith("dom0: fatal:")
    assert rest[-xenboot.TAIL_LINES :] == [f"natvm line {n}" for n in range(10, 50)]


def test_the_dom0_follows_every_guest_xl_lists() -> None:
    listing = (
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
        "Domain-0                                     0   512     1     r-----      17.5\n"
        "natvm                                        1   128     1     -b----      16.8\n"
        "client-a                                     2    64     1     -b----       3.1\n"
    )
    assert init.domain_names(listing) == ["natvm", "client-a"]
