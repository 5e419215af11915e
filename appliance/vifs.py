"""The client vifs a Qubes-style net VM serves: which to attach and detach, from xenstore.

What the other parties do (Xen's libxl: libxl_device.c, libxl_nic.c; Linux's xen-netback:
drivers/net/xen-netback/xenbus.c; qubes-mirage-firewall's dao.ml does the same watching):
- To give client domain D a vif served by us, dom0's toolstack writes, in one transaction,
  `<our home>/backend/vif/<D>/<N>/` with `frontend-id` (D), `online` (1), `state` (1), `handle`
  (N), `mac` (the client's), `ip` (space-separated; Qubes puts the client's IPv4 first), `script`,
  `type`, `hotplug-status` (empty) and more.
- Our kernel's xen-netback probes it and creates the interface `vif<D>.<handle>` (state 2).
  As a driver domain we are the hotplug script: we set the interface up, then write
  `hotplug-status=connected`; netback waits for that before it reports state 4 (Connected).
- To take the vif away (`xl network-detach`, or the client shutting down), the toolstack writes
  `online=0` and `state=5` (Closing); the client's netfront closes, netback writes state 6
  (Closed) and removes the interface. The driver domain then removes the backend directory
  (xl devd does it through libxl__device_destroy); the toolstack waits for that (10 s, then it
  gives up and leaves the directory behind, and a re-attach of the same devid fails).

Theory of operation: watch events only say "something under here changed", they coalesce and
may be spurious, so the state machine re-reads what changed and compares what it reads with
what it last acted on (a level-triggered reconcile, as dao.ml's rescan). A device's keys read as
one of: a complete, online client; closing (online=0, state 5); closed (online=0, state 6: time
to remove its directory); gone; or malformed (dropped, with a reason, never an exception). A
client is attached only once its interface exists, which only the shell can see.

Pure: no I/O. Inputs are watch events, the answers to its requests, and what the shell reports
of interfaces; outputs are xenstore requests and decisions for the shell.

How a poll loop drives it (the integration):

    store = xenstore.Xenstore.open()                  # /dev/xen/xenbus, non-blocking fd
    home = store.get_domain_path(store.own_domid())   # /local/domain/<our domid>
    backends = VifBackends(home)
    decisions = carry_out(backends, store, backends.start())   # the watch; it fires at once
    poller.register(store.fileno(), select.POLLIN)
    loop:
        if store's fd was readable:  decisions += service(backends, store)
        for each decision:
            AwaitInterface(vif, name): if /sys/class/net/<name> exists (now, or when a netlink
                RTM_NEWLINK / a later tick shows it), decisions += carry_out(backends, store,
                backends.interface_present(name))
            Attach(client): open an AF_PACKET socket on client.interface, set it up, hand the
                engine the client (its vif, ip, mac), then decisions += carry_out(backends,
                store, backends.attached(client.vif)): that writes hotplug-status=connected.
                If the interface cannot be opened (gone meanwhile), call
                backends.interface_gone(name) instead.
            Detach(client, reason): close its socket, drop its flows, log the reason.
            Dropped(path, reason): log one line; nothing is attached for that directory.
Requests are carried out synchronously (xenstored answers in milliseconds); service() drains
the events that arrive meanwhile, so nothing waits for the next poll. Errors of the store
(refusals other than "no such node", a broken stream, a timeout) propagate to the shell.
"""

import re
from collections.abc import Sequence
from enum import Enum
from ipaddress import AddressValueError, IPv4Address
from typing import NamedTuple, Protocol

WATCH_TOKEN = "natvm-vifs"
KEYS = ("frontend-id", "online", "state", "handle", "mac", "ip")
XENBUS_STATES = {1: "Initialising", 2: "InitWait", 3: "Initialised", 4: "Connected"}
CLOSING, CLOSED = 5, 6  # XenbusStateClosing, XenbusStateClosed (xen/include/public/io/xenbus.h)
# netback names its interface with snprintf(name, IFNAMSIZ - 1, "vif%u.%u"): 14 characters at
# most, a longer name would be cut, and the interface awaited would never appear.
NETBACK_NAME_MAX = 14
BROADCAST = IPv4Address("255.255.255.255")
DECIMAL = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit takes "²", int() not
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class Vif(NamedTuple):
    """A client vif: the frontend's domain id and the device id under it."""

    domid: int
    devid: int

    def __str__(self) -> str:
        return f"vif {self.domid}/{self.devid}"


class Client(NamedTuple):
    """A client vif as the shell serves it."""

    vif: Vif
    interface: str  # vif<domid>.<handle>, the interface xen-netback creates for it
    ip: IPv4Address  # the client's own address: the first IPv4 of the `ip` key
    mac: bytes  # the client's MAC (netback's own side is fe:ff:ff:ff:ff:ff)
    backend: str  # its backend directory in xenstore


