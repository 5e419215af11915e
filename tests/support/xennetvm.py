"""natvm as a Qubes-style net VM in the Xen tier's dom0: created again from its xen.cfg as a
driver domain with the net VM mode's words, its client VMs, and what its console says.

Shared by the Xen tier's net VM checks (tests/xen/test_xen_netvm.py) and its QubesDB checks
(tests/xen/test_xen_qubesdb.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from image import deploy, xenboot, xenclient
from image.dom0 import xlcfg
from image.xenclient import ClientVm
from tests.support.routers import stats_counter
from tests.support.topology import SERVER_A
from tests.support.xenclients import CONNECTED, XL, Booted, Clients, is_machine_failure

NETVM = "natvm"  # xen.cfg's name
GATEWAY = "10.137.0.1"  # the net VM's address as its clients see it (Qubes' netvm gateway)
# The net VM's kernel words: those the Qubes install gives it (the mode, no port forward), then
# the downstream subnet its clients' addresses are in with its own address (their gateway), and
# its upstream DNS server (dnsmasq, on the WAN side), which 10.139.1.1 is translated to.
NETVM_WORDS = (*deploy.NETVM_WORDS, f"natvm.lan.ip={GATEWAY}/24", f"natvm.dns={SERVER_A}")
A = ClientVm("netvm-client-a", "10.137.0.2", GATEWAY, NETVM)
B = ClientVm("netvm-client-b", "10.137.0.3", GATEWAY, NETVM)
READY_TIMEOUT = 300.0  # as the tier boot's: natvm's boot takes 25-150 s here
CONNECT_TIMEOUT = 60.0


@dataclass
class NetVm:
    """natvm as a net VM with its clients, or why it is not one: the tests fail with that
    reason at once instead of each waiting out its own timeout."""

    clients: Clients
    booted: list[Booted]
    problem: str
    since: int  # the console line where natvm was created as a net VM

    def require(self) -> Clients:
        if self.problem:
            machine_failed(self.clients.console, self.since)
        assert not self.problem, self.problem
        return self.clients

    def counter(self, name: str) -> int:
        lines = [line.text for line in self.clients.console.lines[self.since :]]
        return stats_counter([text for text in lines if text.startswith("stats ")], name)


MACHINE_FAILED = "the nested machine failed a guest, the check says nothing"


def machine_failure(console: xenboot.Console, since: int) -> str:
    """The first console line since `since` that says the nested machine failed a guest."""
    for line in console.lines[since:]:
        if is_machine_failure(line.text):
            return f"{line.source}: {line.text.strip()}"
    return ""


# What the dom0's xenconsole says when the domain whose console it relays is gone.
CONSOLE_GONE = "xenconsole: Could not read tty from store"


def guest_lost_to_machine(console: xenboot.Console) -> str:
    """The machine's failure that took a guest (natvm or a client) for good, if one's domain is
    gone (its console's last line is xenconsole's) and the machine failed a guest after that
    guest's last READY: every later check of the module's machine that needs it fails for
    that, not for natvm. Else ""."""
    last: dict[str, int] = {}  # guest -> index of its last console line
    ready: dict[str, int] = {}  # guest -> index of its last READY line
    for index, line in enumerate(console.lines):
        if line.source in ("xen", "dom0"):
            continue
        last[line.source] = index
        if line.text.startswith(("READY", xenclient.READY_LINE)):
            ready[line.source] = index
    for guest, index in last.items():
        if CONSOLE_GONE in console.lines[index].text:
            failure = machine_failure(console, ready.get(guest, 0))
            if failure:
                return failure
    return ""


def machine_failed(console: xenboot.Console, since: int) -> None:
    """Mark the running test as an expected failure if the nested machine failed a guest
    since `since`: a check cannot tell anything about natvm then. (A check's own failure is
    judged the same way by the Xen tier's report hook, tests/xen/conftest.py.)"""
    failure = machine_failure(console, since)
    if failure:
        pytest.xfail(f"{MACHINE_FAILED}: {failure}")


def recreate_natvm(
    clients: Clients, cfg: str, before_start: Callable[[int], None] | None = None
) -> None:
    """Destroy natvm and create it from `cfg` (in /guest). A natvm that failed is rebooting,
    and xl restarts it under the same name: destroy until the name is gone. `before_start`
    is called with its domain id while it is still paused (as Qubes starts a VM's QubesDB
    before the VM runs)."""
    deadline = time.monotonic() + 60
    while clients.xl("domid", NETVM, check=False).strip().isdigit():
        assert time.monotonic() < deadline, "natvm could not be destroyed"
        clients.xl("destroy", NETVM, check=False)
        time.sleep(2)
    if before_start is None:
        clients.control.run(XL, "create", cfg, cwd="/guest")
        return
    clients.control.run(XL, "create", "-p", cfg, cwd="/guest")
    before_start(clients.domid(NETVM))
    clients.xl("unpause", NETVM)


def as_netvm(
    clients: Clients,
    nested: xenboot.NestedXen,
    before_start: Callable[[int], None] | None = None,
) -> str:
    """natvm created again as the net VM; what went wrong, or ""."""
    cfg = clients.control.run("/usr/bin/python3.11", "-c", "print(open('/guest/xen.cfg').read())")
    clients.control.write("/guest/netvm.cfg", xlcfg.as_driver_domain(cfg, NETVM_WORDS))
    mark = len(nested.console.lines)
    recreate_natvm(clients, "netvm.cfg", before_start)
    ready = xenboot.is_ready(NETVM)

    def settled(line: xenboot.Line) -> bool:  # READY, or a fatal error: no need to wait longer
        return ready(line) or (line.source == NETVM and "natvm: fatal:" in line.text)

    try:
        seen = nested.console.wait_for(settled, "natvm as a net VM", READY_TIMEOUT, NETVM, mark)
    except xenboot.BootError as error:
        return error.message.splitlines()[0]
    return "" if ready(seen) else f"natvm as a net VM: {seen.text}"


def memory_steps(lines: list[str]) -> str:
    """ "52 MiB at READY, 51 MiB with 1 client, ..." from natvm's console: its memory line at
    start and the available memory each attach logs."""
    steps = []
    for text in lines:
        at_start = re.match(r"natvm: memory: (\d+)/\d+ MiB available", text)
        attached = re.search(r"^attached .* mem_available=(\d+) MiB", text)
        if at_start:
            steps = [f"{at_start.group(1)} MiB at start"]
        elif attached:
            steps.append(f"{attached.group(1)} MiB with {len(steps)} client(s)")
    return ", ".join(steps)


def connected(clients: Clients, booted: list[Booted]) -> str:
    """ "" once every client's backend is connected (natvm wrote hotplug-status), else why not."""
    for client in booted:
        try:
            clients.wait_state(clients.backend(NETVM, client.vm.name), CONNECTED, CONNECT_TIMEOUT)
        except TimeoutError as error:
            return f"{client.vm.name}'s vif never connected: {error}"
    return ""
