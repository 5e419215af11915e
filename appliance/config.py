"""The appliance's configuration: an ops config.json plus kernel command-line overrides.

Theory of operation
-------------------
The file has the schema of the ``ops`` tool's config.json, so one file describes both the VM
(``RunConfig.Memory``, ``CPUs`` and each NIC's ``BridgeName``, read by the host side) and the NAT
inside it. ``RunConfig.Nics[0]`` is the WAN NIC and ``Nics[1]`` the LAN NIC; the NAT settings live
under ``ManifestPassthrough.nat``. Other ops keys (Args, Env, Files, ...) are accepted and ignored,
but unknown keys inside a NIC or under ``nat`` are errors: a typo must not quietly become a default.
Empty strings and ``CPUs: 0`` mean "not set", as in the Go structs ops writes.

``parse_config`` walks the ``json.loads`` result once, top-down, into immutable records
(NamedTuples: unlike frozen dataclasses they cost no generated code at import, which under TCG
was a noticeable part of the appliance's boot). Each
reader gets the dotted path of the value it reads, and every problem raises ``ConfigError`` whose
message starts with that path and shows the value; nothing else escapes, so the caller prints one
line instead of a traceback. Cross-field rules (gateway inside the WAN subnet, forwards into the
LAN, disjoint subnets and forward ranges) are checked as soon as both fields are parsed.

Each key under ``ManifestPassthrough.nat`` is one declaration, ``Setting(name, kind, word, help)``,
in the ``Section`` of the settings record whose field (default included) it fills: ``NatSettings``
or ``Timeouts``. Its kind (``Integer(576, 9000)``, ``Seconds(120.0, "RFC 4787 REQ-5")``, ...)
reads and checks the JSON value, writes it back, turns ``natvm.*`` words into a JSON value and
states the bounds the README's tables repeat. The file's valid keys, their order, ``to_document``
and the kernel words are all derived from these declarations, so a new key is a field and its
``Setting``.

Kernel command-line words ``natvm.KEY=VALUE`` (``override_keys()``) override single settings.
``apply_overrides`` writes them into the document that ``to_document`` rebuilds from a parsed
config and parses that again: one validation path, whose errors on overridden values are relabelled
with the ``natvm.*`` key that set them.
"""

import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Generic, NamedTuple, NoReturn, TypeVar


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


class PortForward(NamedTuple):
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


_FORWARD_KEYS = ("protocol", "external_port", "lan_host", "lan_port")
_NIC_KEYS = ("IPAddress", "NetMask", "Gateway", "BridgeName")
_MAX_SECONDS = 10**9  # about 31 years: "never", still a finite float to add to a clock
_MAX_FLOWS = 2**24  # a sanity bound, far beyond what a small VM's memory holds
_PORT_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_MEMORY = re.compile(r"([0-9]{1,7})([mMgG]?)")
# also a safe command-line word for the host side: no leading '-', no '/', no spaces
_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)


# --- values: each check fails with the path, the value and what is wrong with it ------------------


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


def _number(seconds: float) -> int | float:
    return int(seconds) if seconds.is_integer() else seconds


def _address(value: object, path: str) -> IPv4Address:
    try:
        address = IPv4Address(value if isinstance(value, str) else "")
    except ValueError:
        _fail(path, value, "is not an IPv4 address")
    if address.is_multicast or address.is_loopback or address.is_unspecified or address.is_reserved:
        _fail(path, value, "is not a unicast address")
    return address


def _prefix(value: object, path: str, longest: int) -> int:
    """A netmask, dotted ("255.255.255.0") or as a prefix length ("24"), at most `longest`."""
    text = value if isinstance(value, str) else ""
    try:
        network: IPv4Network | None = IPv4Network(f"0.0.0.0/{text}")
    except ValueError:
        network = None
    # IPv4Network also takes a host mask ("0.0.0.255"): accept only masks that read back the same
    if network is None or not (text.isdigit() or str(network.netmask) == text):
        _fail(path, value, "is not a netmask like '255.255.255.0' or a prefix length like '24'")
    if network.prefixlen > longest:
        _fail(path, value, f"leaves no room for hosts (the prefix must be {longest} or shorter)")
    return network.prefixlen


def _host(address: IPv4Address, network: IPv4Network, path: str) -> None:
    # A /31 (RFC 3021) and a /32 have no network or broadcast address: every address is a host.
    if network.prefixlen <= 30 and address in (network.network_address, network.broadcast_address):
        _fail(path, str(address), f"is the network or broadcast address of {network}")


