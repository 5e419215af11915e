"""The QEMU command line, parsed back into options."""

from pathlib import Path

from image import qemu

MACHINE = qemu.Machine(Path("/b/vmlinuz"), Path("/b/root.qcow2"), 96, 2, ("tw", "tl"))


def options(argv: list[str]) -> list[tuple[str, str | None]]:
    """(option, value) pairs; an option followed by another option has no value."""
    pairs: list[tuple[str, str | None]] = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            pairs.append((arg, None))
        else:
            pairs[-1] = (pairs[-1][0], arg)
    return pairs


def values(argv: list[str], option: str) -> list[str]:
    return [v or "" for o, v in options(argv) if o == option]


def properties(value: str) -> dict[str, str]:
    kind, _, rest = value.partition(",")
    return {"": kind} | dict(p.split("=", 1) for p in rest.split(",") if p)


def test_boots_the_image_with_its_settings() -> None:
    argv = qemu.command(MACHINE)
    assert argv[0] == qemu.QEMU
    assert values(argv, "-kernel") == ["/b/vmlinuz"]
    assert not values(argv, "-initrd")
    assert values(argv, "-m") == ["96"] and values(argv, "-smp") == ["2"]
    assert values(argv, "-accel") == ["tcg"]
    assert values(argv, "-serial") == ["stdio"]
    assert values(argv, "-bios") == [qemu.FIRMWARE]
    words = values(argv, "-append")[0].split()
    assert {"console=ttyS0", "panic=-1", "root=/dev/vda", "ro"} <= set(words)


def test_the_root_filesystem_is_a_read_only_virtio_disk_after_the_nics() -> None:
    machine = qemu.Machine(Path("/b"), Path("/b,c/root.qcow2"), 96, 1, ("a", "b"))
    argv = qemu.command(machine)
    [drive] = values(argv, "-drive")
    path, _, rest = drive.partition(",if=")  # a comma in the path is doubled
    assert path == "file=/b,,c/root.qcow2"
    drive_options = properties("if=" + rest)
    assert drive_options == {"": "if=none", "id": "root", "format": "qcow2", "readonly": "on"}
    devices = [properties(v) for v in values(argv, "-device")]
    assert devices[-1] == {"": "virtio-blk-pci", "drive": "root"}


def test_two_virtio_nics_on_taps_and_no_other_network() -> None:
    argv = qemu.command(MACHINE)
    assert ("-nodefaults", None) in options(argv)
    assert not values(argv, "-nic") and "user" not in " ".join(argv)
    netdevs = [properties(v) for v in values(argv, "-netdev")]
    assert [n[""] for n in netdevs] == ["tap", "tap"]
    assert [n["ifname"] for n in netdevs] == ["tw", "tl"]
    assert all(n["vnet_hdr"] == "on" and n["script"] == "no" for n in netdevs)
    devices = [properties(v) for v in values(argv, "-device")]
    nics = [d for d in devices if d[""] == "virtio-net-pci"]
    assert [d["netdev"] for d in nics] == [n["id"] for n in netdevs]  # WAN first, then LAN
    assert [d["mac"] for d in nics] == list(qemu.MACS)
    assert any(d[""] == "virtio-rng-pci" for d in devices)


def test_no_reboot_only_when_asked() -> None:
    assert "-no-reboot" not in qemu.command(MACHINE)
    machine = qemu.Machine(MACHINE.kernel, MACHINE.rootfs, 96, 2, ("a", "b"), no_reboot=True)
    assert "-no-reboot" in qemu.command(machine)


def test_extra_kernel_arguments_are_appended() -> None:
    machine = qemu.Machine(
        MACHINE.kernel, MACHINE.rootfs, 96, 1, ("a", "b"), extra_cmdline=("natvm.mtu=1400",)
    )
    assert values(qemu.command(machine), "-append")[0].endswith("natvm.mtu=1400")


def test_the_firmware_is_installed_with_qemu() -> None:
    # qboot is in qemu-system-data, which the host packages' qemu-system-x86 pulls in.
    assert Path(qemu.FIRMWARE).stat().st_size > 0


def test_a_bare_squashfs_is_attached_raw_and_a_build_without_root_qcow2_offers_its_initramfs(
    tmp_path: Path,
) -> None:
    """What `invoke bench-boot --baseline` boots from a build older than root.qcow2."""
    assert qemu.root_disk(tmp_path) == tmp_path / "initramfs"
    (tmp_path / "root.qcow2").write_bytes(b"")
    assert qemu.root_disk(tmp_path) == tmp_path / "root.qcow2"
    machine = qemu.Machine(Path("/b/vmlinuz"), Path("/b/initramfs"), 96, 1, ("a", "b"))
    [drive] = values(qemu.command(machine), "-drive")
    assert "format=raw" in drive.split(",")