# Requests to xenstore, carried out by carry_out (or by a shell of one's own: List and Read are
# answered through VifBackends.listed and .read, the others need no answer).
class Watch(NamedTuple):
    path: str
    token: str


class List(NamedTuple):
    path: str  # answer: the child names, or None if there is no such node


class Read(NamedTuple):
    path: str  # a device's directory; answer: {key: value or None if absent} for each of keys
    keys: tuple[str, ...] = KEYS


class Write(NamedTuple):
    path: str
    value: str


class Remove(NamedTuple):
    path: str  # with its subtree, and each parent left empty below `keep`, in one transaction
    keep: str


Request = Watch | List | Read | Write | Remove


# Decisions for the shell.
class AwaitInterface(NamedTuple):
    vif: Vif
    name: str  # call interface_present(name) once it exists


class Attach(NamedTuple):
    client: Client  # open it, set it up, then call attached(client.vif)


class Detach(NamedTuple):
    client: Client
    reason: str


class Dropped(NamedTuple):
    path: str  # the directory in xenstore that serves no client
    reason: str


Decision = AwaitInterface | Attach | Detach | Dropped
Output = Request | Decision


# What a device's keys say.
class Closing(NamedTuple):
    reason: str
    closed: bool  # online=0 and state 6: netback is done with it, its directory can go


class Gone(NamedTuple):
    reason: str = "its backend directory was removed"


class Malformed(NamedTuple):
    reason: str


Observation = Client | Closing | Gone | Malformed


def _decimal(text: str) -> bool:
    return DECIMAL.fullmatch(text) is not None


def _integer(values: dict[str, str | None], key: str) -> int | str:
    """The key's value as a decimal integer, or the reason it is not one."""
    value = values.get(key)
    if value is None:
        return f"no {key} key"
    if not _decimal(value):
        return f"{key} {value!r} is not a number"
    return int(value)


def _mac(value: str | None) -> bytes | str:
    if value is None:
        return "no mac key"
    if MAC.fullmatch(value) is None:
        return f"mac {value!r} is not a MAC address"
    mac = bytes.fromhex(value.replace(":", ""))
    if mac[0] & 1:
        return f"mac {value} is a multicast address"
    return mac


def _client_ip(value: str | None) -> IPv4Address | str:
    """The first IPv4 address of the space-separated `ip` key (Qubes adds the IPv6 after it)."""
    if value is None:
        return "no ip key"
    for word in value.split():
        try:
            ip = IPv4Address(word)
        except AddressValueError:
            continue  # an IPv6 address, or junk: the client's IPv4 may still come
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip == BROADCAST:
            return f"ip {ip} is not a host address"
        return ip
    return f"no IPv4 address in ip {value!r}"


def observe(vif: Vif, backend: str, values: dict[str, str | None]) -> Observation:
    """What a device's keys say (`values`: each of KEYS, None where the key is absent)."""
    if all(value is None for value in values.values()):
        return Gone()
    online, state = _integer(values, "online"), _integer(values, "state")
    if isinstance(online, str) or online not in (0, 1):
        return Malformed(online if isinstance(online, str) else f"online {online} is not 0 or 1")
    if isinstance(state, str) or not 1 <= state <= CLOSED:
        return Malformed(state if isinstance(state, str) else f"state {state} is not a state")
    if state >= CLOSING or online == 0:
        name = "Closed" if state == CLOSED else XENBUS_STATES.get(state, "Closing")
        return Closing(f"online={online}, state {state} ({name})", online == 0 and state == CLOSED)
    frontend, handle = _integer(values, "frontend-id"), _integer(values, "handle")
    if isinstance(frontend, str):
        return Malformed(frontend)
    if frontend != vif.domid:
        return Malformed(f"frontend-id {frontend} is not the directory's domain {vif.domid}")
    if isinstance(handle, str):
        return Malformed(handle)
    interface = f"vif{vif.domid}.{handle}"
    if len(interface) > NETBACK_NAME_MAX:
        return Malformed(f"interface name {interface} is too long")
    mac, ip = _mac(values.get("mac")), _client_ip(values.get("ip"))
    if isinstance(mac, str):
        return Malformed(mac)
    if isinstance(ip, str):
        return Malformed(ip)
    return Client(vif, interface, ip, mac, backend)


class Phase(Enum):
    WAITING = "waiting for its interface"
    ATTACHING = "attached, hotplug-status not yet written"
    CONNECTED = "attached, hotplug-status=connected"
    CLOSING = "closing, its directory not yet removed"
    DROPPED = "dropped"


