"""appliance/xenstore.py: the wire format against bytes laid out as Xen's C header says.

The oracle is xen/include/public/io/xs_wire.h: struct xsd_sockmsg is four uint32_t (type, req_id,
tx_id, len) followed by len bytes of payload; enum xsd_sockmsg_type numbers the types from
XS_CONTROL (XS_DEBUG) = 0 in the order of the enum, and ERROR replies carry the errno's name
(docs/misc/xenstore.txt). The messages below are built from that layout with struct directly,
never with the module's own encoder.
"""

import errno
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from appliance import xenstore
from appliance.xenstore import Connection, Decoder, Message, Op, WatchEvent, XenstoreError

# enum xsd_sockmsg_type (xs_wire.h), the entries this test uses
XS_DIRECTORY, XS_READ, XS_WATCH = 1, 2, 4
XS_TRANSACTION_START, XS_TRANSACTION_END = 6, 7
XS_GET_DOMAIN_PATH, XS_WRITE, XS_RM = 10, 11, 13
XS_WATCH_EVENT, XS_ERROR = 15, 16


def wire(kind: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """struct xsd_sockmsg {uint32_t type, req_id, tx_id, len;} + payload, x86 byte order."""
    return struct.pack("<IIII", kind, req_id, tx_id, len(payload)) + payload


def test_op_numbers_are_xs_wire_hs_enum() -> None:
    names = [
        "CONTROL",
        "DIRECTORY",
        "READ",
        "GET_PERMS",
        "WATCH",
        "UNWATCH",
        "TRANSACTION_START",
        "TRANSACTION_END",
        "INTRODUCE",
        "RELEASE",
        "GET_DOMAIN_PATH",
        "WRITE",
        "MKDIR",
        "RM",
        "SET_PERMS",
        "WATCH_EVENT",
        "ERROR",
        "IS_DOMAIN_INTRODUCED",
        "RESUME",
        "SET_TARGET",
        "RESTRICT",
        "RESET_WATCHES",
        "DIRECTORY_PART",
    ]
    assert [op.name for op in sorted(Op)] == names
    assert [op.value for op in sorted(Op)] == list(range(len(names)))


def test_a_read_request_is_the_header_then_the_nul_terminated_path() -> None:
    req_id, data = Connection().request(Op.READ, b"/local/domain/3/domid\0", path="x")
    assert req_id == 1
    assert data == wire(XS_READ, 1, 0, b"/local/domain/3/domid\0")
    # the same, spelled out byte by byte: little-endian u32s, 16 bytes of header
    assert data[:16] == bytes([2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 22, 0, 0, 0])


def test_request_ids_count_up_and_skip_zero_the_id_of_watch_events() -> None:
    connection = Connection()
    assert [connection.request(Op.READ, b"a\0")[0] for _ in range(3)] == [1, 2, 3]
    connection._next_id = 0xFFFFFFFF
    assert [connection.request(Op.READ, b"a\0")[0] for _ in range(2)] == [0xFFFFFFFF, 1]


def test_an_oversized_payload_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="4097 bytes"):
        Connection().request(Op.WRITE, b"x" * 4097)


STREAM = (
    wire(XS_READ, 7, 0, b"10.137.0.5 fd09::5")
    + wire(XS_WATCH_EVENT, 0, 0, b"backend/vif/5/0/state\0vifs\0")
    + wire(XS_DIRECTORY, 8, 3, b"0\x001\0")
    + wire(XS_WRITE, 9, 0, b"OK\0")
    + wire(XS_TRANSACTION_START, 10, 0, b"")  # an empty payload: header only
)
MESSAGES = [
    Message(XS_READ, 7, 0, b"10.137.0.5 fd09::5"),
    Message(XS_WATCH_EVENT, 0, 0, b"backend/vif/5/0/state\0vifs\0"),
    Message(XS_DIRECTORY, 8, 3, b"0\x001\0"),
    Message(XS_WRITE, 9, 0, b"OK\0"),
    Message(XS_TRANSACTION_START, 10, 0, b""),
]


def test_decoding_a_whole_stream_at_once() -> None:
    assert Decoder().feed(STREAM) == MESSAGES


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_decoding_a_stream_split_anywhere(cut: int) -> None:
    decoder = Decoder()
    assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == MESSAGES


