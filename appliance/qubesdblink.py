"""natvm's link to QubesDB as a Qubes-style net VM: dom0's database read over the vchan, and
what it says about the clients' firewall rules put in force as it changes.

Theory of operation: Qubes starts a VM's qubesdb-daemon in dom0 before the VM runs (the
domain is created paused), and that daemon serves a vchan on port 111 at
/local/domain/0/data/vchan/<our domid>/111. So at start natvm looks once for its
`event-channel` key (the key Qubes' own client watches: a VM may not read the directory); if
it is there, natvm connects (appliance/vchan.py), asks for the whole database
(appliance/qubesdb.py) and then takes the writes dom0 pushes, each answered. Without it, the
configuration stays the only source and nothing else changes.

In the net VM mode natvm connects before its engine exists and waits for the database
(`sync`, a few seconds at most): natvm's own addresses come from it (`uplink`: /qubes-ip,
/qubes-netmask, /qubes-gateway, the DNS servers, /qubes-netvm-gateway), as Qubes' setup-ip
takes them, the configuration's being the fallback for every key that is absent. Rule sets
read before the engine exists are held until it does (`attach`).

What is applied: per-client rule sets (`FirewallKeys`), through `NetVm.set_rules`, each
logged in one line. The vchan's fd is the event channel, a reader on the shell's poll loop;
the ring is also looked at once a second (`add_ticker`), and the server notified again if it
left what we sent unread, since Python has no memory barrier and a wakeup may be lost to a
reordered store (appliance/vchan.py).

Failures: a link that breaks the protocol or the ring is closed with one line; the rules in
force stay as they are (a restart of natvm reads the database afresh).
"""

import select
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address
from typing import Protocol

from appliance.config import ApplianceConfig, ConfigError, apply_overrides
from appliance.qubesdb import (
    Event,
    FirewallKeys,
    ProtocolError,
    QubesDbClient,
    Synced,
    network_keys,
)
from appliance.rules import RuleSet
from appliance.vchan import QUBESDB_PORT, VchanClient, VchanError, vchan_path
from appliance.xenstore import Xenstore, XenstoreError

DOM0 = 0


class Rules(Protocol):
    """What the link needs of the engine (appliance.netvm.NetVm has it)."""

    def set_rules(self, ip: IPv4Address, rules: RuleSet | None) -> None: ...


class Link(Protocol):
    """What the link needs of the vchan (appliance.vchan.VchanClient has it)."""

    def fileno(self) -> int: ...
    def consume_events(self) -> None: ...
    def kick(self) -> None: ...
    def recv(self, limit: int = 65536) -> bytes: ...
    def send(self, data: bytes) -> int: ...
    @property
    def is_open(self) -> bool: ...
    def close(self) -> None: ...