def _neighbour(
    value: object, path: str, interface: IPv4Interface, side: str, on_link: bool = False
) -> IPv4Address:
    """An address of another host in the subnet of the appliance's interface on side; with
    `on_link`, of a host outside it too (a /32's gateway, reached on the link by ARP)."""
    address = _address(value, path)
    if address not in interface.network and not on_link:
        _fail(path, value, f"is not inside the {side} subnet {interface.network}")
    if address == interface.ip:
        _fail(path, value, f"is the appliance's own {side} address")
    _host(address, interface.network, path)
    return address


def _forward(value: object, path: str, lan: IPv4Interface) -> PortForward:
    obj = _object(value, path, _FORWARD_KEYS)
    protocol = _choice(_required(obj, "protocol", path), f"{path}.protocol", Protocol)
    first, last = _port_range(_required(obj, "external_port", path), f"{path}.external_port")
    lan_first = _int(_required(obj, "lan_port", path), f"{path}.lan_port", 1, 65535)
    if lan_first + last - first > 65535:
        _fail(f"{path}.lan_port", lan_first, f"+ {last - first} ports would end past 65535")
    host = _neighbour(_required(obj, "lan_host", path), f"{path}.lan_host", lan, "LAN")
    return PortForward(protocol, first, last, host, lan_first)


def _forward_document(forward: PortForward) -> dict[str, object]:
    return {
        "protocol": forward.protocol.value,
        "external_port": _port_text(forward.external_first, forward.external_last),
        "lan_host": str(forward.lan_host),
        "lan_port": forward.lan_first,
    }


def _scalar(word: str) -> object:
    """A kernel word as the file would hold it: a number if it reads as one, else the text."""
    # Any number reads as one, of any size or sign, so that the key's own check names its bound
    # ("-1 is out of range 0..1000000") instead of calling a number "not an integer".
    try:
        if re.fullmatch(r"-?[0-9]+", word):
            return int(word)
        return float(word) if re.fullmatch(r"-?[0-9]+\.[0-9]+", word) else word
    except ValueError:  # past int()'s 4300 digits, more than a kernel command line holds
        return word


# --- kinds of keys: how a key's value is read, written, given on the kernel command line ----------


class _Context(NamedTuple):
    """What a key's reader may consult beside its own value."""

    lan: IPv4Interface  # port forwards lead into the LAN
    earlier: Mapping[str, object]  # the fields of the same object read so far


class Kind(Generic[_T]):
    """A type of key: reads and checks its JSON value, writes it back, reads its kernel words."""

    __slots__ = ()

    def read(self, value: object, path: str, context: _Context) -> _T:
        """The checked value; ConfigError naming path if the file's value is invalid."""
        raise NotImplementedError

    def write(self, value: _T) -> object:
        """The JSON value the file holds for value: read(write(value)) == value."""
        return value

    def word(self, key: str, values: Sequence[str]) -> object:
        """The JSON value of the words natvm.KEY=VALUE, in their order; read() then checks it."""
        return _scalar(values[-1])  # a later word wins, as for the kernel's own parameters

    def bounds(self) -> str:
        """The bounds as the README's tables state them ('' if its text says it in prose)."""
        return ""


class Integer(Kind[int]):
    __slots__ = ("at_most", "high", "low")

    def __init__(self, low: int, high: int, at_most: str = "") -> None:
        self.low, self.high = low, high
        self.at_most = at_most  # an earlier key of the same object this one may not exceed

    def read(self, value: object, path: str, context: _Context) -> int:
        number = _int(value, path, self.low, self.high)
        limit = context.earlier.get(self.at_most)
        if isinstance(limit, int) and number > limit:
            _fail(path, number, f"is above {self.at_most} ({limit})")
        return number

    def bounds(self) -> str:
        return f"{self.low}..{self.at_most or self.high}"


class Seconds(Kind[float]):
    __slots__ = ("minimum", "reason")

    def __init__(self, minimum: float, reason: str) -> None:
        self.minimum = minimum
        self.reason = reason  # where the minimum comes from

    def read(self, value: object, path: str, context: _Context) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            _fail(path, value, "is not a number of seconds")
        if value < self.minimum:
            _fail(path, value, f"is below the minimum of {self.minimum:g} s ({self.reason})")
        if value > _MAX_SECONDS:
            _fail(path, value, f"is above the maximum of {_MAX_SECONDS} s")
        return float(value)

    def write(self, value: float) -> object:
        return _number(value)

    def bounds(self) -> str:
        return f"≥ {self.minimum:g} ({self.reason})"


