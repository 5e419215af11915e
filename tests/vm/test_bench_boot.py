"""`invoke bench-boot`'s measuring (bench/boot.py) on real boots of the built image: one boot of
the build and one of the same build as its baseline, in turns."""

import re

import pytest

from bench import boot
from image.build import Build

pytestmark = pytest.mark.vm


def test_the_boot_benchmark_splits_real_boots_and_compares_them(image: Build) -> None:
    lines = boot.run({"this build": image.out, "same build": image.out}, boots=1, memory_mib=128)
    print("\n".join(lines))
    assert "kernel messages on" in lines[0]
    rows = {line[:24].strip(): line[24:] for line in lines[2:-1]}
    assert list(rows) == [name for name, _ in boot.MARKS] + [boot.TOTAL]
    for phase, row in rows.items():
        medians = [float(value) for value in re.findall(r"(\d+\.\d+) \(", row)]
        assert len(medians) == 2 and all(0 < value < boot.BOOT_TIMEOUT for value in medians), phase
        assert row.rstrip().endswith("x")
