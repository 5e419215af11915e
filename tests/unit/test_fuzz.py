"""The fuzzer's short run, as CI runs it: a fixed seed and number of frames through the engine,
every saved input replayed (the crash inputs of fixed bugs among them), and proof that the
fuzzer's oracle can fail and its programs reach what they are meant to. `invoke fuzz` is the
long, coverage-guided run."""

import pytest

from appliance.engine import Offload, Side
from appliance.flows import internal_key
from fuzz import campaign, oracle, seeds, wire
from fuzz.program import HOSTS, LAN_IP, LAN_MAC, SERVER, WAN_IP, WAN_MAC, Program, run_input

SHORT_RUN_FRAMES = 200_000  # 10-25 s here, on a shared 2-core machine


def test_a_short_campaign_finds_nothing() -> None:
    report = campaign.random_campaign(
        SHORT_RUN_FRAMES, seed=1, corpus=campaign.load_corpus(campaign.CORPUS)
    )
    print(report.line())
    assert report.frames >= SHORT_RUN_FRAMES
    assert report.emitted > SHORT_RUN_FRAMES // 20


@pytest.mark.parametrize(
    "path", sorted(campaign.CORPUS.glob("crash-*")), ids=lambda path: path.name
)
def test_inputs_that_found_bugs_pass(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    assert run_input(path.read_bytes()).frames > 0


def test_the_seed_corpus_reaches_every_part_of_the_engine() -> None:
    reached: set[str] = set()
    for data in campaign.load_corpus(campaign.CORPUS):
        program = Program(data)
        program.run()
        reached |= seeds.features(program)
    wanted = {
        "nat:tcp", "nat:udp", "nat:icmp", "aggregates", "icmp-errors-sent",
        "tcp:ESTABLISHED", "tcp:SYN_OUT_ANSWERED", "tcp:CLOSED", "refused:table-full",
        "drop:filtered", "drop:fragment-overlap", "drop:icmp-error-no-mapping",
        "drop:unsupported-ethertype", "drop:arp-unresolved", "drop:bad-ip-checksum",
        "drop:spoofed-source", "drop:not-our-mac", "drop:truncated-icmp-error",
    }  # fmt: skip
    assert wanted <= reached, f"not reached: {sorted(wanted - reached)}"


def _view() -> oracle.View:
    from ipaddress import IPv4Network

    macs = {Side.WAN: WAN_MAC, Side.LAN: LAN_MAC}
    return oracle.View(
        macs, {Side.WAN: WAN_IP, Side.LAN: LAN_IP}, IPv4Network("10.77.0.0/24"), 1500
    )


def _udp_to_host(payload: bytes = b"data") -> bytes:
    host = next(iter(HOSTS))
    packet = wire.ipv4(SERVER, host, wire.UDP, wire.udp(53, 5000, payload), ttl=63)
    wire.fill_l4(packet)
    return wire.ethernet(HOSTS[host], LAN_MAC, wire.ETHERTYPE_IPV4, packet)


def test_the_oracle_accepts_a_sound_frame_and_rejects_broken_ones() -> None:
    view, good = _view(), _udp_to_host()
    oracle.check_emitted(view, Side.LAN, good, None, trusted=True, quotes=True)
    broken = {
        "bad L4": good[:-1] + bytes([good[-1] ^ 1]),
        "IP header checksum": good[:24] + bytes([good[24] ^ 1]) + good[25:],
        "total length": good + b"\x00",
        "source MAC": good[:6] + bytes(6) + good[12:],
        "not a LAN host": good[:30] + SERVER + good[34:],
    }
    for name, frame in broken.items():
        with pytest.raises(AssertionError):
            oracle.check_emitted(view, Side.LAN, frame, None, trusted=True, quotes=True)
        print(f"rejected: {name}")
    # Untrusted (a lying DATA_VALID came earlier): only the L4 checksum is let pass.
    oracle.check_emitted(view, Side.LAN, broken["bad L4"], None, trusted=False, quotes=False)


def test_the_oracle_completes_a_partial_checksum_before_judging() -> None:
    view, good = _view(), bytearray(_udp_to_host(b"x" * 100))
    partial = wire.pseudo_sum(bytes(good[26:30]), bytes(good[30:34]), wire.UDP, len(good) - 34)
    good[40:42] = partial.to_bytes(2, "big")
    oracle.check_emitted(view, Side.LAN, bytes(good), Offload(True), trusted=True, quotes=True)
    good[40] ^= 0x10  # a partial sum for other addresses: wrong once completed
    with pytest.raises(AssertionError, match="checksum"):
        oracle.check_emitted(view, Side.LAN, bytes(good), Offload(True), trusted=True, quotes=True)


def test_the_oracle_finds_a_broken_table() -> None:
    program = Program(bytes.fromhex("00" * 40))  # the demo config; LAN hosts send TCP
    program.run()
    nat = program.nat
    oracle.check_state(nat, program.now)
    mapping = next(iter(nat.table.by_internal.values()))
    nat.table.by_external[mapping.proto].put(mapping.ext_port, None)
    with pytest.raises(AssertionError, match="by direction"):
        oracle.check_state(nat, program.now)
    nat.table.by_external[mapping.proto].put(mapping.ext_port, mapping)
    nat.table.session_count += 1
    with pytest.raises(AssertionError, match="session count"):
        oracle.check_state(nat, program.now)
    nat.table.session_count -= 1
    del nat.table.by_internal[internal_key(mapping.proto, mapping.int_addr, mapping.int_port)]
    with pytest.raises(AssertionError):
        oracle.check_state(nat, program.now)
