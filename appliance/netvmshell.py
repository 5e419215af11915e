"""The shell of netvm mode: `Shell`'s loop between the uplink and client interfaces that come and
go. `NetVmShell.attach` and `detach` open and close a client's sockets while the loop runs, and
`add_reader` lets another source of events (the xenstore watcher) be polled by the same loop.

Apart from appliance/shell.py so that a two-NIC appliance, which imports the shell at boot, does
not import the net VM's engine (netvm, resolver, dnsquery, rules) as well.
"""

import _socket  # not socket: see appliance/shell.py
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import NamedTuple

from appliance.config import ApplianceConfig
from appliance.engine import Side
from appliance.frames import WAN
from appliance.netvm import Client, ClientError, NetVm
from appliance.shell import (
    MIN_SOCKET_BUFFER,
    Log,
    Shell,
    ShellError,
    log_line,
    memory_total,
    open_interface,
    socket_buffer_size,
    wait_for_carriers,
)


class NetVmShell(Shell[str]):
    """The shell of netvm mode: the uplink's sockets for its whole life, and a client's from
    `attach` to `detach`, which whatever learns of clients calls from the loop (the command
    line at start; the xenstore watcher through `add_reader`). A client whose interface goes
    away is detached when its socket reports it."""

    def __init__(
        self,
        netvm: NetVm,
        uplink: tuple[_socket.socket, _socket.socket],
        log: Log,
        stats_interval: float,
        buffer_size: int,
    ) -> None:
        super().__init__(netvm, {WAN: uplink[0]}, log, stats_interval, {WAN: uplink[1]})
        self.netvm, self.buffer_size = netvm, buffer_size
        self.add_ticker(self.log_notes)

    def log_notes(self) -> None:
        """Log what the engine noted (its resolver's outcomes)."""
        notes = self.netvm.notes
        for line in notes:
            self.log(line)
        notes.clear()

    def attach(self, ifname: str, ip: IPv4Address, mac: bytes) -> None:
        """Serve the client with address `ip` and MAC `mac` on interface `ifname`; raises
        ShellError (the interface cannot be used, or the engine refuses the client)."""
        sock, port_mac = open_interface(ifname, self.buffer_size)
        try:
            openings, _ = open_interface(ifname, MIN_SOCKET_BUFFER, openings=True)
        except ShellError:
            sock.close()
            raise
        try:
            waiting = self.netvm.attach_client(ifname, ip, mac, port_mac, time.monotonic())
        except ClientError as error:
            sock.close()
            openings.close()
            raise ShellError(str(error)) from None
        self.add_port(ifname, sock, openings)
        self._send(waiting)
        # What each client costs in a small VM shows in the available memory after its attach.
        available = memory_total(field="MemAvailable") >> 20
        self.log(
            f"attached {ifname} client {ip} mac={mac.hex(':')} port_mac={port_mac.hex(':')}"
            f" mem_available={available} MiB"
        )

    def detach(self, ifname: str, why: str = "") -> Client | None:
        """Stop serving the client on `ifname`, drop its flows and close its sockets; returns
        the client (None if `ifname` served none)."""
        flows = len(self.netvm.table)
        client = self.netvm.detach_client(ifname, time.monotonic())
        self.remove_port(ifname)
        if client is not None:
            dropped = " ".join(f"drop_{reason}={n}" for reason, n in sorted(client.drops.items()))
            self.log(
                f"detached {ifname} client {client.address}{why}: "
                f"{flows - len(self.netvm.table)} flows dropped {dropped}".rstrip()
            )
        return client

    def stats_line(self) -> str:
        return super().stats_line() + f" clients={len(self.netvm.clients)}"

    def _side_of(self, port: str) -> Side:
        return Side.WAN if port == WAN else Side.LAN

    def _receive_failed(self, side: str, error: OSError) -> None:
        if side == WAN:
            raise error
        try:
            _socket.if_nametoindex(side)
        except OSError:
            self.detach(side, " (its interface is gone)")
            return
        # The link went down (it may come back up): the socket keeps its binding.
        self.errors(f"rx-{side}", f"error: receive on {side}: {error.strerror}", time.monotonic())


class ClientSpec(NamedTuple):
    """A client named on the command line: `IF=IP,MAC`."""

    ifname: str
    ip: IPv4Address
    mac: bytes


def run_netvm(
    config: ApplianceConfig,
    wan_ifname: str,
    clients: Sequence[ClientSpec] = (),
    stats_interval: float = 10.0,
    log: Log = log_line,
    watch: Callable[[NetVmShell], None] | None = None,
) -> None:
    """Serve netvm clients (`clients` from the start) through the uplink `wan_ifname` until
    SIGTERM or SIGINT; raises ShellError. `watch` is called with the shell before it serves:
    where a source of clients that come and go registers (`NetVmShell.add_reader`)."""
    if not config.nat.netvm:
        raise ShellError("the configuration is not in netvm mode (nat.netvm is false)")
    buffer_size = socket_buffer_size(memory_total())
    wan_sock, wan_mac = open_interface(wan_ifname, buffer_size)
    try:
        wan_openings, _ = open_interface(wan_ifname, MIN_SOCKET_BUFFER, openings=True)
    except ShellError:
        wan_sock.close()
        raise
    netvm = NetVm(config, wan_mac)
    shell = NetVmShell(netvm, (wan_sock, wan_openings), log, stats_interval, buffer_size)

    try:
        for client in clients:
            shell.attach(client.ifname, client.ip, client.mac)
        if watch is not None:
            watch(shell)
    except ShellError:
        shell.close()
        raise
    shell.stop_on_signals()
    try:
        wait_for_carriers((wan_ifname, *(client.ifname for client in clients)), log)
        shell._send(netvm.start(time.monotonic()))
        log(
            f"READY wan={wan_ifname} {config.wan.address} mac={wan_mac.hex(':')} "
            f"netvm gateway={config.lan.address.ip} clients={len(netvm.clients)}"
        )
        shell.serve()
    finally:
        log(shell.stats_line())
        log("stopped")
        shell.close()
        sys.stdout.flush()
