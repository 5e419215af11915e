"""Flows kept across a restart (issue 14, point 2): the journal, its replay and the state file.

A "restart" here is a second engine that restores what the first one's journal wrote: the
server's next segment, arriving before the LAN host says anything, must reach the LAN host on
the connection's own port (finding 3: a fresh engine filters it, and a download whose LAN side
has nothing to send stalls for good).
"""

import os
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP

from appliance import flowstate
from appliance.config import ApplianceConfig
from appliance.engine import Side
from appliance.flows import TcpState
from appliance.packet import TCP as TCP_PROTO
from appliance.statefile import FlowStateFile, restore_limit
from tests.unit.nat_harness import HOST, HOST2, SERVER, WAN_IP, Harness

LAN, WAN = Side.LAN, Side.WAN
BOOT = "3b2c7f1e-0000-4000-8000-000000000001"


def journalled(config: ApplianceConfig) -> tuple[Harness, flowstate.FlowJournal]:
    harness = Harness(config)
    journal = flowstate.FlowJournal()
    harness.nat.table.journal = journal
    return harness, journal


def restarted(config: ApplianceConfig, data: bytes) -> tuple[Harness, int]:
    harness = Harness(config, now=2000.0)
    saved = flowstate.replay(data, BOOT)
    return harness, flowstate.restore(harness.nat.table, saved, harness.now)


def established_download(harness: Harness, host: str, port: int) -> int:
    """A LAN host's connection to the server's port 80, handshake done; its external port."""
    syn = harness.one(LAN, IP(src=host, dst=SERVER) / TCP(sport=port, dport=80, flags="S"), WAN)
    ext = int(syn[TCP].sport)
    harness.one(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=ext, flags="SA"), LAN)
    harness.one(LAN, IP(src=host, dst=SERVER) / TCP(sport=port, dport=80, flags="A"), WAN)
    return ext


def server_segment(ext_port: int) -> IP:
    return IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=ext_port, flags="A", seq=5000) / b"x"


def test_a_restored_download_takes_the_servers_next_segment(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    preserved = established_download(before, HOST, 40000)
    moved = established_download(before, HOST2, 40000)  # the port is taken: another one
    assert preserved == 40000 and moved != 40000
    data = flowstate.header(BOOT) + journal.take()

    fresh = Harness(demo_config, now=2000.0)
    fresh.nothing(WAN, server_segment(moved))  # finding 3: without the state, filtered

    after, restored = restarted(demo_config, data)
    assert restored == 2
    for ext, host in ((preserved, HOST), (moved, HOST2)):
        frame = after.one(WAN, server_segment(ext), LAN)
        assert (frame[IP].dst, frame[TCP].dport) == (host, 40000)
    mapping = after.nat.table.lookup_out(TCP_PROTO, bytes([10, 77, 0, 11]), 40000)
    assert mapping is not None and mapping.state is TcpState.ESTABLISHED


def test_udp_and_ping_flows_are_restored_too(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    udp = before.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53), WAN)
    echo = before.one(LAN, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=77), WAN)
    after, restored = restarted(demo_config, flowstate.header(BOOT) + journal.take())
    assert restored == 2
    reply = IP(src=SERVER, dst=WAN_IP) / UDP(sport=53, dport=udp[UDP].sport)
    assert after.one(WAN, reply, LAN)[UDP].dport == 5000
    pong = IP(src=SERVER, dst=WAN_IP) / ICMP(type=0, id=echo[ICMP].id)
    assert after.one(WAN, pong, LAN)[ICMP].id == 77


def test_a_timer_restarts_from_the_restore(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    before.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53), WAN)
    after, _ = restarted(demo_config, flowstate.header(BOOT) + journal.take())
    udp_timeout = demo_config.nat.timeouts.udp
    after.advance(after.now + udp_timeout - 1)
    assert len(after.nat.table) == 1
    after.advance(after.now + 2)
    assert len(after.nat.table) == 0


def test_closed_and_expired_sessions_are_not_restored(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    ext = established_download(before, HOST, 40000)
    before.one(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=ext, flags="R"), LAN)
    before.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=5000, dport=53), WAN)
    before.advance(before.now + 10_000)  # everything expires
    assert len(before.nat.table) == 0
    assert flowstate.replay(flowstate.header(BOOT) + journal.take(), BOOT) == []


