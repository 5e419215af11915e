"""appliance/driverdomain.py: the vif state machine's decisions carried out on a netvm shell, as
interfaces appear and go. The store is the in-memory xenstore the state machine's own tests use;
the shell records what it was asked and refuses what a test says it cannot serve; which
interfaces exist is a set the test changes, as xen-netback would."""

from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from appliance.driverdomain import DriverDomain
from appliance.shell import ShellError
from appliance.vifs import VifBackends
from tests.support.memorystore import BASE, HOME, MemoryStore, backend_keys


class RecordingShell:
    def __init__(self, interfaces: set[str]) -> None:
        self.interfaces = interfaces
        self.calls: list[str] = []
        self.refuse: set[str] = set()  # interfaces whose client the engine refuses
        self.vanish: set[str] = set()  # interfaces that go just before the shell opens them

    def attach(self, ifname: str, ip: IPv4Address, mac: bytes) -> None:
        if ifname in self.vanish:
            self.interfaces.discard(ifname)
            raise ShellError(f"no network interface named {ifname!r}")
        if ifname in self.refuse:
            raise ShellError(f"client {ip} is outside the clients' subnet")
        self.calls.append(f"attach {ifname} {ip}")

    def detach(self, ifname: str, why: str = "") -> object:
        self.calls.append(f"detach {ifname}{why}")
        return None

    def add_reader(self, fd: int, ready: Callable[[], None]) -> None:
        raise AssertionError("serve_vifs registers readers, DriverDomain does not")


class Domain:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.interfaces: set[str] = set()
        self.shell = RecordingShell(self.interfaces)
        self.logged: list[str] = []
        self.driver = DriverDomain(
            self.shell, self.store, VifBackends(HOME), self.logged.append, self.exists
        )

    def exists(self, name: str) -> bool:
        return name in self.interfaces

    def toolstack_adds(self, domid: int, ip: str = "") -> None:
        for key, value in backend_keys(
            domid, 0, ip or f"10.137.0.{domid}", "00:16:3e:00:00:01"
        ).items():
            self.store.put(f"{BASE}/{domid}/0/{key}", value)
        self.driver.store_readable()

    def toolstack_removes(self, domid: int) -> None:
        for key, value in (("online", "0"), ("state", "5")):
            self.store.put(f"{BASE}/{domid}/0/{key}", value)
        self.driver.store_readable()

    def netback_creates(self, name: str) -> None:
        self.interfaces.add(name)
        self.driver.links_changed()

    def netback_removes(self, name: str) -> None:
        self.interfaces.discard(name)
        self.driver.links_changed()

    def hotplug_status(self, domid: int) -> str | None:
        return self.store.tree.get(f"{BASE}/{domid}/0/hotplug-status")


@pytest.fixture
def domain() -> Domain:
    domain = Domain()
    domain.driver.start()
    return domain


def test_a_client_is_attached_once_its_interface_appears(domain: Domain) -> None:
    domain.toolstack_adds(5)
    assert domain.shell.calls == []
    assert domain.hotplug_status(5) == ""
    domain.netback_creates("vif5.0")
    assert domain.shell.calls == ["attach vif5.0 10.137.0.5"]
    assert domain.hotplug_status(5) == "connected"
    domain.netback_creates("vif6.0")  # another link change: nothing new to do
    assert domain.shell.calls == ["attach vif5.0 10.137.0.5"]


def test_an_interface_already_there_is_attached_at_once(domain: Domain) -> None:
    domain.interfaces.add("vif7.0")
    domain.toolstack_adds(7)
    assert domain.shell.calls == ["attach vif7.0 10.137.0.7"]
    assert domain.hotplug_status(7) == "connected"


def test_clients_present_at_start_are_found() -> None:
    again = Domain()
    again.interfaces.add("vif4.0")
    for key, value in backend_keys(4, 0, "10.137.0.4", "00:16:3e:00:00:01").items():
        again.store.put(f"{BASE}/4/0/{key}", value)
    again.driver.start()
    assert again.shell.calls == ["attach vif4.0 10.137.0.4"]


def test_the_toolstack_removing_a_client_detaches_it_and_removes_its_directory(
    domain: Domain,
) -> None:
    domain.toolstack_adds(5)
    domain.netback_creates("vif5.0")
    domain.toolstack_removes(5)
    assert domain.shell.calls[-1].startswith("detach vif5.0 (online=0, state 5")
    domain.store.put(f"{BASE}/5/0/state", "6")  # netback: the frontend closed
    domain.driver.store_readable()
    assert f"{BASE}/5" not in domain.store.tree  # the driver domain's duty


def test_an_interface_that_goes_detaches_its_client_until_it_comes_back(domain: Domain) -> None:
    domain.toolstack_adds(5)
    domain.netback_creates("vif5.0")
    domain.netback_removes("vif5.0")
    assert domain.shell.calls == [
        "attach vif5.0 10.137.0.5",
        "detach vif5.0 (interface vif5.0 went away)",
    ]
    domain.netback_creates("vif5.0")
    assert domain.shell.calls[-1] == "attach vif5.0 10.137.0.5"


def test_a_client_the_shell_refuses_stays_unconnected_and_is_logged(domain: Domain) -> None:
    domain.shell.refuse.add("vif5.0")
    domain.toolstack_adds(5, ip="192.0.2.9")
    domain.netback_creates("vif5.0")
    assert domain.shell.calls == []
    assert domain.hotplug_status(5) == ""  # so the toolstack reports the attach as failed
    assert domain.logged == [
        "vif 5/0: cannot serve 192.0.2.9 on vif5.0: client 192.0.2.9 is outside the clients' subnet"
    ]
    domain.netback_creates("vif6.0")  # a later link change does not retry it in a loop
    assert domain.shell.calls == []
    assert len(domain.logged) == 1


def test_an_interface_gone_before_the_attach_is_awaited_again(domain: Domain) -> None:
    domain.interfaces.add("vif5.0")
    domain.shell.vanish.add("vif5.0")
    domain.toolstack_adds(5)
    assert domain.hotplug_status(5) == ""
    domain.shell.vanish.clear()
    domain.netback_creates("vif5.0")
    assert [call for call in domain.shell.calls if call.startswith("attach")] == [
        "attach vif5.0 10.137.0.5"
    ]
    assert domain.hotplug_status(5) == "connected"


def test_a_malformed_backend_is_logged_and_served_by_no_one(domain: Domain) -> None:
    domain.toolstack_adds(5, ip="fe80::1")
    domain.netback_creates("vif5.0")
    assert domain.shell.calls == []
    assert domain.logged == [f"vif backend {BASE}/5/0 ignored: no IPv4 address in ip 'fe80::1'"]