ATTACHED = (Phase.ATTACHING, Phase.CONNECTED)  # the shell holds the client: leaving detaches
SERVING = (Phase.WAITING, *ATTACHED)


class Record:
    __slots__ = ("client", "phase", "reason")

    def __init__(self, phase: Phase, client: Client | None = None, reason: str = "") -> None:
        self.phase = phase
        self.client = client
        # Why it was dropped, so the same reason is not reported on every event.
        self.reason = reason


class VifBackends:
    """The state machine: one Record per client vif seen, and what to read next."""

    __slots__ = ("_devices", "_domains", "_rescan", "_strays", "home", "records", "removes_closed")

    def __init__(self, home: str, removes_closed: bool = True) -> None:
        self.home = home  # our domain's path, /local/domain/<domid>
        # Remove a closed backend's directory: a driver domain's duty. False where the toolstack
        # runs in this same domain (a dom0 serving vifs itself), as libxl removes it there, after
        # the hotplug script it runs reads the directory.
        self.removes_closed = removes_closed
        self.records: dict[Vif, Record] = {}
        self._rescan = False
        self._domains: set[int] = set()  # whose device list is to be read
        self._devices: set[Vif] = set()  # whose keys are to be read
        self._strays: set[str] = set()  # names not numbers, reported once

    @property
    def base(self) -> str:
        return f"{self.home}/backend/vif"

    def start(self) -> list[Output]:
        return [Watch(self.base, WATCH_TOKEN)]

    def changed(self, path: str) -> None:
        """A watch event's path: mark what it touched to be read again (see requests())."""
        if path == self.base or self.base.startswith(path + "/"):
            self._rescan = True  # the watch's first firing, or backend/vif itself went
        elif path.startswith(self.base + "/"):
            parts = path[len(self.base) + 1 :].split("/")
            if _decimal(parts[0]) and len(parts) == 1:
                self._domains.add(int(parts[0]))
            elif _decimal(parts[0]) and _decimal(parts[1]):
                self._devices.add(Vif(int(parts[0]), int(parts[1])))
            # else: no domain/device directory; a rescan's listing reports it

    def requests(self) -> list[Output]:
        """The reads that the events since the last call need, each asked once."""
        if self._rescan:
            out: list[Output] = [List(self.base)]  # which reads every domain and device
        else:
            out = [List(f"{self.base}/{domid}") for domid in sorted(self._domains)]
            out += [Read(self._path(vif)) for vif in sorted(self._devices)]
        self._rescan = False
        self._domains.clear()
        self._devices.clear()
        return out

    def _path(self, vif: Vif) -> str:
        return f"{self.base}/{vif.domid}/{vif.devid}"

    def listed(self, request: List, names: Sequence[str] | None) -> list[Output]:
        """The answer to a List: the child names, or None if there is no such node."""
        if request.path == self.base:
            return self._listed_domains(names or [])
        return self._listed_devices(int(request.path.rpartition("/")[2]), names or [])

    def read(self, request: Read, values: dict[str, str | None]) -> list[Output]:
        """The answer to a Read: each key's value, None where it is absent."""
        vif = self._vif_of(request.path)
        return self._reconcile(vif, observe(vif, request.path, values))

    def _stray(self, path: str) -> list[Output]:
        # A name under backend/vif that is no domain or device id: not a toolstack's; reported
        # once, however often it is listed.
        if path in self._strays:
            return []
        self._strays.add(path)
        return [Dropped(path, "not a domain or device id")]

    def _vif_of(self, path: str) -> Vif:
        domid, devid = path[len(self.base) + 1 :].split("/")
        return Vif(int(domid), int(devid))

    def _listed_domains(self, names: Sequence[str]) -> list[Output]:
        out: list[Output] = []
        domids = set()
        for name in names:
            if _decimal(name):
                domids.add(int(name))
                out.append(List(f"{self.base}/{name}"))
            else:
                out += self._stray(f"{self.base}/{name}")
        for vif in sorted(self.records):
            if vif.domid not in domids:
                out += self._reconcile(vif, Gone())
        return out

    def _listed_devices(self, domid: int, names: Sequence[str]) -> list[Output]:
        out: list[Output] = []
        devids = set()
        for name in names:
            if _decimal(name):
                devids.add(int(name))
                out.append(Read(self._path(Vif(domid, int(name)))))
            else:
                out += self._stray(f"{self.base}/{domid}/{name}")
        for vif in sorted(self.records):
            if vif.domid == domid and vif.devid not in devids:
                out += self._reconcile(vif, Gone())
        return out

    def _reconcile(self, vif: Vif, seen: Observation) -> list[Output]:
        """Bring the record of `vif` in line with what its keys say now."""
        record = self.records.get(vif)
        held = record.client if record is not None and record.phase in ATTACHED else None
        if isinstance(seen, Client):
            if record is not None and record.client == seen and record.phase in SERVING:
                return []  # nothing that matters changed (hotplug-status, our own write)
            self.records[vif] = Record(Phase.WAITING, seen)
            out: list[Output] = [AwaitInterface(vif, seen.interface)]
            if held is not None:
                out.insert(0, Detach(held, f"its backend changed: {_changes(held, seen)}"))
            return out
        out = [] if held is None else [Detach(held, seen.reason)]
        if isinstance(seen, Gone):
            self.records.pop(vif, None)
        elif isinstance(seen, Closing) and seen.closed:
            self.records.pop(vif, None)
            if self.removes_closed:
                out.append(Remove(self._path(vif), self.base))
        elif isinstance(seen, Closing):
            self.records[vif] = Record(Phase.CLOSING)
        else:
            if record is None or record.phase != Phase.DROPPED or record.reason != seen.reason:
                out.append(Dropped(self._path(vif), seen.reason))
            self.records[vif] = Record(Phase.DROPPED, None, seen.reason)
        return out

    def interface_present(self, name: str) -> list[Output]:
        """The shell saw interface `name`: attach the client waiting for it, if any."""
        out: list[Output] = []
        for record in self.records.values():
            if record.phase == Phase.WAITING and record.client and record.client.interface == name:
                record.phase = Phase.ATTACHING
                out.append(Attach(record.client))
        return out

    def attached(self, vif: Vif) -> list[Output]:
        """The shell has the client's interface up and served: tell netback (and the toolstack
        waiting on it) that the hotplug work is done."""
        record = self.records.get(vif)
        if record is None or record.phase != Phase.ATTACHING or record.client is None:
            return []  # detached meanwhile
        record.phase = Phase.CONNECTED
        return [Write(f"{record.client.backend}/hotplug-status", "connected")]

    def interface_gone(self, name: str) -> list[Output]:
        """The shell lost (or could not open) interface `name`: detach its client and wait for
        the interface again (netback recreates it if the backend is still wanted)."""
        out: list[Output] = []
        for vif, record in self.records.items():
            client = record.client
            if client is None or client.interface != name or record.phase == Phase.CLOSING:
                continue
            if record.phase in ATTACHED:
                out.append(Detach(client, f"interface {name} went away"))
            self.records[vif] = Record(Phase.WAITING, client)
            out.append(AwaitInterface(vif, name))
        return out

    def clients(self) -> list[Client]:
        """The clients the shell holds now (attached)."""
        return [r.client for r in self.records.values() if r.phase in ATTACHED and r.client]