class Choice(Kind[_E]):
    __slots__ = ("choices",)

    def __init__(self, choices: type[_E]) -> None:
        self.choices = choices

    def read(self, value: object, path: str, context: _Context) -> _E:
        return _choice(value, path, self.choices)

    def write(self, value: _E) -> object:
        return value.value

    def bounds(self) -> str:
        return ", ".join(self.choices)


class Boolean(Kind[bool]):
    def read(self, value: object, path: str, context: _Context) -> bool:
        if not isinstance(value, bool):
            _fail(path, value, "is not a boolean (true or false)")
        return value

    def word(self, key: str, values: Sequence[str]) -> object:
        if values[-1] not in ("0", "1"):
            raise ConfigError(f"{key}: {values[-1]!r} is not 0 or 1", key)
        return values[-1] == "1"


class PortRange(Kind[tuple[int, int]]):
    def read(self, value: object, path: str, context: _Context) -> tuple[int, int]:
        return _port_range(value, path)

    def write(self, value: tuple[int, int]) -> object:
        return _port_text(*value)

    def bounds(self) -> str:
        return "1..65535"


class PortForwards(Kind[tuple[PortForward, ...]]):
    def read(self, value: object, path: str, context: _Context) -> tuple[PortForward, ...]:
        forwards: list[PortForward] = []
        for index, item in enumerate(_array(value, path)):
            new = _forward(item, f"{path}[{index}]", context.lan)
            for old in forwards:
                overlap = (
                    old.external_first <= new.external_last
                    and new.external_first <= old.external_last
                )
                if overlap and old.protocol == new.protocol:
                    ports = _port_text(new.external_first, new.external_last)
                    taken = _port_text(old.external_first, old.external_last)
                    problem = f"overlaps the {old.protocol} forward of {taken}"
                    _fail(f"{path}[{index}].external_port", ports, problem)
            forwards.append(new)
        return tuple(forwards)

    def write(self, value: tuple[PortForward, ...]) -> object:
        return [_forward_document(forward) for forward in value]

    def word(self, key: str, values: Sequence[str]) -> object:
        """Every word is a forward (PROTO:PORT[-LAST]:LAN_HOST:LAN_PORT); 'none' is none."""
        forwards: list[object] = []
        for word in values if list(values) != ["none"] else []:
            parts = word.split(":")
            if len(parts) != 4:
                raise ConfigError(
                    f"{key}: {word!r} is not PROTO:PORT[-LAST]:LAN_HOST:LAN_PORT", key
                )
            values_in_order = [*parts[:3], _scalar(parts[3])]
            forwards.append(dict(zip(_FORWARD_KEYS, values_in_order, strict=True)))
        return forwards


_MAX_DNS_SERVERS = 2  # one for each of the addresses Qubes clients send DNS to


class DnsServers(Kind[tuple[IPv4Address, ...]]):
    """Upstream DNS servers: a JSON array of addresses; on the command line IP[,IP] or 'none'."""

    def read(self, value: object, path: str, context: _Context) -> tuple[IPv4Address, ...]:
        items = _array(value, path)
        if len(items) > _MAX_DNS_SERVERS:
            _fail(path, value, f"names more than {_MAX_DNS_SERVERS} servers")
        return tuple(_address(item, f"{path}[{index}]") for index, item in enumerate(items))

    def write(self, value: tuple[IPv4Address, ...]) -> object:
        return [str(address) for address in value]

    def word(self, key: str, values: Sequence[str]) -> object:
        return [] if values[-1] == "none" else values[-1].split(",")


class Setting(NamedTuple):
    """One JSON key of a settings record, declared in the record's Section."""

    name: str  # the JSON key; by default also the field it fills
    kind: Kind[Any]
    word: str | None  # the natvm.* kernel word that overrides it, if any
    help: str  # one line, for override_keys()
    fills: tuple[str, ...] = ()  # the fields its value spreads over; (name,) unless given
    default: object = None  # its fields' default, as read() returns it (set by Section)


