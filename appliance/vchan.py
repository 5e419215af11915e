"""Xen's vchan (libxenvchan): a byte stream between two domains over shared pages, client side.

The layout (xen/include/public/io/libxenvchan.h, struct vchan_interface; all fields in the
host's byte order, little-endian on the x86 and Arm hosts natvm runs on):

  offset  field                        meaning
   0      struct ring_shared left      {u32 cons, u32 prod}: the client writes, the server reads
   8      struct ring_shared right     {u32 cons, u32 prod}: the server writes, the client reads
  16      u16 left_order               log2 of the left ring's size
  18      u16 right_order              log2 of the right ring's size
  20      u8 cli_live, 21 u8 srv_live  0 closed, 1 connected, 2 (cli_live) not yet connected
  22      u8 cli_notify                bits the *server* wants: the client notifies it after it
                                       writes (VCHAN_NOTIFY_WRITE 1) or reads (NOTIFY_READ 2)
  23      u8 srv_notify                bits the *client* wants from the server, likewise
  24      u32 grants[]                 grant references of rings outside this page, left first

A ring of order 10 lies in this page at offset 1024, of order 11 at offset 2048 (only one of
the two rings may be that small); of order 12 to 20 it is 2^(order-12) pages of its own, granted
(tools/libs/vchan/init.c, init_gnt_cli). Indexes are free-running u32s: the data ready is
prod - cons (mod 2^32), a byte's place is index & (size - 1), and a read or write that crosses
the ring's end wraps to its start (io.c, do_recv and do_send). A reader or writer that finds
nothing to do sets its bit in the peer's notify byte, then looks once more, then sleeps on
the event channel; after moving an index, it notifies the peer if the peer's bit is set.

Theory of operation: the pure part is `ClientLayout` (the page's header -> where the two rings
are, checked as init_gnt_cli checks them) and `Rings` (recv and send over three memoryviews:
the shared page and the two rings, with wraparound), tested against pages laid out byte by
byte. Python has no atomic fetch-and-and on shared memory, so this side never clears a bit in
cli_notify (the server sets them with an atomic OR; a clear by us could lose one set at the
same moment): it notifies whenever the bit is set, which at worst wakes the server once too
often. It sets its own bits in srv_notify with a plain write of OR'ed bits, which cannot lose
anything either (the server only clears them). Python also has no memory barrier: the shell's
poll loop looks at the ring on a timeout as well as on events, so a wakeup lost to a reordered
store is a delay, not a hang.

`VchanClient` is the thin I/O shell: it reads the server's ring-ref and event-channel from
xenstore (/local/domain/<server>/data/vchan/<our domid>/<port>/, as Qubes' libvchan names it,
qubes-core-vchan-xen vchan/init.c), maps the page and the rings with /dev/xen/gntdev and binds
the event channel with /dev/xen/evtchn (ioctls of Linux's include/uapi/xen/gntdev.h and
evtchn.h). It runs on Xen only: the Xen tier (tests/xen/test_xen_qubesdb.py) connects it to
libxenvchan's server in dom0, whose rings lie in the shared page; rings in granted pages of
their own (what Qubes' qubesdb-daemon asks for) are tested against byte layouts only.
"""

import contextlib
import fcntl
import mmap
import os
import struct
from typing import NamedTuple

from appliance.xenstore import Xenstore

# struct vchan_interface field offsets (libxenvchan.h)
LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD = 0, 4, 8, 12
LEFT_ORDER, RIGHT_ORDER = 16, 18
CLI_LIVE, SRV_LIVE, CLI_NOTIFY, SRV_NOTIFY = 20, 21, 22, 23
GRANTS = 24
NOTIFY_WRITE, NOTIFY_READ = 0x1, 0x2  # VCHAN_NOTIFY_WRITE, VCHAN_NOTIFY_READ

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
SMALL_RING_SHIFT, LARGE_RING_SHIFT = 10, 11  # init.c: rings inside the shared page
_IN_PAGE_OFFSET = {SMALL_RING_SHIFT: 1024, LARGE_RING_SHIFT: 2048}
MAX_RING_SHIFT = 20  # init.c MAX_RING_SHIFT: more would need more grants than the page holds

_U32, _U16 = struct.Struct("<I"), struct.Struct("<H")


class VchanError(Exception):
    """The shared page describes rings this client cannot use, or the peer broke the ring
    (an index pair claiming more data than the ring holds)."""


class RingPlace(NamedTuple):
    """Where one ring is: inside the shared page at `offset`, or in pages of its own whose
    grant references are `grants`."""

    order: int
    offset: int | None
    grants: tuple[int, ...]

    @property
    def size(self) -> int:
        return 1 << self.order


