"""What sits in the router namespace between the LAN and WAN bridges of a ``Topology``.

- ``HostAppliance``: the appliance as a host process (``python -m appliance``), the netns tier.
- ``VmAppliance``: the built image under QEMU, on the topology's taps, the VM tier.
- ``KernelNat``: Linux's own NAT (nftables) on the host mode's two interfaces. A reference, not
  a product: it validates the topology and the tests (``NATVM_TEST_REFERENCE=kernel``) and is a
  baseline for benchmarks. Its filtering is address-and-port-dependent, so the test of
  address-dependent filtering does not apply to it.

All three offer the interface of ``Nat``.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from appliance.config import load_config
from image import qemu, reference, xenboot
from tests.support import CONFIG, REPO
from tests.support.topology import APPLIANCE_LAN, APPLIANCE_WAN, GATEWAY, Topology, stop_process

READY_TIMEOUT = 30.0
BOOT_TIMEOUT = 180.0  # TCG: no usable KVM on these machines
MONITOR_PROMPT = b"(qemu) "
CONSOLE_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
STATS_INTERVAL = 1.0  # seconds: counters fresh enough for a test to wait on them
STATS = re.compile(r"^stats (.*)")


class Nat(Protocol):
    """What forwards between the LAN and WAN bridges, as the tests see it."""

    kind: str

    def start(self) -> None: ...
    def alive(self) -> bool: ...
    def output(self) -> list[str]: ...
    def dropped(self) -> int | None: ...
    def stop(self) -> int | None: ...


def stats_counters(lines: list[str]) -> dict[str, int]:
    """Every counter of the last stats line the appliance printed (empty before the first)."""
    for match in map(STATS.match, reversed(lines)):
        if match:
            fields = (word.partition("=")[::2] for word in match.group(1).split())
            # A serial console may garble a line: a word that is no count is left out.
            return {name: int(value) for name, value in fields if value.isdigit()}
    return {}


def stats_counter(lines: list[str], name: str) -> int:
    """Counter `name` of the last stats line the appliance printed (0 before the first)."""
    return stats_counters(lines).get(name, 0)


class _ConsoleProcess:
    """A process in the router namespace whose output is kept line by line (a subclass fills
    `_lines` from `_process`): alive, output, the drop counter and a SIGTERM stop."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> list[str]:
        """Every line it has printed so far (stdout and stderr)."""
        return list(self._lines)

    def dropped(self) -> int | None:
        return stats_counter(self._lines, "dropped")

    def counter(self, name: str) -> int:
        """Counter `name` of its last stats line (0 before the first)."""
        return stats_counter(self._lines, name)

    def counters(self) -> dict[str, int]:
        """Every counter of its last stats line (empty before the first)."""
        return stats_counters(self._lines)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (``None`` if it never started)."""
        if self._process is not None and self.returncode is None:
            self.returncode = stop_process(self._process)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL and wait: the process gets no chance to tidy up, as when the kernel kills it."""
        if self._process is not None and self.returncode is None:
            self._process.kill()
            self.returncode = self._process.wait()


class HostAppliance(_ConsoleProcess):
    """``python -m appliance`` in the router namespace, its stdout and stderr kept line by line."""

    kind = "appliance"

    def __init__(
        self, topology: Topology, config: Path, downstream: Sequence[str] | None = None
    ) -> None:
        """`downstream`: the arguments that name the downstream side, by default the LAN NIC
        (netvm mode names its clients: ``--client IF=IP,MAC ...``)."""
        super().__init__()
        self.topology = topology
        if downstream is None:
            downstream = ["--lan", topology.appliance_lan]
        self.command = [
            sys.executable,
            "-u",
            "-m",
            "appliance",
            "--config",
            str(config),
            "--wan",
            topology.appliance_wan,
            *downstream,
            "--stats-interval",
            str(STATS_INTERVAL),
        ]
        self._ready = threading.Event()

    def start(self) -> None:
        """Start it and wait for its ``READY`` line; fail with its output if it never comes."""
        self._process = self.topology.spawn(
            self.topology.router,
            *self.command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready.wait(0.05):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"no READY from {shlex.join(self.command)} (exit {self.returncode}):\n"
                    + "\n".join(self._lines)
                )

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self._lines.append(line)
            if line.startswith("READY"):
                self._ready.set()

    @property
    def pid(self) -> int | None:
        """The appliance's own process id (``ip netns exec`` execs it), for reading /proc."""
        return None if self._process is None else self._process.pid


