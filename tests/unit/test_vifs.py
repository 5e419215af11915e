"""appliance/vifs.py: the attach/detach decisions of a net VM, against the sequences of writes
that libxl and xen-netback make (libxl_device.c: libxl__device_add_async writes the backend
directory in one transaction, libxl__initiate_device_generic_remove writes online=0 and state 5;
netback writes state 2 on probe, 4 once hotplug-status is connected, 6 once the frontend closed).

The store is a small in-memory xenstore with xenstored's watch rules (docs/misc/xenstore.txt): a
watch fires once when set, then for every node written or removed under it; a transaction's
events come at its commit.
"""

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from appliance import vifs
from appliance.vifs import (
    Attach,
    AwaitInterface,
    Client,
    Detach,
    Dropped,
    Read,
    Vif,
)
from tests.support.memorystore import BASE, HOME, Xen, backend_keys


@pytest.fixture
def xen() -> Iterator[Xen]:
    xen = Xen()
    assert xen.decisions == []
    assert xen.service() == []  # the watch's first firing: an empty backend/vif
    yield xen


def client(domid: int, devid: int, ip: str = "", mac: int | None = None) -> Client:
    return Client(
        Vif(domid, devid),
        f"vif{domid}.{devid}",
        IPv4Address(ip or f"10.137.0.{domid}"),
        bytes([0x00, 0x16, 0x3E, 0x5E, 0x6C, domid if mac is None else mac]),
        f"{BASE}/{domid}/{devid}",
    )


def test_attach_waits_for_the_interface_then_writes_hotplug_status(xen: Xen) -> None:
    xen.attach(5, 0)
    assert xen.service() == [AwaitInterface(Vif(5, 0), "vif5.0")]
    assert xen.backends.interface_present("vif5.1") == []  # not the one awaited
    assert xen.store.tree[f"{BASE}/5/0/hotplug-status"] == ""
    outputs = xen.backends.interface_present("vif5.0")
    assert outputs == [Attach(client(5, 0))]
    assert xen.store.tree[f"{BASE}/5/0/hotplug-status"] == ""  # not before the shell has it up
    assert vifs.carry_out(xen.backends, xen.store, xen.backends.attached(Vif(5, 0))) == []
    assert xen.store.tree[f"{BASE}/5/0/hotplug-status"] == "connected"
    xen.connect(5, 0)
    assert xen.service() == []  # our own write and netback's state 4 change nothing
    assert xen.backends.clients() == [client(5, 0)]


