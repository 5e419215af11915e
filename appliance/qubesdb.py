"""QubesDB, the VM's side of its link to dom0, and what natvm reads from it. Pure.

The protocol (QubesOS/qubes-core-qubesdb include/qubesdb.h, daemon/db-cmds.c): every message,
either way, is a 72-byte header, struct qdb_hdr {u8 type; char path[64]; (3 bytes of padding);
u32 data_len} in the host's byte order, then data_len bytes of data. The path is NUL-terminated
(at most 63 characters of [A-Za-z0-9_-/.:@]); data has no NUL and fewer than 3072 bytes
(verify_hdr refuses data_len >= QDB_MAX_DATA). Over the vchan (port 111, dom0 the server):

  VM -> dom0    MULTIREAD with an empty path: "send me everything" (request_full_db_sync)
  dom0 -> VM    RESP_MULTIREAD per entry, then one with an empty path and no data (the end)
  dom0 -> VM    WRITE path+value and RM path (a path ending in '/' removes everything under
                it) whenever dom0 changes the VM's database; the VM answers each with RESP_OK
                (path kept), or RESP_ERROR_NOENT for an RM that removed nothing
                (handle_write, handle_rm)

`Decoder` splits a byte stream into `Message`s; `QubesDbClient` is the VM's side as a state
machine: `start()` gives the MULTIREAD to send, `receive(data)` takes bytes from dom0 and
returns `Event`s (Synced once the dump ends, Written, Removed) while keeping the database
(`entries`); `data_to_send()` gives the answers. Anything dom0 may not send on this link is a
ProtocolError (qubesdb-daemon drops the link then too).

`NetworkKeys` and `FirewallKeys` turn the keys into what natvm needs: its uplink and the
clients' side (qubes-core-admin qubes/vm/qubesvm.py create_qdb_entries), and per-client rule
sets (/qubes-firewall/<ip>/..., applied when the empty write of /qubes-firewall/<ip> arrives,
as qubes-core-agent-linux qubesagent/firewall.py does).
"""

import struct
from collections.abc import Callable, Mapping
from enum import IntEnum
from ipaddress import AddressValueError, IPv4Address
from typing import NamedTuple

from appliance.rules import DROP_ALL, RuleError, RuleSet, parse_rule_set

HEADER = struct.Struct("<B64s3xI")  # struct qdb_hdr: type, path[QDB_MAX_PATH], data_len
MAX_PATH = 64  # QDB_MAX_PATH, the terminating NUL included
MAX_DATA = 3072  # QDB_MAX_DATA; data_len must stay below it
_PATH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/.:@")


class MessageType(IntEnum):
    """enum qdb_msg, in qubesdb.h's order."""

    CMD_READ = 0
    CMD_WRITE = 1
    CMD_MULTIREAD = 2
    CMD_LIST = 3
    CMD_RM = 4
    CMD_WATCH = 5
    CMD_UNWATCH = 6
    RESP_OK = 7
    RESP_ERROR_NOENT = 8
    RESP_ERROR = 9
    RESP_READ = 10
    RESP_MULTIREAD = 11
    RESP_LIST = 12
    RESP_WATCH = 13


class ProtocolError(Exception):
    """dom0 sent what the protocol does not allow on this link; the link is not to be trusted."""


class Message(NamedTuple):
    type: MessageType
    path: str
    data: bytes = b""


def encode(message: Message) -> bytes:
    path = message.path.encode()
    if len(path) >= MAX_PATH or len(message.data) >= MAX_DATA:
        raise ValueError(f"qubesdb message too long: {message.path!r}, {len(message.data)} bytes")
    return HEADER.pack(message.type, path, len(message.data)) + message.data