class KernelNat:
    """Linux's NAT configured in the router namespace like ``ops-config.json`` configures ours."""

    kind = "kernel"
    TABLE = reference.TABLE

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.returncode: int | None = None

    def _ruleset(self) -> str:
        # The reference image's own ruleset, from the config the host-mode appliance reads.
        config = load_config(CONFIG)
        return reference.ruleset(config, self.topology.appliance_wan, self.topology.appliance_lan)

    def start(self) -> None:
        topo, router = self.topology, self.topology.router
        wan, lan = topo.appliance_wan, topo.appliance_lan
        topo.run(
            router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
            # The bridges share this namespace: only wan0 and lan0 may answer ARP for these
            # addresses, or hosts would send to a bridge's MAC and bypass the NAT's interfaces.
            "net.ipv4.conf.all.arp_ignore=1",
            # Hairpinned flows leave the interface they came in on: no redirects for them.
            "net.ipv4.conf.all.send_redirects=0", f"net.ipv4.conf.{lan}.send_redirects=0",
        )  # fmt: skip
        topo.run(router, "ip", "address", "add", f"{APPLIANCE_WAN}/24", "dev", wan)
        topo.run(router, "ip", "address", "add", f"{APPLIANCE_LAN}/24", "dev", lan)
        topo.run(router, "ip", "route", "add", "default", "via", GATEWAY)
        subprocess.run(
            ["ip", "netns", "exec", router, "nft", "-f", "-"],
            input=self._ruleset(),
            text=True,
            check=True,
        )

    def alive(self) -> bool:
        listed = self.topology.run(self.topology.router, "nft", "list", "tables").stdout
        return self.TABLE in listed

    def output(self) -> list[str]:
        return []

    def dropped(self) -> int | None:
        return None  # no drop counter comparable to the appliance's

    def stop(self) -> int | None:
        if self.returncode is None:
            topo = self.topology
            topo.run(topo.router, "nft", "delete", "table", "ip", self.TABLE, check=False)
            topo.run(topo.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
            for ifname in (topo.appliance_wan, topo.appliance_lan):
                topo.run(topo.router, "ip", "address", "flush", "dev", ifname)
            self.returncode = 0
        return self.returncode


def tier_machine(
    images: Path,
    topology: Topology,
    accel: str,
    *extra_cmdline: str,
    no_reboot: bool = False,
    memory_mib: int = 128,
) -> qemu.Machine:
    """The VM tier's machine: the kernel and initramfs in `images` on the topology's taps,
    128 MiB (unless told) and one CPU as ops-config.json has them."""
    return qemu.Machine(
        images / "vmlinuz",
        images / qemu.ROOT_FILE,
        memory_mib=memory_mib,
        cpus=1,
        taps=(topology.appliance_wan, topology.appliance_lan),
        accel=accel,
        extra_cmdline=extra_cmdline,
        no_reboot=no_reboot,
    )


def nested_xen(
    xen_host: Path,
    topology: Topology,
    work: Path,
    cfg: Path,
    echo: Callable[[xenboot.Line], None] = lambda line: None,
) -> AbstractContextManager[xenboot.NestedXen]:
    """The Xen tier's nested boot of guest configuration `cfg` (see xenboot.booted): QEMU in the
    router namespace on the topology's taps, the dom0 initrd and control socket in `work`."""
    machine = xenboot.Machine(
        xen_host,
        work / "dom0-initrd",
        (topology.appliance_wan, topology.appliance_lan),
        work / "control.sock",
    )

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        return topology.spawn(
            topology.router,
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    return xenboot.booted(machine, cfg, spawn, echo)


class VmAppliance(_ConsoleProcess):
    """The built image under QEMU in the router namespace, its NICs the topology's taps.

    The serial console is kept line by line; the guest's own ``READY`` says it forwards and its
    stats lines carry the counters. A QEMU monitor socket lets a test reset the machine; without
    ``-no-reboot`` the guest boots again, as it does after a fatal error.
    """

    kind = "vm"

    def __init__(self, topology: Topology, machine: qemu.Machine, monitor: Path) -> None:
        super().__init__()
        self.topology = topology
        self.monitor = monitor
        self.command = [*qemu.command(machine), "-monitor", f"unix:{monitor},server=on,wait=off"]

    def start(self) -> None:
        self._process = self.topology.spawn(
            self.topology.router,
            *self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_ready(1)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            self._lines.append(CONSOLE_ESCAPES.sub("", raw.decode(errors="replace")).strip())

    def boots(self) -> int:
        """How many times the appliance has said READY."""
        return sum(line.startswith("READY") for line in self._lines)

    def wait_ready(self, boots: int, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait for the ``boots``-th READY; fail with the console if QEMU exits or time runs out."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while self.boots() < boots:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no READY #{boots} from {shlex.join(self.command)}:\n" + "\n".join(self._lines)
                )
            time.sleep(0.1)

    def reset(self) -> None:
        """A hardware reset through the QEMU monitor (the guest does not see it coming)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as monitor:
            monitor.settimeout(10)
            monitor.connect(str(self.monitor))
            # Wait for the prompt before the command and after it: a command sent on a
            # connection closed before QEMU read it is silently lost.
            _read_until(monitor, MONITOR_PROMPT)
            monitor.sendall(b"system_reset\n")
            _read_until(monitor, MONITOR_PROMPT)


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"the QEMU monitor closed before {marker!r}")
        received += chunk
    return received


REFERENCE_VARIABLE = "NATVM_TEST_REFERENCE"


@contextmanager
def host_mode_nat(topology: Topology) -> Iterator[Nat]:
    """What forwards in host mode: the appliance, or Linux's NAT when NATVM_TEST_REFERENCE=kernel
    (to tell a broken test from a broken appliance). Its clean exit on SIGTERM is checked."""
    reference = os.environ.get(REFERENCE_VARIABLE, "")
    if reference not in ("", "kernel"):
        raise ValueError(f"{REFERENCE_VARIABLE}={reference!r}: expected unset or 'kernel'")
    router: Nat = KernelNat(topology) if reference else HostAppliance(topology, CONFIG)
    router.start()
    yield router
    status = router.stop()
    assert status == 0, f"exit status {status} on SIGTERM; output:\n" + "\n".join(router.output())
