"""The translation table's sessions as bytes, so that a restarted appliance keeps its flows.

Theory of operation: the state is one file of fixed-size records after a header line. A record
says "this session exists, in this TCP state" (`SAVED`) or "this session is gone" (`REMOVED`),
keyed by (protocol, internal address and port, remote address and port). The table's `Journal`
hears of each new session, TCP state change and removal (appliance/flows.py), and `FlowJournal`
turns each into one record appended to a buffer that the shell writes out after every round of
its loop: a few records per connection, none for the packets in between. Reading takes the last
word on each key (the file read backwards), and `restore` puts the survivors back into a fresh
table, established TCP connections first, as many as it is given room for. A snapshot is the
same format holding only `SAVED` records of the live sessions: compaction writes one and starts
appending to it, so the file stays within a small multiple of the table's size at a constant
cost per record, amortised.

What is kept: each session's external port, filtering (its remote endpoint) and TCP state.
What is not: timers (a restored session's starts afresh), resting ports, fragments in
reassembly, neighbours (relearned by ARP). The header names the boot (the kernel's boot_id):
a file from an earlier boot is ignored, as its times and peers are another machine's story.
"""

import struct
from collections.abc import Iterable
from typing import NamedTuple

from appliance.flows import FlowTable, Session, TcpState
from appliance.packet import TCP

MAGIC = b"natvm-flows 1 "
SAVED, REMOVED = 1, 2
# kind, protocol, TCP state, internal address, internal port, external port, remote address and
# port: 17 bytes a record.
RECORD = struct.Struct("<BBB4sHH4sH")


def header(boot_id: str) -> bytes:
    """The file's first line, naming the boot it belongs to."""
    return MAGIC + boot_id.encode("ascii", "replace") + b"\n"


class SavedSession(NamedTuple):
    proto: int
    int_addr: bytes
    int_port: int
    ext_port: int
    remote_addr: bytes
    remote_port: int
    state: int


def encode(kind: int, session: Session) -> bytes:
    mapping = session.mapping
    return RECORD.pack(
        kind,
        mapping.proto,
        session.state,
        mapping.int_addr,
        mapping.int_port,
        mapping.ext_port,
        session.remote_addr,
        session.remote_port,
    )


def snapshot(sessions: Iterable[Session]) -> bytes:
    """`SAVED` records of `sessions` (the body of a file, after its header)."""
    return b"".join(encode(SAVED, session) for session in sessions)


def decode(record: bytes) -> SavedSession:
    """The session a `SAVED` record describes."""
    _, proto, state, int_addr, int_port, ext_port, remote, port = RECORD.unpack(record)
    return SavedSession(proto, int_addr, int_port, ext_port, remote, port, state)


def replay(data: bytes, boot_id: str) -> list[bytes]:
    """The `SAVED` records of the sessions a file (header and records) leaves in existence,
    newest first: none when it belongs to another boot or is not such a file. A torn last
    record (the writer killed mid-write) and records of an unknown kind are skipped.

    Read backwards, the first record of a key is its last word: besides the records kept (59
    bytes a session, measured) only the keys seen are held, and only while reading. A restart
    after the memory limit killed the appliance must not need much more than what it restores
    (decoding every session first took 282 bytes a session, most of a table's 360)."""
    first = header(boot_id)
    if not data.startswith(first):
        return []
    body = memoryview(data)[len(first) :]
    whole = len(body) - len(body) % RECORD.size
    seen: set[bytes] = set()
    live = []
    for end in range(whole, 0, -RECORD.size):
        record = body[end - RECORD.size : end]
        if record[0] not in (SAVED, REMOVED):
            continue
        key = bytes(record[1:2]) + bytes(record[3:9]) + bytes(record[11:17])
        if key not in seen:
            seen.add(key)
            if record[0] == SAVED:
                live.append(bytes(record))
    return live


def _not_established(record: bytes) -> bool:
    return not (record[1] == TCP and record[2] == TcpState.ESTABLISHED)


def restore(table: FlowTable, records: list[bytes], now: float, limit: int | None = None) -> int:
    """Put the sessions of `records` (from `replay`) back into `table` (see
    `FlowTable.restore`), at most `limit` of them: established TCP connections first, which
    break without it (the others open again with their next outbound packet), then the rest
    in the order given. Returns how many were restored."""
    states = {state.value: state for state in TcpState}
    restored = 0
    for record in sorted(records, key=_not_established):  # stable: the order given within each
        if limit is not None and restored >= limit:
            break
        saved = decode(record)
        state = states.get(saved.state)
        if state is not None and table.restore(
            saved.proto,
            saved.int_addr,
            saved.int_port,
            saved.ext_port,
            saved.remote_addr,
            saved.remote_port,
            state,
            now,
        ):
            restored += 1
    return restored


class FlowJournal:
    """The table's `Journal`: each event one record in `pending`, for the shell to write out.
    `records` counts what the file holds once `pending` is written, to tell when to compact."""

    def __init__(self, records: int = 0) -> None:
        self.pending = bytearray()
        self.records = records

    def saved(self, session: Session) -> None:
        self.pending += encode(SAVED, session)
        self.records += 1

    def removed(self, session: Session) -> None:
        self.pending += encode(REMOVED, session)
        self.records += 1

    def take(self) -> bytes:
        """The records not yet written, now the caller's to write."""
        out = bytes(self.pending)
        self.pending.clear()
        return out


# Compaction when the file holds more than twice the live sessions' records (and some slack, so
# a small table does not compact all the time): the file stays within 2x + slack records, and
# each compaction's cost (one record per live session) is paid for by as many appended ones.
COMPACT_SLACK = 4096


def compaction_due(records: int, live: int) -> bool:
    return records > 2 * live + COMPACT_SLACK
