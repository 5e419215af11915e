"""A real boot of the built image under QEMU (TCG), its two NICs on taps in test namespaces.

The guest reports its own verdict on the console: READY when it forwards, "fatal:" when it
gives up (and reboots; `-no-reboot` turns that into QEMU exiting). Traffic tests are elsewhere.
"""

import re
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from image import build, qemu
from tests.support.topology import (
    SERVER_A,
    Attach,
    Topology,
    session_prefix,
    stop_process,
    topology,
)

pytestmark = pytest.mark.vm
BOOT_TIMEOUT = 180.0
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


class Vm:
    """QEMU on the topology's taps in the router namespace, its console kept line by line."""

    def __init__(self, wired: Topology, image: build.Build, *cmdline: str, memory: int = 128):
        machine = qemu.Machine(
            image.out / "vmlinuz",
            image.out / qemu.ROOT_FILE,
            memory,
            1,
            (wired.appliance_wan, wired.appliance_lan),
            extra_cmdline=cmdline,
            no_reboot=True,
        )
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.process = wired.spawn(
            wired.router,
            *qemu.command(machine),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = _ESCAPES.sub("", raw.decode(errors="replace")).strip()
            self.lines.append((time.monotonic() - self.started, line))

    def wait_for(self, prefix: str, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds from QEMU's start to the first console line holding `prefix`."""
        deadline = time.monotonic() + timeout
        exited = False
        while True:
            for at, line in self.lines:
                if prefix in line:
                    return at
            if exited or time.monotonic() > deadline:
                break
            exited = self.process.poll() is not None  # one more look: the reader may lag
            time.sleep(0.1)
        console = "\n".join(line for _, line in self.lines)
        raise AssertionError(f"no {prefix!r} on the console:\n{console}")

    def stop(self) -> None:
        stop_process(self.process)


# `image` is the VM tier's session build (tests/vm/conftest.py); the boot tests get namespaces
# of their own, so that the crash test cannot disturb the VM the traffic tests share.
@pytest.fixture(scope="module")
def wired() -> Iterator[Topology]:
    with topology(session_prefix() + "boot-", Attach.TAP) as built:
        yield built


@pytest.fixture
def vm_factory(wired: Topology, image: build.Build) -> Iterator[list[Vm]]:
    started: list[Vm] = []
    yield started
    for vm in started:
        vm.stop()


def test_boots_to_ready_and_forwards_a_ping(
    wired: Topology, image: build.Build, vm_factory: list[Vm]
) -> None:
    vm = Vm(wired, image)
    vm_factory.append(vm)
    ready = vm.wait_for("READY")
    init = vm.wait_for("natvm: init started", timeout=0)
    print(f"QEMU start -> init {init:.1f} s -> READY {ready:.1f} s (TCG)")
    wired.run(wired.lan_a.ns, "ping", "-c", "2", "-W", "10", SERVER_A)


def test_a_fatal_error_is_logged_and_reboots(
    wired: Topology, image: build.Build, vm_factory: list[Vm]
) -> None:
    vm = Vm(wired, image, "natvm.mtu=12")
    vm_factory.append(vm)
    vm.wait_for("natvm: fatal: natvm.mtu")
    assert vm.process.wait(timeout=60) == 0  # the guest rebooted; -no-reboot ended QEMU
    assert not any(line.startswith("READY") for _, line in vm.lines)
