"""appliance/qubesdblink.py: the QubesDB link over a vchan held in memory.

The vchan is the client's `Rings` over a shared page laid out as libxenvchan's server lays it
out (left ring of 1024 bytes at offset 1024, right of 2048 at 2048); dom0's side writes and
reads that page with struct at the header's offsets (libxenvchan.h), as io.c does, and frames
its messages with its own copy of struct qdb_hdr. The engine is a real NetVm: the rules in
force are read back from it.
"""

import os
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface

import pytest

from appliance.config import ApplianceConfig, apply_overrides, load_config
from appliance.netvm import NetVm
from appliance.qubesdblink import QubesDbLink, uplink
from appliance.rules import Action
from appliance.vchan import Rings
from tests.support import REPO

HEADER = struct.Struct("<B64s3xI")
CMD_WRITE, CMD_MULTIREAD, RESP_OK, RESP_MULTIREAD = 1, 2, 7, 11
CLIENT = IPv4Address("10.137.0.2")
BASE = f"/qubes-firewall/{CLIENT}"


def message(kind: int, path: str, value: str = "") -> bytes:
    return HEADER.pack(kind, path.encode(), len(value)) + value.encode()


class MemoryVchan:
    """The client's end over an in-memory page (what VchanClient does over mapped grants)."""

    def __init__(self) -> None:
        self.page = bytearray(4096)
        struct.pack_into("<HHBBBB", self.page, 16, 10, 11, 1, 1, 0, 0)
        view = memoryview(self.page)
        self.rings = Rings(view, view[1024:2048], view[2048:4096])
        self.closed = False
        self.kicks = 0
        self.event_fd = -1  # the event channel's fd; -1: never readable

    def fileno(self) -> int:
        return self.event_fd

    def consume_events(self) -> None:
        pass

    def kick(self) -> None:
        if self.rings.unread_sent():
            self.kicks += 1

    def recv(self, limit: int = 65536) -> bytes:
        return self.rings.recv(limit)[0]

    def send(self, data: bytes) -> int:
        return self.rings.send(data)[0]

    @property
    def is_open(self) -> bool:
        return self.rings.server_live

    def close(self) -> None:
        self.closed = True

    # -- dom0's side, as io.c's do_send and do_recv move the indexes --

    def dom0_send(self, data: bytes) -> None:
        cons, prod = struct.unpack_from("<II", self.page, 8)
        assert len(data) <= 2048 - (prod - cons)
        for i, byte in enumerate(data):
            self.page[2048 + ((prod + i) & 2047)] = byte
        struct.pack_into("<I", self.page, 12, prod + len(data))

    def dom0_recv(self) -> bytes:
        cons, prod = struct.unpack_from("<II", self.page, 0)
        data = bytes(self.page[1024 + ((cons + i) & 1023)] for i in range(prod - cons))
        struct.pack_into("<I", self.page, 0, prod)
        return data


def netvm_config() -> ApplianceConfig:
    words = {"natvm.netvm": ["1"], "natvm.forward": ["none"], "natvm.lan.ip": ["10.137.0.1/24"]}
    return apply_overrides(load_config(REPO / "ops-config.json"), words)


def linked() -> tuple[MemoryVchan, NetVm, QubesDbLink, list[str]]:
    config = netvm_config()
    vchan, netvm, logged = MemoryVchan(), NetVm(config, bytes(6)), list[str]()
    link = QubesDbLink(vchan, logged.append, netvm)
    link.service()
    return vchan, netvm, link, logged


def test_the_dump_puts_rules_in_force_and_a_live_write_replaces_them() -> None:
    vchan, netvm, link, logged = linked()
    assert vchan.dom0_recv() == message(CMD_MULTIREAD, "")
    dump = [(f"{BASE}/policy", "accept"), (f"{BASE}/0000", "action=drop proto=tcp dstports=80-80")]
    vchan.dom0_send(b"".join(message(RESP_MULTIREAD, k, v) for k, v in [*dump, (BASE, "")]))
    vchan.dom0_send(message(RESP_MULTIREAD, ""))
    link.service()
    assert logged == [
        "qubesdb: database read, 3 keys",
        f"qubesdb: rules of {CLIENT} in force: 1 rule(s), policy accept",
    ]
    assert netvm.firewalls[CLIENT.packed].rules.rules[0].action is Action.DROP

    vchan.dom0_send(message(CMD_WRITE, f"{BASE}/0000", "action=accept proto=tcp dstports=80-80"))
    link.service()  # the rule alone is not a set yet: nothing changes
    assert netvm.firewalls[CLIENT.packed].rules.rules[0].action is Action.DROP
    vchan.dom0_send(message(CMD_WRITE, BASE))
    link.service()
    assert netvm.firewalls[CLIENT.packed].rules.rules[0].action is Action.ACCEPT
    assert vchan.dom0_recv() == message(RESP_OK, f"{BASE}/0000") + message(RESP_OK, BASE)
    assert len(logged) == 3


