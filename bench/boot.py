"""Boot time (``invoke bench-boot``): QEMU start to READY, and its split, for a build and,
side by side, a baseline build (another tree's ``build/``), their boots alternated.

Alternated because this machine's speed drifts: by about ±1 s from one TCG boot to the next, and
from day to day (the same image took 3.95-4.06 s one day and 4.57-6.47 s the next). Only medians
of boots made in turns compare two builds; one boot, or boots of each build in a row, do not.

Each boot runs on the VM tier's taps (``Attach.TAP``) in namespaces of its own, with the kernel's
messages on the console (``loglevel=7``: the same for both builds, and slightly slower than the
``quiet`` boot users get), whose lines, timed as they arrive, give the phases:
firmware and the kernel unpacking itself (to "Linux version"), the kernel (to "Run /init"),
Python (to "natvm: init started", after the appliance's imports) and the appliance (to READY).
"""

import select
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from image import qemu
from tests.support.topology import Attach, Topology, session_prefix, stop_process, topology

# (phase, the console line that ends it), in boot order
MARKS = (
    ("firmware and unpack", "Linux version"),
    ("kernel to /init", "Run /init as init process"),
    ("Python to init started", "natvm: init started"),
    ("appliance to READY", "READY "),
)
TOTAL = "QEMU start to READY"
CMDLINE = ("loglevel=7",)  # quiet would hide the kernel's lines the split needs
BOOT_TIMEOUT = 120.0

Console = Sequence[tuple[float, str]]  # (seconds since QEMU started, line)
Split = dict[str, float]  # phase -> seconds


def split(console: Console) -> Split | None:
    """Each phase's seconds, and the total, from a boot's console; None if it has no READY."""
    ends: list[float] = []
    for _, mark in MARKS:
        end = next((at for at, line in console if mark in line), None)
        if end is None:
            return None
        ends.append(end)
    starts = [0.0, *ends[:-1]]
    phases = {name: end - start for (name, _), start, end in zip(MARKS, starts, ends, strict=True)}
    phases[TOTAL] = ends[-1]
    return phases


def _cell(values: Sequence[float]) -> str:
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def report(builds: dict[str, list[Split]]) -> list[str]:
    """A table: each phase's median (and range) for each build, then the ratio of the medians
    of the first build to the second's."""
    names = list(builds)
    phases = [name for name, _ in MARKS] + [TOTAL]
    head = f"{'seconds, median (range)':<24}" + "".join(f"{name:>22}" for name in names)
    lines = [head + ("  ratio" if len(names) == 2 else "")]
    for phase in phases:
        columns = [[boot[phase] for boot in builds[name]] for name in names]
        row = f"{phase:<24}" + "".join(f"{_cell(values):>22}" for values in columns)
        if len(columns) == 2:
            row += f"  {statistics.median(columns[0]) / statistics.median(columns[1]):.2f}x"
        lines.append(row)
    boots = ", ".join(f"{name} {len(builds[name])}" for name in names)
    return [*lines, f"boots: {boots}, alternated"]


def boot(wired: Topology, images: Path, memory_mib: int, accel: str) -> Console:
    """One boot of the image in `images` on the topology's taps, its console until READY."""
    machine = qemu.Machine(
        images / "vmlinuz",
        qemu.root_disk(images),
        memory_mib,
        1,
        (wired.appliance_wan, wired.appliance_lan),
        accel=accel,
        extra_cmdline=CMDLINE,
        no_reboot=True,
    )
    started = time.monotonic()
    process = wired.spawn(
        wired.router,
        *qemu.command(machine),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    console: list[tuple[float, str]] = []
    try:
        assert process.stdout is not None
        while time.monotonic() - started < BOOT_TIMEOUT:
            if not select.select([process.stdout], [], [], 0.5)[0]:
                continue
            raw = process.stdout.readline()
            if not raw:
                break  # QEMU ended: the guest died (-no-reboot)
            console.append((time.monotonic() - started, raw.decode(errors="replace").strip()))
            if console[-1][1].startswith("READY "):
                break
    finally:
        stop_process(process)
    return console


def run(builds: dict[str, Path], boots: int, memory_mib: int) -> list[str]:
    """`boots` boots of each build (name -> its output folder), in turns; the report's lines.
    A boot that never gets READY ends the run with its last console lines."""
    accel = qemu.choose_accel(next(iter(builds.values())) / "vmlinuz")
    splits: dict[str, list[Split]] = {name: [] for name in builds}
    with topology(session_prefix() + "bootb-", Attach.TAP) as wired:
        for number in range(1, boots + 1):
            for name, images in builds.items():
                console = boot(wired, images, memory_mib, accel)
                phases = split(console)
                if phases is None:
                    last = "\n".join(line for _, line in console[-15:])
                    raise RuntimeError(f"{name}: boot {number} never got READY:\n{last}")
                print(f"  {name} boot {number}: READY {phases[TOTAL]:.2f} s", flush=True)
                splits[name].append(phases)
    where = f"QEMU {accel.upper()}, -m {memory_mib}, kernel messages on"
    return [where, *report(splits)]
