"""appliance.config: ops config.json and kernel command-line overrides -> immutable records."""

import ast
import copy
import json
import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import config as config_module
from appliance.config import (
    ApplianceConfig,
    ConfigError,
    Filtering,
    NatSettings,
    PortForward,
    Protocol,
    Timeouts,
    apply_overrides,
    load_config,
    override_keys,
    parse_config,
    parse_kernel_cmdline,
    to_document,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_PATH = REPO / "ops-config.json"
DEMO: dict[str, Any] = json.loads(DEMO_PATH.read_text())
DELETE = object()  # an edit that removes the key
LAN_NIC = {"IPAddress": "10.77.0.1", "NetMask": "255.255.255.0"}
NAT = "ManifestPassthrough.nat"
FWD = f"{NAT}.port_forwards[0]"
# every ConfigError message starts with the field path (or "the document") and a colon
MESSAGE_START = re.compile(r"(the document|natvm\.[a-z_.]+|[A-Za-z_]+(\.[A-Za-z_]+|\[\d+\])*): ")


def edited(*edits: tuple[str, object]) -> dict[str, Any]:
    """The demo document with each (dotted path, value) edit applied; [n] indexes lists."""
    document = copy.deepcopy(DEMO)
    for path, value in edits:
        steps: list[str | int] = [
            int(step) if step.isdigit() else step for step in re.findall(r"[^.\[\]]+", path)
        ]
        target: Any = document
        for step in steps[:-1]:
            target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
        if value is DELETE:
            del target[steps[-1]]
        else:
            target[steps[-1]] = value
    return document


def error_of(document: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return str(caught.value)


def minimal_document() -> dict[str, Any]:
    return {"RunConfig": {"Nics": [{"IPAddress": "192.0.2.2", "NetMask": "24"}, LAN_NIC]}}


# --- the demo file --------------------------------------------------------------------------------


def test_demo_config_loads_with_the_documented_topology() -> None:
    config = load_config(DEMO_PATH)
    assert config.wan.address == IPv4Interface("192.0.2.2/24")
    assert config.wan.gateway == IPv4Address("192.0.2.1")
    assert config.wan.bridge == "natvm-wan"
    assert config.lan.address == IPv4Interface("10.77.0.1/24")
    assert (config.lan.gateway, config.lan.bridge) == (None, "natvm-lan")
    assert (config.memory_mib, config.cpus) == (128, 1)
    assert config.nat == NatSettings(
        filtering=Filtering.ADDRESS_DEPENDENT,
        port_forwards=(
            PortForward(Protocol.TCP, 8080, 8080, IPv4Address("10.77.0.10"), 80),
            PortForward(Protocol.UDP, 5353, 5353, IPv4Address("10.77.0.10"), 53),
        ),
        ping_on_wan=True,
    )


def test_load_config_accepts_a_path_object_and_a_string() -> None:
    assert load_config(DEMO_PATH) == load_config(str(DEMO_PATH))


# --- defaults and accepted forms ------------------------------------------------------------------


@pytest.mark.parametrize("section", [config_module._NAT, config_module._TIMEOUTS])
def test_every_settings_field_is_filled_by_exactly_one_key(section: Any) -> None:
    # the keys are declared beside the record, not on its fields: none may be left out or doubled
    filled = [name for key in section.keys for name in key.fills]
    assert sorted(filled) == sorted(section.cls._fields)


def test_defaults_when_only_the_nics_are_given() -> None:
    config = parse_config(minimal_document())
    assert config.nat == NatSettings()
    assert config.nat.timeouts == Timeouts(300.0, 7440.0, 240.0, 60.0)
    assert (config.nat.port_first, config.nat.port_last) == (1024, 65535)
    assert config.nat.filtering is Filtering.ADDRESS_DEPENDENT
    assert (config.nat.max_flows, config.nat.max_flows_per_host, config.nat.mtu) == (
        65536,
        4096,
        1500,
    )
    assert (config.nat.ping_on_wan, config.nat.port_reuse_delay) == (False, 120.0)
    assert config.nat.busy_poll_us == 0  # sleep as soon as there is nothing to do
    assert (config.memory_mib, config.cpus) == (128, 1)
    assert config.wan.gateway is None and config.wan.bridge is None


def test_other_ops_keys_are_ignored() -> None:
    document = edited(
        ("Args", ["natvm"]),
        ("Env", {"PYTHONHASHSEED": "0"}),
        ("Program", "natvm"),
        ("Version", "1"),
        ("Dirs", ["x"]),
        ("Files", ["y"]),
        ("RunConfig.Ports", ["80"]),
        ("RunConfig.Accel", True),
        ("ManifestPassthrough.consoles", ["+net"]),
    )
    assert parse_config(document) == parse_config(DEMO)


def test_ops_zero_values_mean_not_set() -> None:
    document = edited(
        ("RunConfig.Nics[0].Gateway", ""),
        ("RunConfig.Nics[0].BridgeName", ""),
        ("RunConfig.Memory", ""),
        ("RunConfig.CPUs", 0),
    )
    config = parse_config(document)
    assert (config.wan.gateway, config.wan.bridge, config.memory_mib, config.cpus) == (
        None,
        None,
        128,
        1,
    )


@pytest.mark.parametrize(
    ("memory", "mib"),
    [("128m", 128), ("128M", 128), ("1G", 1024), ("2g", 2048), ("256", 256)],
)
def test_memory_sizes_in_ops_style(memory: str, mib: int) -> None:
    assert parse_config(edited(("RunConfig.Memory", memory))).memory_mib == mib


@pytest.mark.parametrize("netmask", ["255.255.255.0", "24"])
def test_netmask_dotted_or_prefix_length(netmask: str) -> None:
    config = parse_config(edited(("RunConfig.Nics[1].NetMask", netmask)))
    assert config.lan.address == IPv4Interface("10.77.0.1/24")


@pytest.mark.parametrize(
    ("external_port", "first", "last"),
    [("8080", 8080, 8080), (8080, 8080, 8080), ("8000-8010", 8000, 8010)],
)
def test_external_port_forms(external_port: object, first: int, last: int) -> None:
    forward = parse_config(edited((f"{FWD}.external_port", external_port))).nat.port_forwards[0]
    assert (forward.external_first, forward.external_last) == (first, last)


def test_forward_ranges_may_share_ports_across_protocols_and_lie_in_port_range() -> None:
    forwards = [
        {"protocol": "tcp", "external_port": "5000-5010", "lan_host": "10.77.0.10", "lan_port": 1},
        {"protocol": "udp", "external_port": "5005", "lan_host": "10.77.0.11", "lan_port": 53},
    ]
    config = parse_config(edited((f"{NAT}.port_forwards", forwards)))
    assert [f.protocol for f in config.nat.port_forwards] == [Protocol.TCP, Protocol.UDP]


def test_port_forward_maps_a_range_one_to_one() -> None:
    forward = PortForward(Protocol.TCP, 8000, 8010, IPv4Address("10.77.0.10"), 9000)
    assert forward.lan_port(8000) == 9000
    assert forward.lan_port(8010) == 9010
    assert forward.lan_port(7999) is None
    assert forward.lan_port(8011) is None


def test_timeouts_accept_fractions_and_keep_the_others_default() -> None:
    config = parse_config(edited((f"{NAT}.timeouts", {"udp": 300.5})))
    assert config.nat.timeouts == Timeouts(udp=300.5)


def test_config_is_frozen() -> None:
    config = parse_config(DEMO)
    with pytest.raises(AttributeError):
        config.cpus = 2  # type: ignore[misc]


# --- each error path names the field and the value ------------------------------------------------

ERRORS: list[tuple[dict[str, Any] | list[object], str]] = [
    ([], "the document: [] is not a JSON object"),
    (edited(("RunConfig", DELETE)), "RunConfig: missing (required)"),
    (edited(("RunConfig", "x")), "RunConfig: 'x' is not a JSON object"),
    (edited(("RunConfig.Nics", DELETE)), "RunConfig.Nics: missing (required)"),
    (edited(("RunConfig.Nics", {})), "RunConfig.Nics: {} is not a JSON array"),
    (edited(("RunConfig.Nics[0]", 1)), "RunConfig.Nics[0]: 1 is not a JSON object"),
    (
        edited(("RunConfig.Nics[0].Netmask", "24")),
        "RunConfig.Nics[0]: unknown key 'Netmask'; valid keys: IPAddress, NetMask, Gateway, "
        "BridgeName",
    ),
    (edited(("RunConfig.Nics[0].IPAddress", DELETE)), "RunConfig.Nics[0].IPAddress: missing"),
    (
        edited(("RunConfig.Nics[0].IPAddress", "10.0.0.300")),
        "RunConfig.Nics[0].IPAddress: '10.0.0.300' is not an IPv4 address",
    ),
    (
        edited(("RunConfig.Nics[0].IPAddress", 3221225986)),
        "RunConfig.Nics[0].IPAddress: 3221225986 is not an IPv4 address",
    ),
    (
        edited(("RunConfig.Nics[1].IPAddress", "224.0.0.1")),
        "RunConfig.Nics[1].IPAddress: '224.0.0.1' is not a unicast address",
    ),
    (
        edited(("RunConfig.Nics[1].IPAddress", "10.77.0.0")),
        "RunConfig.Nics[1].IPAddress: '10.77.0.0' is the network or broadcast address of "
        "10.77.0.0/24",
    ),
    (
        edited(("RunConfig.Nics[0].IPAddress", "192.0.2.255")),
        "RunConfig.Nics[0].IPAddress: '192.0.2.255' is the network or broadcast address",
    ),
    (edited(("RunConfig.Nics[0].NetMask", DELETE)), "RunConfig.Nics[0].NetMask: missing"),
    (
        edited(("RunConfig.Nics[0].NetMask", "255.0.255.0")),
        "RunConfig.Nics[0].NetMask: '255.0.255.0' is not a netmask",
    ),
    (
        edited(("RunConfig.Nics[0].NetMask", "0.0.0.255")),
        "RunConfig.Nics[0].NetMask: '0.0.0.255' is not a netmask",
    ),
    (
        edited(("RunConfig.Nics[0].NetMask", "33")),
        "RunConfig.Nics[0].NetMask: '33' is not a netmask",
    ),
    (edited(("RunConfig.Nics[0].NetMask", 24)), "RunConfig.Nics[0].NetMask: 24 is not a netmask"),
    (
        edited(("RunConfig.Nics[1].NetMask", "31")),
        "RunConfig.Nics[1].NetMask: '31' leaves no room for hosts (the prefix must be 30 or "
        "shorter)",
    ),
    (
        # a /31 uplink has a gateway, but only the other address of the /31 is on its link
        edited(("RunConfig.Nics[0].NetMask", "31")),
        "RunConfig.Nics[0].Gateway: '192.0.2.1' is not inside the WAN subnet 192.0.2.2/31",
    ),
    (
        edited(("RunConfig.Nics[0].NetMask", "32"), ("RunConfig.Nics[0].Gateway", "192.0.2.2")),
        "RunConfig.Nics[0].Gateway: '192.0.2.2' is the appliance's own WAN address",
    ),
    (
        edited(("RunConfig.Nics[0].Gateway", "198.51.100.1")),
        "RunConfig.Nics[0].Gateway: '198.51.100.1' is not inside the WAN subnet 192.0.2.0/24",
    ),
    (
        edited(("RunConfig.Nics[0].Gateway", "192.0.2.2")),
        "RunConfig.Nics[0].Gateway: '192.0.2.2' is the appliance's own WAN address",
    ),
    (
        edited(("RunConfig.Nics[0].Gateway", "192.0.2.255")),
        "RunConfig.Nics[0].Gateway: '192.0.2.255' is the network or broadcast address",
    ),
    (
        edited(("RunConfig.Nics[0].Gateway", "gw")),
        "RunConfig.Nics[0].Gateway: 'gw' is not an IPv4 address",
    ),
    (
        edited(("RunConfig.Nics[1].Gateway", "10.77.0.254")),
        "RunConfig.Nics[1].Gateway: '10.77.0.254' is not allowed: the appliance is the LAN's "
        "router",
    ),
    (
        edited(("RunConfig.Nics[0].BridgeName", "-natvm")),
        "RunConfig.Nics[0].BridgeName: '-natvm' is not a bridge name",
    ),
    (
        edited(("RunConfig.Nics[0].BridgeName", "a" * 16)),
        f"RunConfig.Nics[0].BridgeName: '{'a' * 16}' is not a bridge name",
    ),
    (
        edited(("RunConfig.Nics[0].BridgeName", "br 0")),
        "RunConfig.Nics[0].BridgeName: 'br 0' is not a bridge name",
    ),
    (
        edited(("RunConfig.Nics[1].IPAddress", "192.0.2.200"), ("RunConfig.Nics[1].NetMask", "25")),
        "RunConfig.Nics[1].IPAddress: '192.0.2.200/25' overlaps the WAN subnet 192.0.2.0/24",
    ),
    (edited(("RunConfig.Memory", "lots")), "RunConfig.Memory: 'lots' is not a memory size"),
    (edited(("RunConfig.Memory", 128)), "RunConfig.Memory: 128 is not a memory size"),
    (edited(("RunConfig.Memory", "0m")), "RunConfig.Memory: '0m' is not a memory size"),
    (edited(("RunConfig.Memory", "1T")), "RunConfig.Memory: '1T' is not a memory size"),
    (edited(("RunConfig.CPUs", True)), "RunConfig.CPUs: true is not an integer"),
    (edited(("RunConfig.CPUs", 1.5)), "RunConfig.CPUs: 1.5 is not an integer"),
    (edited(("RunConfig.CPUs", -1)), "RunConfig.CPUs: -1 is out of range 0..1024"),
    (
        edited(("ManifestPassthrough", [])),
        "ManifestPassthrough: [] is not a JSON object",
    ),
    (edited((NAT, "on")), f"{NAT}: 'on' is not a JSON object"),
    (edited((f"{NAT}.mtuu", 1400)), f"{NAT}: unknown key 'mtuu'; valid keys: port_range, "),
    (
        edited((f"{NAT}.port_range", "1024:65535")),
        f"{NAT}.port_range: '1024:65535' is not a port or a port range",
    ),
    (
        edited((f"{NAT}.port_range", "0-100")),
        f"{NAT}.port_range: '0-100' is not a port range within 1..65535 with first <= last",
    ),
    (
        edited((f"{NAT}.port_range", "2000-1000")),
        f"{NAT}.port_range: '2000-1000' is not a port range",
    ),
    (edited((f"{NAT}.port_range", "70000")), f"{NAT}.port_range: '70000' is not a port range"),
    (edited((f"{NAT}.port_range", True)), f"{NAT}.port_range: true is not a port or a port range"),
    (
        edited((f"{NAT}.filtering", "full-cone")),
        f"{NAT}.filtering: 'full-cone' is not one of 'endpoint-independent', 'address-dependent', "
        "'address-and-port-dependent'",
    ),
    (edited((f"{NAT}.timeouts", 300)), f"{NAT}.timeouts: 300 is not a JSON object"),
    (
        edited((f"{NAT}.timeouts.tcp", 300)),
        f"{NAT}.timeouts: unknown key 'tcp'; valid keys: udp, tcp_established, tcp_transitory, "
        "icmp_query",
    ),
    (
        edited((f"{NAT}.timeouts.udp", 119)),
        f"{NAT}.timeouts.udp: 119 is below the minimum of 120 s (RFC 4787 REQ-5)",
    ),
    (
        edited((f"{NAT}.timeouts.tcp_established", 3600)),
        f"{NAT}.timeouts.tcp_established: 3600 is below the minimum of 7440 s (RFC 5382 REQ-5)",
    ),
    (
        edited((f"{NAT}.timeouts.tcp_transitory", 60)),
        f"{NAT}.timeouts.tcp_transitory: 60 is below the minimum of 240 s (RFC 5382 REQ-5)",
    ),
    (
        edited((f"{NAT}.timeouts.icmp_query", 30)),
        f"{NAT}.timeouts.icmp_query: 30 is below the minimum of 60 s (RFC 5508 REQ-2)",
    ),
    (
        edited((f"{NAT}.timeouts.udp", "300")),
        f"{NAT}.timeouts.udp: '300' is not a number of seconds",
    ),
    (edited((f"{NAT}.timeouts.udp", True)), f"{NAT}.timeouts.udp: true is not a number of seconds"),
    (
        edited((f"{NAT}.timeouts.udp", float("nan"))),
        f"{NAT}.timeouts.udp: NaN is not a number of seconds",
    ),
    (
        edited((f"{NAT}.timeouts.udp", float("inf"))),
        f"{NAT}.timeouts.udp: Infinity is above the maximum",
    ),
    (edited((f"{NAT}.timeouts.udp", 10**12)), f"{NAT}.timeouts.udp: {10**12} is above the maximum"),
    (edited((f"{NAT}.port_forwards", {})), f"{NAT}.port_forwards: {{}} is not a JSON array"),
    (edited((FWD, "tcp 8080")), f"{FWD}: 'tcp 8080' is not a JSON object"),
    (
        edited((f"{FWD}.host", "10.77.0.10")),
        f"{FWD}: unknown key 'host'; valid keys: protocol, external_port, lan_host, lan_port",
    ),
    (edited((f"{FWD}.protocol", DELETE)), f"{FWD}.protocol: missing (required)"),
    (edited((f"{FWD}.external_port", DELETE)), f"{FWD}.external_port: missing (required)"),
    (edited((f"{FWD}.lan_host", DELETE)), f"{FWD}.lan_host: missing (required)"),
    (edited((f"{FWD}.lan_port", DELETE)), f"{FWD}.lan_port: missing (required)"),
    (edited((f"{FWD}.protocol", "TCP")), f"{FWD}.protocol: 'TCP' is not one of 'tcp', 'udp'"),
    (edited((f"{FWD}.protocol", "icmp")), f"{FWD}.protocol: 'icmp' is not one of 'tcp', 'udp'"),
    (edited((f"{FWD}.external_port", "80-")), f"{FWD}.external_port: '80-' is not a port"),
    (edited((f"{FWD}.external_port", 0)), f"{FWD}.external_port: 0 is not a port range"),
    (edited((f"{FWD}.lan_port", 0)), f"{FWD}.lan_port: 0 is out of range 1..65535"),
    (edited((f"{FWD}.lan_port", 65536)), f"{FWD}.lan_port: 65536 is out of range 1..65535"),
    (edited((f"{FWD}.lan_port", "80")), f"{FWD}.lan_port: '80' is not an integer"),
    (edited((f"{FWD}.lan_port", True)), f"{FWD}.lan_port: true is not an integer"),
    (
        edited((f"{FWD}.external_port", "8000-8010"), (f"{FWD}.lan_port", 65530)),
        f"{FWD}.lan_port: 65530 + 10 ports would end past 65535",
    ),
    (
        edited((f"{FWD}.lan_host", "10.78.0.10")),
        f"{FWD}.lan_host: '10.78.0.10' is not inside the LAN subnet 10.77.0.0/24",
    ),
    (
        edited((f"{FWD}.lan_host", "10.77.0.1")),
        f"{FWD}.lan_host: '10.77.0.1' is the appliance's own LAN address",
    ),
    (
        edited((f"{FWD}.lan_host", "10.77.0.255")),
        f"{FWD}.lan_host: '10.77.0.255' is the network or broadcast address of 10.77.0.0/24",
    ),
    (
        edited(
            (f"{NAT}.port_forwards[1].protocol", "tcp"),
            (f"{NAT}.port_forwards[1].external_port", "8000-8080"),
        ),
        f"{NAT}.port_forwards[1].external_port: '8000-8080' overlaps the tcp forward of 8080",
    ),
    (edited((f"{NAT}.max_flows", 0)), f"{NAT}.max_flows: 0 is out of range 1..16777216"),
    (edited((f"{NAT}.max_flows", True)), f"{NAT}.max_flows: true is not an integer"),
    (edited((f"{NAT}.max_flows", 2**24 + 1)), f"{NAT}.max_flows: 16777217 is out of range"),
    (
        edited((f"{NAT}.max_flows", 100)),
        f"{NAT}.max_flows_per_host: 4096 is above max_flows (100)",
    ),
    (edited((f"{NAT}.max_flows_per_host", 0)), f"{NAT}.max_flows_per_host: 0 is out of range"),
    (edited((f"{NAT}.mtu", 575)), f"{NAT}.mtu: 575 is out of range 576..9000"),
    (edited((f"{NAT}.mtu", 9001)), f"{NAT}.mtu: 9001 is out of range 576..9000"),
    (edited((f"{NAT}.mtu", 1500.0)), f"{NAT}.mtu: 1500.0 is not an integer"),
    (
        edited((f"{NAT}.ping_on_wan", "yes")),
        f"{NAT}.ping_on_wan: 'yes' is not a boolean (true or false)",
    ),
    (edited((f"{NAT}.ping_on_wan", 1)), f"{NAT}.ping_on_wan: 1 is not a boolean (true or false)"),
    (
        edited((f"{NAT}.port_reuse_delay", 60)),
        f"{NAT}.port_reuse_delay: 60 is below the minimum of 120 s (RFC 6888 REQ-8)",
    ),
    (
        edited((f"{NAT}.busy_poll_us", -1)),
        f"{NAT}.busy_poll_us: -1 is out of range 0..1000000",
    ),
    (edited((f"{NAT}.busy_poll_us", "50")), f"{NAT}.busy_poll_us: '50' is not an integer"),
]


@pytest.mark.parametrize(("document", "message"), ERRORS, ids=[m[:60] for _, m in ERRORS])
def test_invalid_value_names_field_and_value(document: object, message: str) -> None:
    assert error_of(document).startswith(message)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_exactly_two_nics_and_the_error_says_more_are_to_come(count: int) -> None:
    nics = [DEMO["RunConfig"]["Nics"][0], LAN_NIC, {**LAN_NIC, "IPAddress": "10.78.0.1"}]
    message = error_of(edited(("RunConfig.Nics", nics[:count])))
    assert message.startswith(f"RunConfig.Nics: {count} NICs given; exactly 2 are supported")
    assert "more LAN NICs are planned" in message


def test_long_values_are_shortened_in_messages() -> None:
    message = error_of(edited(("RunConfig.Nics[0].IPAddress", "9" * 500)))
    assert message.startswith("RunConfig.Nics[0].IPAddress: '9999") and len(message) < 120


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- load_config ----------------------------------------------------------------------------------


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "config.json"
    path.write_bytes(data)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    assert load_error(path) == f"{path}: cannot read: No such file or directory"


def test_directory_is_named(tmp_path: Path) -> None:
    assert load_error(tmp_path).startswith(f"{tmp_path}: cannot read: ")


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, b'{\n  "RunConfig": {\n    "CPUs": 1,\n  }\n}\n')
    assert (
        load_error(path)
        == f"{path}:4:3: invalid JSON: Expecting property name enclosed in double quotes"
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"RunConfig": {}, "RunConfig": {}}', "duplicate key 'RunConfig'"),
        (b'{"a": "\xff"}', "codec can't decode"),
        (b"[" * 100_000 + b"]" * 100_000, "recursion"),
        (b"1" * 5000, "integer"),
    ],
    ids=["duplicate key", "not utf-8", "deep nesting", "huge number"],
)
def test_undecodable_file_is_a_config_error(tmp_path: Path, data: bytes, problem: str) -> None:
    message = load_error(write(tmp_path, data))
    assert message.startswith(f"{tmp_path / 'config.json'}: invalid JSON: ")
    assert problem in message