def test_a_broken_stream_closes_the_link_in_one_line_and_the_rules_stay() -> None:
    vchan, netvm, link, logged = linked()
    vchan.dom0_send(message(RESP_MULTIREAD, f"{BASE}/policy", "drop"))
    vchan.dom0_send(message(RESP_MULTIREAD, BASE) + message(RESP_MULTIREAD, ""))
    link.service()
    vchan.dom0_send(message(CMD_MULTIREAD, "/x"))  # dom0 never asks the VM
    link.service()
    assert logged[-1] == (
        "qubesdb: link closed (qubesdb: dom0 sent CMD_MULTIREAD, not allowed on the link);"
        " the rules in force stay"
    )
    assert vchan.closed and link.link is None
    assert netvm.firewalls[CLIENT.packed].rules.policy is Action.DROP
    link.service()  # a tick after the close does nothing
    assert len(logged) == 3


def test_dom0_closing_its_end_closes_the_link() -> None:
    vchan, _, link, logged = linked()
    vchan.page[21] = 0  # srv_live
    link.service()
    assert logged == ["qubesdb: link closed (dom0 closed it); the rules in force stay"]


def test_a_tick_kicks_dom0_while_it_leaves_our_request_unread() -> None:
    vchan, _, link, _ = linked()
    link.tick()
    assert vchan.kicks == 1  # the MULTIREAD is still in the ring
    vchan.dom0_recv()
    link.tick()
    assert vchan.kicks == 1


DUMP = [(f"{BASE}/policy", "accept"), (f"{BASE}/0000", "action=drop proto=tcp dstports=80-80")]


def dumped(vchan: MemoryVchan, *entries: tuple[str, str]) -> None:
    """dom0's answer to the MULTIREAD: the entries, then the empty path that ends it."""
    vchan.dom0_send(b"".join(message(RESP_MULTIREAD, k, v) for k, v in entries))
    vchan.dom0_send(message(RESP_MULTIREAD, ""))


@pytest.fixture
def event_channel() -> Iterator[tuple[int, int]]:
    """A pipe standing for the event channel: readable once its write end is written."""
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def test_the_start_waits_for_the_dump_and_holds_the_rules_until_the_engine_is_there(
    event_channel: tuple[int, int],
) -> None:
    vchan, logged = MemoryVchan(), list[str]()
    vchan.event_fd, notify = event_channel
    link = QubesDbLink(vchan, logged.append)
    link.service()
    dumped(vchan, *DUMP, (BASE, ""), ("/qubes-ip", "192.0.2.7"))
    os.write(notify, b"!")
    assert link.sync(timeout=5.0) and link.synced
    assert link.client.entries["/qubes-ip"] == "192.0.2.7"
    assert logged == ["qubesdb: database read, 4 keys"]  # no rules in force: no engine yet
    netvm = NetVm(netvm_config(), bytes(6))
    link.attach(netvm)
    assert logged[-1] == f"qubesdb: rules of {CLIENT} in force: 1 rule(s), policy accept"
    assert netvm.firewalls[CLIENT.packed].rules.rules[0].action is Action.DROP
    assert link.held == {}


def test_the_start_gives_up_waiting_for_a_silent_dom0(event_channel: tuple[int, int]) -> None:
    vchan, logged = MemoryVchan(), list[str]()
    vchan.event_fd, _ = event_channel
    link = QubesDbLink(vchan, logged.append)
    assert not link.sync(timeout=0.3)
    assert logged == [] and link.link is vchan  # still open: the shell serves it later


def test_natvm_takes_its_addresses_from_qubesdb_and_the_configuration_the_rest() -> None:
    config, logged = netvm_config(), list[str]()
    entries = {
        "/qubes-ip": "192.0.2.7",
        "/qubes-netmask": "255.255.255.0",
        "/qubes-gateway": "192.0.2.1",
        "/qubes-primary-dns": "198.51.100.10",
        "/qubes-netvm-gateway": "10.137.0.1",
    }
    configured = uplink(config, entries, logged.append)
    assert configured.wan.address == IPv4Interface("192.0.2.7/24")
    assert str(configured.wan.gateway) == "192.0.2.1"
    assert [str(server) for server in configured.nat.dns_servers] == ["198.51.100.10"]
    assert configured.lan.address == IPv4Interface("10.137.0.1/24")
    assert configured.nat == config.nat._replace(dns_servers=configured.nat.dns_servers)
    assert logged == [
        "qubesdb: uplink 192.0.2.7/24 gateway 192.0.2.1, dns 198.51.100.10,"
        " clients' gateway 10.137.0.1"
    ]
    # sys-net's database has no uplink keys: the configuration stays, in silence
    assert uplink(config, {"/name": "sys-net"}, logged.append) is config
    assert len(logged) == 1


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ({"/qubes-ip": "192.0.2.x", "/qubes-netmask": "255.255.255.0"}, "/qubes-ip: '192.0.2.x'"),
        ({"/qubes-gateway": "10.0.0.1"}, "10.0.0.1"),  # not in the WAN's subnet
    ],
)
def test_an_address_qubesdb_gets_wrong_leaves_the_configurations_in_one_line(
    entries: dict[str, str], why: str
) -> None:
    config, logged = netvm_config(), list[str]()
    assert uplink(config, entries, logged.append) is config
    assert len(logged) == 1 and why in logged[0], logged
    assert logged[0].startswith("qubesdb: not used for the addresses (")
    assert logged[0].endswith("); the configuration's stay")
