"""appliance/qubesdb.py: the wire format against bytes laid out as qubes-core-qubesdb's C says,
the VM's side of the link as a state machine, and the keys natvm reads.

The oracle is include/qubesdb.h: struct qdb_hdr {uint8_t type; char path[64]; uint32_t
data_len;} (the compiler pads 3 bytes before data_len: 72 bytes), enum qdb_msg numbering the
types from QDB_CMD_READ = 0; and daemon/db-cmds.c for what each side sends. Messages below
are built with struct at those offsets, never with the module's own encoder.
"""

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.qubesdb import (
    Event,
    FirewallKeys,
    MessageType,
    ProtocolError,
    QubesDbClient,
    Removed,
    RulesUpdate,
    Synced,
    Written,
    network_keys,
)
from appliance.rules import DROP_ALL, Action

# enum qdb_msg (qubesdb.h)
CMD_READ, CMD_WRITE, CMD_MULTIREAD, CMD_RM = 0, 1, 2, 4
RESP_OK, RESP_ERROR_NOENT, RESP_ERROR, RESP_MULTIREAD = 7, 8, 9, 11


def hdr(kind: int, path: str, data: bytes = b"") -> bytes:
    """struct qdb_hdr byte by byte: type at 0, path at 1..64, padding 65..67, data_len at 68."""
    raw = bytearray(72)
    raw[0] = kind
    raw[1 : 1 + len(path)] = path.encode()
    raw[68:72] = len(data).to_bytes(4, "little")
    return bytes(raw) + data


# What qubes-core-admin's own test expects a net VM's QubesDB to hold (qubes/tests/vm/
# qubesvm.py, "proxy_ipv4"), plus the uplink keys of a net VM that has a net VM itself.
DUMP = {
    "/qubes-ip": "10.137.0.5",
    "/qubes-netmask": "255.255.255.255",
    "/qubes-gateway": "10.137.0.1",
    "/qubes-primary-dns": "10.139.1.1",
    "/qubes-secondary-dns": "10.139.1.2",
    "/qubes-netvm-network": "10.137.0.2",
    "/qubes-netvm-gateway": "10.137.0.2",
    "/qubes-netvm-netmask": "255.255.255.255",
    "/qubes-netvm-primary-dns": "10.139.1.1",
    "/qubes-netvm-secondary-dns": "10.139.1.2",
    "/qubes-firewall/10.137.0.3": "",
    "/qubes-firewall/10.137.0.3/0000": "action=accept",
    "/qubes-firewall/10.137.0.3/policy": "drop",
    "/connected-ips": "10.137.0.3",
}


def synced_client(dump: dict[str, str] = DUMP) -> tuple[QubesDbClient, list[Event]]:
    client = QubesDbClient()
    client.start()
    stream = b"".join(hdr(RESP_MULTIREAD, key, value.encode()) for key, value in dump.items())
    events: list[Event] = list(client.receive(stream + hdr(RESP_MULTIREAD, "")))
    return client, events


def test_the_header_is_72_bytes_and_multiread_asks_for_everything() -> None:
    assert QubesDbClient().start() == hdr(CMD_MULTIREAD, "")
    assert len(hdr(CMD_MULTIREAD, "")) == 72


def test_message_type_numbers_are_qubesdb_hs_enum() -> None:
    assert [kind.value for kind in MessageType] == list(range(14))
    assert MessageType.RESP_MULTIREAD == RESP_MULTIREAD and MessageType.RESP_OK == RESP_OK


def test_the_dump_split_anywhere_ends_in_synced() -> None:
    client = QubesDbClient()
    client.start()
    stream = hdr(RESP_MULTIREAD, "/qubes-ip", b"10.137.0.5") + hdr(RESP_MULTIREAD, "")
    events = [event for byte in stream for event in client.receive(bytes([byte]))]
    assert events == [Synced()]
    assert client.entries == {"/qubes-ip": "10.137.0.5"} and client.synced
    assert client.data_to_send() == b""  # the dump is not acknowledged


