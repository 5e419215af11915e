"""natvm's addresses and firewall rules from QubesDB over a real vchan (issue: QubesDB and
live rules).

As Qubes does, natvm is created paused as the net VM (tests/support/xennetvm.py), its QubesDB
is started in dom0 for its domain id (tests/xen/qubesdb_server.py: vchan-socket-proxy as the
vchan server and a Python stand-in for qubesdb-daemon), then natvm runs. The database holds
natvm's uplink (an address the configuration does not have, which natvm must use) and
Qubes' rules for client A: accept, but TCP to port 80 dropped. From inside A, with the WAN
side's web servers at the other end: port 80 is refused at once (natvm answers ICMP
administratively prohibited, which Linux turns into EHOSTUNREACH), port 8080 is fetched; then
the test changes the rule in QubesDB as qubes-core-admin does (the rule, then the empty write
of /qubes-firewall/<ip>) and port 80 is fetched without a restart. Reported: the time from the
write to natvm's acknowledgement, to its log line, and to the first page. Then a rule set that
does not parse (natvm names the key, and what A can fetch stays as it was), and Qubes' "DNS
only" set (accept specialtarget=dns, policy drop: A's query is answered, its fetch refused),
and a dsthost rule (natvm resolves the name itself; A fetches from that address only).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from image import xenboot, xenhost
from tests.support.services import Services, second_web_server
from tests.support.topology import GATEWAY as WAN_GATEWAY
from tests.support.topology import SERVER_A, Topology
from tests.support.xenclients import Booted, Clients
from tests.support.xennetvm import GATEWAY, NETVM, A, NetVm, as_netvm, connected
from tests.xen.conftest import report, report_failed_boots

pytestmark = pytest.mark.xen
PYTHON = "/usr/bin/python3.11"
FOLDER = "/tmp/natvm-qubesdb"
SERVER = f"{FOLDER}/qubesdb_server.py"
DATABASE = f"{FOLDER}/db.json"
FIREWALL = f"/qubes-firewall/{A.address}"
# What qubes-core-admin writes for a net VM with one client whose firewall drops TCP port 80
# (qubes/vm/qubesvm.py create_qdb_entries, qubes/firewall.py): the rule keys, then the empty
# key that says the set is complete.
# natvm's own addresses as Qubes gives a net VM behind another one: an uplink address that is
# not the configuration's (192.0.2.2), so what natvm uses shows where it came from.
UPLINK = "192.0.2.7"
ENTRIES = {
    "/name": NETVM,
    "/qubes-vm-type": "NetVM",
    "/qubes-ip": UPLINK,
    "/qubes-netmask": "255.255.255.0",
    "/qubes-gateway": WAN_GATEWAY,
    "/qubes-primary-dns": SERVER_A,
    "/qubes-netvm-gateway": GATEWAY,
    f"{FIREWALL}/policy": "accept",
    f"{FIREWALL}/0000": "action=drop proto=tcp dstports=80-80",
    FIREWALL: "",
}
MAKEDIRS = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True)"
STOP = "import os, signal, sys; os.killpg(int(sys.argv[1]), signal.SIGTERM)"
EFFECT_TIMEOUT = 30.0


def qubesdb(clients: Clients, *argv: str) -> dict[str, object]:
    """Run the test QubesDB's script in the dom0; its JSON answer."""
    output = clients.control.run(PYTHON, SERVER, *argv, timeout=60.0)
    answer = json.loads(output.strip().splitlines()[-1])
    assert isinstance(answer, dict), output
    return answer


@pytest.fixture(scope="module")
def netvm(
    nested: xenboot.NestedXen,
    xen_host: xenhost.XenHost,
    services: Services,
    request: pytest.FixtureRequest,
) -> Iterator[NetVm]:
    clients = Clients(nested)
    clients.control.run(PYTHON, "-c", MAKEDIRS, FOLDER)
    clients.control.write(SERVER, Path(__file__).with_name("qubesdb_server.py").read_bytes())
    clients.control.write(DATABASE, json.dumps(ENTRIES))
    served: dict[str, object] = {}

    def start_qubesdb(domid: int) -> None:
        served.update(qubesdb(clients, "start", str(domid), DATABASE, FOLDER))
        report(request, f"Xen tier QubesDB: {served}")

    since = len(nested.console.lines)
    problem = as_netvm(clients, nested, start_qubesdb)
    booted: list[Booted] = []
    if not problem:
        booted = clients.boot(A)
        report_failed_boots(request, booted)
        problem = connected(clients, booted)
    yield NetVm(clients, booted, problem, since)
    clients.destroy(A.name)
    if "pid" in served:
        clients.control.run(PYTHON, "-c", STOP, str(served["pid"]), check=False)
    print(clients.control.run(PYTHON, "-c", f"print(open('{FOLDER}/log').read())", check=False))
    clients.control.run(PYTHON, "-c", f"import shutil; shutil.rmtree('{FOLDER}')", check=False)


