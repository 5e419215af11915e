"""appliance/vchan.py: the ring layout against pages laid out byte by byte as Xen's C says.

The oracle is xen/include/public/io/libxenvchan.h, struct vchan_interface: {u32 cons, prod}
left (client -> server), the same for right (server -> client), u16 left_order, right_order,
u8 cli_live, srv_live, cli_notify, srv_notify, then u32 grants[]; an order-10 ring lives at
offset 1024 of the page, an order-11 ring at 2048 (tools/libs/vchan/init.c). The pages below
are written with struct at those offsets, never with the module's own constants.
"""

import struct

import pytest

from appliance import vchan
from appliance.qubesdb import Event, QubesDbClient, Synced
from appliance.vchan import Rings, VchanError, client_layout


def shared_page(
    left_order: int,
    right_order: int,
    grants: tuple[int, ...] = (),
    left: tuple[int, int] = (0, 0),
    right: tuple[int, int] = (0, 0),
    cli_notify: int = 0,
) -> bytearray:
    """A 4096-byte struct vchan_interface as a server sets it up (init_gnt_srv: srv_live 1,
    cli_live 2 until the client connects)."""
    page = bytearray(4096)
    struct.pack_into("<IIII", page, 0, left[0], left[1], right[0], right[1])
    struct.pack_into("<HHBBBB", page, 16, left_order, right_order, 2, 1, cli_notify, 0)
    struct.pack_into(f"<{len(grants)}I", page, 24, *grants)
    return page


def in_page_rings(page: bytearray) -> Rings:
    """The client's view of a server that took libxenvchan's small layout (left order 10 at
    1024, right order 11 at 2048)."""
    view = memoryview(page)
    return Rings(view, view[1024:2048], view[2048:4096])


def test_small_rings_are_inside_the_page() -> None:
    layout = client_layout(bytes(shared_page(10, 11)))
    assert (layout.write.order, layout.write.offset, layout.write.size) == (10, 1024, 1024)
    assert (layout.read.order, layout.read.offset, layout.read.size) == (11, 2048, 2048)
    assert layout.write.grants == layout.read.grants == ()


def test_large_rings_take_their_grants_left_first() -> None:
    # QubesDB's dom0 asks for 4096-byte rings both ways: two rings of their own, order 12.
    layout = client_layout(bytes(shared_page(12, 13, grants=(0x111, 0x222, 0x333))))
    assert (layout.write.offset, layout.write.grants) == (None, (0x111,))
    assert (layout.read.offset, layout.read.grants) == (None, (0x222, 0x333))
    assert layout.read.size == 8192


@pytest.mark.parametrize(
    ("left", "right", "words"),
    [(9, 12, "left ring order 9"), (12, 21, "right ring order 21"), (10, 10, "both rings")],
)
def test_unusable_orders_are_refused(left: int, right: int, words: str) -> None:
    with pytest.raises(VchanError, match=words):
        client_layout(bytes(shared_page(left, right)))


def test_a_short_page_is_refused() -> None:
    with pytest.raises(VchanError, match="4096"):
        client_layout(bytes(100))


def test_recv_wraps_at_the_rings_end_and_at_2_to_the_32() -> None:
    # right ring: 2048 bytes at offset 2048; cons 0xfffffffc is place 2044, prod 4 is 8 later
    page = shared_page(10, 11, right=(0xFFFFFFFC, 4))
    page[2048 + 2044 : 2048 + 2048] = b"abcd"
    page[2048 : 2048 + 4] = b"efgh"
    rings = in_page_rings(page)
    assert rings.data_ready() == 8
    assert rings.recv(5) == (b"abcde", False)
    assert struct.unpack_from("<I", page, 8)[0] == 0x00000001  # right.cons moved by 5
    assert rings.recv(100) == (b"fgh", False)
    assert struct.unpack_from("<I", page, 8)[0] == 4
    assert rings.recv(100) == (b"", False)


def test_send_wraps_and_stops_when_the_ring_is_full() -> None:
    # left ring: 1024 bytes at offset 1024; the server has read up to prod: 1020 is the place
    page = shared_page(10, 11, left=(1020, 1020))
    rings = in_page_rings(page)
    assert rings.buffer_space() == 1024
    assert rings.send(b"12345678") == (8, False)
    assert page[1024 + 1020 : 1024 + 1024] == b"1234"
    assert page[1024 : 1024 + 4] == b"5678"
    assert struct.unpack_from("<I", page, 4)[0] == 1028  # left.prod
    assert rings.unread_sent() == 8
    written, _ = rings.send(bytes(2000))
    assert written == 1016 and rings.buffer_space() == 0
    assert rings.send(b"x") == (0, False)
    struct.pack_into("<I", page, 0, 2044)  # left.cons: the server read all but 0 bytes
    assert rings.unread_sent() == 0


