"""appliance/qubesdblink.py: the QubesDB link over a vchan held in memory.

The vchan is the client's `Rings` over a shared page laid out as libxenvchan's server lays it
out (left ring of 1024 bytes at offset 1024, right of 2048 at 2048); dom0's side writes and
reads that page with struct at the header's offsets (libxenvchan.h), as io.c does, and frames
its messages with its own copy of struct qdb_hdr. The engine is a real NetVm: the rules in
force are read back from it.
"""

import struct
from ipaddress import IPv4Address

from appliance.config import apply_overrides, load_config
from appliance.netvm import NetVm
from appliance.qubesdblink import QubesDbLink
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

    def fileno(self) -> int:
        return -1

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


def linked() -> tuple[MemoryVchan, NetVm, QubesDbLink, list[str]]:
    words = {"natvm.netvm": ["1"], "natvm.forward": ["none"], "natvm.lan.ip": ["10.137.0.1/24"]}
    config = apply_overrides(load_config(REPO / "ops-config.json"), words)
    vchan, netvm, logged = MemoryVchan(), NetVm(config, bytes(6)), list[str]()
    link = QubesDbLink(vchan, netvm, logged.append)
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