def test_content_errors_from_a_file_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(edited((f"{NAT}.mtu", 100))).encode())
    assert load_error(path).startswith(f"{NAT}.mtu: 100 is out of range")


# --- round trip -----------------------------------------------------------------------------------


def test_round_trip_of_the_demo() -> None:
    config = parse_config(DEMO)
    assert parse_config(to_document(config)) == config
    assert json.loads(json.dumps(to_document(config))) == to_document(config)


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Documents inside every rule, in the forms the file may use."""
    wan_host = draw(st.integers(2, 254))
    wan: dict[str, object] = {"IPAddress": f"192.0.2.{wan_host}", "NetMask": "255.255.255.0"}
    if draw(st.booleans()):
        wan["Gateway"] = "192.0.2.1"
    if draw(st.booleans()):
        wan["BridgeName"] = "br" + draw(st.text("abcxyz0189_.-", max_size=13))
    prefix = draw(st.integers(16, 30))
    netmask = draw(st.sampled_from([str(prefix), str(IPv4Interface(f"0.0.0.0/{prefix}").netmask)]))
    lan = {"IPAddress": "10.77.0.1", "NetMask": netmask}
    ports = sorted(draw(st.sets(st.integers(1, 65535), max_size=8)))
    forwards = []
    for first, last in zip(ports[::2], ports[1::2], strict=False):
        lan_port = draw(st.integers(1, 65535 - (last - first)))
        external: object = (
            draw(st.sampled_from([f"{first}-{last}", first]))
            if first == last
            else f"{first}-{last}"
        )
        protocol = draw(st.sampled_from(["tcp", "udp"]))
        forwards.append(
            {
                "protocol": protocol,
                "external_port": external,
                "lan_host": "10.77.0.2",
                "lan_port": lan_port,
            }
        )
    first, last = sorted(draw(st.lists(st.integers(1, 65535), min_size=2, max_size=2)))
    max_flows = draw(st.integers(1, 2**24))

    def seconds(low: float) -> st.SearchStrategy[float]:
        return st.floats(low, 1e9) | st.integers(int(low), 10**9).map(float)

    nat = {
        "port_range": f"{first}-{last}",
        "filtering": draw(st.sampled_from([f.value for f in Filtering])),
        "timeouts": {
            "udp": draw(seconds(120)),
            "tcp_established": draw(seconds(7440)),
            "tcp_transitory": draw(seconds(240)),
            "icmp_query": draw(seconds(60)),
        },
        "port_forwards": forwards,
        "max_flows": max_flows,
        "max_flows_per_host": draw(st.integers(1, max_flows)),
        "mtu": draw(st.integers(576, 9000)),
        "ping_on_wan": draw(st.booleans()),
        "port_reuse_delay": draw(seconds(120)),
        "busy_poll_us": draw(st.integers(0, 1_000_000)),
    }
    memory = draw(st.sampled_from(["64m", "128M", "1G", "3g", "512", ""]))
    run = {"Nics": [wan, lan], "Memory": memory, "CPUs": draw(st.integers(0, 64))}
    return {"RunConfig": run, "ManifestPassthrough": {"nat": nat}}


@given(valid_documents())
def test_round_trip_of_valid_documents(document: dict[str, Any]) -> None:
    config = parse_config(document)
    assert parse_config(to_document(config)) == config
    assert parse_config(json.loads(json.dumps(to_document(config)))) == config


# --- never another exception ----------------------------------------------------------------------

SCHEMA_KEYS = ["RunConfig", "Nics", "IPAddress", "NetMask", "Gateway", "BridgeName", "Memory"]
SCHEMA_KEYS += ["CPUs", "ManifestPassthrough", "nat", *NatSettings._fields]
SCHEMA_KEYS += [
    "port_range",
    "timeouts",
    "udp",
    "protocol",
    "external_port",
    "lan_host",
    "lan_port",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(SCHEMA_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def parses_or_config_error(document: object) -> ApplianceConfig | None:
    try:
        return parse_config(document)
    except ConfigError as error:
        assert MESSAGE_START.match(str(error)), str(error)
        return None


@given(json_values)
def test_random_json_gives_a_config_or_config_error(document: object) -> None:
    parses_or_config_error(document)


def all_paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    paths = [prefix]
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        paths += all_paths(child, (*prefix, key))
    return paths


@given(st.data())
def test_mutated_demo_gives_a_config_or_config_error(data: st.DataObject) -> None:
    document: Any = copy.deepcopy(DEMO)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(all_paths(document)))
        replacement = data.draw(json_values)
        if not path:
            document = replacement
            continue
        parent: Any = document
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    config = parses_or_config_error(document)
    if config is not None:
        assert parse_config(to_document(config)) == config


# --- kernel command line --------------------------------------------------------------------------


def test_kernel_cmdline_collects_natvm_words_in_order() -> None:
    cmdline = (
        "console=ttyS0 panic=-1 PYTHONHASHSEED=0 natvm.mtu=1400 "
        'natvm.forward=tcp:80:10.77.0.10:80 quiet dyndbg="file x +p" '
        'natvm.forward="udp:53:10.77.0.10:53" xnatvm.mtu=1 natvm.mtu=1300\n'
    )
    assert parse_kernel_cmdline(cmdline) == {
        "natvm.mtu": ["1400", "1300"],
        "natvm.forward": ["tcp:80:10.77.0.10:80", "udp:53:10.77.0.10:53"],
    }


def test_kernel_cmdline_without_natvm_words_is_empty() -> None:
    assert parse_kernel_cmdline("") == {}
    assert parse_kernel_cmdline("root=/dev/vda ro quiet") == {}


def test_kernel_cmdline_word_without_value_gives_an_empty_value() -> None:
    assert parse_kernel_cmdline("natvm.ping_on_wan") == {"natvm.ping_on_wan": [""]}


# --- overrides ------------------------------------------------------------------------------------

DEMO_CONFIG = parse_config(DEMO)
OVERRIDES: dict[str, tuple[str, Callable[[ApplianceConfig], object], object]] = {
    "natvm.wan.ip": ("192.0.2.7/25", lambda c: c.wan.address, IPv4Interface("192.0.2.7/25")),
    "natvm.wan.gw": ("192.0.2.254", lambda c: c.wan.gateway, IPv4Address("192.0.2.254")),
    "natvm.lan.ip": ("10.77.0.1/16", lambda c: c.lan.address, IPv4Interface("10.77.0.1/16")),
    "natvm.ports": ("20000-30000", lambda c: (c.nat.port_first, c.nat.port_last), (20000, 30000)),
    "natvm.filtering": (
        "endpoint-independent",
        lambda c: c.nat.filtering,
        Filtering.ENDPOINT_INDEPENDENT,
    ),
    "natvm.forward": (
        "udp:6000-6009:10.77.0.20:7000",
        lambda c: c.nat.port_forwards,
        (PortForward(Protocol.UDP, 6000, 6009, IPv4Address("10.77.0.20"), 7000),),
    ),
    "natvm.mtu": ("9000", lambda c: c.nat.mtu, 9000),
    "natvm.ping_on_wan": ("0", lambda c: c.nat.ping_on_wan, False),
    "natvm.max_flows": ("5000", lambda c: c.nat.max_flows, 5000),
    "natvm.max_flows_per_host": ("10", lambda c: c.nat.max_flows_per_host, 10),
    "natvm.busy_poll_us": ("20000", lambda c: c.nat.busy_poll_us, 20000),
    "natvm.timeout.udp": ("600", lambda c: c.nat.timeouts.udp, 600.0),
    "natvm.timeout.tcp_established": ("86400", lambda c: c.nat.timeouts.tcp_established, 86400.0),
    "natvm.timeout.tcp_transitory": ("300.5", lambda c: c.nat.timeouts.tcp_transitory, 300.5),
    "natvm.timeout.icmp_query": ("90", lambda c: c.nat.timeouts.icmp_query, 90.0),
    "natvm.netvm": ("1", lambda c: c.nat.netvm, True),
    "natvm.dns": (
        "192.0.2.53,198.51.100.53",
        lambda c: c.nat.dns_servers,
        (IPv4Address("192.0.2.53"), IPv4Address("198.51.100.53")),
    ),
}


def test_every_documented_key_is_tested_and_described() -> None:
    keys = override_keys()
    assert set(keys) == set(OVERRIDES)
    for key, description in keys.items():
        assert key.startswith("natvm.") and description and "\n" not in description


@pytest.mark.parametrize("key", OVERRIDES)
def test_override_sets_its_setting(key: str) -> None:
    value, read, expected = OVERRIDES[key]
    config = apply_overrides(DEMO_CONFIG, {key: [value]})
    assert read(config) == expected


def test_overrides_from_a_cmdline_together() -> None:
    words = " ".join(
        f"{key}={value}" for key, (value, _, _) in OVERRIDES.items() if "wan" not in key
    )
    config = apply_overrides(DEMO_CONFIG, parse_kernel_cmdline(words))
    for key, (_, read, expected) in OVERRIDES.items():
        if "wan" not in key:
            assert read(config) == expected, key


def test_no_overrides_give_the_same_config() -> None:
    assert apply_overrides(DEMO_CONFIG, {}) == DEMO_CONFIG
    assert apply_overrides(DEMO_CONFIG, {"natvm.mtu": []}) == DEMO_CONFIG


def test_later_word_wins_for_single_settings() -> None:
    config = apply_overrides(DEMO_CONFIG, {"natvm.mtu": ["1400", "1300"]})
    assert config.nat.mtu == 1300


def test_forward_words_replace_the_files_forwards() -> None:
    words = ["tcp:8080:10.77.0.10:80", "tcp:8000-8010:10.77.0.11:8000"]
    config = apply_overrides(DEMO_CONFIG, {"natvm.forward": words})
    assert config.nat.port_forwards == (
        PortForward(Protocol.TCP, 8080, 8080, IPv4Address("10.77.0.10"), 80),
        PortForward(Protocol.TCP, 8000, 8010, IPv4Address("10.77.0.11"), 8000),
    )


def test_none_removes_the_gateway_and_the_forwards() -> None:
    config = apply_overrides(DEMO_CONFIG, {"natvm.wan.gw": ["none"], "natvm.forward": ["none"]})
    assert (config.wan.gateway, config.nat.port_forwards) == (None, ())


def test_a_single_string_counts_as_one_value() -> None:
    assert apply_overrides(DEMO_CONFIG, {"natvm.mtu": "1400"}).nat.mtu == 1400


def test_wan_address_and_gateway_move_together() -> None:
    overrides = {"natvm.wan.ip": ["203.0.113.5/24"], "natvm.wan.gw": ["203.0.113.1"]}
    config = apply_overrides(DEMO_CONFIG, overrides)
    assert (config.wan.address, config.wan.gateway) == (
        IPv4Interface("203.0.113.5/24"),
        IPv4Address("203.0.113.1"),
    )
    assert config.wan.bridge == "natvm-wan"


OVERRIDE_ERRORS = [
    ({"natvm.wan.ip": ["x"]}, "natvm.wan.ip: 'x' is not an IPv4 address/prefix"),
    ({"natvm.wan.ip": ["192.0.2.300/24"]}, "natvm.wan.ip: '192.0.2.300' is not an IPv4 address"),
    ({"natvm.wan.ip": ["192.0.2.2/"]}, "natvm.wan.ip: '' is not a netmask"),
    ({"natvm.wan.ip": ["192.0.2.0/24"]}, "natvm.wan.ip: '192.0.2.0' is the network or broadcast"),
    (
        {"natvm.wan.gw": ["10.0.0.1"]},
        "natvm.wan.gw: '10.0.0.1' is not inside the WAN subnet 192.0.2.0/24",
    ),
    ({"natvm.lan.ip": ["192.0.2.9/24"]}, "natvm.lan.ip: '192.0.2.9/24' overlaps the WAN subnet"),
    ({"natvm.ports": ["1024-99999"]}, "natvm.ports: '1024-99999' is not a port range within"),
    ({"natvm.filtering": ["cone"]}, "natvm.filtering: 'cone' is not one of"),
    (
        {"natvm.forward": ["tcp:8080:10.77.0.10"]},
        "natvm.forward: 'tcp:8080:10.77.0.10' is not PROTO:PORT",
    ),
    (
        {"natvm.forward": ["sctp:1:10.77.0.10:1"]},
        "natvm.forward: 'sctp' is not one of 'tcp', 'udp'",
    ),
    (
        {"natvm.forward": ["tcp:1:10.99.0.10:1"]},
        "natvm.forward: '10.99.0.10' is not inside the LAN",
    ),
    ({"natvm.forward": ["tcp:1:10.77.0.10:x"]}, "natvm.forward: 'x' is not an integer"),
    (
        {"natvm.forward": ["tcp:8000-8010:10.77.0.10:1", "tcp:8010:10.77.0.11:1"]},
        "natvm.forward: '8010' overlaps the tcp forward of 8000-8010",
    ),
    ({"natvm.mtu": ["70000"]}, "natvm.mtu: 70000 is out of range 576..9000"),
    ({"natvm.mtu": ["1.5k"]}, "natvm.mtu: '1.5k' is not an integer"),
    ({"natvm.mtu": [""]}, "natvm.mtu: '' is not an integer"),
    ({"natvm.ping_on_wan": ["yes"]}, "natvm.ping_on_wan: 'yes' is not 0 or 1"),
    ({"natvm.max_flows_per_host": ["0"]}, "natvm.max_flows_per_host: 0 is out of range"),
    # numbers of any size and sign reach the key's check, which names the bound
    (
        {"natvm.max_flows": ["9999999999"]},
        "natvm.max_flows: 9999999999 is out of range 1..16777216",
    ),
    ({"natvm.busy_poll_us": ["-1"]}, "natvm.busy_poll_us: -1 is out of range 0..1000000"),
    ({"natvm.forward": ["tcp:1:10.77.0.10:-1"]}, "natvm.forward: -1 is out of range 1..65535"),
    (
        {"natvm.timeout.udp": ["99999999999"]},
        "natvm.timeout.udp: 99999999999 is above the maximum of 1000000000 s",
    ),
    (
        {"natvm.timeout.udp": ["-1.5"]},
        "natvm.timeout.udp: -1.5 is below the minimum of 120 s (RFC 4787 REQ-5)",
    ),
    (
        {"natvm.timeout.udp": ["60"]},
        "natvm.timeout.udp: 60 is below the minimum of 120 s (RFC 4787 REQ-5)",
    ),
    (
        {"natvm.timeout.icmp_query": ["1m"]},
        "natvm.timeout.icmp_query: '1m' is not a number of seconds",
    ),
    ({"natvm.netvm": ["true"]}, "natvm.netvm: 'true' is not 0 or 1"),
    ({"natvm.dns": ["1.2.3.4,x"]}, "natvm.dns: 'x' is not an IPv4 address"),
    ({"natvm.dns": ["1.1.1.1,2.2.2.2,3.3.3.3"]}, 'natvm.dns: ["1.1.1.1", '),
    ({"natvm.dns": ["224.0.0.1"]}, "natvm.dns: '224.0.0.1' is not a unicast address"),
]


def test_dns_none_removes_the_servers() -> None:
    with_servers = apply_overrides(DEMO_CONFIG, {"natvm.dns": ["192.0.2.53"]})
    assert with_servers.nat.dns_servers == (IPv4Address("192.0.2.53"),)
    assert apply_overrides(with_servers, {"natvm.dns": ["none"]}).nat.dns_servers == ()


def test_uplink_may_be_a_slash_32_with_an_on_link_gateway() -> None:
    # What a Qubes net VM behind another one gets: /qubes-ip with /qubes-gateway outside it.
    overrides = {"natvm.wan.ip": ["10.138.0.7/32"], "natvm.wan.gw": ["10.138.0.1"]}
    config = apply_overrides(DEMO_CONFIG, overrides)
    assert (config.wan.address, config.wan.gateway) == (
        IPv4Interface("10.138.0.7/32"),
        IPv4Address("10.138.0.1"),
    )


def test_uplink_may_be_a_slash_31_whose_other_address_is_the_gateway() -> None:
    overrides = {"natvm.wan.ip": ["192.0.2.2/31"], "natvm.wan.gw": ["192.0.2.3"]}
    assert apply_overrides(DEMO_CONFIG, overrides).wan.gateway == IPv4Address("192.0.2.3")


@pytest.mark.parametrize(
    ("overrides", "message"), OVERRIDE_ERRORS, ids=[m for _, m in OVERRIDE_ERRORS]
)
def test_override_error_names_the_key_and_value(
    overrides: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(DEMO_CONFIG, overrides)
    assert str(caught.value).startswith(message)


def test_unknown_natvm_key_lists_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(DEMO_CONFIG, {"natvm.wan.addr": ["192.0.2.3/24"]})
    message = str(caught.value)
    assert message.startswith("natvm.wan.addr: unknown key; valid keys: natvm.wan.ip, ")
    assert all(key in message for key in override_keys())


def test_an_error_caused_elsewhere_by_an_override_says_which_override() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(DEMO_CONFIG, {"natvm.lan.ip": ["10.88.0.1/24"]})
    assert str(caught.value) == (
        f"{FWD}.lan_host: '10.77.0.10' is not inside the LAN subnet 10.88.0.0/24 "
        "(after the kernel command-line overrides natvm.lan.ip)"
    )


@given(
    st.dictionaries(
        st.sampled_from(list(OVERRIDES)) | st.text(max_size=12).map(lambda s: "natvm." + s),
        st.lists(st.text(max_size=30) | st.sampled_from([v for v, _, _ in OVERRIDES.values()])),
        max_size=5,
    )
)
def test_random_overrides_give_a_config_or_config_error(overrides: dict[str, list[str]]) -> None:
    try:
        apply_overrides(DEMO_CONFIG, overrides)
    except ConfigError as error:
        message = str(error)
        named_key = any(message.startswith(f"{key}: ") for key in overrides)
        assert named_key or MESSAGE_START.match(message), message


# --- purity ---------------------------------------------------------------------------------------


def test_module_is_pure_standard_library() -> None:
    tree = ast.parse((REPO / "appliance" / "config.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"socket", "select", "time", "logging"}
    assert imported <= {
        "json",
        "os",
        "re",
        "stat",
        "collections",
        "enum",
        "ipaddress",
        "typing",
    }