class ClientLayout(NamedTuple):
    """The two rings as the client sees them: it writes the left one and reads the right."""

    write: RingPlace
    read: RingPlace


def client_layout(page: bytes | memoryview) -> ClientLayout:
    """The rings described by a server's shared page (init_gnt_cli's checks); VchanError if
    their orders are out of range or both small rings would overlap."""
    if len(page) < PAGE_SIZE:
        raise VchanError(f"vchan shared page of {len(page)} bytes (need {PAGE_SIZE})")
    write_order = _U16.unpack_from(page, LEFT_ORDER)[0]
    read_order = _U16.unpack_from(page, RIGHT_ORDER)[0]
    for name, order in (("left", write_order), ("right", read_order)):
        if not SMALL_RING_SHIFT <= order <= MAX_RING_SHIFT:
            raise VchanError(f"vchan {name} ring order {order} outside 10..{MAX_RING_SHIFT}")
    if write_order == read_order and write_order < PAGE_SHIFT:
        raise VchanError(f"vchan: both rings of order {write_order} in the same page place")
    grant_index = 0
    places = []
    for order in (write_order, read_order):
        if order < PAGE_SHIFT:
            places.append(RingPlace(order, _IN_PAGE_OFFSET[order], ()))
            continue
        count = 1 << (order - PAGE_SHIFT)  # at most 2 x 256 grants: they fit in the page
        grants = struct.unpack_from(f"<{count}I", page, GRANTS + 4 * grant_index)
        places.append(RingPlace(order, None, tuple(grants)))
        grant_index += count
    return ClientLayout(places[0], places[1])


def ring_read(ring: memoryview, cons: int, count: int) -> bytes:
    """`count` bytes of `ring` from free-running index `cons`, wrapping at its end (do_recv)."""
    size = len(ring)
    start = cons & (size - 1)
    first = min(count, size - start)
    return bytes(ring[start : start + first]) + bytes(ring[: count - first])


def ring_write(ring: memoryview, prod: int, data: bytes) -> None:
    """`data` into `ring` from free-running index `prod`, wrapping at its end (do_send)."""
    size = len(ring)
    start = prod & (size - 1)
    first = min(len(data), size - start)
    ring[start : start + first] = data[:first]
    ring[: len(data) - first] = data[first:]