class Section(Kind[_T]):
    """A JSON object whose keys fill the fields of a settings record (a NamedTuple whose every
    field has a default), one Setting each, in the file's order."""

    __slots__ = ("cls", "keys")

    def __init__(self, cls: type[_T], *keys: Setting) -> None:
        self.cls = cls
        defaults = cls()
        filled = [key._replace(fills=key.fills or (key.name,)) for key in keys]
        self.keys = tuple(key._replace(default=_value_of(defaults, key)) for key in filled)

    def read(self, value: object, path: str, context: _Context) -> _T:
        obj = _object(value, path, [each.name for each in self.keys])
        values: dict[str, Any] = {}
        for each in self.keys:
            # an absent key takes its default through the same check: a default may clash with
            # another key's value (max_flows_per_host with a small max_flows)
            given = obj[each.name] if each.name in obj else each.kind.write(each.default)
            got = each.kind.read(given, f"{path}.{each.name}", _Context(context.lan, values))
            values.update(zip(each.fills, got if len(each.fills) > 1 else (got,), strict=True))
        return self.cls(**values)

    def write(self, value: _T) -> object:
        return {each.name: each.kind.write(_value_of(value, each)) for each in self.keys}


def _value_of(settings: object, key: Setting) -> object:
    values = tuple(getattr(settings, name) for name in key.fills)
    return values if len(values) > 1 else values[0]


# --- the settings ---------------------------------------------------------------------------------


class Timeouts(NamedTuple):
    """Idle timeouts in seconds, each at least the minimum its RFC sets."""

    udp: float = 300.0
    tcp_established: float = 7440.0
    tcp_transitory: float = 240.0
    icmp_query: float = 60.0


_TIMEOUTS = Section(
    Timeouts,
    Setting(
        "udp", Seconds(120.0, "RFC 4787 REQ-5"), "natvm.timeout.udp", "UDP mapping idle timeout, s"
    ),
    Setting(
        "tcp_established",
        Seconds(7440.0, "RFC 5382 REQ-5"),
        "natvm.timeout.tcp_established",
        "established TCP idle timeout, s",
    ),
    Setting(
        "tcp_transitory",
        Seconds(240.0, "RFC 5382 REQ-5"),
        "natvm.timeout.tcp_transitory",
        "opening/closing TCP idle timeout, s",
    ),
    Setting(
        "icmp_query",
        Seconds(60.0, "RFC 5508 REQ-2"),
        "natvm.timeout.icmp_query",
        "ICMP query (echo) mapping timeout, s",
    ),
)


class NatSettings(NamedTuple):
    """ManifestPassthrough.nat, each field filled by one of the keys declared in _NAT below."""

    port_first: int = 1024  # one JSON key, port_range ("1024-65535"), fills both ends
    port_last: int = 65535
    filtering: Filtering = Filtering.ADDRESS_DEPENDENT
    timeouts: Timeouts = Timeouts()
    port_forwards: tuple[PortForward, ...] = ()
    max_flows: int = 65536
    max_flows_per_host: int = 4096
    # every IPv4 host accepts 576-octet datagrams (RFC 791); 9000 is a jumbo frame
    mtu: int = 1500
    ping_on_wan: bool = False
    # a freed external port rests this long before a new mapping gets it
    port_reuse_delay: float = 120.0
    # After a frame, keep polling the NICs without sleeping for this long (Linux's
    # net.core.busy_poll, for the appliance): no wake-up latency, for a CPU kept busy.
    busy_poll_us: int = 0
    # A Qubes-style net VM (appliance/netvm.py): clients attach at run time, each on an
    # interface of its own with one address inside Nics[1]'s subnet, whose own address is the
    # gateway they use (Qubes' /qubes-netvm-gateway).
    netvm: bool = False
    # Where DNS that netvm clients send to 10.139.1.1 and 10.139.1.2 goes (the first and the
    # second server; the first for both if only one is given); none: such DNS is dropped.
    dns_servers: tuple[IPv4Address, ...] = ()


