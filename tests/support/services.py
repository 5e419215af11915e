"""Servers the traffic checks talk to, run in a ``Topology``'s namespaces.

- WAN namespace: an HTTP server (a small page and a multi-megabyte file) on all server addresses,
  dnsmasq on 198.51.100.10:53 answering ``natvm.test``, and an iperf3 server on 198.51.100.10.
- lan-a: an HTTP server on port 80, the target of the TCP port forward and of hairpinning.
- On request (`second_web_server`): the WAN side's page on port 8080 too, for firewall rules
  that tell ports apart.

They are ``Topology.spawn``-ed, so ``Topology.destroy`` ends them even if a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.topology import SERVER_A, SERVER_B, Topology

BULK_SIZE = 4 << 20
IPERF_PORT = 5201
OTHER_HTTP_PORT = 8080
DNS_NAME = "natvm.test"


@dataclass(frozen=True)
class Services:
    """What the servers serve, and where dnsmasq logs the queries it saw."""

    wan_index: bytes
    lan_index: bytes
    bulk_sha256: str
    dnsmasq_log: Path
    dns_name: str
    dns_answer: str
    iperf_port: int


@contextlib.contextmanager
def running_services(topology: Topology, root: Path) -> Iterator[Services]:
    """Start the servers with their content under ``root``; yield once every one listens."""
    wan_dir, lan_dir = root / "wan", root / "lan-a"
    wan_dir.mkdir()
    lan_dir.mkdir()
    served = Services(
        wan_index=b"natvm WAN server\n",
        lan_index=b"natvm LAN server at lan-a\n",
        bulk_sha256=_write_bulk(wan_dir / "bulk.bin"),
        dnsmasq_log=root / "dnsmasq.log",
        dns_name=DNS_NAME,
        dns_answer=SERVER_B,
        iperf_port=IPERF_PORT,
    )
    (wan_dir / "index.html").write_bytes(served.wan_index)
    (lan_dir / "index.html").write_bytes(served.lan_index)
    with contextlib.ExitStack() as logs:
        log = {name: logs.enter_context((root / f"{name}.log").open("wb")) for name in _NAMES}
        http = [sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory"]
        _spawn(topology, topology.wan.ns, log["http-wan"], *http, str(wan_dir))
        _spawn(topology, topology.lan_a.ns, log["http-lan"], *http, str(lan_dir))
        _spawn(topology, topology.wan.ns, log["iperf"], "iperf3", "-s", "-B", SERVER_A,
               "-p", str(IPERF_PORT))  # fmt: skip
        _spawn(
            topology, topology.wan.ns, log["dnsmasq"],
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--bind-interfaces", f"--listen-address={SERVER_A}",
            f"--pid-file={root / 'dnsmasq.pid'}", "--user=root",
            f"--address=/{DNS_NAME}/{SERVER_B}", "--log-queries", "--log-facility=-",
        )  # fmt: skip
        wait_listening(topology, topology.wan.ns, "t", 80)
        wait_listening(topology, topology.lan_a.ns, "t", 80)
        wait_listening(topology, topology.wan.ns, "t", IPERF_PORT)
        wait_listening(topology, topology.wan.ns, "u", 53)
        yield served


_NAMES = ("http-wan", "http-lan", "iperf", "dnsmasq")


def _write_bulk(path: Path) -> str:
    bulk = random.Random(4787).randbytes(BULK_SIZE)
    path.write_bytes(bulk)
    return hashlib.sha256(bulk).hexdigest()


def _spawn(topology: Topology, ns: str, log: object, *argv: str) -> None:
    topology.spawn(ns, *argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_listening(topology: Topology, ns: str, proto: str, port: int, timeout: float = 10) -> None:
    """Wait until something in ``ns`` listens on ``port`` (``proto`` "t" for TCP, "u" for UDP)."""
    deadline = time.monotonic() + timeout
    while not topology.run(ns, "ss", "-Hln" + proto, f"sport = :{port}").stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {proto} port {port} in {ns}")
        time.sleep(0.05)


@contextlib.contextmanager
def second_web_server(topology: Topology, services: Services) -> Iterator[int]:
    """The WAN side's web server on port 8080 as well (the same page as on port 80); yields
    the port."""
    directory = services.dnsmasq_log.parent / f"www-{OTHER_HTTP_PORT}"
    directory.mkdir(exist_ok=True)
    (directory / "index.html").write_bytes(services.wan_index)
    server = topology.spawn(
        topology.wan.ns, sys.executable, "-m", "http.server", str(OTHER_HTTP_PORT),
        "--bind", "0.0.0.0", "--directory", str(directory),
    )  # fmt: skip
    try:
        wait_listening(topology, topology.wan.ns, "t", OTHER_HTTP_PORT)
        yield OTHER_HTTP_PORT
    finally:
        server.terminate()
        server.wait(timeout=10)
