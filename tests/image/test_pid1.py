"""The pure parts of PID 1 (appliance/init.py): NIC order and the sysctls."""

from pathlib import Path

from appliance import init


def test_nics_are_ordered_by_bus_address_not_by_name() -> None:
    devices = {
        "eth1": "/sys/devices/pci0000:00/0000:00:0a.0/virtio3",
        "eth0": "/sys/devices/pci0000:00/0000:00:03.0/virtio1",
    }
    assert init.order_nics(devices) == ["eth0", "eth1"]
    xen = {"eth0": "/sys/devices/vif-10", "eth1": "/sys/devices/vif-2"}
    assert init.order_nics(xen) == ["eth1", "eth0"]


def test_sysctls_keep_the_kernel_off_both_nics() -> None:
    settings = init.nic_sysctls(["eth0", "eth1"])
    for nic in ("eth0", "eth1"):
        assert settings[f"net/ipv6/conf/{nic}/disable_ipv6"] == "1"
        assert settings[f"net/ipv4/conf/{nic}/arp_ignore"] == "8"
    assert settings["net/ipv4/ip_forward"] == "0"


def test_sysctls_missing_from_the_kernel_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "net/ipv4/conf/eth0").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/eth0/arp_ignore").write_text("0")
    init.write_sysctls(init.nic_sysctls(["eth0"]), tmp_path)  # no IPv6 directory at all
    assert (tmp_path / "net/ipv4/conf/eth0/arp_ignore").read_text() == "8"


def test_memory_summary_reads_meminfo() -> None:
    meminfo = "MemTotal:         102400 kB\nMemFree:  1 kB\nMemAvailable:      51200 kB\n"
    assert init.memory_summary(meminfo) == "50/100 MiB available"
