"""Client VMs of a net VM under the Xen tier's dom0, driven through its control channel.

A client (image/xenclient.py) boots Debian's cloud kernel with busybox and runs each line
written to its console as a shell command. `Clients.run` writes the command to the domain's
console pty (the dom0 file xenconsoled names in xenstore, `console/tty`), followed by an echo of
a marker with the command's exit status, and reads the client's console lines (which the dom0
streams, prefixed with the domain's name) up to that marker. Backends are read with xenstore-read
and xenstore-ls in the dom0, as a toolstack sees them.
"""

from __future__ import annotations

import itertools
import re
import shlex
import time
from dataclasses import dataclass

from image import xenboot, xenclient
from image.errors import ImageError

XL = "/usr/lib/xen-4.17/bin/xl"
XENSTORE_READ = "/usr/bin/xenstore-read"
XENSTORE_LS = "/usr/bin/xenstore-ls"
BOOT_TIMEOUT = 180.0
# A client whose boot the nested machine fails is created again, up to this many times in all.
BOOT_ATTEMPTS = 3
# A client whose every boot failed, at least one of them by the machine (MACHINE_FAILURES, or
# its domain crashed and gone as soon as created), says this; one that failed otherwise does not.
ALL_BOOTS_FAILED = "the nested machine failed its boots, tries:"
GONE_AT_CREATE = "the domain was gone right after `xl create`"
# What the nested machine says when a guest's emulated CPU failed under it (TCG emulating SVM
# for Xen): Xen's "(XEN) d<domid>v0 Triple fault", seen with the guest in the kernel's PIT
# calibration loop (quick_pit_calibrate: 100,000 port reads, each an exit to Xen), in clients
# and in natvm alike; or a guest kernel's panic "stack guard page was hit". Not a sign of
# anything natvm did: an out-of-memory panic or a Python traceback is not among them.
MACHINE_FAILURES = ("Triple fault", "stack guard page was hit")


def is_machine_failure(text: str) -> bool:
    """Whether a console line or a boot's failure says the nested machine failed a guest."""
    return any(sign in text for sign in MACHINE_FAILURES)


# What `xl create` says when the vif's backend (netback in the net VM) did not reach InitWait
# within libxl's fixed 10 s: nested TCG on a loaded machine exceeds it at times (a fresh-clone CI
# run here, client B). The domain is gone then; the client is created again, as after a failure.
VIF_NOT_PROBED = "unable to add vif devices"
# xenbus states (xen/include/public/io/xenbus.h)
INIT_WAIT, CONNECTED = 2, 4


@dataclass(frozen=True)
class Result:
    """A command's exit status and the console lines it printed."""

    status: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class Booted:
    """A client domain as created: its VM, its domain id, and how long it took."""

    vm: xenclient.ClientVm
    domid: int
    created: float  # seconds of `xl create`
    ready: float  # seconds from `xl create` to its READY line
    failed_boots: tuple[str, ...] = ()  # what the nested machine said of each boot it failed