_NAT = Section(
    NatSettings,
    Setting(
        "port_range",
        PortRange(),
        "natvm.ports",
        "external ports for mappings, FIRST[-LAST]",
        fills=("port_first", "port_last"),
    ),
    Setting("filtering", Choice(Filtering), "natvm.filtering", "inbound filtering"),
    Setting("timeouts", _TIMEOUTS, None, "idle timeouts"),
    Setting(
        "port_forwards",
        PortForwards(),
        "natvm.forward",
        "port forward PROTO:PORT[-LAST]:LAN_HOST:LAN_PORT, repeatable, replaces the file's "
        "forwards ('none': no forwards)",
    ),
    Setting("max_flows", Integer(1, _MAX_FLOWS), "natvm.max_flows", "most flows in the table"),
    Setting(
        "max_flows_per_host",
        Integer(1, _MAX_FLOWS, at_most="max_flows"),
        "natvm.max_flows_per_host",
        "most flows per LAN host",
    ),
    Setting("mtu", Integer(576, 9000), "natvm.mtu", "MTU of both NICs"),
    Setting("ping_on_wan", Boolean(), "natvm.ping_on_wan", "answer pings on the WAN: 0 or 1"),
    Setting(
        "port_reuse_delay",
        Seconds(120.0, "RFC 6888 REQ-8"),
        None,
        "rest of a freed external port, s",
    ),
    Setting(
        "busy_poll_us",
        Integer(0, 1_000_000),
        "natvm.busy_poll_us",
        "microseconds to keep polling after a frame (0: sleep at once)",
    ),
    Setting(
        "netvm",
        Boolean(),
        "natvm.netvm",
        "serve client VMs on interfaces attached at run time (Qubes-style net VM): 0 or 1",
    ),
    Setting(
        "dns_servers",
        DnsServers(),
        "natvm.dns",
        "upstream DNS servers for netvm clients, IP[,IP] ('none': no DNS)",
    ),
)


class Nic(NamedTuple):
    address: IPv4Interface  # IPAddress + NetMask
    gateway: IPv4Address | None  # inside the NIC's subnet; only the WAN NIC has one
    bridge: str | None  # BridgeName: used only by the host side to attach the VM's NIC


_DEFAULT_MEMORY_MIB, _DEFAULT_CPUS = 128, 1


class ApplianceConfig(NamedTuple):
    wan: Nic  # RunConfig.Nics[0]
    lan: Nic  # RunConfig.Nics[1]
    nat: NatSettings
    memory_mib: int = _DEFAULT_MEMORY_MIB  # RunConfig.Memory
    cpus: int = _DEFAULT_CPUS  # RunConfig.CPUs


# --- reading --------------------------------------------------------------------------------------


