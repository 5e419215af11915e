"""The appliance's configuration: an ops config.json plus kernel command-line overrides.

Theory of operation
-------------------
The file has the schema of the ``ops`` tool's config.json, so one file describes both the VM
(``RunConfig.Memory``, ``CPUs`` and each NIC's ``BridgeName``, read by the host side) and the NAT
inside it. ``RunConfig.Nics[0]`` is the WAN NIC and ``Nics[1]`` the LAN NIC; the NAT settings live
under ``ManifestPassthrough.nat``. Other ops keys (Args, Env, Files, ...) are accepted and ignored,
but unknown keys inside a NIC or under ``nat`` are errors: a typo must not quietly become a default.
Empty strings and ``CPUs: 0`` mean "not set", as in the Go structs ops writes.

``parse_config`` walks the ``json.loads`` result once, top-down, into frozen dataclasses. Each
reader gets the dotted path of the value it reads, and every problem raises ``ConfigError`` whose
message starts with that path and shows the value; nothing else escapes, so the caller prints one
line instead of a traceback. Cross-field rules (gateway inside the WAN subnet, forwards into the
LAN, disjoint subnets and forward ranges) are checked as soon as both fields are parsed.

Kernel command-line words ``natvm.KEY=VALUE`` (``override_keys()``) override single settings.
``apply_overrides`` writes them into the document that ``to_document`` rebuilds from a parsed
config and parses that again: one validation path, whose errors on overridden values are relabelled
with the ``natvm.*`` key that set them.

Limits, and where they come from:
- UDP mapping timeout at least 120 s, default 300 s: RFC 4787 REQ-5.
- TCP idle timeouts: established at least 2 h 4 min (7440 s), transitory (opening or closing) at
  least 4 min (240 s): RFC 5382 REQ-5.
- ICMP query mapping timeout at least 60 s: RFC 5508 REQ-2.
- A freed external port rests at least 120 s before a new mapping gets it: RFC 6888 REQ-8.
- MTU 576..9000: every IPv4 host accepts 576-octet datagrams (RFC 791); 9000 is a jumbo frame.
"""

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, NoReturn, TypeVar


class ConfigError(ValueError):
    """An invalid configuration; the message names the field path and the value."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path  # the field the message starts with, for relabelling overrides


class Filtering(StrEnum):
    """Which remote endpoints may send through a mapping (RFC 4787 REQ-8, RFC 5382 REQ-3)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Protocol(StrEnum):
    """The protocols a port forward can name."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True)
class PortForward:
    protocol: Protocol
    external_first: int  # external port range, inclusive
    external_last: int
    lan_host: IPv4Address
    lan_first: int  # the LAN port external_first maps to; the range maps one-to-one

    def lan_port(self, external_port: int) -> int | None:
        """The LAN port for external_port, or None if it is outside the forwarded range."""
        if not self.external_first <= external_port <= self.external_last:
            return None
        return self.lan_first + external_port - self.external_first


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds; the minimums and their RFCs are in the module docstring."""

    udp: float = 300.0
    tcp_established: float = 7440.0
    tcp_transitory: float = 240.0
    icmp_query: float = 60.0


@dataclass(frozen=True)
class NatSettings:
    port_first: int = 1024
    port_last: int = 65535
    filtering: Filtering = Filtering.ADDRESS_DEPENDENT
    timeouts: Timeouts = Timeouts()
    port_forwards: tuple[PortForward, ...] = ()
    max_flows: int = 65536
    max_flows_per_host: int = 4096
    mtu: int = 1500
    ping_on_wan: bool = False
    port_reuse_delay: float = 120.0
    # After a frame, keep polling the NICs without sleeping for this long (Linux's
    # net.core.busy_poll, for the appliance): no wake-up latency, for a CPU kept busy.
    busy_poll_us: int = 0


@dataclass(frozen=True)
class Nic:
    address: IPv4Interface  # IPAddress + NetMask
    gateway: IPv4Address | None  # inside the NIC's subnet; only the WAN NIC has one
    bridge: str | None  # BridgeName: used only by the host side to attach the VM's NIC