class Rings:
    """The client's end of a vchan over mapped memory: `page` the shared page, `write_ring`
    and `read_ring` the rings (views into `page` for in-page rings). Every method returns
    whether the server must be notified; the caller does that (the event channel is I/O)."""

    def __init__(self, page: memoryview, write_ring: memoryview, read_ring: memoryview) -> None:
        self.page, self.write_ring, self.read_ring = page, write_ring, read_ring

    def _u32(self, offset: int) -> int:
        return int(_U32.unpack_from(self.page, offset)[0])

    def data_ready(self) -> int:
        """Bytes the server has written that we have not read (raw_get_data_ready)."""
        ready = (self._u32(RIGHT_PROD) - self._u32(RIGHT_CONS)) & 0xFFFFFFFF
        if ready > len(self.read_ring):
            raise VchanError(
                f"vchan: the server claims {ready} bytes in a ring of {len(self.read_ring)}"
            )
        return ready

    def buffer_space(self) -> int:
        """Bytes we may write before the server reads (raw_get_buffer_space)."""
        used = (self._u32(LEFT_PROD) - self._u32(LEFT_CONS)) & 0xFFFFFFFF
        if used > len(self.write_ring):
            raise VchanError(
                f"vchan: the server's index leaves {used} bytes in a ring of {len(self.write_ring)}"
            )
        return len(self.write_ring) - used

    def recv(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes that are ready, and whether to notify the server."""
        count = min(limit, self.data_ready())
        if count == 0:
            return b"", False
        cons = self._u32(RIGHT_CONS)
        data = ring_read(self.read_ring, cons, count)
        _U32.pack_into(self.page, RIGHT_CONS, (cons + count) & 0xFFFFFFFF)
        return data, bool(self.page[CLI_NOTIFY] & NOTIFY_READ)

    def send(self, data: bytes) -> tuple[int, bool]:
        """Writes as much of `data` as fits; (bytes written, whether to notify the server)."""
        count = min(len(data), self.buffer_space())
        if count == 0:
            return 0, False
        prod = self._u32(LEFT_PROD)
        ring_write(self.write_ring, prod, data[:count])
        _U32.pack_into(self.page, LEFT_PROD, (prod + count) & 0xFFFFFFFF)
        return count, bool(self.page[CLI_NOTIFY] & NOTIFY_WRITE)

    def unread_sent(self) -> int:
        """Bytes we wrote that the server has not read yet."""
        return len(self.write_ring) - self.buffer_space()

    def want_notify(self, bits: int) -> None:
        """Ask the server to notify us when it writes (NOTIFY_WRITE) or reads (NOTIFY_READ);
        it clears a bit each time it does, so this is asked again before every wait."""
        self.page[SRV_NOTIFY] = self.page[SRV_NOTIFY] | bits

    def connect(self) -> None:
        """What libxenvchan_client_init writes once the rings are mapped."""
        self.page[CLI_LIVE] = 1
        self.page[SRV_NOTIFY] = NOTIFY_WRITE

    def close(self) -> None:
        self.page[CLI_LIVE] = 0

    @property
    def server_live(self) -> bool:
        return self.page[SRV_LIVE] == 1


# -- the I/O shell -------------------------------------------------------------------------
# _IOC(_IOC_NONE, type, nr, size) = size << 16 | type << 8 | nr (_IOC_NONE is 0 on x86 and Arm)


def _ioc_none(kind: str, number: int, size: int) -> int:
    return size << 16 | ord(kind) << 8 | number


# struct ioctl_gntdev_map_grant_ref {u32 count, pad; u64 index; {u32 domid, ref} refs[1]}
IOCTL_GNTDEV_MAP_GRANT_REF = _ioc_none("G", 0, 24)
# struct ioctl_gntdev_unmap_grant_ref {u64 index; u32 count, pad}
IOCTL_GNTDEV_UNMAP_GRANT_REF = _ioc_none("G", 1, 16)
# struct ioctl_gntdev_unmap_notify {u64 index; u32 action, event_channel_port}
IOCTL_GNTDEV_SET_UNMAP_NOTIFY = _ioc_none("G", 7, 16)
UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT = 0x1, 0x2
# struct ioctl_evtchn_bind_interdomain {unsigned int remote_domain, remote_port}
IOCTL_EVTCHN_BIND_INTERDOMAIN = _ioc_none("E", 1, 8)
IOCTL_EVTCHN_UNBIND = _ioc_none("E", 3, 4)  # struct ioctl_evtchn_unbind {unsigned int port}
IOCTL_EVTCHN_NOTIFY = _ioc_none("E", 4, 4)  # struct ioctl_evtchn_notify {unsigned int port}

GNTDEV, EVTCHN = "/dev/xen/gntdev", "/dev/xen/evtchn"
QUBESDB_PORT = 111  # qubes-core-qubesdb: the vchan port of QubesDB


def map_grants_request(domid: int, refs: tuple[int, ...]) -> bytearray:
    """struct ioctl_gntdev_map_grant_ref for `refs` of `domid` (count, pad, index=0, refs)."""
    body = struct.pack("<IIQ", len(refs), 0, 0)
    return bytearray(body + b"".join(struct.pack("<II", domid, ref) for ref in refs))


def vchan_path(server_domid: int, client_domid: int, port: int) -> str:
    """The xenstore directory where a server publishes a vchan (Qubes' libvchan_client_init)."""
    return f"/local/domain/{server_domid}/data/vchan/{client_domid}/{port}"


class _Mapping:
    """Pages of another domain mapped through gntdev: their mmap and gntdev index."""

    def __init__(self, gntdev: int, domid: int, refs: tuple[int, ...], writable: bool) -> None:
        request = map_grants_request(domid, refs)
        fcntl.ioctl(gntdev, IOCTL_GNTDEV_MAP_GRANT_REF, request)
        self.gntdev, self.count = gntdev, len(refs)
        self.index = int(struct.unpack_from("<Q", request, 8)[0])
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.memory = mmap.mmap(
            gntdev, PAGE_SIZE * len(refs), mmap.MAP_SHARED, prot, offset=self.index
        )

    def close(self) -> None:
        self.memory.close()
        request = bytearray(struct.pack("<QII", self.index, self.count, 0))
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.gntdev, IOCTL_GNTDEV_UNMAP_GRANT_REF, request)


class VchanClient:
    """A connected vchan client: `fileno()` (the event channel) for a poll loop, `recv`,
    `send`. Construct with `connect`."""

    def __init__(self, evtchn: int, gntdev: int, port: int) -> None:
        self.evtchn, self.gntdev, self.port = evtchn, gntdev, port
        self._mappings: list[_Mapping] = []
        self._views: list[memoryview] = []  # released before their mmaps close
        self.rings: Rings | None = None

    @classmethod
    def from_xenstore(
        cls, xs: Xenstore, server_domid: int = 0, port: int = QUBESDB_PORT
    ) -> "VchanClient":
        """Connect to the vchan `server_domid` offers us on `port`; XenstoreError (ENOENT) if
        it offers none yet."""
        base = vchan_path(server_domid, xs.own_domid(), port)
        ring_ref = int(xs.read(f"{base}/ring-ref"))
        remote_port = int(xs.read(f"{base}/event-channel"))
        return cls.connect(server_domid, ring_ref, remote_port)

    @classmethod
    def connect(cls, server_domid: int, ring_ref: int, remote_port: int) -> "VchanClient":
        """Map the server's page and rings and bind its event channel (init_evt_cli, then
        init_gnt_cli, then cli_live=1 and a notify, as libxenvchan_client_init does)."""
        evtchn = os.open(EVTCHN, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            gntdev = os.open(GNTDEV, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            os.close(evtchn)
            raise
        bind = bytearray(struct.pack("<II", server_domid, remote_port))
        try:
            port = fcntl.ioctl(evtchn, IOCTL_EVTCHN_BIND_INTERDOMAIN, bind, True)
            os.write(evtchn, _U32.pack(port))  # unmask it, as init_evt_cli does
            client = cls(evtchn, gntdev, port)
            client._map(server_domid, ring_ref)
        except (OSError, VchanError):
            os.close(gntdev)
            os.close(evtchn)
            raise
        return client

    def _map(self, domid: int, ring_ref: int) -> None:
        shared = _Mapping(self.gntdev, domid, (ring_ref,), writable=True)
        self._mappings.append(shared)
        # If we die, gntdev clears cli_live and kicks the server (libxengnttab's notify).
        notify = struct.pack(
            "<QII",
            shared.index + CLI_LIVE,
            UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT,
            self.port,
        )
        fcntl.ioctl(self.gntdev, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, bytearray(notify))
        page = memoryview(shared.memory)
        self._views.append(page)
        layout = client_layout(page)
        views = []
        for place, writable in ((layout.write, True), (layout.read, False)):
            if place.offset is not None:
                views.append(page[place.offset : place.offset + place.size])
            else:
                mapping = _Mapping(self.gntdev, domid, place.grants, writable)
                self._mappings.append(mapping)
                views.append(memoryview(mapping.memory))
        self._views += views
        self.rings = Rings(page, views[0], views[1])
        self.rings.connect()
        self.notify()

    def fileno(self) -> int:
        return self.evtchn

    def notify(self) -> None:
        fcntl.ioctl(self.evtchn, IOCTL_EVTCHN_NOTIFY, bytearray(_U32.pack(self.port)))

    def consume_events(self) -> None:
        """Read the pending event ports and unmask them (what xenevtchn_pending and
        xenevtchn_unmask do: a read returns u32 ports, a write of one unmasks it)."""
        with contextlib.suppress(BlockingIOError):
            pending = os.read(self.evtchn, 4 * 64)
            for (port,) in struct.iter_unpack("<I", pending[: len(pending) // 4 * 4]):
                os.write(self.evtchn, _U32.pack(port))

    def recv(self, limit: int = 65536) -> bytes:
        """What the server has sent, up to `limit` bytes; b"" if nothing yet. Asks to be
        notified of more first, so a poll on fileno() wakes when it comes."""
        rings = self._rings()
        rings.want_notify(NOTIFY_WRITE)
        data, notify = rings.recv(limit)
        if notify:
            self.notify()
        return data

    def send(self, data: bytes) -> int:
        """Writes what fits of `data` now; returns how much (the rest is the caller's)."""
        rings = self._rings()
        rings.want_notify(NOTIFY_READ)
        count, notify = rings.send(data)
        if notify:
            self.notify()
        return count

    def kick(self) -> None:
        """Notify the server again if it has not read what we wrote: a wakeup lost to a
        reordered store (no memory barrier here), or to a server that looked at its ring
        before our first write reached it, costs a delay of one kick, not a hang."""
        if self._rings().unread_sent():
            self.notify()

    @property
    def is_open(self) -> bool:
        return self._rings().server_live

    def _rings(self) -> Rings:
        if self.rings is None:
            raise VchanError("vchan is closed")
        return self.rings

    def close(self) -> None:
        if self.rings is not None:
            self.rings.close()
            self.rings = None
            with contextlib.suppress(OSError):
                self.notify()
        for view in self._views:
            view.release()
        self._views.clear()
        for mapping in reversed(self._mappings):
            mapping.close()
        self._mappings.clear()
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.evtchn, IOCTL_EVTCHN_UNBIND, bytearray(_U32.pack(self.port)))
        os.close(self.gntdev)
        os.close(self.evtchn)