def test_a_torn_record_and_another_boots_file_are_ignored(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    established_download(before, HOST, 40000)
    data = flowstate.header(BOOT) + journal.take()
    assert len(flowstate.replay(data + data[-5:], BOOT)) == 1  # killed mid-write
    assert flowstate.replay(data, "another-boot") == []
    assert flowstate.replay(b"garbage", BOOT) == []


def test_a_restored_session_whose_port_is_taken_is_left_out(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    established_download(before, HOST, 40000)
    data = flowstate.header(BOOT) + journal.take()
    after = Harness(demo_config, now=2000.0)
    established_download(after, HOST2, 40000)  # took 40000 first
    saved = flowstate.replay(data, BOOT)
    assert flowstate.restore(after.nat.table, saved, after.now) == 0
    assert len(after.nat.table) == 1


def test_a_snapshot_says_what_the_journal_says(demo_config: ApplianceConfig) -> None:
    before, journal = journalled(demo_config)
    for port in range(40000, 40010):
        established_download(before, HOST, port)
    ext = established_download(before, HOST2, 41000)
    before.one(WAN, IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=ext, flags="R"), LAN)
    from_journal = flowstate.replay(flowstate.header(BOOT) + journal.take(), BOOT)
    snapshot = flowstate.snapshot(before.nat.table.all_sessions())
    from_snapshot = flowstate.replay(flowstate.header(BOOT) + snapshot, BOOT)
    assert len(from_journal) == 11  # the reset one stays, closed, for its transitory timeout
    states = [flowstate.decode(record).state for record in from_journal]
    assert states.count(TcpState.CLOSED) == 1
    assert sorted(from_journal) == sorted(from_snapshot)


def test_a_packet_of_an_existing_flow_writes_nothing(demo_config: ApplianceConfig) -> None:
    """The cost per packet: records come from new sessions and state changes only."""
    before, journal = journalled(demo_config)
    ext = established_download(before, HOST, 40000)
    journal.take()
    for seq in range(20):
        data = IP(src=SERVER, dst=WAN_IP) / TCP(sport=80, dport=ext, flags="A", seq=seq) / b"x"
        before.one(WAN, data, LAN)
        before.one(LAN, IP(src=HOST, dst=SERVER) / TCP(sport=40000, dport=80, flags="A"), WAN)
    assert journal.take() == b""


def test_the_file_is_compacted_within_bounds(demo_config: ApplianceConfig, tmp_path: Path) -> None:
    harness = Harness(demo_config)
    state = FlowStateFile(str(tmp_path), print)
    assert state.open(harness.nat.table, harness.now).startswith("flows: restored 0 of 0")
    for n in range(3000):  # short flows: each one a SAVED and, expired, a REMOVED record
        harness.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=10000 + n, dport=53), WAN)
        harness.advance(harness.now + demo_config.nat.timeouts.udp + 1)
        state.flush()
        state.maintain(harness.nat.table)
    established_download(harness, HOST, 40000)
    state.flush()
    records = (os.path.getsize(state.path) - len(flowstate.header(state.boot))) / 18
    assert records <= 2 * len(harness.nat.table) + flowstate.COMPACT_SLACK
    again = Harness(demo_config, now=5000.0)
    line = FlowStateFile(str(tmp_path), print).open(again.nat.table, again.now)
    assert line.startswith("flows: restored 1 of 1"), line


def test_replay_gives_the_last_word_on_each_session_newest_first(
    demo_config: ApplianceConfig,
) -> None:
    before, journal = journalled(demo_config)
    for port in (40000, 40001, 40002):
        before.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=port, dport=53), WAN)
    before.advance(before.now + demo_config.nat.timeouts.udp + 1)  # all three go
    before.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=40001, dport=53), WAN)  # one is back
    before.one(LAN, IP(src=HOST, dst=SERVER) / UDP(sport=40005, dport=53), WAN)
    live = flowstate.replay(flowstate.header(BOOT) + journal.take(), BOOT)
    assert [flowstate.decode(record).int_port for record in live] == [40005, 40001]


def test_a_limited_restore_takes_established_connections_first(
    demo_config: ApplianceConfig,
) -> None:
    """After the memory limit killed the appliance, only part of its table comes back: the
    connections that would break without it, before flows that open again by themselves."""
    before, journal = journalled(demo_config)
    ext = established_download(before, HOST, 40000)
    for port in range(20000, 20050):  # a flood of new flows after it
        before.one(LAN, IP(src=HOST2, dst=SERVER) / UDP(sport=port, dport=9), WAN)
    live = flowstate.replay(flowstate.header(BOOT) + journal.take(), BOOT)
    after = Harness(demo_config, now=2000.0)
    assert flowstate.restore(after.nat.table, live, after.now, limit=5) == 5
    assert len(after.nat.table) == 5
    after.one(WAN, server_segment(ext), LAN)  # the download goes on
    fresh = Harness(demo_config, now=2000.0)
    assert flowstate.restore(fresh.nat.table, live, fresh.now) == 51  # no limit: all of them


def test_the_restore_limit_is_half_the_memory_left_under_the_cgroups(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    (tmp_path / "natvm").mkdir()
    own.write_text("0::/natvm\n")
    (tmp_path / "natvm/memory.max").write_text("10485760\n")
    (tmp_path / "natvm/memory.current").write_text("2097152\n")
    assert restore_limit(str(own), str(tmp_path), session_bytes=400) == (8 << 20) // 2 // 400
    (tmp_path / "natvm/memory.max").write_text("max\n")
    assert restore_limit(str(own), str(tmp_path)) is None
    own.write_text("12:memory:/old-style\n")  # cgroup v1 only: no limit known
    assert restore_limit(str(own), str(tmp_path)) is None