@dataclass(frozen=True)
class ApplianceConfig:
    wan: Nic  # RunConfig.Nics[0]
    lan: Nic  # RunConfig.Nics[1]
    nat: NatSettings
    memory_mib: int = 128  # RunConfig.Memory
    cpus: int = 1  # RunConfig.CPUs


# name -> (minimum seconds, where the minimum comes from, what the timer covers)
_TIMEOUT_RULES = {
    "udp": (120.0, "RFC 4787 REQ-5", "UDP mapping idle timeout"),
    "tcp_established": (7440.0, "RFC 5382 REQ-5", "established TCP idle timeout"),
    "tcp_transitory": (240.0, "RFC 5382 REQ-5", "opening/closing TCP idle timeout"),
    "icmp_query": (60.0, "RFC 5508 REQ-2", "ICMP query (echo) mapping timeout"),
}
_NAT_KEYS: tuple[str, ...] = ("port_range", "filtering", "timeouts", "port_forwards", "max_flows")
_NAT_KEYS += ("max_flows_per_host", "mtu", "ping_on_wan", "port_reuse_delay", "busy_poll_us")
_MAX_BUSY_POLL_US = 1_000_000
_FORWARD_KEYS = ("protocol", "external_port", "lan_host", "lan_port")
_NIC_KEYS = ("IPAddress", "NetMask", "Gateway", "BridgeName")
_MAX_SECONDS = 10**9  # about 31 years: "never", still a finite float to add to a clock
_MAX_FLOWS = 2**24  # a sanity bound, far beyond what a small VM's memory holds
_PORT_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_MEMORY = re.compile(r"([0-9]{1,7})([mMgG]?)")
# also a safe command-line word for the host side: no leading '-', no '/', no spaces
_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_E = TypeVar("_E", bound=StrEnum)


def _show(value: object) -> str:
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, value: object, problem: str) -> NoReturn:
    raise ConfigError(f"{path or 'the document'}: {_show(value)} {problem}", path)


def _required(obj: Mapping[str, object], key: str, path: str) -> object:
    child = f"{path}.{key}" if path else key
    if key not in obj:
        raise ConfigError(f"{child}: missing (required)", child)
    return obj[key]


def _object(value: object, path: str, allowed: Sequence[str] = ()) -> Mapping[str, object]:
    """value as a JSON object; with allowed, any other key is an error."""
    if not isinstance(value, dict):
        _fail(path, value, "is not a JSON object")
    unknown = [repr(key) for key in value if allowed and key not in allowed]
    if unknown:
        message = f"unknown key {', '.join(unknown)}; valid keys: {', '.join(allowed)}"
        raise ConfigError(f"{path}: {message}", path)
    return value


def _array(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        _fail(path, value, "is not a JSON array")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, value, "is not an integer")
    if not low <= value <= high:
        _fail(path, value, f"is out of range {low}..{high}")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, value, "is not a boolean (true or false)")
    return value