def test_the_server_is_notified_only_when_it_asked() -> None:
    # cli_notify (offset 22) holds the bits the server wants; this side never clears them
    page = shared_page(10, 11, right=(0, 3), cli_notify=0x2)
    page[2048:2051] = b"abc"
    rings = in_page_rings(page)
    assert rings.send(b"x") == (1, False)  # the server asked about reads (2), not writes (1)
    assert rings.recv(3) == (b"abc", True)
    page[22] = 0x1
    assert rings.send(b"y") == (1, True)
    assert page[22] == 0x1


def test_connect_and_notify_requests_write_the_clients_bytes() -> None:
    page = shared_page(10, 11)
    rings = in_page_rings(page)
    rings.connect()
    assert (page[20], page[23]) == (1, 0x1)  # cli_live 1, srv_notify VCHAN_NOTIFY_WRITE
    rings.want_notify(0x2)
    assert page[23] == 0x3
    assert rings.server_live
    rings.close()
    assert page[20] == 0


def test_a_server_index_beyond_the_ring_is_an_error_not_a_read() -> None:
    rings = in_page_rings(shared_page(10, 11, right=(0, 4096), left=(0, 2000)))
    with pytest.raises(VchanError, match="4096 bytes in a ring of 2048"):
        rings.recv(10)
    with pytest.raises(VchanError, match="2000 bytes in a ring of 1024"):
        rings.send(b"x")


def test_ioctl_numbers_are_linuxs() -> None:
    # _IOC(_IOC_NONE, 'G', 0, sizeof(struct ioctl_gntdev_map_grant_ref) == 24) and so on
    assert vchan.IOCTL_GNTDEV_MAP_GRANT_REF == 0x00184700
    assert vchan.IOCTL_GNTDEV_UNMAP_GRANT_REF == 0x00104701
    assert vchan.IOCTL_GNTDEV_SET_UNMAP_NOTIFY == 0x00104707
    assert vchan.IOCTL_EVTCHN_BIND_INTERDOMAIN == 0x00084501
    assert vchan.IOCTL_EVTCHN_UNBIND == 0x00044503
    assert vchan.IOCTL_EVTCHN_NOTIFY == 0x00044504


def test_map_request_is_struct_ioctl_gntdev_map_grant_ref() -> None:
    request = vchan.map_grants_request(0, (77, 78))
    assert bytes(request) == struct.pack("<IIQIIII", 2, 0, 0, 0, 77, 0, 78)


def test_vchan_path_is_qubes_libvchans() -> None:
    assert vchan.vchan_path(0, 5, 111) == "/local/domain/0/data/vchan/5/111"


def test_a_qubesdb_dump_larger_than_the_ring_crosses_it_in_turns() -> None:
    """The two pure cores together: dom0's side (written here as io.c's do_send does: data at
    prod & (size - 1), wrapping, then prod moved) fills the 2048-byte right ring as the client
    frees it; the client's reads, fed to QubesDB's state machine, rebuild the database."""
    page = shared_page(10, 11)
    rings = in_page_rings(page)
    entries = {f"/qubes-firewall/10.137.0.{n}/0000": "action=accept " * 8 for n in range(60)}
    stream = b"".join(
        struct.pack("<B64s3xI", 11, key.encode(), len(value)) + value.encode()
        for key, value in entries.items()
    ) + struct.pack("<B64s3xI", 11, b"", 0)
    assert len(stream) > 4 * 2048
    client = QubesDbClient()
    client.start()
    events: list[Event] = []
    sent = 0
    while sent < len(stream):
        cons, prod = struct.unpack_from("<II", page, 8)
        room = 2048 - (prod - cons)
        chunk = stream[sent : sent + room]
        for i, byte in enumerate(chunk):
            page[2048 + ((prod + i) & 2047)] = byte
        struct.pack_into("<I", page, 12, prod + len(chunk))
        sent += len(chunk)
        data, _ = rings.recv(700)  # less than the server wrote: the ring wraps between turns
        events += client.receive(data)
    while rings.data_ready():
        events += client.receive(rings.recv(700)[0])
    assert events == [Synced()] and client.entries == entries
