"""Xenstore's wire protocol, and a client over one file descriptor.

The protocol (Xen's xen/include/public/io/xs_wire.h and docs/misc/xenstore.txt): every message,
either way, is a 16-byte header, struct xsd_sockmsg {u32 type, req_id, tx_id, len} in the host's
byte order (little-endian on x86 and Arm, the only hosts natvm runs on), then `len` bytes of
payload, at most 4096 (XENSTORE_PAYLOAD_MAX; xenstored kills a connection that sends more).
Strings in payloads end in a NUL, values do not. A reply has the request's type, req_id and
tx_id; a failure is an ERROR reply whose payload is an errno *name* ("ENOENT"). A WATCH_EVENT
("path\\0token\\0", req_id 0) can arrive at any time, between or before replies. The same protocol
runs over /dev/xen/xenbus (a domain's kernel relays it over the xenstore ring; relative paths are
then relative to /local/domain/<our domid>) and over xenstored's unix socket in the dom0
(absolute paths only).

Theory of operation: `Decoder` turns a byte stream split anywhere into whole `Message`s;
`Connection` (pure, no I/O) numbers requests, matches replies to them and queues watch events so
none is lost while a reply is awaited. `Xenstore` is the thin I/O shell: a non-blocking fd that a
poll loop can watch (readable -> `receive()` -> watch events), and blocking request/reply calls
(each waits for its reply with a timeout, queueing the events that come first).
"""

import _socket  # not socket: see appliance/shell.py
import contextlib
import errno
import os
import select
import struct
from collections import deque
from enum import IntEnum
from typing import NamedTuple

HEADER = struct.Struct("<4I")  # struct xsd_sockmsg: type, req_id, tx_id, len
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
XENBUS_DEVICE = "/dev/xen/xenbus"
XENSTORED_SOCKET = "/var/run/xenstored/socket"
DEFAULT_TIMEOUT = 10.0  # xenstored answers in milliseconds; this only bounds a hang


class Op(IntEnum):
    """enum xsd_sockmsg_type, in xs_wire.h's order."""

    CONTROL = 0  # XS_DEBUG in older headers
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


class ProtocolError(Exception):
    """The stream broke the protocol (a payload over 4096 bytes, a reply of the wrong type, an
    unterminated string): the connection cannot be trusted any more."""


class XenstoreError(Exception):
    """xenstored refused a request: `name` is the errno name it sent ("ENOENT", "EACCES",
    "EAGAIN" for a transaction that lost a race, ...)."""

    def __init__(self, name: str, op: Op, path: str = "") -> None:
        self.name, self.op, self.path = name, op, path
        self.errno: int | None = getattr(errno, name, None)
        super().__init__(f"xenstore {' '.join(filter(None, (op.name, path)))}: {name}")


class Message(NamedTuple):
    op: int  # an Op, or a number this module does not know (kept, so it can be reported)
    req_id: int
    tx_id: int
    payload: bytes


class WatchEvent(NamedTuple):
    path: str  # the node that changed (relative if the watch's path was)
    token: str


def encode(message: Message) -> bytes:
    if len(message.payload) > PAYLOAD_MAX:
        raise ValueError(f"xenstore payload of {len(message.payload)} bytes (max {PAYLOAD_MAX})")
    header = HEADER.pack(message.op, message.req_id, message.tx_id, len(message.payload))
    return header + message.payload