def _changes(old: Client, new: Client) -> str:
    fields = [
        ("interface", old.interface, new.interface),
        ("ip", str(old.ip), str(new.ip)),
        ("mac", old.mac.hex(":"), new.mac.hex(":")),
    ]
    return ", ".join(f"{name} {a} -> {b}" for name, a, b in fields if a != b) or "(nothing)"


class Event(Protocol):
    @property
    def path(self) -> str: ...  # read-only: the store's events are frozen


class Store(Protocol):
    """What carry_out needs of a xenstore client (appliance.xenstore.Xenstore has it)."""

    def receive(self) -> Sequence[Event]: ...
    def watch(self, path: str, token: str) -> None: ...
    def directory_optional(self, path: str) -> list[str] | None: ...
    def read_optional(self, path: str) -> str | None: ...
    def write(self, path: str, value: str) -> None: ...
    def remove(self, path: str, keep: str) -> None: ...


def carry_out(backends: VifBackends, store: Store, outputs: Sequence[Output]) -> list[Decision]:
    """Do `outputs`' requests with `store`, feeding answers back until no request is left;
    return the decisions for the shell, in order."""
    decisions: list[Decision] = []
    work = list(outputs)
    while work:
        item = work.pop(0)
        if isinstance(item, Watch):
            store.watch(item.path, item.token)
        elif isinstance(item, List):
            work += backends.listed(item, store.directory_optional(item.path))
        elif isinstance(item, Read):
            values = {key: store.read_optional(f"{item.path}/{key}") for key in item.keys}
            work += backends.read(item, values)
        elif isinstance(item, Write):
            store.write(item.path, item.value)
        elif isinstance(item, Remove):
            store.remove(item.path, item.keep)
        else:
            decisions.append(item)
    return decisions


def service(backends: VifBackends, store: Store) -> list[Decision]:
    """The store's fd was readable (or requests were just made): take every watch event,
    read what changed, and repeat until no event is left."""
    decisions: list[Decision] = []
    while events := store.receive():
        for event in events:
            backends.changed(event.path)
        decisions += carry_out(backends, store, backends.requests())
    return decisions
