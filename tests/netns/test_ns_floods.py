"""Floods from the WAN do not starve the traffic of established clients (issue 14's findings).

Each test floods at the rate measured in the finding, for a few seconds and bounded, from
sources on the documentation ranges inside the WAN namespace, while a LAN client pings a WAN
server; the ping must keep its answers and a download must complete afterwards.
"""

import re
import subprocess
import sys

import pytest
import traffic
from routers import Nat
from services import Services
from topology import APPLIANCE_WAN, SERVER_A, Topology

pytestmark = pytest.mark.netns

# Tiny fragments, paced: `rate` frames per second for `seconds`, 8-byte pieces with MF set at
# offsets 1, 2, ... 8188 into each of 8 datagrams (2 sources x 4 IP ids), so none ever completes
# and each gathers thousands of pieces: the finding's flood, concentrated to act within seconds.
FRAGMENT_FLOOD = """
import socket, struct, sys, time
dst, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sources = [socket.inet_aton(f"198.51.100.{20 + i}") for i in range(2)]
target = socket.inet_aton(dst)
frames = [
    struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, ident, 0x2000 | offset, 64, 17, 0, src, target)
    + bytes(8)
    for offset in range(1, 8189)
    for src in sources
    for ident in range(1, 5)
]
batch = max(1, rate // 100)
start, sent = time.monotonic(), 0
while time.monotonic() - start < seconds:
    for _ in range(batch):
        sock.sendto(frames[sent % len(frames)], (dst, 0))
        sent += 1
    pause = start + sent / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print(sent)
"""

PING_COUNT = 40


def ping_loss_during(topo: Topology, flood_script: str, rate: int, seconds: float) -> float:
    """The LAN client's ping loss (percent) toward a WAN server while the flood runs."""
    flood = topo.spawn(
        topo.wan.ns, sys.executable, "-c", flood_script, APPLIANCE_WAN, str(rate), str(seconds),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ping = topo.run(
            topo.lan_a.ns, "ping", "-c", str(PING_COUNT), "-i", "0.1", "-W", "1", SERVER_A,
            check=False, timeout=30,
        )  # fmt: skip
    finally:
        flood.wait(timeout=seconds + 30)
    match = re.search(r"([\d.]+)% packet loss", ping.stdout)
    assert match, ping.stdout + ping.stderr
    return float(match.group(1))


def test_tiny_fragment_flood_leaves_forwarding_alone(
    topology: Topology, nat: Nat, services: Services
) -> None:
    """Finding 1: 10k frames/s of tiny fragments took 100 % of LAN pings and every download."""
    loss = ping_loss_during(topology, FRAGMENT_FLOOD, rate=10_000, seconds=6)
    print(f"ping loss under a 10k/s tiny-fragment flood: {loss:.0f} %")
    assert loss <= 10, f"{loss} % of pings lost under the fragment flood"
    assert nat.alive()
    traffic.check_http_bulk_download(topology, services)