@pytest.fixture(scope="module")
def port_8080(topology: Topology, services: Services) -> Iterator[int]:
    with second_web_server(topology, services) as port:
        yield port


def fetch(clients: Clients, port: int) -> tuple[int, str, float]:
    """busybox wget's status, its output and how long it took, from client A."""
    started = time.monotonic()
    url = f"http://{SERVER_A}:{port}/index.html"
    result = clients.run(A, f"timeout 20 wget -q -O - {url} 2>&1")
    return result.status, result.text, time.monotonic() - started


def natvm_lines(netvm: NetVm, start: int = 0) -> list[str]:
    return [line.text for line in netvm.clients.console.lines[start:] if line.source == NETVM]


def test_natvm_reads_its_rules_from_qubesdb_over_the_vchan(netvm: NetVm) -> None:
    netvm.require()
    lines = natvm_lines(netvm, netvm.since)
    connected_line = "natvm: qubesdb: connected to /local/domain/0/data/vchan/"
    assert any(line.startswith(connected_line) for line in lines), lines
    assert f"natvm: qubesdb: database read, {len(ENTRIES)} keys" in lines
    assert f"natvm: qubesdb: rules of {A.address} in force: 1 rule(s), policy accept" in lines


def test_natvm_takes_its_uplink_address_from_qubesdb(netvm: NetVm) -> None:
    """The address natvm's engine uses on the WAN is QubesDB's, not the configuration's (the
    fetches below cross the NAT on it: the WAN side's router finds it by ARP)."""
    netvm.require()
    lines = natvm_lines(netvm, netvm.since)
    taken = (
        f"natvm: qubesdb: uplink {UPLINK}/24 gateway {WAN_GATEWAY}, dns {SERVER_A},"
        f" clients' gateway {GATEWAY}"
    )
    assert taken in lines, lines
    ready = [line for line in lines if line.startswith("READY ")]
    assert ready and ready[-1].startswith(f"READY wan=eth0 {UPLINK}/24 "), ready


def test_port_80_is_refused_at_once_and_8080_fetched_then_a_live_change_opens_80(
    netvm: NetVm, services: Services, port_8080: int, request: pytest.FixtureRequest
) -> None:
    clients = netvm.require()
    before = netvm.counter("drop_firewall")
    status, output, took = fetch(clients, 80)
    # ICMP 3/13 from natvm: Linux makes it EHOSTUNREACH, at once, not the 20 s timeout
    assert status != 0 and took < 10, (status, output, took)
    assert "No route to host" in output, output
    deadline = time.monotonic() + 30  # natvm prints its stats at most every 10 s
    while netvm.counter("drop_firewall") <= before:
        assert time.monotonic() < deadline, "natvm did not count the refused connection"
        time.sleep(1)
    status, output, _ = fetch(clients, port_8080)
    assert status == 0 and services.wan_index.decode().strip() in output, output

    mark = len(clients.console.lines)
    rule = [f"{FIREWALL}/0000", "action=accept proto=tcp dstports=80-80"]
    change = {"write": [rule, [FIREWALL, ""]]}
    written = time.monotonic()
    acknowledged = qubesdb(clients, "send", FOLDER, json.dumps(change))
    assert acknowledged["acknowledged"] is True, acknowledged
    in_force = f"natvm: qubesdb: rules of {A.address} in force: 1 rule(s), policy accept"
    line = clients.console.wait_for(
        lambda line: line.source == NETVM and line.text == in_force,
        "natvm's line for the new rules",
        EFFECT_TIMEOUT,
        NETVM,
        mark,
    )
    logged = line.at + clients.console.started - written
    while True:
        status, output, _ = fetch(clients, 80)
        if status == 0 or time.monotonic() - written > EFFECT_TIMEOUT:
            break
    fetched = time.monotonic() - written
    assert status == 0 and services.wan_index.decode().strip() in output, output
    report(
        request,
        f"Xen tier QubesDB: rule change pushed and acknowledged by natvm in"
        f" {float(str(acknowledged['seconds'])):.2f} s (dom0's count); from the test's write:"
        f" natvm's log line {logged:.1f} s, the page on port 80 {fetched:.1f} s",
    )