class Decoder:
    """Bytes in, whole checked messages out; a message may come split anywhere."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            kind, raw_path, length = HEADER.unpack_from(self._buffer)
            if length >= MAX_DATA:
                raise ProtocolError(f"qubesdb message with {length} bytes of data")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(_checked(kind, raw_path, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return messages


def _checked(kind: int, raw_path: bytes, data: bytes) -> Message:
    """verify_hdr and verify_data's checks (the type known, the path's characters, no NUL)."""
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise ProtocolError(f"qubesdb message of unknown type {kind}") from None
    path = raw_path.split(b"\0", 1)[0].decode("latin-1")
    if not set(path) <= _PATH_CHARACTERS:
        raise ProtocolError(f"qubesdb path {path!r} has characters QubesDB forbids")
    if b"\0" in data:
        raise ProtocolError(f"qubesdb value of {path} has a NUL byte")
    return Message(message_type, path, data)


class Synced(NamedTuple):
    """The initial dump is complete: `QubesDbClient.entries` holds the whole database."""

    # No fields: an empty tuple, so false. Tell an event from none with `is not None`.


class Written(NamedTuple):
    path: str
    value: str


class Removed(NamedTuple):
    path: str  # as dom0 sent it: a path ending in '/' removed everything under it
    removed: tuple[str, ...]  # the paths that went


Event = Synced | Written | Removed


class QubesDbClient:
    """The VM's side of the QubesDB link (qubesdb-daemon's vchan half, db-cmds.c)."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.synced = False
        self._decoder = Decoder()
        self._outgoing = bytearray()
        self._started = False

    def start(self) -> bytes:
        """The request for the whole database; send it first, once."""
        if self._started:
            raise ProtocolError("qubesdb: MULTIREAD asked twice")
        self._started = True
        return encode(Message(MessageType.CMD_MULTIREAD, ""))

    def receive(self, data: bytes) -> list[Event]:
        """Bytes from dom0 -> what changed. ProtocolError if dom0 broke the protocol."""
        events: list[Event] = []
        for message in self._decoder.feed(data):
            event = _HANDLERS.get(message.type, QubesDbClient._unexpected)(self, message)
            if event is not None:
                events.append(event)
        return events

    def data_to_send(self) -> bytes:
        """The answers to send dom0 (and empties the queue)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def _multiread_entry(self, message: Message) -> Event | None:
        if not self._started or self.synced:
            raise ProtocolError("qubesdb: a MULTIREAD answer nobody asked for")
        if not message.path:
            self.synced = True
            return Synced()
        self.entries[message.path] = message.data.decode("latin-1")
        return None

    def _write(self, message: Message) -> Event:
        if not message.path or message.path.endswith("/"):
            raise ProtocolError(f"qubesdb: WRITE of {message.path!r}, not a key")
        value = message.data.decode("latin-1")
        self.entries[message.path] = value
        self._answer(MessageType.RESP_OK, message.path)
        return Written(message.path, value)

    def _rm(self, message: Message) -> Event | None:
        if message.data:
            raise ProtocolError(f"qubesdb: RM of {message.path} with data")
        path = message.path
        gone = [
            key
            for key in self.entries
            if key == path or (path.endswith("/") and key.startswith(path))
        ]
        if not gone:
            self._answer(MessageType.RESP_ERROR_NOENT, path)
            return None
        for key in gone:
            del self.entries[key]
        self._answer(MessageType.RESP_OK, path)
        return Removed(path, tuple(gone))

    def _ignored(self, message: Message) -> None:
        """RESP_OK and RESP_ERROR answer what this side never sends; qubesdb-daemon ignores
        them too."""

    def _unexpected(self, message: Message) -> Event:
        raise ProtocolError(f"qubesdb: dom0 sent {message.type.name}, not allowed on the link")

    def _answer(self, kind: MessageType, path: str) -> None:
        self._outgoing += encode(Message(kind, path))


_HANDLERS: dict[MessageType, Callable[[QubesDbClient, Message], Event | None]] = {
    MessageType.RESP_MULTIREAD: QubesDbClient._multiread_entry,
    MessageType.CMD_WRITE: QubesDbClient._write,
    MessageType.CMD_RM: QubesDbClient._rm,
    MessageType.RESP_OK: QubesDbClient._ignored,
    MessageType.RESP_ERROR: QubesDbClient._ignored,
}


# -- what natvm reads ----------------------------------------------------------------------


class NetworkKeys(NamedTuple):
    """natvm's addresses as QubesDB gives them; None for a key that is absent.

    uplink:   /qubes-ip, /qubes-netmask, /qubes-gateway, /qubes-primary-dns,
              /qubes-secondary-dns (present when natvm itself has a net VM)
    clients:  /qubes-netvm-gateway (their gateway: natvm's address on their side),
              /qubes-netvm-netmask (255.255.255.255 on Qubes 4: every client is a /32),
              /qubes-netvm-primary-dns, /qubes-netvm-secondary-dns (where clients send DNS:
              10.139.1.1 and 10.139.1.2)
    """

    ip: IPv4Address | None
    netmask: IPv4Address | None
    gateway: IPv4Address | None
    dns: tuple[IPv4Address, ...]
    client_gateway: IPv4Address | None
    client_netmask: IPv4Address | None
    client_dns: tuple[IPv4Address, ...]

    def overrides(self, lan_prefix: int) -> dict[str, list[str]]:
        """The natvm.* words that put these addresses in force (the config validates them as
        it validates the kernel's). The clients' netmask is not used: clients are /32s inside
        the configured subnet of prefix `lan_prefix`, whose address becomes the gateway."""
        words: dict[str, list[str]] = {}
        if self.ip is not None and self.netmask is not None:
            words["natvm.wan.ip"] = [f"{self.ip}/{_prefix(self.netmask)}"]
        if self.gateway is not None:
            words["natvm.wan.gw"] = [str(self.gateway)]
        if self.dns:
            words["natvm.dns"] = [",".join(str(server) for server in self.dns)]
        if self.client_gateway is not None:
            words["natvm.lan.ip"] = [f"{self.client_gateway}/{lan_prefix}"]
        return words


NETWORK_KEYS = (
    "/qubes-ip",
    "/qubes-netmask",
    "/qubes-gateway",
    "/qubes-primary-dns",
    "/qubes-secondary-dns",
    "/qubes-netvm-gateway",
    "/qubes-netvm-netmask",
    "/qubes-netvm-primary-dns",
    "/qubes-netvm-secondary-dns",
)


def network_keys(entries: Mapping[str, str]) -> NetworkKeys:
    """natvm's addresses from the database; ValueError naming the key of a bad address."""

    def address(key: str) -> IPv4Address | None:
        value = entries.get(key)
        if value is None:
            return None
        try:
            return IPv4Address(value)
        except AddressValueError:
            raise ValueError(f"{key}: {value!r} is not an IPv4 address") from None

    def servers(*keys: str) -> tuple[IPv4Address, ...]:
        return tuple(server for server in map(address, keys) if server is not None)

    netmask = address("/qubes-netmask")
    if netmask is not None and _prefix(netmask) is None:
        raise ValueError(f"/qubes-netmask: {netmask} is not a netmask")
    return NetworkKeys(
        address("/qubes-ip"),
        netmask,
        address("/qubes-gateway"),
        servers("/qubes-primary-dns", "/qubes-secondary-dns"),
        address("/qubes-netvm-gateway"),
        address("/qubes-netvm-netmask"),
        servers("/qubes-netvm-primary-dns", "/qubes-netvm-secondary-dns"),
    )


def _prefix(netmask: IPv4Address) -> int | None:
    """The prefix length of a netmask; None if its ones are not contiguous."""
    inverted = ~int(netmask) & 0xFFFFFFFF
    return 32 - inverted.bit_length() if inverted & (inverted + 1) == 0 else None


FIREWALL = "/qubes-firewall/"


class RulesUpdate(NamedTuple):
    """What to do with one client's rules: `rules` to put in force (None: keep those in
    force), and a line for the log when something went wrong."""

    client: IPv4Address
    rules: RuleSet | None
    log: str = ""


class FirewallKeys:
    """Per-client rule sets from /qubes-firewall/<ip>/, read when dom0 says a set is complete:
    at the end of the initial dump (every <ip> then present), and at each write of
    /qubes-firewall/<ip> (qubes-core-admin's reload_firewall_for_vm removes the old rules,
    writes the new ones, then writes that key empty; the writes before it are not a set yet).

    A set that fails to parse leaves the one in force as it is and gives a line naming the
    key at fault. A client that has none in force yet gets DROP_ALL instead (Qubes' agent and
    qubes-mirage-firewall drop everything on any parse failure). IPv6 clients are ignored
    (natvm serves IPv4 only)."""

    def __init__(self) -> None:
        self.in_force: set[IPv4Address] = set()

    def updates(self, event: Event, entries: Mapping[str, str]) -> list[RulesUpdate]:
        if isinstance(event, Synced):
            targets = {key.split("/")[2] for key in entries if key.startswith(FIREWALL)}
            return [update for target in sorted(targets) if (update := self._read(target, entries))]
        if isinstance(event, Written) and event.path.startswith(FIREWALL):
            target = event.path[len(FIREWALL) :]
            if target and "/" not in target:
                update = self._read(target, entries)
                return [update] if update else []
        return []

    def _read(self, target: str, entries: Mapping[str, str]) -> RulesUpdate | None:
        try:
            client = IPv4Address(target)
        except AddressValueError:
            return None  # an IPv6 client's rules (or nothing natvm could serve)
        base = f"{FIREWALL}{target}/"
        mine = {key[len(base) :]: value for key, value in entries.items() if key.startswith(base)}
        try:
            rules = parse_rule_set(mine, base)
        except RuleError as error:
            if client in self.in_force:
                return RulesUpdate(client, None, f"qubesdb: {error}; the previous rules stay")
            self.in_force.add(client)
            return RulesUpdate(client, DROP_ALL, f"qubesdb: {error}; dropping all its traffic")
        self.in_force.add(client)
        return RulesUpdate(client, rules)