class Clients:
    """Create, command, inspect and destroy client domains in the dom0 of `nested`."""

    def __init__(self, nested: xenboot.NestedXen) -> None:
        """The clients' kernel and initramfs are in the dom0 from its boot on
        (xenboot.client_entries)."""
        assert nested.control is not None
        self.nested = nested
        self.control = nested.control
        self.console = nested.console
        self._tokens = itertools.count(1)

    def xl(self, *args: str, check: bool = True) -> str:
        return self.control.run(XL, *args, check=check)

    def domid(self, name: str) -> int:
        return int(self.xl("domid", name).strip())

    def create(self, vm: xenclient.ClientVm) -> float:
        """`xl create` a client; the seconds it took (the domain boots on after it returns)."""
        cfg = f"/guest/{vm.name}.cfg"
        self.control.write(cfg, vm.xl_config(xenboot.CLIENT_KERNEL, xenboot.CLIENT_RAMDISK))
        started = time.monotonic()
        self.xl("create", cfg)
        return time.monotonic() - started

    def wait_booted(self, vm: xenclient.ClientVm, domid: int, start: int) -> xenboot.Line:
        """The client's READY line (from console line `start` on), or the line where the
        nested machine failed its domain `domid`, whichever comes first."""

        def ready(line: xenboot.Line) -> bool:
            return line.source == vm.name and line.text.startswith(xenclient.READY_LINE)

        def failed(line: xenboot.Line) -> bool:
            ours = line.source == vm.name or f"d{domid}v" in line.text
            return ours and is_machine_failure(line.text)

        return self.console.wait_for(
            lambda line: ready(line) or failed(line),
            f"{vm.name} never got ready",
            BOOT_TIMEOUT,
            vm.name,
            start,
        )

    def boot(self, *vms: xenclient.ClientVm) -> list[Booted]:
        """Create each client and wait for it to be ready, one after the other: a client's
        kernel booting takes the CPU from the net VM, and libxl gives a new vif's backend 10 s
        to reach InitWait (nested under a loaded TCG, netback in natvm missed it once). A
        client the nested machine failed while it booted, or whose vif libxl gave up on
        (VIF_NOT_PROBED), is destroyed and created again (test equipment, not natvm: see
        MACHINE_FAILURES); each such failure is kept in `Booted`."""
        booted = []
        for vm in vms:
            failures: list[str] = []
            while True:
                attempt = self._boot_once(vm, tuple(failures))
                if isinstance(attempt, Booted):
                    booted.append(attempt)
                    break
                failures.append(attempt)
                self.destroy(vm.name)
                if len(failures) == BOOT_ATTEMPTS:
                    machine = any(
                        is_machine_failure(failure) or GONE_AT_CREATE in failure
                        for failure in failures
                    )
                    verdict = ALL_BOOTS_FAILED if machine else "could not be booted, tries:"
                    raise xenboot.BootError(
                        f"{vm.name}: {verdict} {BOOT_ATTEMPTS}: "
                        + "; ".join(failures)
                        + "\n"
                        + self.console.tails(vm.name)
                    )
        return booted

    def _boot_once(self, vm: xenclient.ClientVm, failures: tuple[str, ...]) -> Booted | str:
        """Create the client and wait for it: what was booted, or what the machine said."""
        mark = len(self.console.lines)
        began = time.monotonic() - self.console.started
        try:
            seconds = self.create(vm)
        except ImageError as error:
            if VIF_NOT_PROBED not in error.message:
                raise
            return f"xl create: {VIF_NOT_PROBED}"
        found = self.xl("domid", vm.name, check=False).strip()
        if not found.isdigit():  # failed as soon as created, and destroyed (xl's on_crash)
            return GONE_AT_CREATE
        domid = int(found)
        seen = self.wait_booted(vm, domid, mark)
        if seen.source == vm.name and seen.text.startswith(xenclient.READY_LINE):
            return Booted(vm, domid, seconds, seen.at - began, failures)
        return f"domain {domid}: {seen.text.strip()}"

    def destroy(self, name: str) -> None:
        self.xl("destroy", name, check=False)

    def run(self, vm: xenclient.ClientVm, command: str, timeout: float = 60.0) -> Result:
        """Run a shell command in the client; its status and output. The command itself must
        end within `timeout` (use busybox's `timeout` for what may hang)."""
        token = next(self._tokens)
        marker = re.compile(rf"^@@{token}=(\d+)$")
        tty = self.read(f"/local/domain/{self.domid(vm.name)}/console/tty")
        mark = len(self.console.lines)
        # Quoted for an eval of its own: a command that ends in `&` is whole before the `;`.
        self.control.write(tty, f"eval {shlex.quote(command)}; echo @@{token}=$?\n")
        done = self.console.wait_for(
            lambda line: line.source == vm.name and bool(marker.match(line.text)),
            f"{vm.name} did not finish `{command}`",
            timeout,
            vm.name,
            mark,
        )
        end = self.console.lines.index(done, mark)
        lines = [line.text for line in self.console.lines[mark:end] if line.source == vm.name]
        status = marker.match(done.text)
        assert status is not None
        return Result(int(status.group(1)), lines)

    def read(self, path: str) -> str:
        return self.control.run(XENSTORE_READ, path).strip()

    def entries(self, path: str) -> dict[str, str]:
        """The keys directly under `path` and their values (xenstore-ls, one level); none if
        there is no such directory (xenstore-ls then says so, in a line with no " = ")."""
        listing = self.control.run(XENSTORE_LS, path, check=False)
        found = {}
        for line in listing.splitlines():
            if not line.startswith(" ") and " = " in line:
                key, _, value = line.partition(" = ")
                found[key.strip()] = value.strip().strip('"')
        return found

    def backend(self, netvm: str, client: str, devid: int = 0) -> str:
        """The xenstore directory of the client's vif backend in the net VM."""
        return f"/local/domain/{self.domid(netvm)}/backend/vif/{self.domid(client)}/{devid}"

    def wait_state(self, path: str, state: int, timeout: float = 60.0) -> float:
        """Wait until xenstore `path`/state is `state`; the seconds it took."""
        started = time.monotonic()
        while True:
            value = self.control.run(XENSTORE_READ, f"{path}/state", check=False).strip()
            if value == str(state):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{path}/state is {value!r} after {timeout:.0f} s, not {state}")
            time.sleep(0.5)
