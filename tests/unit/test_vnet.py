"""The shell's pure parts: the virtio_net_hdr codec (what the kernel says of a frame, as the
engine's Offload), its memo, and how long the loop sleeps."""

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from appliance.config import ApplianceConfig
from appliance.engine import Nat, Offload
from appliance.shell import (
    HEADER_MEMO,
    MAX_SOCKET_BUFFER,
    MIN_SOCKET_BUFFER,
    NO_VNET_HDR,
    VNET_HDR,
    Shell,
    decode_vnet_hdr,
    encode_vnet_hdr,
    memory_total,
    poll_timeout_ms,
    socket_buffer_size,
)


def test_plain_and_data_valid_frames_have_no_offload() -> None:
    assert decode_vnet_hdr(NO_VNET_HDR) == (None, False)
    assert decode_vnet_hdr(VNET_HDR.pack(2, 0, 0, 0, 0, 0)) == (None, True)


def test_tcp_aggregate_round_trip() -> None:
    header = VNET_HDR.pack(1, 0x81, 66, 1448, 34, 16)
    offload, valid = decode_vnet_hdr(header)
    assert (offload, valid) == (Offload(True, 1448, ecn=True), False)
    frame = bytes(Ether() / IP() / TCP(options=[("NOP", None)] * 12) / (b"x" * 5000))
    assert encode_vnet_hdr(frame, offload) == VNET_HDR.pack(1, 0x81, 14 + 20 + 32, 1448, 34, 16)


def test_partial_udp_checksum_round_trip() -> None:
    offload, _ = decode_vnet_hdr(VNET_HDR.pack(1, 0, 0, 0, 34, 6))
    assert offload == Offload(needs_csum=True)
    frame = bytes(Ether() / IP() / UDP() / b"x")
    assert encode_vnet_hdr(frame, offload) == VNET_HDR.pack(1, 0, 0, 0, 34, 6)
    assert encode_vnet_hdr(frame, None) == NO_VNET_HDR


@pytest.mark.parametrize("gso_type", [3, 4, 5])  # UDP (UFO), TCPv6, UDP_L4
def test_other_segmentation_types_are_refused(gso_type: int) -> None:
    with pytest.raises(ValueError):
        decode_vnet_hdr(VNET_HDR.pack(1, gso_type, 54, 1400, 34, 6))


def test_shell_remembers_decoded_headers_within_a_bound(demo_config: ApplianceConfig) -> None:
    shell = Shell(Nat(demo_config, bytes(6), bytes(6)), {}, lambda line: None, 10.0)
    aggregate = VNET_HDR.pack(1, 0x81, 66, 1448, 34, 16)
    assert shell._decode(aggregate) == (Offload(True, 1448, ecn=True), False)
    assert shell.headers[aggregate] == (Offload(True, 1448, ecn=True), False)
    assert shell._decode(VNET_HDR.pack(1, 4, 54, 1400, 34, 6)) == (None, None)  # UDP GSO
    assert shell._decode(b"\x01") == (None, None)  # a short read
    for size in range(1000):
        shell._decode(VNET_HDR.pack(1, 1, 54, size, 34, 16))
    assert len(shell.headers) <= HEADER_MEMO


def test_poll_sleeps_until_the_next_timer_unless_busy_polling() -> None:
    assert poll_timeout_ms(now=10.0, next_timer=10.5, busy_until=0.0) == 501
    assert poll_timeout_ms(now=10.0, next_timer=9.0, busy_until=0.0) == 1  # a timer is late
    assert poll_timeout_ms(now=10.0, next_timer=10.5, busy_until=10.02) == 0
    assert poll_timeout_ms(now=10.25, next_timer=10.5, busy_until=10.125) == 251


def test_socket_buffers_follow_memory_within_bounds(tmp_path: Path) -> None:
    mib = 1 << 20
    assert socket_buffer_size(92 * mib) == 92 * mib // 128  # a 128 MiB guest: 736 KiB
    assert socket_buffer_size(16 * mib) == MIN_SOCKET_BUFFER
    assert socket_buffer_size(24 << 30) == MAX_SOCKET_BUFFER  # a host
    assert socket_buffer_size(0) == MIN_SOCKET_BUFFER  # memory unknown
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       94812 kB\nMemFree:        59292 kB\n")
    assert memory_total(str(meminfo)) == 94812 * 1024
    assert memory_total(str(meminfo), "MemFree") == 59292 * 1024
    assert memory_total(str(meminfo), "MemAvailable") == 0  # absent
    assert memory_total(str(tmp_path / "missing")) == 0


def test_offloads_are_values_shown_by_their_fields() -> None:
    assert Offload(True, 1448) == Offload(True, 1448) != Offload(True, 1448, ecn=True)
    assert len({Offload(True, 1448), Offload(True, 1448)}) == 1
    assert repr(Offload(True, 1448)) == "Offload(needs_csum=True, gso_size=1448, ecn=False)"
