"""natvm as the driver domain of its clients' vifs: xenstore's backend directories, read by the
pure state machine of appliance/vifs.py, turned into the netvm shell's attach and detach.

Theory of operation: two file descriptors join the shell's poll loop. The xenstore device
(/dev/xen/xenbus) says when a backend directory changed (`vifs.service` reads what changed);
a netlink socket subscribed to link changes says when an interface appeared or went, since
xen-netback creates `vif<domid>.<handle>` some time after the toolstack wrote the directory.
Both are level-triggered: a wake-up only says "look again", so a lost netlink message
(ENOBUFS) costs nothing but a look, and every look checks each awaited interface and each
attached one.

Failures: the store's errors (a refusal, a broken stream, a timeout) propagate out of the loop:
the child exits and PID 1 starts it again, and the new one's watch lists every backend afresh.
A client the shell cannot serve while its interface exists (the engine refuses its address)
stays unconnected, logged once: netback then never reports Connected and the toolstack, which
waits for that, says the attach failed.
"""

import _socket  # not socket: see appliance/shell.py
import errno
import os
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import Protocol

from appliance import vifs
from appliance.shell import ShellError
from appliance.vifs import Attach, AwaitInterface, Decision, Detach, Dropped, VifBackends
from appliance.xenstore import XENBUS_DEVICE, Xenstore

RTMGRP_LINK = 1  # linux/rtnetlink.h: the multicast group of RTM_NEWLINK and RTM_DELLINK
NETLINK_BUFFER = 64 << 10


def interface_exists(name: str) -> bool:
    try:
        _socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def open_link_changes() -> _socket.socket:
    """A non-blocking netlink socket that becomes readable when any interface appears, goes,
    or changes."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
    sock.bind((0, RTMGRP_LINK))
    sock.setblocking(False)
    return sock


def drain(sock: _socket.socket) -> None:
    """Discard what `sock` holds: the messages only say "look again"."""
    while True:
        try:
            sock.recv(NETLINK_BUFFER)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno != errno.ENOBUFS:  # messages were lost: looking covers them
                raise


class Clients(Protocol):
    """What the driver needs of the netvm shell (appliance.netvmshell.NetVmShell has it)."""

    def attach(self, ifname: str, ip: IPv4Address, mac: bytes) -> None: ...
    def detach(self, ifname: str, why: str = "") -> object: ...
    def add_reader(self, fd: int, ready: Callable[[], None]) -> None: ...


class DriverDomain:
    """Keeps `shell`'s clients in line with the backend directories under our home in
    `store`: call `start` once, then the shell calls back when either fd is readable."""

    def __init__(
        self,
        shell: Clients,
        store: vifs.Store,
        backends: VifBackends,
        log: Callable[[str], None],
        exists: Callable[[str], bool] = interface_exists,
    ) -> None:
        self.shell, self.store, self.backends, self.log = shell, store, backends, log
        self.exists = exists
        self.awaiting: set[str] = set()  # interfaces a client waits for

    def start(self) -> None:
        """Watch the backends (the watch fires at once: every existing client is found)."""
        self.act(vifs.carry_out(self.backends, self.store, self.backends.start()))
        self.store_readable()

    def store_readable(self) -> None:
        self.act(vifs.service(self.backends, self.store))

    def links_changed(self) -> None:
        """An interface appeared, went or changed: attach whoever waited for one that is
        there now, and let go of clients whose interface is gone."""
        for name in sorted(self.awaiting):
            if self.exists(name):
                self.awaiting.discard(name)
                self._carry_out(self.backends.interface_present(name))
        for client in self.backends.clients():
            if not self.exists(client.interface):
                self._carry_out(self.backends.interface_gone(client.interface))

    def _carry_out(self, outputs: Sequence[vifs.Output]) -> None:
        self.act(vifs.carry_out(self.backends, self.store, outputs))
        # Requests made meanwhile may have queued watch events: take them now, not at the
        # next wake-up (the fd does not poll readable for what is already queued).
        self.act(vifs.service(self.backends, self.store))

    def act(self, decisions: Sequence[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, AwaitInterface):
                self.awaiting.add(decision.name)
                if self.exists(decision.name):  # netback may have been quicker than us
                    self.links_changed()
            elif isinstance(decision, Attach):
                self._attach(decision.client)
            elif isinstance(decision, Detach):
                self.awaiting.discard(decision.client.interface)
                self.shell.detach(decision.client.interface, f" ({decision.reason})")
            elif isinstance(decision, Dropped):
                self.log(f"vif backend {decision.path} ignored: {decision.reason}")

    def _attach(self, client: vifs.Client) -> None:
        try:
            self.shell.attach(client.interface, client.ip, client.mac)
        except ShellError as error:
            if self.exists(client.interface):
                self.log(f"{client.vif}: cannot serve {client.ip} on {client.interface}: {error}")
                return
            self._carry_out(self.backends.interface_gone(client.interface))
            return
        self._carry_out(self.backends.attached(client.vif))


def serve_vifs(shell: Clients, log: Callable[[str], None], device: str = XENBUS_DEVICE) -> None:
    """Make `shell` the driver domain of the vifs the toolstack gives us (`run_netvm`'s
    `watch`). Raises ShellError when there is no xenbus device (not under Xen)."""
    if not os.path.exists(device):
        raise ShellError(f"netvm mode needs Xen: there is no {device}")
    store = Xenstore.open(device)
    home = store.get_domain_path(store.own_domid())
    links = open_link_changes()
    driver = DriverDomain(shell, store, VifBackends(home), log)
    log(f"serving the client vifs under {driver.backends.base}")
    driver.start()

    def links_readable() -> None:
        drain(links)
        driver.links_changed()

    shell.add_reader(store.fileno(), driver.store_readable)
    shell.add_reader(links.fileno(), links_readable)
