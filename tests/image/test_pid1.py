"""The pure parts of PID 1 (appliance/init.py): NIC order and the sysctls."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from appliance import init, linux, shell


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
    linux.write_sysctls(init.nic_sysctls(["eth0"]), str(tmp_path))  # no IPv6 directory at all
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


def test_a_childs_end_is_named_by_its_status_or_signal() -> None:
    assert init.exit_cause(0x0100) == "exited with status 1"
    assert init.exit_cause(signal.SIGKILL) == "killed by SIGKILL"
    assert init.exit_cause(signal.SIGSEGV | 0x80) == "killed by SIGSEGV"  # with a core dump


def test_restarts_back_off_and_a_long_life_restarts_at_once() -> None:
    delays = [0.0]
    for _ in range(8):
        delays.append(init.restart_delay(delays[-1], lived=1.0))
    assert delays[1:4] == [init.RESTART_DELAY_FIRST, 1.0, 2.0]
    assert max(delays) == init.RESTART_DELAY_MAX
    assert init.restart_delay(init.RESTART_DELAY_MAX, lived=init.STABLE_SECONDS) == 0.0


def test_a_killed_child_is_restarted_and_the_cause_logged(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A real forked child, killed by a real SIGKILL, then one that stops cleanly."""
    runs = tmp_path / "runs"

    def program() -> None:
        with runs.open("a") as log:
            log.write(f"{os.getpid()} {Path('/proc/self/oom_score_adj').read_text()}")
        if len(runs.read_text().splitlines()) == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    init.supervise(program)
    lines = runs.read_text().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] != lines[1].split()[0]
    assert all(line.split()[1] == "1000" for line in lines), "the OOM killer's first choice"
    assert "natvm: appliance killed by SIGKILL; restart 1 in 0.5 s" in capfd.readouterr().out


def test_a_child_that_fails_with_a_bug_shows_its_traceback_and_is_restarted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"

    def program() -> None:
        with runs.open("a") as log:
            log.write("run\n")
        if len(runs.read_text().splitlines()) == 1:
            raise RuntimeError("a bug")

    init.supervise(program)
    out, err = capfd.readouterr()
    assert len(runs.read_text().splitlines()) == 2
    assert "natvm: appliance failed: a bug" in out
    assert "Traceback (most recent call last):" in err
    assert "in program" in err and err.rstrip().endswith("RuntimeError: a bug")


def test_a_child_that_cannot_run_is_not_restarted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def program() -> None:
        raise shell.ShellError("no network interface named 'eth9'")

    with pytest.raises(init.InitError):
        init.supervise(program)
    assert "natvm: fatal: no network interface named 'eth9'" in capfd.readouterr().out


def test_sigterm_to_the_supervisor_stops_the_child_cleanly(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    def program() -> None:
        stopped = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
        ready.write_text("")
        while not stopped:
            time.sleep(0.01)

    def terminate_when_ready() -> None:
        while not ready.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_ready, daemon=True).start()
    init.supervise(program)  # returns: the child exited 0 after the SIGTERM passed on


def test_the_nat_locks_its_pages_as_they_are_faulted_in(capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[int] = []
    init.lock_memory(lambda flags: asked.append(flags) or 0)
    assert asked == [1 | 2 | 4]  # MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT: nothing read ahead
    assert capsys.readouterr().out == ""
    init.lock_memory(lambda flags: -1)
    assert "cannot lock the NAT's pages" in capsys.readouterr().out  # said, and the NAT runs on