def test_detach_on_closing_then_the_directory_is_removed_when_closed(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.connect(5, 0)
    xen.service()
    xen.detach(5, 0)
    assert xen.service() == [Detach(client(5, 0), "online=0, state 5 (Closing)")]
    assert xen.backends.clients() == []
    assert f"{BASE}/5/0" in xen.store.tree  # netback has not closed yet
    xen.closed(5, 0)
    assert xen.service() == []
    # the device's directory and its domain's, left empty; backend/vif stays
    assert not [path for path in xen.store.tree if path.startswith(f"{BASE}/")]
    assert BASE in xen.store.tree
    assert xen.service() == []


def test_reattach_of_the_same_devid(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.detach(5, 0)
    xen.closed(5, 0)
    xen.service()
    xen.attach(5, 0, ip="10.137.0.50")
    served = xen.serve(xen.service())
    again = client(5, 0, ip="10.137.0.50")
    assert served == [AwaitInterface(Vif(5, 0), "vif5.0"), Attach(again)]
    assert xen.store.tree[f"{BASE}/5/0/hotplug-status"] == "connected"
    assert xen.backends.clients() == [again]


def test_events_coalesced_in_one_batch_still_see_the_removal_and_the_new_directory(
    xen: Xen,
) -> None:
    # Detach, removal by another hand, and a re-attach, all before natvm reads anything.
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.detach(5, 0)
    xen.store.delete(f"{BASE}/5")
    xen.attach(5, 0, mac="00:16:3e:00:00:01")
    assert xen.service() == [
        Detach(client(5, 0), "its backend changed: mac 00:16:3e:5e:6c:05 -> 00:16:3e:00:00:01"),
        AwaitInterface(Vif(5, 0), "vif5.0"),
    ]


def test_a_client_with_several_addresses_gets_its_first_ipv4(xen: Xen) -> None:
    xen.attach(5, 0, ip="fd09:24ef:4179::a89:5 10.137.0.5 10.137.0.77")
    [_, attach] = xen.serve(xen.service())
    assert isinstance(attach, Attach)
    assert attach.client.ip == IPv4Address("10.137.0.5")


def test_two_clients_interleaved(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.attach(6, 0)
    xen.attach(6, 1, ip="10.137.0.61")
    assert xen.service() == [
        AwaitInterface(Vif(5, 0), "vif5.0"),
        AwaitInterface(Vif(6, 0), "vif6.0"),
        AwaitInterface(Vif(6, 1), "vif6.1"),
    ]
    # vif6.1 appears first, then vif5.0; vif6.0 not yet
    assert xen.serve([AwaitInterface(Vif(6, 1), "vif6.1")])[1:] == [
        Attach(client(6, 1, ip="10.137.0.61", mac=6))
    ]
    xen.serve([AwaitInterface(Vif(5, 0), "vif5.0")])
    xen.detach(5, 0)
    assert xen.service() == [Detach(client(5, 0), "online=0, state 5 (Closing)")]
    assert xen.backends.clients() == [client(6, 1, ip="10.137.0.61", mac=6)]
    assert xen.backends.interface_present("vif6.0") == [Attach(client(6, 0))]
    xen.closed(5, 0)
    assert xen.service() == []
    assert sorted(p.removeprefix(BASE) for p in xen.store.tree if p.count("/") == 7) == [
        "/6/0",
        "/6/1",
    ]


def test_a_detach_before_the_interface_appeared_attaches_nothing(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.service()
    xen.detach(5, 0)
    assert xen.service() == []  # nothing was attached: nothing to detach
    assert xen.backends.interface_present("vif5.0") == []
    xen.closed(5, 0)
    xen.service()
    assert f"{BASE}/5" not in xen.store.tree


def test_the_directory_removed_while_attached_detaches(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.store.delete(f"{BASE}/5/0")  # libxl's forced removal after its timeout
    assert xen.service() == [Detach(client(5, 0), "its backend directory was removed")]


def test_backend_vif_removed_whole_detaches_everyone(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.attach(6, 0)
    xen.serve(xen.service())
    xen.store.delete(f"{HOME}/backend")
    assert sorted(d.client.vif for d in xen.service() if isinstance(d, Detach)) == [
        Vif(5, 0),
        Vif(6, 0),
    ]


def test_a_frontend_that_closes_while_online_detaches_and_comes_back(xen: Xen) -> None:
    # netfront unloaded in the client: state 6 with online=1; netback keeps the device and
    # reconnects when the frontend starts again.
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.closed(5, 0)
    assert xen.service() == [Detach(client(5, 0), "online=1, state 6 (Closed)")]
    assert f"{BASE}/5/0" in xen.store.tree  # online: not ours to remove
    xen.store.put(f"{BASE}/5/0/state", "2")
    assert xen.serve(xen.service()) == [AwaitInterface(Vif(5, 0), "vif5.0"), Attach(client(5, 0))]


def test_an_address_change_while_attached_detaches_and_attaches_anew(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.store.put(f"{BASE}/5/0/ip", "10.137.0.99")
    assert xen.service() == [
        Detach(client(5, 0), "its backend changed: ip 10.137.0.5 -> 10.137.0.99"),
        AwaitInterface(Vif(5, 0), "vif5.0"),
    ]


def test_an_interface_lost_by_the_shell_detaches_and_is_awaited_again(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.serve(xen.service())
    assert xen.backends.interface_gone("vif5.0") == [
        Detach(client(5, 0), "interface vif5.0 went away"),
        AwaitInterface(Vif(5, 0), "vif5.0"),
    ]
    assert xen.backends.attached(Vif(5, 0)) == []  # a late report of the old attach


MALFORMED = [
    ("mac", None, "no mac key"),
    ("mac", "00:16:3e:5e:6c", "is not a MAC address"),
    ("mac", "00:16:3e:5e:6c:zz", "is not a MAC address"),
    ("mac", "01:00:5e:00:00:01", "multicast"),
    ("mac", "00:16:3e:5e:6c:05:00", "is not a MAC address"),
    ("ip", None, "no ip key"),
    ("ip", "fd09::5", "no IPv4 address in ip 'fd09::5'"),
    ("ip", "", "no IPv4 address"),
    ("ip", "junk 224.0.0.1", "ip 224.0.0.1 is not a host address"),
    ("ip", "0.0.0.0", "is not a host address"),
    ("state", None, "no state key"),
    ("state", "connected", "state 'connected' is not a number"),
    ("state", "9", "state 9 is not a state"),
    ("state", "\u00b2", "is not a number"),  # a digit to str.isdigit, not to int()
    ("online", "yes", "online 'yes' is not a number"),
    ("online", "2", "online 2 is not 0 or 1"),
    ("frontend-id", "7", "frontend-id 7 is not the directory's domain 5"),
    ("frontend-id", "-5", "frontend-id '-5' is not a number"),
    ("handle", None, "no handle key"),
    ("handle", "12345678901", "handle '12345678901' is not a number"),
    ("handle", "1234567890", "interface name vif5.1234567890 is too long"),
]


@pytest.mark.parametrize(("key", "value", "reason"), MALFORMED)
def test_a_malformed_backend_is_dropped_with_a_reason_and_fixed_later(
    xen: Xen, key: str, value: str | None, reason: str
) -> None:
    xen.attach(5, 0)
    path = f"{BASE}/5/0/{key}"
    if value is None:
        xen.store.delete(path)
    else:
        xen.store.put(path, value)
    [dropped] = xen.service()
    assert isinstance(dropped, Dropped) and dropped.path == f"{BASE}/5/0"
    assert reason in dropped.reason
    xen.store.put(f"{BASE}/5/0/hotplug-status", "")  # another event: the same reason, no line
    assert xen.service() == []
    assert xen.backends.interface_present("vif5.0") == []
    xen.store.put(path, backend_keys(5, 0, "10.137.0.5", "00:16:3e:5e:6c:05")[key])
    assert xen.serve(xen.service()) == [AwaitInterface(Vif(5, 0), "vif5.0"), Attach(client(5, 0))]


def test_a_malformed_change_while_attached_detaches(xen: Xen) -> None:
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.store.put(f"{BASE}/5/0/mac", "nonsense")
    assert xen.service() == [
        Detach(client(5, 0), "mac 'nonsense' is not a MAC address"),
        Dropped(f"{BASE}/5/0", "mac 'nonsense' is not a MAC address"),
    ]


def test_names_that_are_no_domain_or_device_are_reported_once(xen: Xen) -> None:
    xen.store.put(f"{BASE}/junk/0/state", "1")
    xen.store.put(f"{BASE}/5/x/state", "1")
    xen.store.put(BASE, "")  # an event on backend/vif itself: everything is listed again
    assert xen.service() == [
        Dropped(f"{BASE}/junk", "not a domain or device id"),
        Dropped(f"{BASE}/5/x", "not a domain or device id"),
    ]
    xen.store.put(BASE, "")
    assert xen.service() == []


def test_a_burst_of_events_for_one_device_is_one_read(xen: Xen) -> None:
    xen.attach(5, 0)  # a dozen keys written: a dozen events
    events = xen.store.receive()
    assert len(events) > 10
    for event in events:
        xen.backends.changed(event.path)
    assert xen.backends.requests() == [Read(f"{BASE}/5/0")]
    assert xen.backends.requests() == []


def test_events_of_other_paths_are_ignored(xen: Xen) -> None:
    for path in ("/local/domain/2/name", "/local/domain/3/backend/vif/5/0", f"{BASE}x/5/0"):
        xen.backends.changed(path)
    assert xen.backends.requests() == []


@pytest.mark.parametrize(
    ("values", "seen"),
    [
        ({key: None for key in vifs.KEYS}, vifs.Gone()),
        ({}, vifs.Gone()),
        (
            {"online": "0", "state": "6"},
            vifs.Closing("online=0, state 6 (Closed)", closed=True),
        ),
        (
            {"online": "0", "state": "4"},
            vifs.Closing("online=0, state 4 (Connected)", closed=False),
        ),
        (
            {"online": "1", "state": "5"},
            vifs.Closing("online=1, state 5 (Closing)", closed=False),
        ),
    ],
)
def test_observe_the_closing_states(values: dict[str, str | None], seen: object) -> None:
    assert vifs.observe(Vif(5, 0), f"{BASE}/5/0", values) == seen


def test_a_domain_whose_toolstack_removes_its_backends_leaves_them(xen: Xen) -> None:
    xen.backends.removes_closed = False  # a dom0 serving vifs: libxl removes them there
    xen.attach(5, 0)
    xen.serve(xen.service())
    xen.detach(5, 0)
    assert xen.service() == [Detach(client(5, 0), "online=0, state 5 (Closing)")]
    xen.closed(5, 0)
    assert xen.service() == []
    assert xen.store.tree[f"{BASE}/5/0/state"] == "6"
    xen.store.delete(f"{BASE}/5")  # as libxl does
    assert xen.service() == []
    assert xen.backends.records == {}
