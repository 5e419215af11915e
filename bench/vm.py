"""VM mode of the benchmark (``invoke bench --vm``): both NATs inside the same VM.

The topology is the VM tier's (taps, ``Attach.TAP``); what sits between the bridges is QEMU
booting either natvm's image (``build/``) or the kernel-NAT reference image
(``build/reference/``, whose /init sets up Linux's nftables NAT from the same ops-config.json,
see image/reference.py). Same kernel, same QEMU command line (memory, CPUs, NICs, accelerator,
the bench's flow limits) but for the initramfs, so the difference is the NAT. "Fresh" means a
new boot. ``-no-reboot``: a guest that dies ends QEMU, so the driver sees it as dead instead of
waiting on a guest rebooting in a loop.

Under TCG (no usable KVM) every figure is the emulator's, far below real hardware: the header
and the JSON say so. The table-scale workload is n/a here: the guest's memory is not visible
from the host the way a process's VmRSS or the conntrack slab is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from appliance.config import load_config
from image import qemu
from image.build import OUTPUT, REFERENCE_OUTPUT
from tests.support.routers import Nat, VmAppliance
from tests.support.topology import Topology

from .workloads import Measurement

EMULATED = "emulated (TCG): not representative of real hardware"
TABLE_NOTE = "n/a in VM mode: the guest's memory is not measurable from the host per mapping"
TABLE_FIGURES = ("table10k", "table100k", "per_mapping")
METHOD = (
    "each NAT is a fresh boot per phase, from the same kernel and QEMU command line; the "
    "reference image differs by nft, the nftables modules and its /init, which makes Linux the NAT"
)
KINDS = {"natvm": OUTPUT, "kernel": REFERENCE_OUTPUT}  # kind -> image directory


@dataclasses.dataclass(frozen=True)
class VmSetup:
    """What both VMs share: the accelerator, memory, CPUs and the extra kernel words."""

    accel: str
    memory_mib: int
    cpus: int
    cmdline: tuple[str, ...]

    @property
    def label(self) -> str:
        where = f"VM mode (QEMU {self.accel.upper()}, {self.memory_mib} MiB, {self.cpus} CPU)"
        return f"{where}: {EMULATED}" if self.accel == "tcg" else where


def limit_words(limits: dict[str, int]) -> tuple[str, ...]:
    """The bench's flow limits as natvm.* kernel words (the VM has its baked config)."""
    return tuple(f"natvm.{key}={value}" for key, value in limits.items())


def machine(setup: VmSetup, kind: str, taps: tuple[str, str]) -> qemu.Machine:
    """The QEMU machine for NAT ``kind``: only the image differs."""
    images = KINDS[kind]
    return qemu.Machine(
        images / "vmlinuz",
        images / qemu.ROOT_FILE,
        setup.memory_mib,
        setup.cpus,
        taps,
        accel=setup.accel,
        extra_cmdline=setup.cmdline,
        no_reboot=True,
    )


def missing_images() -> list[str]:
    return [str(d / name) for d in KINDS.values() for name in ("vmlinuz", qemu.ROOT_FILE)
            if not (d / name).exists()]  # fmt: skip


def starter(setup: VmSetup, scratch: Path) -> Callable[[Topology, str, Path], Nat]:
    """``start_fresh`` for VM mode: boot NAT ``kind`` and wait for its READY (bounded)."""
    boots = 0

    def start(topo: Topology, kind: str, config: Path) -> Nat:
        nonlocal boots
        boots += 1
        taps = (topo.appliance_wan, topo.appliance_lan)
        vm = VmAppliance(topo, machine(setup, kind, taps), scratch / f"monitor-{boots}.sock")
        vm.kind = kind
        try:
            vm.start()
        except AssertionError:
            vm.stop()
            raise AssertionError(f"{kind} image: no READY: {boot_failure(vm.output())}") from None
        except BaseException:
            vm.stop()
            raise
        return vm

    return start


def boot_failure(console: list[str]) -> str:
    """The console line that says why a guest never got READY: its fatal error, the kernel's
    panic, or else the last thing it printed."""
    for marker in ("fatal:", "Kernel panic", "Traceback"):
        for line in console:
            if marker in line:
                return line[:300]
    return (console[-1] if console else "no console output")[:300]


def not_applicable(names: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """The figures VM mode cannot measure, as n/a with the reason."""
    if "table" not in names:
        return {}
    notes = (TABLE_NOTE, *("",) * (len(TABLE_FIGURES) - 1))  # said once, not per figure
    return {
        figure: dataclasses.asdict(Measurement(None, note))
        for figure, note in zip(TABLE_FIGURES, notes, strict=True)
    }


def setup(limits: dict[str, int], config: Path) -> VmSetup:
    """Memory and CPUs of ``config`` (RunConfig), KVM if a guest really boots with it, else TCG."""
    settings = load_config(config)
    accel = qemu.choose_accel(OUTPUT / "vmlinuz")
    return VmSetup(accel, settings.memory_mib, settings.cpus, limit_words(limits))