def _bridge(value: object, path: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _BRIDGE.fullmatch(value):
        _fail(path, value, "is not a bridge name (1-15 of A-Za-z0-9_.- not starting with _.-)")
    return value


def _nic(value: object, path: str, side: str) -> Nic:
    obj = _object(value, path, _NIC_KEYS)
    address = _address(_required(obj, "IPAddress", path), f"{path}.IPAddress")
    # The uplink may be a /31 or a /32 (a Qubes net VM behind another one gets a /32 and an
    # on-link gateway); the LAN needs room for hosts beside the appliance.
    longest = 32 if side == "WAN" else 30
    prefix = _prefix(_required(obj, "NetMask", path), f"{path}.NetMask", longest)
    interface = IPv4Interface((address, prefix))
    _host(address, interface.network, f"{path}.IPAddress")
    raw, gateway = obj.get("Gateway", ""), None
    if raw not in (None, ""):
        if side == "LAN":
            _fail(f"{path}.Gateway", raw, "is not allowed: the appliance is the LAN's router")
        gateway = _neighbour(raw, f"{path}.Gateway", interface, side, on_link=prefix == 32)
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


def _memory(value: object, path: str) -> int:
    if value == "":
        return _DEFAULT_MEMORY_MIB
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
    nat = passthrough.get("nat", {})
    return ApplianceConfig(
        wan=wan,
        lan=lan,
        nat=_NAT.read(nat, "ManifestPassthrough.nat", _Context(lan.address, {})),
        memory_mib=_memory(run.get("Memory", ""), "RunConfig.Memory"),
        cpus=_int(run.get("CPUs", 0), "RunConfig.CPUs", 0, 1024) or _DEFAULT_CPUS,
    )


# A configuration is about a kilobyte; one a thousand times larger is a mistake (or /dev/zero),
# and reading it whole must not cost the appliance its memory.
MAX_CONFIG_BYTES = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"


def load_config(path: str | os.PathLike[str]) -> ApplianceConfig:
    """The configuration in the JSON file at path; ConfigError naming the file if it is bad."""
    name = os.fspath(path)
    return parse_config(_decode_json(name, _read_config_file(name)))


def _read_config_file(name: str) -> bytes:
    """At most MAX_CONFIG_BYTES of a regular file. Opened non-blocking: a FIFO with no writer
    would block `open` forever, and only a regular file has a size to trust."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"{name}: cannot read: {error.strerror}", name) from error
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
            raise ConfigError(f"{name}: cannot read: not a regular file ({kind})", name)
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise ConfigError(f"{name}: cannot read: {error.strerror}", name) from error
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: larger than {MAX_CONFIG_BYTES // 1024} KiB", name)
    return data


def _decode_json(name: str, data: bytes) -> object:
    """UTF-8 JSON (RFC 8259 8.1); a UTF-8 byte order mark is ignored on purpose (editors on
    Windows add one), any other encoding is refused by name rather than guessed."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4]:
        raise ConfigError(f"{name}: not UTF-8 (UTF-16 or UTF-32?): save it as UTF-8", name)
    try:
        text = data.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{name}: invalid JSON: {error}", name) from error
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        message = f"{name}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        raise ConfigError(message, name) from error
    except (ValueError, RecursionError) as error:  # a huge number, deep nesting
        raise ConfigError(f"{name}: invalid JSON: {error}", name) from error


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of two equal keys; a repeated key is a typo waiting to bite
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


# --- writing --------------------------------------------------------------------------------------


def _nic_document(nic: Nic) -> dict[str, object]:
    address = nic.address
    document: dict[str, object] = {"IPAddress": str(address.ip), "NetMask": str(address.netmask)}
    if nic.gateway is not None:
        document["Gateway"] = str(nic.gateway)
    if nic.bridge is not None:
        document["BridgeName"] = nic.bridge
    return document


def to_document(config: ApplianceConfig) -> dict[str, object]:
    """The ops config.json document of config: parse_config(to_document(config)) == config."""
    nics = [_nic_document(config.wan), _nic_document(config.lan)]
    run = {"Nics": nics, "Memory": f"{config.memory_mib}m", "CPUs": config.cpus}
    return {"RunConfig": run, "ManifestPassthrough": {"nat": _NAT.write(config.nat)}}


# --- kernel command-line overrides ----------------------------------------------------------------
# Each natvm.* key turns its values into keys of one JSON object of the document, found by
# following `where` from the top; values go in as the file would hold them, so parse_config checks
# them with the file's messages. The NICs' words are listed here; the NAT's come from its keys.
_Convert = Callable[[str, Sequence[str]], dict[str, object]]
_Override = tuple[tuple[str | int, ...], _Convert, str]  # (where, convert, one-line description)


def _interface_word(key: str, values: Sequence[str]) -> dict[str, object]:
    address, slash, prefix = values[-1].partition("/")
    if not slash:
        raise ConfigError(f"{key}: {values[-1]!r} is not an IPv4 address/prefix", key)
    return {"IPAddress": address, "NetMask": prefix}


def _gateway_word(key: str, values: Sequence[str]) -> dict[str, object]:
    return {"Gateway": "" if values[-1] == "none" else values[-1]}  # "" is ops's "not set"


_WAN = ("RunConfig", "Nics", 0)
_LAN = ("RunConfig", "Nics", 1)
_NIC_OVERRIDES: dict[str, _Override] = {
    "natvm.wan.ip": (_WAN, _interface_word, "WAN address/prefix, e.g. 192.0.2.2/24"),
    "natvm.wan.gw": (_WAN, _gateway_word, "WAN gateway address, or 'none'"),
    "natvm.lan.ip": (_LAN, _interface_word, "LAN address/prefix, e.g. 10.77.0.1/24"),
}


def _leaves(
    section: Section[Any], where: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Setting]]:
    """The keys of section and of the sections in it, each with the JSON keys that lead to it."""
    for each in section.keys:
        if isinstance(each.kind, Section):
            yield from _leaves(each.kind, (*where, each.name))
        else:
            yield (*where, each.name), each


def nat_keys() -> dict[str, Setting]:
    """The keys under ManifestPassthrough.nat in file order, by dotted name: "timeouts.udp"."""
    return {".".join(where): each for where, each in _leaves(_NAT, ())}


def _nat_override(where: tuple[str, ...], declared: Setting) -> _Override:
    def convert(word: str, values: Sequence[str]) -> dict[str, object]:
        return {declared.name: declared.kind.word(word, values)}

    bounds = declared.kind.bounds()
    help = f"{declared.help}: {bounds}" if bounds else declared.help
    return ("ManifestPassthrough", "nat", *where[:-1]), convert, help


_OVERRIDES = _NIC_OVERRIDES | {
    each.word: _nat_override(where, each) for where, each in _leaves(_NAT, ()) if each.word
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