def test_decoding_a_stream_fed_one_byte_at_a_time() -> None:
    decoder = Decoder()
    assert [m for i in range(len(STREAM)) for m in decoder.feed(STREAM[i : i + 1])] == MESSAGES


def test_a_message_longer_than_the_protocol_allows_breaks_the_stream() -> None:
    with pytest.raises(xenstore.ProtocolError, match="4097 bytes"):
        Decoder().feed(struct.pack("<IIII", XS_READ, 1, 0, 4097))


def test_an_error_reply_is_a_typed_exception_with_the_errno_name() -> None:
    connection = Connection()
    req_id, _ = connection.request(Op.READ, b"/nothing\0", path="/nothing")
    connection.receive(wire(XS_ERROR, req_id, 0, b"ENOENT\0"))
    with pytest.raises(XenstoreError) as caught:
        connection.reply(req_id)
    assert (caught.value.name, caught.value.errno, caught.value.op) == (
        "ENOENT",
        errno.ENOENT,
        Op.READ,
    )
    assert str(caught.value) == "xenstore READ /nothing: ENOENT"


def test_an_unknown_errno_name_is_still_a_xenstore_error() -> None:
    connection = Connection()
    req_id, _ = connection.request(Op.WRITE, b"a\0b")
    connection.receive(wire(XS_ERROR, req_id, 0, b"EWHATEVER\0"))
    with pytest.raises(XenstoreError) as caught:
        connection.reply(req_id)
    assert (caught.value.name, caught.value.errno) == ("EWHATEVER", None)


def test_a_watch_event_interleaved_with_a_reply_is_queued_not_lost() -> None:
    connection = Connection()
    first, _ = connection.request(Op.READ, b"backend/vif/5/0/ip\0")
    second, _ = connection.request(Op.DIRECTORY, b"backend/vif\0")
    event = wire(XS_WATCH_EVENT, 0, 0, b"backend/vif/5/0/online\0vifs\0")
    stream = wire(XS_READ, first, 0, b"10.137.0.5") + event + wire(XS_DIRECTORY, second, 0, b"5\0")
    connection.receive(stream[:20])  # the reply's header and a bit: nothing whole yet
    assert connection.reply(first) is None and not connection.events
    connection.receive(stream[20:40])  # the reply and the event's first bytes
    assert connection.reply(first) == b"10.137.0.5"
    connection.receive(stream[40:])
    assert list(connection.events) == [WatchEvent("backend/vif/5/0/online", "vifs")]
    assert connection.reply(second) == b"5\0"


def test_a_reply_of_the_wrong_type_breaks_the_stream() -> None:
    connection = Connection()
    req_id, _ = connection.request(Op.READ, b"a\0")
    connection.receive(wire(XS_WRITE, req_id, 0, b"OK\0"))
    with pytest.raises(xenstore.ProtocolError, match="reply of type 11"):
        connection.reply(req_id)


def test_a_late_reply_to_a_forgotten_request_is_dropped() -> None:
    connection = Connection()
    req_id, _ = connection.request(Op.READ, b"a\0")
    connection.forget(req_id)
    connection.receive(wire(XS_READ, req_id, 0, b"late"))
    assert connection.reply(req_id) is None


@pytest.mark.parametrize(
    ("payload", "names"),
    [(b"0\x001\x0012\0", ["0", "1", "12"]), (b"", []), (b"\0", [])],
)
def test_directory_payloads(payload: bytes, names: list[str]) -> None:
    assert xenstore.strings(payload) == names


def test_a_directory_payload_without_its_final_nul_breaks_the_stream() -> None:
    with pytest.raises(xenstore.ProtocolError):
        xenstore.strings(b"0\x001")


def test_a_watch_event_without_its_token_breaks_the_stream() -> None:
    with pytest.raises(xenstore.ProtocolError):
        xenstore.watch_event(Message(XS_WATCH_EVENT, 0, 0, b"backend/vif"))


# The I/O class, over a real socket pair: the test plays xenstored, reading each request as the
# header layout says and answering from a script.

Answer = Callable[[int, int, int, bytes], bytes]


class Server:
    """xenstored's side of a socket pair: answers each request with `answer(type, req_id,
    tx_id, payload)`'s bytes, and records the requests."""

    def __init__(self, sock: socket.socket, answer: Answer) -> None:
        self.sock, self.answer = sock, answer
        self.requests: list[tuple[int, int, bytes]] = []  # type, tx_id, payload
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            while True:
                kind, req_id, tx_id, length = struct.unpack("<IIII", self._read(16))
                payload = self._read(length)
                self.requests.append((kind, tx_id, payload))
                self.sock.sendall(self.answer(kind, req_id, tx_id, payload))
        except (EOFError, OSError):
            return


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    theirs.close()