def test_writes_and_removes_are_applied_and_acknowledged() -> None:
    client, _ = synced_client()
    events = client.receive(hdr(CMD_WRITE, "/qubes-firewall/10.137.0.3/0001", b"action=drop"))
    assert events == [Written("/qubes-firewall/10.137.0.3/0001", "action=drop")]
    assert client.data_to_send() == hdr(RESP_OK, "/qubes-firewall/10.137.0.3/0001")
    # a path ending in '/' removes everything under it, not the key of the same name
    events = client.receive(hdr(CMD_RM, "/qubes-firewall/10.137.0.3/"))
    gone = (
        "/qubes-firewall/10.137.0.3/0000",
        "/qubes-firewall/10.137.0.3/policy",
        "/qubes-firewall/10.137.0.3/0001",
    )
    assert events == [Removed("/qubes-firewall/10.137.0.3/", gone)]
    assert client.data_to_send() == hdr(RESP_OK, "/qubes-firewall/10.137.0.3/")
    assert client.entries["/qubes-firewall/10.137.0.3"] == ""
    assert client.receive(hdr(CMD_RM, "/nothing-here")) == []
    assert client.data_to_send() == hdr(RESP_ERROR_NOENT, "/nothing-here")


def test_answers_to_what_we_never_asked_are_ignored() -> None:
    client, _ = synced_client()
    assert client.receive(hdr(RESP_OK, "/x") + hdr(RESP_ERROR, "/y")) == []


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (hdr(CMD_READ, "/qubes-ip"), "dom0 sent CMD_READ"),
        (hdr(42, "/x"), "unknown type 42"),
        (hdr(CMD_WRITE, "/bad path", b"1"), "characters QubesDB forbids"),
        (hdr(CMD_WRITE, "/x", b"a\0b"), "NUL"),
        (hdr(CMD_WRITE, "/dir/", b"1"), "not a key"),
        (hdr(CMD_RM, "/x", b"1"), "RM of /x with data"),
        (hdr(RESP_MULTIREAD, "/late", b"1"), "nobody asked for"),
        (hdr(CMD_WRITE, "/x")[:68] + (3072).to_bytes(4, "little"), "3072 bytes"),
    ],
)
def test_what_dom0_may_not_send_is_a_protocol_error(stream: bytes, words: str) -> None:
    client, _ = synced_client()
    with pytest.raises(ProtocolError, match=words):
        client.receive(stream)


def test_network_keys_and_the_words_they_become() -> None:
    client, _ = synced_client()
    keys = network_keys(client.entries)
    assert keys.ip == IPv4Address("10.137.0.5") and keys.gateway == IPv4Address("10.137.0.1")
    assert keys.client_dns == (IPv4Address("10.139.1.1"), IPv4Address("10.139.1.2"))
    assert keys.overrides(lan_prefix=14) == {
        "natvm.wan.ip": ["10.137.0.5/32"],
        "natvm.wan.gw": ["10.137.0.1"],
        "natvm.dns": ["10.139.1.1,10.139.1.2"],
        "natvm.lan.ip": ["10.137.0.2/14"],
    }
    # sys-net has no net VM: no uplink keys, no uplink words
    assert network_keys({"/qubes-netvm-gateway": "10.137.0.2"}).overrides(24) == {
        "natvm.lan.ip": ["10.137.0.2/24"]
    }
    with pytest.raises(ValueError, match="/qubes-gateway: 'ten' is not an IPv4 address"):
        network_keys({"/qubes-gateway": "ten"})
    with pytest.raises(ValueError, match=r"/qubes-netmask: 255\.0\.255\.0 is not a netmask"):
        network_keys({"/qubes-netmask": "255.0.255.0"})
    slash_24 = {"/qubes-ip": "192.0.2.5", "/qubes-netmask": "255.255.255.0"}
    assert network_keys(slash_24).overrides(24)["natvm.wan.ip"] == ["192.0.2.5/24"]


