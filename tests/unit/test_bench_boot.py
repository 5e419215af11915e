"""The boot benchmark's reading of a console (bench/boot.py): the phases and the report."""

import pytest

from bench import boot

# A boot's console as bench.boot reads it: seconds since QEMU started, then the line.
CONSOLE = [
    (0.13, "SeaBIOS (version 1.16.2-debian-1.16.2-1)"),
    (0.45, "Booting from ROM..\x1b[2J[    0.000000] Linux version 6.1.192 (natvm@natvm)"),
    (0.46, "[    0.000000] Command line: console=ttyS0 panic=-1 quiet root=/dev/vda ro loglevel=7"),
    (1.40, "[    0.912400] Run /init as init process"),
    (3.10, "natvm: init started 2.63 s after the kernel (python 3.11.2)"),
    (3.20, "natvm: WAN eth0 192.0.2.2/24  LAN eth1 10.77.0.1/24  (2.71 s)"),
    (3.45, "READY wan=eth0 192.0.2.2/24 mac=52:54:00:4e:41:01 lan=eth1 10.77.0.1/24"),
]


def test_a_boots_phases_end_at_their_console_lines_and_add_up() -> None:
    phases = boot.split(CONSOLE)
    assert phases is not None
    assert phases == pytest.approx(
        {
            "firmware and unpack": 0.45,
            "kernel to /init": 0.95,
            "Python to init started": 1.70,
            "appliance to READY": 0.35,
            boot.TOTAL: 3.45,
        }
    )


def test_a_boot_without_ready_has_no_split() -> None:
    assert boot.split(CONSOLE[:-1]) is None
    assert boot.split([]) is None


def test_the_report_gives_medians_ranges_and_the_ratio_of_the_medians() -> None:
    fast = boot.split(CONSOLE)
    assert fast is not None
    slow = {phase: 2 * seconds for phase, seconds in fast.items()}
    lines = boot.report({"this build": [fast, fast, slow], "baseline": [slow, slow, fast]})
    total = next(line for line in lines if line.startswith(boot.TOTAL))
    assert "3.45 (3.45-6.90)" in total and "6.90 (3.45-6.90)" in total
    assert total.endswith("0.50x")
    assert len(lines) == len(boot.MARKS) + 3  # the head, each phase, the total, the boots
    assert lines[-1] == "boots: this build 3, baseline 3, alternated"
