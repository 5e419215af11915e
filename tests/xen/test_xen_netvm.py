"""natvm as a Qubes-style net VM under real Xen: two client VMs behind it (issue: the Qubes net VM).

natvm is created again as a PVH driver domain (xen.cfg as shipped, less its LAN vif, plus
`driver_domain=1` and the net VM mode's words) and two client domains (image/xenclient.py) get
`vif=['backend=natvm,ip=10.137.0.x']`. Each check is made from inside the clients, with the WAN
side's servers (tests/support/services.py) at the other end: pings and a page through the NAT, a
spoofed source dropped and counted, no way from one client to the other, DNS sent to 10.139.1.1
answered by dnsmasq on the WAN side, and a vif detached and attached again while the other
client's download goes on intact. At the end, natvm is created from xen.cfg again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from image import deploy, xenboot, xenhost
from image.dom0 import xlcfg
from image.errors import ImageError
from image.xenclient import ClientVm
from tests.support.routers import stats_counter
from tests.support.services import Services
from tests.support.topology import APPLIANCE_WAN, SERVER_A
from tests.support.xenclients import CONNECTED, XL, Booted, Clients
from tests.xen.conftest import report

NETVM = "natvm"  # xen.cfg's name
GATEWAY = "10.137.0.1"  # the net VM's address as its clients see it (Qubes' netvm gateway)
# The net VM's kernel words: those the Qubes install gives it (the mode, no port forward), then
# the downstream subnet its clients' addresses are in with its own address (their gateway), and
# its upstream DNS server (dnsmasq, on the WAN side), which 10.139.1.1 is translated to.
NETVM_WORDS = (*deploy.NETVM_WORDS, f"natvm.lan.ip={GATEWAY}/24", f"natvm.dns={SERVER_A}")
A = ClientVm("netvm-client-a", "10.137.0.2", GATEWAY, NETVM)
B = ClientVm("netvm-client-b", "10.137.0.3", GATEWAY, NETVM)
SPOOFED = "10.137.0.99"
READY_TIMEOUT = 300.0  # as the session boot's: natvm's boot takes 25-150 s here
CONNECT_TIMEOUT = 60.0
pytestmark = pytest.mark.xen


@dataclass
class NetVm:
    """natvm as a net VM with its clients, or why it is not one: the tests fail with that
    reason at once instead of each waiting out its own timeout."""

    clients: Clients
    booted: list[Booted]
    problem: str
    since: int  # the console line where natvm was created as a net VM

    def require(self) -> Clients:
        assert not self.problem, self.problem
        return self.clients

    def counter(self, name: str) -> int:
        lines = [line.text for line in self.clients.console.lines[self.since :]]
        return stats_counter([text for text in lines if text.startswith("stats ")], name)


def _recreate_natvm(clients: Clients, cfg: str) -> None:
    """Destroy natvm and create it from `cfg` (in /guest). A natvm that failed is rebooting,
    and xl restarts it under the same name: destroy until the name is gone."""
    deadline = time.monotonic() + 60
    while clients.xl("domid", NETVM, check=False).strip().isdigit():
        assert time.monotonic() < deadline, "natvm could not be destroyed"
        clients.xl("destroy", NETVM, check=False)
        time.sleep(2)
    clients.control.run(XL, "create", cfg, cwd="/guest")


def _as_netvm(clients: Clients, nested: xenboot.NestedXen) -> str:
    """natvm created again as the net VM; what went wrong, or ""."""
    cfg = clients.control.run("/usr/bin/python3.11", "-c", "print(open('/guest/xen.cfg').read())")
    clients.control.write("/guest/netvm.cfg", xlcfg.as_driver_domain(cfg, NETVM_WORDS))
    mark = len(nested.console.lines)
    _recreate_natvm(clients, "netvm.cfg")
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


def _connected(clients: Clients, booted: list[Booted]) -> str:
    """ "" once every client's backend is connected (natvm wrote hotplug-status), else why not."""
    for client in booted:
        try:
            clients.wait_state(clients.backend(NETVM, client.vm.name), CONNECTED, CONNECT_TIMEOUT)
        except TimeoutError as error:
            return f"{client.vm.name}'s vif never connected: {error}"
    return ""


@pytest.fixture(scope="module")
def netvm(
    nested: xenboot.NestedXen,
    xen_host: xenhost.XenHost,
    services: Services,
    request: pytest.FixtureRequest,
) -> Iterator[NetVm]:
    clients = Clients(nested, xen_host.out / "client")
    since = len(nested.console.lines)
    problem = _as_netvm(clients, nested)
    booted: list[Booted] = []
    if not problem:
        started = time.monotonic()
        booted = clients.boot(A, B)
        problem = _connected(clients, booted)
        report(
            request,
            f"Xen tier net VM: clients up and connected in {time.monotonic() - started:.1f} s",
        )
        lines = [line.text for line in nested.console.lines[since:] if line.source == NETVM]
        report(request, f"Xen tier net VM: natvm's available memory {memory_steps(lines)}")
    yield NetVm(clients, booted, problem, since)
    for vm in (A, B):
        clients.destroy(vm.name)
    mark = len(nested.console.lines)
    _recreate_natvm(clients, "xen.cfg")
    nested.console.wait_for(
        xenboot.is_ready(NETVM), "natvm's xen.cfg again", READY_TIMEOUT, NETVM, mark
    )


