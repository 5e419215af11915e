"""Netvm mode in namespaces: the appliance as a Qubes-style net VM serving four client namespaces,
each on a vif-like veth of its own (see ``topology.build_netvm``), with real clients: ping,
curl, dig, and a download that outlives another client's detach."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support import CONFIG, REPO
from tests.support.fixtures import services_fixture
from tests.support.routers import HostAppliance
from tests.support.services import BULK_SIZE, Services
from tests.support.topology import (
    APPLIANCE_WAN,
    CLIENT_GATEWAY,
    CLIENT_SUBNET,
    SERVER_A,
    VIF_MAC,
    Capture,
    Host,
    NetVmTopology,
    inject,
    netvm_topology,
    session_prefix,
    wait_for,
)

pytestmark = pytest.mark.netns

CLIENTS = 4
FIRST = "10.137.0.11"  # the first client's address (build_netvm numbers them from .11)
COUNTER_WAIT = 5.0  # the appliance prints its counters every second


@pytest.fixture(scope="module")
def topology(required_tools: None) -> Iterator[NetVmTopology]:
    with netvm_topology(session_prefix() + "netvm-", CLIENTS) as built:
        yield built


services = services_fixture("module")


def netvm_config(path: Path) -> Path:
    """The tier's config in netvm mode: clients in 10.137.0.0/16 with the gateway 10.137.0.1,
    dnsmasq on the WAN side as the upstream DNS server, TCP 8080 forwarded to the first client's
    web server."""
    document = copy.deepcopy(json.loads(CONFIG.read_text()))
    lan = document["RunConfig"]["Nics"][1]
    lan["IPAddress"], lan["NetMask"] = CLIENT_GATEWAY, CLIENT_SUBNET.split("/")[1]
    nat = document["ManifestPassthrough"]["nat"]
    forward = {"protocol": "tcp", "external_port": "8080", "lan_host": FIRST, "lan_port": 80}
    nat.update(netvm=True, dns_servers=[SERVER_A], port_forwards=[forward])
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def nat(
    topology: NetVmTopology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostAppliance]:
    """The appliance in netvm mode, the clients named on its command line."""
    config = netvm_config(tmp_path_factory.mktemp("netvm") / "ops-config.json")
    clients = [
        f"{vif}={client.address},{client.mac}"
        for vif, client in zip(topology.vifs, topology.clients, strict=True)
    ]
    appliance = HostAppliance(topology, config, [arg for c in clients for arg in ("--client", c)])
    appliance.start()
    yield appliance
    status = appliance.stop()
    assert status == 0, f"exit status {status} on SIGTERM:\n" + "\n".join(appliance.output())


def test_every_client_pings_and_fetches_a_page(
    topology: NetVmTopology, nat: HostAppliance, services: Services
) -> None:
    for client in topology.clients:
        out = topology.run(client.ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", SERVER_A)
        assert " 0% packet loss" in out.stdout, out.stdout
        url = f"http://{SERVER_A}/index.html"
        body = topology.run(client.ns, "curl", "-sS", "--max-time", "20", url).stdout
        assert body.encode() == services.wan_index
    # The web server saw every client as the WAN address.
    log = (services.dnsmasq_log.parent / "http-wan.log").read_text()
    assert log.count(f"{APPLIANCE_WAN} - -") >= CLIENTS and "10.137." not in log


def test_a_client_pings_its_gateway(topology: NetVmTopology, nat: HostAppliance) -> None:
    out = topology.run(topology.clients[0].ns, "ping", "-c", "1", "-W", "2", CLIENT_GATEWAY)
    assert " 0% packet loss" in out.stdout, out.stdout


def udp_frame(client: Host, source: str, payload: bytes) -> bytes:
    ip = IP(src=source, dst=SERVER_A) / UDP(sport=40400, dport=9) / payload
    return bytes(Ether(dst=VIF_MAC, src=client.mac) / ip)


def test_a_spoofed_source_is_dropped_and_counted(
    topology: NetVmTopology, nat: HostAppliance
) -> None:
    sender, other = topology.clients[0], topology.clients[1]
    before = nat.counter("drop_spoofed-source")
    with Capture(topology.wan.ns, topology.wan.ifname) as wan:
        inject(sender.ns, sender.ifname, [udp_frame(sender, other.address, b"spoofed")])
        inject(sender.ns, sender.ifname, [udp_frame(sender, sender.address, b"genuine")])
        frames = wan.received(
            lambda fs: any(f.haslayer(UDP) and bytes(f[UDP].payload) == b"genuine" for f in fs)
        )
    payloads = [bytes(f[UDP].payload) for f in frames if f.haslayer(UDP)]
    assert b"genuine" in payloads and b"spoofed" not in payloads
    wait_for(
        lambda: nat.counter("drop_spoofed-source") > before, "the spoofing counter", COUNTER_WAIT
    )


def test_a_client_cannot_reach_another(topology: NetVmTopology, nat: HostAppliance) -> None:
    sender, target = topology.clients[0], topology.clients[1]
    before = nat.counter("drop_client-to-client")
    with Capture(target.ns, target.ifname) as seen:
        out = topology.run(
            sender.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", target.address, check=False
        )
        assert out.returncode != 0 and " 100% packet loss" in out.stdout, out.stdout
        assert [f for f in seen.received(timeout=1.0) if f.haslayer(IP)] == []
    wait_for(
        lambda: nat.counter("drop_client-to-client") >= before + 2,
        "the client-to-client counter",
        COUNTER_WAIT,
    )


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
@pytest.mark.parametrize("virtual", ["10.139.1.1", "10.139.1.2"])
def test_dns_to_the_virtual_address_is_answered_by_the_upstream(
    topology: NetVmTopology, nat: HostAppliance, services: Services, virtual: str, transport: str
) -> None:
    client = topology.clients[2]
    out = topology.run(
        client.ns,
        "dig", f"@{virtual}", services.dns_name, "+short", "+time=2", "+tries=2", transport,
    )  # fmt: skip
    assert out.stdout.split() == [services.dns_answer]
    log = services.dnsmasq_log.read_text()
    assert f"query[A] {services.dns_name} from {APPLIANCE_WAN}" in log


def test_a_port_forward_reaches_its_client(
    topology: NetVmTopology, nat: HostAppliance, services: Services
) -> None:
    assert topology.clients[0].address == FIRST
    url = f"http://{APPLIANCE_WAN}:8080/index.html"
    body = topology.run(topology.wan.ns, "curl", "-sS", "--max-time", "20", url).stdout
    assert body.encode() == services.lan_index


def test_a_client_the_engine_refuses_is_one_clear_line(
    topology: NetVmTopology, nat: HostAppliance
) -> None:
    """A client outside the clients' subnet ends a start with one line naming it."""
    command = nat.command[: nat.command.index("--client")]
    vif, client = topology.vifs[1], topology.clients[1]
    command += ["--client", f"{vif}=192.168.5.5,{client.mac}"]
    result = topology.run(topology.router, *command, check=False, cwd=REPO)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 1
    assert lines == [
        f"natvm: error: client {vif} (192.168.5.5): not a client address of {CLIENT_SUBNET} "
        f"(other than the gateway {CLIENT_GATEWAY})"
    ]