def client(sock: socket.socket, timeout: float = 2.0) -> xenstore.Xenstore:
    return xenstore.Xenstore(sock.detach(), timeout)


def test_requests_over_a_socket_and_an_event_that_comes_before_the_reply(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    event = wire(XS_WATCH_EVENT, 0, 0, b"/local/domain/2/backend/vif/5/0/state\0vifs\0")
    values = {b"/local/domain/2/backend/vif/5/0/ip\0": b"10.137.0.5 10.137.0.6"}

    def answer(kind: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
        if kind == XS_READ and payload in values:
            # the event first, and the reply split in two sends
            reply = wire(XS_READ, req_id, tx_id, values[payload])
            theirs.sendall(event + reply[:10])
            return reply[10:]
        if kind == XS_READ:
            return wire(XS_ERROR, req_id, tx_id, b"ENOENT\0")
        if kind == XS_GET_DOMAIN_PATH:
            return wire(kind, req_id, tx_id, b"/local/domain/" + payload)
        return wire(kind, req_id, tx_id, b"OK\0")

    server = Server(theirs, answer)
    with client(ours) as store:
        assert store.read("/local/domain/2/backend/vif/5/0/ip") == "10.137.0.5 10.137.0.6"
        assert store.receive() == [WatchEvent("/local/domain/2/backend/vif/5/0/state", "vifs")]
        assert store.receive() == []
        assert store.read_optional("/local/domain/2/nothing") is None
        with pytest.raises(XenstoreError, match="ENOENT"):
            store.read("/local/domain/2/nothing")
        store.write("/local/domain/2/backend/vif/5/0/hotplug-status", "connected")
        store.watch("/local/domain/2/backend/vif", "vifs")
        assert store.get_domain_path(2) == "/local/domain/2"
    assert server.requests[3:] == [
        (XS_WRITE, 0, b"/local/domain/2/backend/vif/5/0/hotplug-status\0connected"),
        (XS_WATCH, 0, b"/local/domain/2/backend/vif\0vifs\0"),
        (XS_GET_DOMAIN_PATH, 0, b"2\0"),
    ]


def test_a_poll_loop_gets_events_from_receive(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    with client(ours) as store:
        assert store.receive() == []  # nothing to read: no block, no event
        theirs.sendall(wire(XS_WATCH_EVENT, 0, 0, b"backend/vif\0vifs\0")[:7])
        assert store.receive() == []
        theirs.sendall(wire(XS_WATCH_EVENT, 0, 0, b"backend/vif\0vifs\0")[7:])
        assert store.receive() == [WatchEvent("backend/vif", "vifs")]


def test_no_reply_is_a_timeout_not_a_hang(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    with client(ours, timeout=0.2) as store, pytest.raises(TimeoutError, match="READ /x"):
        store.read("/x")


def test_a_closed_connection_is_a_connection_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.shutdown(socket.SHUT_RDWR)
    with client(ours) as store, pytest.raises(ConnectionError):
        store.read("/x")


def tree_server(
    tree: dict[str, str], conflicts: int = 0, protected: frozenset[str] = frozenset()
) -> Answer:
    """A tiny xenstored over `tree` (path -> value, parents present), with transactions that
    apply on commit and fail with EAGAIN `conflicts` times; removing a `protected` node is
    refused (EACCES), as xenstored refuses a node whose permissions are another domain's."""
    pending: dict[int, list[str]] = {}
    left = [conflicts]

    def answer(kind: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
        path = payload.split(b"\0")[0].decode()
        if kind == XS_TRANSACTION_START:
            pending[len(pending) + 1] = []
            return wire(kind, req_id, 0, f"{len(pending)}\0".encode())
        if kind == XS_TRANSACTION_END:
            removals = pending.pop(tx_id)
            if left[0]:
                left[0] -= 1
                return wire(XS_ERROR, req_id, tx_id, b"EAGAIN\0")
            for gone in removals if payload == b"T\0" else []:
                for key in [k for k in tree if k == gone or k.startswith(gone + "/")]:
                    del tree[key]
            return wire(kind, req_id, tx_id, b"OK\0")
        removed = pending.get(tx_id, [])
        visible = {
            k: v
            for k, v in tree.items()
            if not any(k == r or k.startswith(r + "/") for r in removed)
        }
        if path not in visible:
            return wire(XS_ERROR, req_id, tx_id, b"ENOENT\0")
        if kind == XS_READ:
            return wire(kind, req_id, tx_id, visible[path].encode())
        if kind == XS_DIRECTORY:
            children = sorted(
                {k[len(path) + 1 :].split("/")[0] for k in visible if k.startswith(path + "/")}
            )
            return wire(kind, req_id, tx_id, b"".join(c.encode() + b"\0" for c in children))
        assert kind == XS_RM
        if path in protected:
            return wire(XS_ERROR, req_id, tx_id, b"EACCES\0")
        pending[tx_id].append(path)
        return wire(kind, req_id, tx_id, b"OK\0")

    return answer


BACKEND = "/local/domain/2/backend/vif"


def nodes(*paths: str) -> dict[str, str]:
    tree = {"/local/domain/2": "", "/local/domain/2/backend": "", BACKEND: ""}
    for path in paths:
        parts = path.split("/")
        for end in range(len(BACKEND.split("/")) + 1, len(parts) + 1):
            tree.setdefault("/".join(parts[:end]), "")
    return tree


def test_remove_takes_the_device_and_its_parent_left_empty_in_one_transaction(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    tree = nodes(f"{BACKEND}/5/0/state", f"{BACKEND}/6/0/state")
    server = Server(theirs, tree_server(tree, conflicts=1))
    with client(ours) as store:
        store.remove(f"{BACKEND}/5/0", keep=BACKEND)
    assert sorted(tree) == sorted(nodes(f"{BACKEND}/6/0/state"))
    kinds = [kind for kind, _, _ in server.requests]
    # a lost race (EAGAIN) and a retry, each: start, rm, directory of the parent, its value, rm
    attempt = [XS_TRANSACTION_START, XS_RM, XS_DIRECTORY, XS_READ, XS_RM, XS_TRANSACTION_END]
    assert kinds == attempt * 2
    assert all(tx_id != 0 for kind, tx_id, _ in server.requests if kind != XS_TRANSACTION_START)


def test_remove_keeps_a_parent_that_still_has_a_device(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    tree = nodes(f"{BACKEND}/5/0/state", f"{BACKEND}/5/1/state")
    Server(theirs, tree_server(tree))
    with client(ours) as store:
        store.remove(f"{BACKEND}/5/0", keep=BACKEND)
    assert sorted(tree) == sorted(nodes(f"{BACKEND}/5/1/state"))


def test_remove_leaves_a_parent_it_may_not_remove(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A driver domain may remove a client's device directory, but backend/vif/<domid> is the
    toolstack's (dom0's libxl made it): that one the toolstack removes."""
    ours, theirs = pair
    tree = nodes(f"{BACKEND}/5/0/state")
    Server(theirs, tree_server(tree, protected=frozenset({f"{BACKEND}/5"})))
    with client(ours) as store:
        store.remove(f"{BACKEND}/5/0", keep=BACKEND)
    assert sorted(tree) == sorted(nodes(f"{BACKEND}/5"))


def test_remove_of_what_is_already_gone_is_done(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    tree = nodes()
    Server(theirs, tree_server(tree))
    with client(ours) as store:
        store.remove(f"{BACKEND}/5/0", keep=BACKEND)
    assert sorted(tree) == sorted(nodes())


def test_open_refuses_a_missing_device_with_the_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        xenstore.Xenstore.open("/nonexistent/xenbus")
    with pytest.raises(FileNotFoundError):
        xenstore.Xenstore.open("/nonexistent/xenstored/socket")


@pytest.mark.parametrize(("value", "domid"), [(b"7", 7), (b"0", 0), (b"seven", None)])
def test_own_domid_reads_the_relative_domid_key(
    pair: tuple[socket.socket, socket.socket], value: bytes, domid: int | None
) -> None:
    ours, theirs = pair

    def answer(kind: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
        assert (kind, payload) == (XS_READ, b"domid\0")  # relative: our home's domid key
        return wire(XS_READ, req_id, tx_id, value)

    Server(theirs, answer)
    with client(ours) as store:
        if domid is None:
            with pytest.raises(xenstore.ProtocolError, match="'seven', not a domain id"):
                store.own_domid()
        else:
            assert store.own_domid() == domid