def attach_again(clients: Clients, vm: ClientVm, request: pytest.FixtureRequest) -> None:
    """`xl network-attach` the client's vif, once more if libxl gave up waiting for natvm's
    netback to probe it: libxl waits a fixed 10 s for the backend's InitWait, which nested TCG
    on a loaded machine can exceed (seen once in five runs here). Said in the report."""
    try:
        clients.xl("network-attach", vm.name, *vm.vif().split(","))
    except ImageError as error:
        if "unable to add device" not in error.message:
            raise
        report(request, f"Xen tier net VM: network-attach failed once, again: {error.message}")
        clients.xl("network-attach", vm.name, *vm.vif().split(","))


def test_each_clients_vif_is_connected(netvm: NetVm) -> None:
    clients = netvm.require()
    for client in netvm.booted:
        backend = clients.entries(clients.backend(NETVM, client.vm.name))
        assert backend["state"] == str(CONNECTED)
        assert backend["hotplug-status"] == "connected"


def test_each_client_pings_and_fetches_a_page_through_the_nat(
    netvm: NetVm, services: Services
) -> None:
    clients = netvm.require()
    for vm in (A, B):
        ping = clients.run(vm, f"ping -c 3 -W 5 {SERVER_A}")
        assert ping.status == 0, ping.text
        page = clients.run(vm, f"timeout 30 wget -q -O - http://{SERVER_A}/index.html")
        assert page.status == 0, page.text
        assert services.wan_index.decode().strip() in page.lines


def test_a_spoofed_source_is_dropped_and_counted(netvm: NetVm) -> None:
    clients = netvm.require()
    before = netvm.counter("drop_spoofed-source")
    spoof = clients.run(
        A,
        f"ip addr add {SPOOFED}/32 dev eth0; ping -c 3 -W 2 -I {SPOOFED} {SERVER_A};"
        f" pinged=$?; ip addr del {SPOOFED}/32 dev eth0; (exit $pinged)",
    )
    assert spoof.status != 0, spoof.text
    deadline = time.monotonic() + 30  # natvm prints its stats at most every 10 s
    while netvm.counter("drop_spoofed-source") < before + 3:
        assert time.monotonic() < deadline, "natvm did not count the spoofed pings"
        time.sleep(1)
    again = clients.run(A, f"ping -c 1 -W 5 {SERVER_A}")
    assert again.status == 0, again.text


def test_client_a_cannot_reach_client_b(netvm: NetVm) -> None:
    clients = netvm.require()
    across = clients.run(A, f"ping -c 2 -W 2 {B.address}")
    assert across.status != 0, across.text
    back = clients.run(B, f"ping -c 2 -W 2 {A.address}")
    assert back.status != 0, back.text
    out = clients.run(B, f"ping -c 1 -W 5 {SERVER_A}")  # B itself is reachable and working
    assert out.status == 0, out.text


def test_dns_to_10_139_1_1_is_answered_by_the_wan_sides_resolver(
    netvm: NetVm, services: Services
) -> None:
    clients = netvm.require()
    # A only: dnsmasq refuses the AAAA query that busybox also sends by default.
    answer = clients.run(A, f"timeout 20 nslookup -type=a {services.dns_name} 10.139.1.1")
    assert answer.status == 0, answer.text
    assert any(services.dns_answer in line for line in answer.lines), answer.text
    queries = services.dnsmasq_log.read_text()
    assert f"query[A] {services.dns_name} from {APPLIANCE_WAN}" in queries


def test_detaching_a_leaves_bs_download_intact_and_attaching_brings_a_back(
    netvm: NetVm, services: Services, request: pytest.FixtureRequest
) -> None:
    clients = netvm.require()
    clients.run(B, "rm -f /tmp/bulk.sum")
    clients.run(
        B, f"(timeout 300 wget -q -O - http://{SERVER_A}/bulk.bin | sha256sum > /tmp/bulk.sum) &"
    )
    clients.run(B, "sleep 2")
    running = clients.run(B, "[ ! -s /tmp/bulk.sum ]")
    assert running.status == 0, "B's download ended before the detach: the check shows nothing"
    path = clients.backend(NETVM, A.name)
    clients.xl("network-detach", A.name, "0")
    assert clients.entries(path) == {}
    started = time.monotonic()
    attach_again(clients, A, request)
    clients.wait_state(path, CONNECTED, CONNECT_TIMEOUT)
    up = clients.run(A, f"setup_eth0 && ping -c 1 -W 10 {SERVER_A}")
    assert up.status == 0, up.text
    report(
        request, f"Xen tier net VM: network-attach to first ping {time.monotonic() - started:.1f} s"
    )
    alive = clients.xl("domid", B.name, check=False).strip()
    assert alive.isdigit(), f"{B.name} is gone: it crashed (its console and Xen's say how)"
    done = clients.run(B, "while [ ! -s /tmp/bulk.sum ]; do sleep 1; done; cat /tmp/bulk.sum", 300)
    assert done.lines[-1].split()[0] == services.bulk_sha256