def test_detaching_a_client_leaves_anothers_download_intact(
    topology: NetVmTopology, nat: HostAppliance, services: Services, tmp_path: Path
) -> None:
    staying = topology.clients[3]
    target = tmp_path / "bulk.bin"
    url = f"http://{SERVER_A}/bulk.bin"
    # About 4 s at 1 MB/s: the detach falls in the middle of it.
    download = topology.spawn(
        staying.ns,
        "curl", "-sS", "--limit-rate", "1M", "--max-time", "60", "-o", str(target), url,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for(lambda: target.exists() and target.stat().st_size > 256 << 10, "the download", 10)
    # Removing the vif takes the client's link away, as netback does when a VM detaches.
    topology.run(topology.router, "ip", "link", "del", topology.vifs[0])
    wait_for(
        lambda: any(line.startswith(f"detached {topology.vifs[0]}") for line in nat.output()),
        "the appliance to detach the client",
        COUNTER_WAIT,
    )
    assert target.stat().st_size < BULK_SIZE, "the download ended before the detach"
    output, _ = download.communicate(timeout=60)
    assert download.returncode == 0, output
    assert hashlib.sha256(target.read_bytes()).hexdigest() == services.bulk_sha256
    wait_for(lambda: nat.counter("clients") == CLIENTS - 1, "clients=3", COUNTER_WAIT)
    out = topology.run(staying.ns, "ping", "-c", "1", "-W", "2", SERVER_A)
    assert " 0% packet loss" in out.stdout
