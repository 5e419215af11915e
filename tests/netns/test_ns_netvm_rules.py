"""Netvm mode's firewall rules in namespaces: a client whose rules (given at start with
``--firewall IP=FILE``, the keys QubesDB holds under /qubes-firewall/IP/) drop TCP port 80
cannot fetch a page on port 80, learns it at once from ICMP administratively prohibited, and
still fetches one on port 8080; a client without rules fetches both."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP

from tests.netns.test_ns_netvm import netvm_config
from tests.support import REPO
from tests.support import services as services_module
from tests.support.fixtures import services_fixture
from tests.support.routers import HostAppliance
from tests.support.services import Services
from tests.support.topology import (
    CLIENT_GATEWAY,
    SERVER_A,
    Capture,
    NetVmTopology,
    netvm_topology,
    session_prefix,
    wait_for,
)

pytestmark = pytest.mark.netns

RULES = {"policy": "accept", "0000": "action=drop proto=tcp dstports=80-80"}
OTHER_PORT = services_module.OTHER_HTTP_PORT
COUNTER_WAIT = 5.0


@pytest.fixture(scope="module")
def topology(required_tools: None) -> Iterator[NetVmTopology]:
    with netvm_topology(session_prefix() + "rules-", 2) as built:
        yield built


services = services_fixture("module")


@pytest.fixture(scope="module")
def second_web_server(topology: NetVmTopology, services: Services) -> Iterator[None]:
    with services_module.second_web_server(topology, services):
        yield


@pytest.fixture(scope="module")
def nat(
    topology: NetVmTopology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostAppliance]:
    """The appliance with both clients, rules for the first only."""
    yield from netvm_with_rules(topology, tmp_path_factory.mktemp("rules"), RULES, clients=2)


def netvm_with_rules(
    topology: NetVmTopology, folder: Path, rules: dict[str, str], clients: int
) -> Iterator[HostAppliance]:
    """natvm in netvm mode with the topology's first `clients` clients, `rules` (QubesDB's
    keys under /qubes-firewall/<ip>/) for the first; stopped cleanly after the yield."""
    config = netvm_config(folder / "ops-config.json")
    rules_file = folder / "rules.json"
    rules_file.write_text(json.dumps(rules))
    arguments = ["--firewall", f"{topology.clients[0].address}={rules_file}"]
    for vif, client in list(zip(topology.vifs, topology.clients, strict=True))[:clients]:
        arguments += ["--client", f"{vif}={client.address},{client.mac}"]
    appliance = HostAppliance(topology, config, arguments)
    appliance.start()
    yield appliance
    status = appliance.stop()
    assert status == 0, f"exit status {status} on SIGTERM:\n" + "\n".join(appliance.output())


def fetch(
    topology: NetVmTopology, ns: str, port: int, server: str = SERVER_A
) -> tuple[int, str, float]:
    """curl's exit status, its error line and how long it took."""
    started = time.monotonic()
    url = f"http://{server}:{port}/index.html"
    out = topology.run(ns, "curl", "-sS", "--max-time", "20", url, check=False)
    return out.returncode, out.stderr.strip() or out.stdout, time.monotonic() - started


def test_a_dropped_port_is_refused_at_once_and_another_port_works(
    topology: NetVmTopology, nat: HostAppliance, services: Services, second_web_server: None
) -> None:
    client = topology.clients[0]
    before = nat.counter("drop_firewall")
    with Capture(client.ns, client.ifname) as seen:
        status, error, took = fetch(topology, client.ns, 80)
        answers = seen.received(lambda fs: any(f.haslayer(ICMP) for f in fs), timeout=2.0)
    # Linux turns ICMP 3/13 into EHOSTUNREACH: curl fails at once instead of timing out
    assert status == 7 and took < 5, (status, error, took)
    icmp = [f for f in answers if f.haslayer(ICMP)]
    assert icmp and (icmp[0][ICMP].type, icmp[0][ICMP].code) == (3, 13)
    assert (icmp[0][IP].src, icmp[0][IP].dst) == (CLIENT_GATEWAY, client.address)
    wait_for(lambda: nat.counter("drop_firewall") > before, "the firewall counter", COUNTER_WAIT)
    status, body, _ = fetch(topology, client.ns, OTHER_PORT)
    assert status == 0 and body.encode() == services.wan_index


def test_a_client_without_rules_fetches_on_both_ports(
    topology: NetVmTopology, nat: HostAppliance, services: Services, second_web_server: None
) -> None:
    for port in (80, OTHER_PORT):
        status, body, _ = fetch(topology, topology.clients[1].ns, port)
        assert status == 0 and body.encode() == services.wan_index, (port, body)


def test_rules_that_do_not_parse_stop_the_start_with_one_line(
    topology: NetVmTopology, nat: HostAppliance, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policy": "drop", "0000": "action=drop proto=icmp dstports=80"}))
    command = [*nat.command[: nat.command.index("--firewall")], "--firewall"]
    command.append(f"{topology.clients[0].address}={bad}")
    result = topology.run(topology.router, *command, check=False, cwd=REPO)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == [
        f"natvm: error: --firewall {bad}:0000: dstports with proto=icmp"
    ]