class Decoder:
    """Bytes in, whole messages out; a message may be split across any number of feeds."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            op, req_id, tx_id, length = HEADER.unpack_from(self._buffer)
            if length > PAYLOAD_MAX:
                raise ProtocolError(f"xenstore message of {length} bytes (max {PAYLOAD_MAX})")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(Message(op, req_id, tx_id, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return messages


def strings(payload: bytes) -> list[str]:
    """A payload of NUL-terminated strings ("a\\0b\\0"). An empty payload, or a lone NUL (which
    some servers send for an empty directory), is no strings."""
    if payload and not payload.endswith(b"\0"):
        raise ProtocolError(f"xenstore string list without its final NUL: {payload[:60]!r}")
    return [part.decode(errors="replace") for part in payload.split(b"\0")[:-1] if part]


def string(payload: bytes) -> str:
    """The single NUL-terminated string of a reply ("OK\\0", a transaction id, a path)."""
    return payload.removesuffix(b"\0").decode(errors="replace")


def watch_event(message: Message) -> WatchEvent:
    parts = message.payload.split(b"\0")
    if len(parts) < 3:  # path, token, and what follows the final NUL
        raise ProtocolError(f"xenstore watch event without path and token: {message.payload!r}")
    return WatchEvent(parts[0].decode(errors="replace"), parts[1].decode(errors="replace"))


def nul(text: str) -> bytes:
    return text.encode() + b"\0"


class Connection:
    """The protocol's state, without I/O: request numbering, replies by request, queued events.

    `request()` gives the bytes to send and the req_id to wait for; `receive()` takes bytes read
    from the server; `reply(req_id)` is the payload once its reply came (None until then), or
    raises the server's error; `events` holds watch events in arrival order until taken.
    """

    def __init__(self) -> None:
        self._decoder = Decoder()
        self._next_id = 1
        self._waiting: dict[int, tuple[Op, str]] = {}  # req_id -> what was asked, for errors
        self._replies: dict[int, Message] = {}
        self.events: deque[WatchEvent] = deque()

    def request(self, op: Op, payload: bytes, tx_id: int = 0, path: str = "") -> tuple[int, bytes]:
        req_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # never 0, the id of watch events
        data = encode(Message(op, req_id, tx_id, payload))
        self._waiting[req_id] = (op, path)
        return req_id, data

    def receive(self, data: bytes) -> None:
        for message in self._decoder.feed(data):
            if message.op == Op.WATCH_EVENT:
                self.events.append(watch_event(message))
            elif message.req_id in self._waiting:
                self._replies[message.req_id] = message
            # else: the reply to a request given up on (timed out); nobody waits for it

    def reply(self, req_id: int) -> bytes | None:
        message = self._replies.pop(req_id, None)
        if message is None:
            return None
        op, path = self._waiting.pop(req_id)
        if message.op == Op.ERROR:
            raise XenstoreError(string(message.payload), op, path)
        if message.op != op:
            raise ProtocolError(f"xenstore {op.name} {path}: reply of type {message.op}")
        return message.payload

    def forget(self, req_id: int) -> None:
        """Stop waiting for `req_id` (its caller gave up); a late reply is then dropped."""
        self._waiting.pop(req_id, None)
        self._replies.pop(req_id, None)


class Xenstore:
    """A xenstore client over a file descriptor it owns (the xenbus device or xenstored's socket).

    For a poll loop: register `fileno()` for POLLIN; when readable, `receive()` returns the watch
    events that arrived. Requests (`read`, `write`, ...) block until their reply, at most
    `timeout` seconds (then TimeoutError); events arriving meanwhile are queued and returned by
    the next `receive()`, so the loop should call it after a batch of requests even if the fd
    did not poll readable. Failures: XenstoreError (refused), ProtocolError (a broken stream),
    OSError (the fd; ConnectionError when the server closed it), TimeoutError.
    """

    def __init__(self, fd: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        os.set_blocking(fd, False)
        self.fd, self.timeout = fd, timeout
        self.connection = Connection()

    @classmethod
    def open(cls, path: str = XENBUS_DEVICE, timeout: float = DEFAULT_TIMEOUT) -> "Xenstore":
        """The xenbus device of a domain's kernel, or (a socket path) xenstored's socket."""
        if path.endswith("socket"):
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return cls(sock.detach(), timeout)
        return cls(os.open(path, os.O_RDWR | os.O_CLOEXEC), timeout)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "Xenstore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def receive(self) -> list[WatchEvent]:
        """Read what the fd has now (without blocking) and return every queued watch event."""
        self._read_available()
        events = list(self.connection.events)
        self.connection.events.clear()
        return events

    def _read_available(self) -> bool:
        """Feed what can be read now; False if nothing could."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            raise ConnectionError("xenstore closed the connection")
        self.connection.receive(data)
        return True

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                if not poller.poll(int(self.timeout * 1000)):
                    raise TimeoutError("xenstore: cannot send a request") from None

    def call(self, op: Op, payload: bytes, tx_id: int = 0, path: str = "") -> bytes:
        """One request and its reply's payload."""
        req_id, data = self.connection.request(op, payload, tx_id, path)
        try:
            self._send(data)
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            while (reply := self.connection.reply(req_id)) is None:
                if not self._read_available() and not poller.poll(int(self.timeout * 1000)):
                    raise TimeoutError(f"xenstore {op.name} {path}: no reply in {self.timeout} s")
            return reply
        finally:
            self.connection.forget(req_id)

    def read(self, path: str, tx_id: int = 0) -> str:
        return self.call(Op.READ, nul(path), tx_id, path).decode(errors="replace")

    def read_optional(self, path: str, tx_id: int = 0) -> str | None:
        """The value at `path`, or None if there is no such node."""
        try:
            return self.read(path, tx_id)
        except XenstoreError as error:
            if error.name == "ENOENT":
                return None
            raise

    def write(self, path: str, value: str, tx_id: int = 0) -> None:
        self.call(Op.WRITE, nul(path) + value.encode(), tx_id, path)

    def directory(self, path: str, tx_id: int = 0) -> list[str]:
        return strings(self.call(Op.DIRECTORY, nul(path), tx_id, path))

    def directory_optional(self, path: str, tx_id: int = 0) -> list[str] | None:
        """The children of `path`, or None if there is no such node."""
        try:
            return self.directory(path, tx_id)
        except XenstoreError as error:
            if error.name == "ENOENT":
                return None
            raise

    def rm(self, path: str, tx_id: int = 0) -> None:
        self.call(Op.RM, nul(path), tx_id, path)

    def watch(self, path: str, token: str) -> None:
        """Watch `path` and everything under it; xenstored fires the watch once straight away."""
        self.call(Op.WATCH, nul(path) + nul(token), path=path)

    def unwatch(self, path: str, token: str) -> None:
        self.call(Op.UNWATCH, nul(path) + nul(token), path=path)

    def transaction_start(self) -> int:
        return int(string(self.call(Op.TRANSACTION_START, nul(""))))

    def transaction_end(self, tx_id: int, commit: bool = True) -> None:
        """Commit (or discard) a transaction; XenstoreError EAGAIN if it lost a race: retry."""
        self.call(Op.TRANSACTION_END, nul("T" if commit else "F"), tx_id)

    def get_domain_path(self, domid: int) -> str:
        return string(self.call(Op.GET_DOMAIN_PATH, nul(str(domid))))

    def own_domid(self) -> int:
        """Our domain's id, from the `domid` key the toolstack writes in our home (what libxl's
        own libxl__get_domid reads): a relative path, so over the xenbus device only."""
        value = self.read("domid")
        if not value.isdigit():
            raise ProtocolError(f"xenstore domid is {value!r}, not a domain id")
        return int(value)

    def remove(self, path: str, keep: str, attempts: int = 10) -> None:
        """Remove `path` and its subtree, then each parent left empty up to (not including)
        `keep`, in one transaction (as libxl__xs_path_cleanup does, so a sibling added meanwhile
        is never removed with its parent). Retried while it loses races (EAGAIN)."""
        for _ in range(attempts):
            tx_id = self.transaction_start()
            try:
                self._remove_in(tx_id, path, keep)
            except BaseException:
                with contextlib.suppress(XenstoreError, ProtocolError, OSError):
                    self.transaction_end(tx_id, commit=False)  # the first failure is the news
                raise
            try:
                self.transaction_end(tx_id)
                return
            except XenstoreError as error:
                if error.name != "EAGAIN":
                    raise
        raise XenstoreError("EAGAIN", Op.TRANSACTION_END, path)

    def _remove_in(self, tx_id: int, path: str, keep: str) -> None:
        try:
            self.rm(path, tx_id)
        except XenstoreError as error:
            if error.name == "ENOENT":  # its parent is gone too: nothing left to remove
                return
            raise
        parent = path.rpartition("/")[0]
        while parent.startswith(keep + "/"):
            if self.directory(parent, tx_id) or self.read(parent, tx_id):
                return
            try:
                self.rm(parent, tx_id)
            except XenstoreError as error:
                # A parent another domain owns (a driver domain's backend/vif/<domid> is the
                # toolstack's): its owner removes it; what is ours is removed all the same.
                if error.name == "EACCES":
                    return
                raise
            parent = parent.rpartition("/")[0]