def test_rules_come_at_the_end_of_the_dump() -> None:
    client, events = synced_client()
    firewall = FirewallKeys()
    (update,) = firewall.updates(events[0], client.entries)
    assert update.client == IPv4Address("10.137.0.3") and update.log == ""
    assert update.rules is not None and update.rules.policy is Action.DROP
    assert [rule.action for rule in update.rules.rules] == [Action.ACCEPT]


def reload(client: QubesDbClient, ip: str, rules: dict[str, str]) -> list[Event]:
    """qubes-core-admin's reload_firewall_for_vm: rm the directory, write, then the empty key."""
    base = f"/qubes-firewall/{ip}/"
    events: list[Event] = list(client.receive(hdr(CMD_RM, base)))
    for key, value in rules.items():
        events += client.receive(hdr(CMD_WRITE, base + key, value.encode()))
    events += client.receive(hdr(CMD_WRITE, base[:-1]))
    return events


def apply(firewall: FirewallKeys, client: QubesDbClient, events: list[Event]) -> list[RulesUpdate]:
    return [u for event in events for u in firewall.updates(event, client.entries)]


def test_a_reload_takes_effect_only_with_the_empty_write() -> None:
    client, events = synced_client()
    firewall = FirewallKeys()
    apply(firewall, client, events)
    changes = reload(
        client, "10.137.0.3", {"0000": "action=drop proto=tcp dstports=80-80", "policy": "accept"}
    )
    updates = apply(firewall, client, changes)
    assert len(changes) == 4 and len(updates) == 1  # rm, two writes: nothing; the last: one
    (update,) = updates
    assert update.rules is not None and update.rules.policy is Action.ACCEPT


def test_a_set_that_fails_keeps_the_one_in_force_and_names_the_key() -> None:
    client, events = synced_client()
    firewall = FirewallKeys()
    apply(firewall, client, events)
    changes = reload(client, "10.137.0.3", {"0000": "action=drop proto=gre", "policy": "accept"})
    (update,) = apply(firewall, client, changes)
    assert update.rules is None
    assert update.log == (
        "qubesdb: /qubes-firewall/10.137.0.3/0000: proto 'gre' is not one of tcp, udp, icmp;"
        " the previous rules stay"
    )
    # a client with nothing in force yet gets nothing through
    changes = reload(client, "10.137.0.9", {"0000": "action=accept"})
    (update,) = apply(firewall, client, changes)
    assert update.rules is DROP_ALL
    assert "/qubes-firewall/10.137.0.9/policy: no policy; dropping all" in update.log


def test_ipv6_clients_rules_are_ignored() -> None:
    client, events = synced_client(
        {"/qubes-firewall/fd09:24ef::a89:3": "", "/qubes-firewall/fd09:24ef::a89:3/policy": "drop"}
    )
    assert FirewallKeys().updates(events[0], client.entries) == []


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_any_bytes_from_dom0_are_events_or_one_protocol_error(chunks: list[bytes]) -> None:
    client = QubesDbClient()
    client.start()
    try:
        for chunk in chunks:
            client.receive(chunk)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["policy", "0000", "0001", "0002", "x"]),
        st.text(alphabet="actionproudpsfdmhs=-0123456789. \u00b2", max_size=60),
    )
)
def test_any_rule_entries_parse_or_fail_with_the_key_named(entries: dict[str, str]) -> None:
    client, events = synced_client(
        {f"/qubes-firewall/10.137.0.7/{k}": v for k, v in entries.items()}
    )
    for update in FirewallKeys().updates(events[0], client.entries):
        assert update.rules is not None
        assert update.log == "" or update.log.startswith("qubesdb: /qubes-firewall/10.137.0.7/")