class QubesDbLink:
    """The QubesDB client over `link`, applying rule sets to `rules`: call `service` whenever
    the link may have something (its fd readable, or a tick)."""

    def __init__(self, link: Link, log: Callable[[str], None], rules: Rules | None = None) -> None:
        self.link: Link | None = link
        self.rules, self.log = rules, log
        self.client = QubesDbClient()
        self.firewall = FirewallKeys()
        self.outgoing = bytearray(self.client.start())
        self.synced = False  # the whole database has been read
        self.held: dict[IPv4Address, RuleSet | None] = {}  # rule sets before `attach`

    def attach(self, rules: Rules) -> None:
        """Put rule sets in force in `rules` from now on, the held ones first."""
        self.rules = rules
        for client, rule_set in self.held.items():
            self._in_force(client, rule_set)
        self.held.clear()

    def sync(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the whole database (the engine does not run yet:
        this is the start's only wait); whether it came."""
        deadline = time.monotonic() + timeout
        while self.link is not None and not self.synced:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waiter = select.poll()
            waiter.register(self.link.fileno(), select.POLLIN)
            if waiter.poll(min(left, 1.0) * 1000):
                self.readable()
            else:
                self.tick()
        return self.synced

    def readable(self) -> None:
        if self.link is not None:
            self.link.consume_events()
        self.service()

    def tick(self) -> None:
        """The once-a-second look: wake the server if it left what we sent unread, then look
        at the ring as if the fd had been readable."""
        if self.link is not None:
            try:
                self.link.kick()
            except VchanError as error:
                self.close(f"{error}")
        self.service()

    def service(self) -> None:
        if self.link is None:
            return
        try:
            self._exchange(self.link)
        except (ProtocolError, VchanError) as error:
            self.close(f"{error}")
            return
        if not self.link.is_open:
            self.close("dom0 closed it")

    def _exchange(self, link: Link) -> None:
        self._flush(link)
        while data := link.recv():
            for event in self.client.receive(data):
                self._apply(event)
            self.outgoing += self.client.data_to_send()
            self._flush(link)

    def _flush(self, link: Link) -> None:
        if self.outgoing:
            del self.outgoing[: link.send(bytes(self.outgoing))]

    def _apply(self, event: Event) -> None:
        if isinstance(event, Synced):
            self.synced = True
            self.log(f"qubesdb: database read, {len(self.client.entries)} keys")
        for update in self.firewall.updates(event, self.client.entries):
            if update.log:
                self.log(update.log)
            if update.rules is None:
                continue
            if self.rules is None:
                self.held[update.client] = update.rules
            else:
                self._in_force(update.client, update.rules)

    def _in_force(self, client: IPv4Address, rules: RuleSet | None) -> None:
        assert self.rules is not None
        self.rules.set_rules(client, rules)
        if rules is not None:
            self.log(
                f"qubesdb: rules of {client} in force: {len(rules.rules)} rule(s),"
                f" policy {rules.policy}"
            )

    def close(self, why: str) -> None:
        if self.link is not None:
            self.log(f"qubesdb: link closed ({why}); the rules in force stay")
            self.link.close()
            self.link = None


class Served(Protocol):
    """What `serve_qubesdb` needs of the netvm shell (appliance.netvmshell.NetVmShell has it)."""

    @property
    def netvm(self) -> Rules: ...
    def add_reader(self, fd: int, ready: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def add_ticker(self, tick: Callable[[], None]) -> None: ...


def offered(store: Xenstore, own_domid: int) -> bool:
    """Whether dom0 serves us QubesDB's vchan (its key is there and ours to read)."""
    path = f"{vchan_path(DOM0, own_domid, QUBESDB_PORT)}/event-channel"
    try:
        return store.read_optional(path) is not None
    except XenstoreError as error:
        if error.name == "EACCES":  # another domain's vchan, or none: not ours either way
            return False
        raise


def connect(store: Xenstore, log: Callable[[str], None]) -> QubesDbLink | None:
    """The link to QubesDB if dom0 offers it (None, logged, if not or if it cannot be made)."""
    own = store.own_domid()
    if not offered(store, own):
        log("qubesdb: dom0 offers no QubesDB vchan; the configuration is the only source")
        return None
    try:
        vchan = VchanClient.from_xenstore(store, DOM0, QUBESDB_PORT)
    except (OSError, VchanError, XenstoreError, ValueError) as error:
        log(f"qubesdb: cannot connect to dom0's vchan: {error}")
        return None
    log(f"qubesdb: connected to {vchan_path(DOM0, own, QUBESDB_PORT)}")
    return QubesDbLink(vchan, log)


def uplink(
    config: ApplianceConfig, entries: Mapping[str, str], log: Callable[[str], None]
) -> ApplianceConfig:
    """`config` with natvm's own addresses from the database's keys, where it has them. A key
    that is not an address, or addresses the configuration refuses, leave `config` as it is,
    in one line naming the key or the value: the net VM still serves with the fallback."""
    try:
        words = network_keys(entries).overrides(config.lan.address.network.prefixlen)
        if not words:
            return config
        configured = apply_overrides(config, words)
    except (ValueError, ConfigError) as error:
        log(f"qubesdb: not used for the addresses ({error}); the configuration's stay")
        return config
    dns = ",".join(str(server) for server in configured.nat.dns_servers) or "none"
    log(
        f"qubesdb: uplink {configured.wan.address} gateway {configured.wan.gateway}, dns {dns},"
        f" clients' gateway {configured.lan.address.ip}"
    )
    return configured


def serve_qubesdb(shell: Served, link: QubesDbLink) -> None:
    """Keep the shell's rules in line with QubesDB over `link`, from now on."""
    link.attach(shell.netvm)
    if link.link is None:  # closed while the start waited for it
        return
    fd = link.link.fileno()

    def readable() -> None:
        link.readable()
        if link.link is None:
            shell.remove_reader(fd)

    shell.add_reader(fd, readable)
    shell.add_ticker(link.tick)
    link.service()
