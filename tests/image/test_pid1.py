"""The pure parts of PID 1 (appliance/init.py): NIC order and the sysctls."""

from pathlib import Path

from appliance import init, linux


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
    linux.write_sysctls(init.nic_sysctls(["eth0"]), tmp_path)  # no IPv6 directory at all
    assert (tmp_path / "net/ipv4/conf/eth0/arp_ignore").read_text() == "8"


def test_memory_summary_reads_meminfo() -> None:
    meminfo = "MemTotal:         102400 kB\nMemFree:  1 kB\nMemAvailable:      51200 kB\n"
    assert init.memory_summary(meminfo) == "50/100 MiB available"


def test_memory_breakdown_names_where_the_memory_went() -> None:
    meminfo = "MemTotal: 40960 kB\nMemFree: 4096 kB\nShmem: 10240 kB\nSlab: 6144 kB\n"
    status = "Name:\tinit\nVmRSS:\t 14000 kB\nRssAnon:\t 8192 kB\n"
    assert init.memory_breakdown(meminfo, status) == (
        "MemTotal=40.0 MemFree=4.0 Shmem=10.0 Slab=6.0 RssAnon=8.0 MiB"
    )


def test_only_bytecode_of_imported_modules_in_the_image_is_released(tmp_path: Path) -> None:
    class Module:
        def __init__(self, file: str | None) -> None:
            self.__file__ = file

    modules = [
        Module("/usr/lib/python3.11/re/__init__.pyc"),
        Module("/opt/natvm/appliance/shell.pyc"),
        Module("/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"),
        Module("/home/dev/natvm/appliance/shell.pyc"),  # not the image's
        Module(None),
        object(),  # builtins have no __file__
    ]
    assert init.releasable_files(modules) == [
        "/opt/natvm/appliance/shell.pyc",
        "/usr/lib/python3.11/re/__init__.pyc",
    ]
    kept, gone = tmp_path / "kept.pyc", tmp_path / "gone.pyc"
    kept.write_bytes(b"k")
    gone.write_bytes(b"12345")
    assert init.release_files([str(gone), str(tmp_path / "missing.pyc")]) == 5
    assert kept.exists() and not gone.exists()