def change_rules(netvm: NetVm, *rules: tuple[str, str], expect: str) -> None:
    """Write rule keys then the empty /qubes-firewall/<ip>, as qubes-core-admin does, and wait
    for natvm's line `expect` (from its console)."""
    clients = netvm.require()
    mark = len(clients.console.lines)
    change = {"write": [*map(list, rules), [FIREWALL, ""]]}
    acknowledged = qubesdb(clients, "send", FOLDER, json.dumps(change))
    assert acknowledged["acknowledged"] is True, acknowledged
    clients.console.wait_for(
        lambda line: line.source == NETVM and line.text == expect,
        f"natvm's line {expect!r}",
        EFFECT_TIMEOUT,
        NETVM,
        mark,
    )


@contextlib.contextmanager
def rules_of_a(netvm: NetVm, *rules: tuple[str, str], policy: str) -> Iterator[None]:
    """A's rules `rules` and `policy` for the block, then the module's own again (accept,
    port 80 accepted as the live change left it)."""
    in_force = f"natvm: qubesdb: rules of {A.address} in force: 1 rule(s), policy"
    change_rules(netvm, *rules, (f"{FIREWALL}/policy", policy), expect=f"{in_force} {policy}")
    try:
        yield
    finally:
        accept_80 = (f"{FIREWALL}/0000", "action=accept proto=tcp dstports=80-80")
        change_rules(
            netvm, accept_80, (f"{FIREWALL}/policy", "accept"), expect=f"{in_force} accept"
        )


def test_a_rule_set_that_does_not_parse_leaves_the_one_in_force_and_names_its_key(
    netvm: NetVm, port_8080: int
) -> None:
    clients = netvm.require()
    before = fetch(clients, port_8080)[0], fetch(clients, 80)[0]
    bad = f"{FIREWALL}/0000"
    change_rules(
        netvm,
        (bad, "action=drop proto=tcp dstports=eighty"),
        expect=f"natvm: qubesdb: {bad}: dstports 'eighty' is not a number from 1 to 65535;"
        " the previous rules stay",
    )
    assert (fetch(clients, port_8080)[0], fetch(clients, 80)[0]) == before


def test_specialtarget_dns_lets_dns_through_a_drop_policy_and_nothing_else(
    netvm: NetVm, services: Services, port_8080: int
) -> None:
    """Qubes' "DNS only" firewall: accept specialtarget=dns, policy drop. The query to Qubes'
    virtual server reaches dnsmasq on the WAN side from natvm's uplink address (QubesDB's);
    a page does not come."""
    clients = netvm.require()
    with rules_of_a(netvm, (f"{FIREWALL}/0000", "action=accept specialtarget=dns"), policy="drop"):
        answer = clients.run(A, f"timeout 20 nslookup -type=a {services.dns_name} 10.139.1.1")
        assert answer.status == 0, answer.text
        assert any(services.dns_answer in line for line in answer.lines), answer.text
        queries = services.dnsmasq_log.read_text()
        assert f"query[A] {services.dns_name} from {UPLINK}" in queries, queries
        status, output, took = fetch(clients, port_8080)
        assert status != 0 and "No route to host" in output and took < 10, (status, output)


def test_a_dsthost_rule_lets_through_what_natvm_resolved_the_name_to_and_nothing_else(
    netvm: NetVm, services: Services
) -> None:
    """accept proto=tcp dsthost=<name>, policy drop: natvm asks the WAN side's dnsmasq itself
    and logs what it got, and A fetches from that address, not from another server."""
    clients = netvm.require()
    mark = len(clients.console.lines)
    rule = f"action=accept proto=tcp dsthost={services.dns_name}"
    with rules_of_a(netvm, (f"{FIREWALL}/0000", rule), policy="drop"):
        resolved = f"dns: {services.dns_name} -> {services.dns_answer} (ttl 60 s)"
        clients.console.wait_for(
            lambda line: line.source == NETVM and line.text == resolved,
            f"natvm's line {resolved!r}",
            EFFECT_TIMEOUT,
            NETVM,
            mark,
        )
        page = clients.run(A, f"timeout 20 wget -q -O - http://{services.dns_answer}/index.html")
        assert page.status == 0 and services.wan_index.decode().strip() in page.text, page.text
        status, output, took = fetch(clients, 80)
        assert status != 0 and "No route to host" in output and took < 10, (status, output)
