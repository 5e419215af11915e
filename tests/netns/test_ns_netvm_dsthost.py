"""Netvm mode resolves the names of ``dsthost`` rules itself: a client whose rules accept TCP
to ``dsthost=natvm.test`` only (policy drop) fetches a page from the address dnsmasq gives for
that name and is refused by another server; natvm's query reached dnsmasq from natvm's own WAN
address, with no kernel IP stack to send it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.netns.test_ns_netvm_rules import fetch, netvm_with_rules
from tests.support.fixtures import services_fixture
from tests.support.routers import HostAppliance
from tests.support.services import DNS_NAME, Services
from tests.support.topology import (
    APPLIANCE_WAN,
    SERVER_A,
    SERVER_B,
    NetVmTopology,
    netvm_topology,
    session_prefix,
    wait_for,
)

pytestmark = pytest.mark.netns

RULES = {"policy": "drop", "0000": f"action=accept dsthost={DNS_NAME} proto=tcp"}
RESOLVE_WAIT = 10.0  # the first query leaves at the first tick, within a second of the start


@pytest.fixture(scope="module")
def topology(required_tools: None) -> Iterator[NetVmTopology]:
    with netvm_topology(session_prefix() + "dsthost-", 2) as built:  # the topology needs 2
        yield built


services = services_fixture("module")


@pytest.fixture(scope="module")
def nat(
    topology: NetVmTopology, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostAppliance]:
    """The appliance with the one client and its rules; dnsmasq runs before it starts."""
    yield from netvm_with_rules(topology, tmp_path_factory.mktemp("dsthost"), RULES, clients=1)


def resolved_line(nat: HostAppliance) -> str | None:
    pattern = re.compile(rf"dns: {re.escape(DNS_NAME)} -> \S+ \(ttl \d+ s\)")
    return next((line for line in nat.output() if pattern.fullmatch(line)), None)


def test_a_dsthost_rule_lets_the_client_reach_that_host_only(
    topology: NetVmTopology, nat: HostAppliance, services: Services
) -> None:
    wait_for(lambda: resolved_line(nat) is not None, "natvm's dns line", RESOLVE_WAIT)
    # dnsmasq's own records have TTL 0: clamped, so natvm does not ask again at once
    assert resolved_line(nat) == f"dns: {DNS_NAME} -> {services.dns_answer} (ttl 60 s)"
    log = services.dnsmasq_log.read_text()
    assert f"query[A] {DNS_NAME} from {APPLIANCE_WAN}" in log
    ns = topology.clients[0].ns
    status, body, _ = fetch(topology, ns, 80, SERVER_B)
    assert status == 0 and body.encode() == services.wan_index, body
    status, error, took = fetch(topology, ns, 80, SERVER_A)
    assert status == 7 and took < 5, (status, error, took)  # ICMP 3/13: refused at once
    assert nat.counter("drop_dns-mismatched") == 0 and nat.counter("drop_dns-malformed") == 0
