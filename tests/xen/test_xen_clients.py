"""Client VMs on natvm's netback: the Xen side of a Qubes-style net VM, before natvm serves them.

Two client domains (image/xenclient.py) boot with `vif=['backend=natvm,ip=10.137.0.x']` against
the session's natvm as shipped (two-NIC mode, which leaves their vifs alone). Their backends
appear in natvm's xenstore directory, probed by the xen-netback natvm's image loads, and wait in
InitWait for `hotplug-status`, which natvm's net VM mode is to write: written here from the dom0,
the backend connects. (`xl network-detach` is checked in test_xen_netvm.py only: libxl then waits
for the driver domain to remove the backend's directory, which natvm as shipped never does.)
"""

from collections.abc import Iterator

import pytest

from image import xenboot, xenhost
from image.xenclient import NETBACK_MAC, ClientVm
from tests.support.xenclients import CONNECTED, INIT_WAIT, Booted, Clients
from tests.xen.conftest import memory_report, report, report_failed_boots

pytestmark = pytest.mark.xen
NETVM = "natvm"
GATEWAY = "10.137.0.1"
A = ClientVm("client-a", "10.137.0.2", GATEWAY, NETVM)
B = ClientVm("client-b", "10.137.0.3", GATEWAY, NETVM)


@pytest.fixture(scope="module")
def clients(
    nested: xenboot.NestedXen, xen_host: xenhost.XenHost, request: pytest.FixtureRequest
) -> Iterator[Clients]:
    made = Clients(nested)
    yield made
    for vm in (A, B):
        made.destroy(vm.name)


@pytest.fixture(scope="module")
def booted(
    clients: Clients, nested: xenboot.NestedXen, request: pytest.FixtureRequest
) -> list[Booted]:
    before = memory_report(nested)
    up = clients.boot(A, B)
    report_failed_boots(request, up)
    for client in up:
        report(
            request,
            f"Xen tier client {client.vm.name} (domain {client.domid}, {client.vm.memory_mib} MiB):"
            f" xl create {client.created:.1f} s, READY {client.ready:.1f} s after it",
        )
    report(request, f"Xen tier before the clients: {before}")
    report(request, f"Xen tier with two clients: {memory_report(nested)}")
    return up


def test_the_clients_vifs_are_netbacks_in_natvm_waiting_for_hotplug(
    clients: Clients, booted: list[Booted]
) -> None:
    for client in booted:
        path = clients.backend(NETVM, client.vm.name)
        backend = clients.entries(path)
        assert backend["state"] == str(INIT_WAIT), backend
        assert backend["frontend-id"] == str(client.domid)
        assert backend["ip"] == client.vm.address
        assert backend["hotplug-status"] == ""
        # Written by xen-netback's probe inside natvm: its driver runs there.
        assert backend["feature-sg"] == "1"
        assert "error" not in backend
        # netfront found netback's InitWait and connected its rings to natvm's vif.
        frontend = backend["frontend"]
        assert clients.read(f"{frontend}/state") == str(CONNECTED)
        assert clients.read(f"{frontend}/backend-id") == str(clients.domid(NETVM))


def test_a_client_has_its_32_and_the_gateway_pinned_as_a_qubes_client_does(
    clients: Clients, booted: list[Booted]
) -> None:
    shown = clients.run(A, "ip -4 addr show dev eth0; ip route; ip neigh")
    assert shown.status == 0, shown.text
    assert f"inet {A.address}/32 scope global eth0" in shown.text
    assert f"default via {GATEWAY} dev eth0 onlink" in shown.text
    assert f"{GATEWAY} dev eth0 scope link" in shown.text
    pinned = [line for line in shown.lines if line.startswith(f"{GATEWAY} dev eth0 lladdr")]
    assert len(pinned) == 1 and NETBACK_MAC in pinned[0] and pinned[0].endswith("PERMANENT")
    failed = clients.run(A, "ls /no-such-file")
    assert failed.status != 0


def test_the_backend_connects_once_hotplug_status_is_connected(
    clients: Clients, booted: list[Booted], request: pytest.FixtureRequest
) -> None:
    """What natvm's net VM mode is to write, written from the dom0 here."""
    path = clients.backend(NETVM, B.name)
    clients.control.run("/usr/bin/xenstore-write", f"{path}/hotplug-status", "connected")
    took = clients.wait_state(path, CONNECTED, timeout=30)
    report(request, f"Xen tier: hotplug-status to backend state 4 in {took:.1f} s")