def _seconds(value: object, path: str, minimum: float, reason: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        _fail(path, value, "is not a number of seconds")
    if value < minimum:
        _fail(path, value, f"is below the minimum of {minimum:g} s ({reason})")
    if value > _MAX_SECONDS:
        _fail(path, value, f"is above the maximum of {_MAX_SECONDS} s")
    return float(value)


def _choice(value: object, path: str, choices: type[_E]) -> _E:
    if not isinstance(value, str) or value not in {choice.value for choice in choices}:
        _fail(path, value, f"is not one of {', '.join(repr(c.value) for c in choices)}")
    return choices(value)


def _port_range(value: object, path: str) -> tuple[int, int]:
    """A port (8080 or "8080") or an inclusive range ("8000-8010") within 1..65535."""
    if isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    elif isinstance(value, str) and (match := _PORT_RANGE.fullmatch(value)):
        first, last = int(match[1]), int(match[2] or match[1])
    else:
        _fail(path, value, "is not a port or a port range like '8000-8010'")
    if not 1 <= first <= last <= 65535:
        _fail(path, value, "is not a port range within 1..65535 with first <= last")
    return first, last


def _port_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _address(value: object, path: str) -> IPv4Address:
    try:
        address = IPv4Address(value if isinstance(value, str) else "")
    except ValueError:
        _fail(path, value, "is not an IPv4 address")
    if address.is_multicast or address.is_loopback or address.is_unspecified or address.is_reserved:
        _fail(path, value, "is not a unicast address")
    return address


def _prefix(value: object, path: str) -> int:
    """A netmask, dotted ("255.255.255.0") or as a prefix length ("24")."""
    text = value if isinstance(value, str) else ""
    try:
        network: IPv4Network | None = IPv4Network(f"0.0.0.0/{text}")
    except ValueError:
        network = None
    # IPv4Network also takes a host mask ("0.0.0.255"): accept only masks that read back the same
    if network is None or not (text.isdigit() or str(network.netmask) == text):
        _fail(path, value, "is not a netmask like '255.255.255.0' or a prefix length like '24'")
    if network.prefixlen > 30:
        _fail(path, value, "leaves no room for hosts (the prefix must be 30 or shorter)")
    return network.prefixlen


def _host(address: IPv4Address, network: IPv4Network, path: str) -> None:
    if address in (network.network_address, network.broadcast_address):
        _fail(path, str(address), f"is the network or broadcast address of {network}")


def _neighbour(value: object, path: str, interface: IPv4Interface, side: str) -> IPv4Address:
    """An address of another host in the subnet of the appliance's interface on side."""
    address = _address(value, path)
    if address not in interface.network:
        _fail(path, value, f"is not inside the {side} subnet {interface.network}")
    if address == interface.ip:
        _fail(path, value, f"is the appliance's own {side} address")
    _host(address, interface.network, path)
    return address


def _bridge(value: object, path: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _BRIDGE.fullmatch(value):
        _fail(path, value, "is not a bridge name (1-15 of A-Za-z0-9_.- not starting with _.-)")
    return value


def _nic(value: object, path: str, side: str) -> Nic:
    obj = _object(value, path, _NIC_KEYS)
    address = _address(_required(obj, "IPAddress", path), f"{path}.IPAddress")
    prefix = _prefix(_required(obj, "NetMask", path), f"{path}.NetMask")
    interface = IPv4Interface((address, prefix))
    _host(address, interface.network, f"{path}.IPAddress")
    raw, gateway = obj.get("Gateway", ""), None
    if raw not in (None, ""):
        if side == "LAN":
            _fail(f"{path}.Gateway", raw, "is not allowed: the appliance is the LAN's router")
        gateway = _neighbour(raw, f"{path}.Gateway", interface, side)
    return Nic(interface, gateway, _bridge(obj.get("BridgeName"), f"{path}.BridgeName"))


def _nics(run: Mapping[str, object]) -> tuple[Nic, Nic]:
    nics = _array(_required(run, "Nics", "RunConfig"), "RunConfig.Nics")
    if len(nics) != 2:
        raise ConfigError(
            f"RunConfig.Nics: {len(nics)} NICs given; exactly 2 are supported (Nics[0] WAN, "
            "Nics[1] LAN): more LAN NICs are planned but not supported yet",
            "RunConfig.Nics",
        )
    wan, lan = _nic(nics[0], "RunConfig.Nics[0]", "WAN"), _nic(nics[1], "RunConfig.Nics[1]", "LAN")
    if wan.address.network.overlaps(lan.address.network):
        path = "RunConfig.Nics[1].IPAddress"
        _fail(path, str(lan.address), f"overlaps the WAN subnet {wan.address.network}")
    return wan, lan


def _forward(value: object, path: str, lan: IPv4Interface) -> PortForward:
    obj = _object(value, path, _FORWARD_KEYS)
    protocol = _choice(_required(obj, "protocol", path), f"{path}.protocol", Protocol)
    first, last = _port_range(_required(obj, "external_port", path), f"{path}.external_port")
    lan_first = _int(_required(obj, "lan_port", path), f"{path}.lan_port", 1, 65535)
    if lan_first + last - first > 65535:
        _fail(f"{path}.lan_port", lan_first, f"+ {last - first} ports would end past 65535")
    host = _neighbour(_required(obj, "lan_host", path), f"{path}.lan_host", lan, "LAN")
    return PortForward(protocol, first, last, host, lan_first)


def _forwards(value: object, path: str, lan: IPv4Interface) -> tuple[PortForward, ...]:
    forwards: list[PortForward] = []
    for index, item in enumerate(_array(value, path)):
        new = _forward(item, f"{path}[{index}]", lan)
        for old in forwards:
            overlap = (
                old.external_first <= new.external_last and new.external_first <= old.external_last
            )
            if overlap and old.protocol == new.protocol:
                ports = _port_text(new.external_first, new.external_last)
                taken = _port_text(old.external_first, old.external_last)
                problem = f"overlaps the {old.protocol} forward of {taken}"
                _fail(f"{path}[{index}].external_port", ports, problem)
        forwards.append(new)
    return tuple(forwards)


def _timeouts(value: object, path: str) -> Timeouts:
    obj, default = _object(value, path, tuple(_TIMEOUT_RULES)), Timeouts()
    return Timeouts(
        **{
            name: _seconds(obj.get(name, getattr(default, name)), f"{path}.{name}", low, rfc)
            for name, (low, rfc, _) in _TIMEOUT_RULES.items()
        }
    )


def _nat(value: object, path: str, lan: IPv4Interface) -> NatSettings:
    obj, d = _object(value, path, _NAT_KEYS), NatSettings()
    ports = obj.get("port_range", _port_text(d.port_first, d.port_last))
    first, last = _port_range(ports, f"{path}.port_range")
    max_flows = _int(obj.get("max_flows", d.max_flows), f"{path}.max_flows", 1, _MAX_FLOWS)
    at = f"{path}.max_flows_per_host"
    per_host = _int(obj.get("max_flows_per_host", d.max_flows_per_host), at, 1, _MAX_FLOWS)
    if per_host > max_flows:
        _fail(at, per_host, f"is above max_flows ({max_flows})")
    delay = obj.get("port_reuse_delay", d.port_reuse_delay)
    return NatSettings(
        port_first=first,
        port_last=last,
        filtering=_choice(obj.get("filtering", d.filtering.value), f"{path}.filtering", Filtering),
        timeouts=_timeouts(obj.get("timeouts", {}), f"{path}.timeouts"),
        port_forwards=_forwards(obj.get("port_forwards", []), f"{path}.port_forwards", lan),
        max_flows=max_flows,
        max_flows_per_host=per_host,
        mtu=_int(obj.get("mtu", d.mtu), f"{path}.mtu", 576, 9000),
        ping_on_wan=_bool(obj.get("ping_on_wan", d.ping_on_wan), f"{path}.ping_on_wan"),
        port_reuse_delay=_seconds(delay, f"{path}.port_reuse_delay", 120.0, "RFC 6888 REQ-8"),
        busy_poll_us=_int(
            obj.get("busy_poll_us", d.busy_poll_us), f"{path}.busy_poll_us", 0, _MAX_BUSY_POLL_US
        ),
    )


def _memory(value: object, path: str) -> int:
    if value == "":
        return ApplianceConfig.memory_mib
    match = _MEMORY.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0:
        _fail(path, value, "is not a memory size like '128m' or '1G' (MiB without a suffix)")
    return int(match[1]) * (1024 if match[2] in ("g", "G") else 1)


def parse_config(document: object) -> ApplianceConfig:
    """The configuration in document (a json.loads result); ConfigError if it is invalid."""
    root = _object(document, "")
    run = _object(_required(root, "RunConfig", ""), "RunConfig")
    wan, lan = _nics(run)
    passthrough = _object(root.get("ManifestPassthrough", {}), "ManifestPassthrough")
    return ApplianceConfig(
        wan=wan,
        lan=lan,
        nat=_nat(passthrough.get("nat", {}), "ManifestPassthrough.nat", lan.address),
        memory_mib=_memory(run.get("Memory", ""), "RunConfig.Memory"),
        cpus=_int(run.get("CPUs", 0), "RunConfig.CPUs", 0, 1024) or ApplianceConfig.cpus,
    )


def load_config(path: str | os.PathLike[str]) -> ApplianceConfig:
    """The configuration in the JSON file at path; ConfigError naming the file if it is bad."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ConfigError(f"{name}: cannot read: {error.strerror}", name) from error
    try:
        document = json.loads(data, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        message = f"{name}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        raise ConfigError(message, name) from error
    except (ValueError, RecursionError) as error:  # bad UTF-8, a huge number, deep nesting
        raise ConfigError(f"{name}: invalid JSON: {error}", name) from error
    return parse_config(document)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of two equal keys; a repeated key is a typo waiting to bite
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _number(seconds: float) -> int | float:
    return int(seconds) if seconds.is_integer() else seconds


def _nic_document(nic: Nic) -> dict[str, object]:
    address = nic.address
    document: dict[str, object] = {"IPAddress": str(address.ip), "NetMask": str(address.netmask)}
    if nic.gateway is not None:
        document["Gateway"] = str(nic.gateway)
    if nic.bridge is not None:
        document["BridgeName"] = nic.bridge
    return document


def _forward_document(forward: PortForward) -> dict[str, object]:
    return {
        "protocol": forward.protocol.value,
        "external_port": _port_text(forward.external_first, forward.external_last),
        "lan_host": str(forward.lan_host),
        "lan_port": forward.lan_first,
    }


def _nat_document(nat: NatSettings) -> dict[str, object]:
    return {
        "port_range": _port_text(nat.port_first, nat.port_last),
        "filtering": nat.filtering.value,
        "timeouts": {name: _number(getattr(nat.timeouts, name)) for name in _TIMEOUT_RULES},
        "port_forwards": [_forward_document(forward) for forward in nat.port_forwards],
        "max_flows": nat.max_flows,
        "max_flows_per_host": nat.max_flows_per_host,
        "mtu": nat.mtu,
        "ping_on_wan": nat.ping_on_wan,
        "port_reuse_delay": _number(nat.port_reuse_delay),
        "busy_poll_us": nat.busy_poll_us,
    }


def to_document(config: ApplianceConfig) -> dict[str, object]:
    """The ops config.json document of config: parse_config(to_document(config)) == config."""
    nics = [_nic_document(config.wan), _nic_document(config.lan)]
    run = {"Nics": nics, "Memory": f"{config.memory_mib}m", "CPUs": config.cpus}
    return {"RunConfig": run, "ManifestPassthrough": {"nat": _nat_document(config.nat)}}


# Kernel command-line overrides. Each natvm.* key turns its values into keys of one JSON object
# of the document, found by following `where` from the top; values go in as the file would hold
# them, so parse_config checks them with the file's messages.
_Convert = Callable[[str, Sequence[str]], dict[str, object]]


def _scalar(key: str, word: str) -> object:
    # Any number reads as one, of any size or sign, so that the key's own check names its bound
    # ("-1 is out of range 0..1000000") instead of calling a number "not an integer".
    try:
        if re.fullmatch(r"-?[0-9]+", word):
            return int(word)
        return float(word) if re.fullmatch(r"-?[0-9]+\.[0-9]+", word) else word
    except ValueError:  # past int()'s 4300 digits, more than a kernel command line holds
        return word


def _flag(key: str, word: str) -> object:
    if word not in ("0", "1"):
        raise ConfigError(f"{key}: {word!r} is not 0 or 1", key)
    return word == "1"


def _none(key: str, word: str) -> object:
    return "" if word == "none" else word  # "" is ops's "not set"


def _last(name: str, convert: Callable[[str, str], object] = _scalar) -> _Convert:
    """A setting given once; a later word wins, as for the kernel's own parameters."""
    return lambda key, values: {name: convert(key, values[-1])}


def _interface_word(key: str, values: Sequence[str]) -> dict[str, object]:
    address, slash, prefix = values[-1].partition("/")
    if not slash:
        raise ConfigError(f"{key}: {values[-1]!r} is not an IPv4 address/prefix", key)
    return {"IPAddress": address, "NetMask": prefix}


def _forward_words(key: str, values: Sequence[str]) -> dict[str, object]:
    forwards: list[object] = []
    for word in values if list(values) != ["none"] else []:
        parts = word.split(":")
        if len(parts) != 4:
            raise ConfigError(f"{key}: {word!r} is not PROTO:PORT[-LAST]:LAN_HOST:LAN_PORT", key)
        fields = [*parts[:3], _scalar(key, parts[3])]
        forwards.append(dict(zip(_FORWARD_KEYS, fields, strict=True)))
    return {"port_forwards": forwards}


_WAN = ("RunConfig", "Nics", 0)
_LAN = ("RunConfig", "Nics", 1)
_NAT = ("ManifestPassthrough", "nat")
_FORWARD_HELP = "PROTO:PORT[-LAST]:LAN_HOST:LAN_PORT, repeatable, replaces the file's forwards"
# key -> (where, convert, one-line description)
_OVERRIDES: dict[str, tuple[tuple[str | int, ...], _Convert, str]] = {
    "natvm.wan.ip": (_WAN, _interface_word, "WAN address/prefix, e.g. 192.0.2.2/24"),
    "natvm.wan.gw": (_WAN, _last("Gateway", _none), "WAN gateway address, or 'none'"),
    "natvm.lan.ip": (_LAN, _interface_word, "LAN address/prefix, e.g. 10.77.0.1/24"),
    "natvm.ports": (_NAT, _last("port_range"), "external ports for mappings, e.g. 1024-65535"),
    "natvm.filtering": (_NAT, _last("filtering"), "inbound filtering: " + ", ".join(Filtering)),
    "natvm.forward": (_NAT, _forward_words, f"port forward {_FORWARD_HELP} ('none': no forwards)"),
    "natvm.mtu": (_NAT, _last("mtu"), "MTU of both NICs, 576..9000"),
    "natvm.ping_on_wan": (_NAT, _last("ping_on_wan", _flag), "answer pings on the WAN: 0 or 1"),
    "natvm.max_flows": (_NAT, _last("max_flows"), "most flows in the table"),
    "natvm.max_flows_per_host": (_NAT, _last("max_flows_per_host"), "most flows per LAN host"),
    "natvm.busy_poll_us": (
        _NAT,
        _last("busy_poll_us"),
        "microseconds to keep polling after a frame (0: sleep at once)",
    ),
} | {
    f"natvm.timeout.{name}": ((*_NAT, "timeouts"), _last(name), f"{what}, s (min {low:g}, {rfc})")
    for name, (low, rfc, what) in _TIMEOUT_RULES.items()
}


def override_keys() -> dict[str, str]:
    """The natvm.* kernel command-line keys, each with a one-line description."""
    return {key: description for key, (_, _, description) in _OVERRIDES.items()}


def parse_kernel_cmdline(cmdline: str) -> dict[str, list[str]]:
    """The natvm.* words of a kernel command line (/proc/cmdline): key -> values, in order."""
    found: dict[str, list[str]] = {}
    # a word may hold double-quoted spaces, as the kernel's own parser allows
    for word in re.findall(r'(?:[^\s"]+|"[^"]*"?)+', cmdline):
        key, _, value = word.replace('"', "").partition("=")
        if key.startswith("natvm."):
            found.setdefault(key, []).append(value)
    return found


def apply_overrides(
    config: ApplianceConfig, overrides: Mapping[str, Sequence[str]]
) -> ApplianceConfig:
    """config with natvm.* overrides applied, validated as the file is; ConfigError if invalid."""
    for key in overrides:
        if key not in _OVERRIDES:
            message = f"{key}: unknown key; valid keys: {', '.join(_OVERRIDES)}"
            raise ConfigError(message, key)
    document: Any = to_document(config)
    written: dict[str, str] = {}  # document path -> the natvm.* key that wrote it
    for key, given in overrides.items():
        values = [given] if isinstance(given, str) else list(given)
        where, convert, _ = _OVERRIDES[key]
        target = document
        for step in where:
            target = target[step]
        for name, value in convert(key, values).items() if values else ():
            target[name] = value
            written[_path_of((*where, name))] = key
    try:
        return parse_config(document)
    except ConfigError as error:
        raise _relabel(error, written) from error


def _path_of(where: Sequence[str | int]) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in where)[1:]


def _relabel(error: ConfigError, written: Mapping[str, str]) -> ConfigError:
    if not written:
        return error
    for path, key in written.items():
        if error.path == path or error.path.startswith(path + "["):
            return ConfigError(key + str(error)[len(error.path) :], key)
    keys = ", ".join(sorted(set(written.values())))
    return ConfigError(f"{error} (after the kernel command-line overrides {keys})", error.path)
