"""Runs inside the test dom0 (sent there by test_xenstore.py): natvm's xenstore client and vif
state machine against the real xenstored, libxl and xen-netback. Prints one JSON object.

    python3.11 xenstore_probe.py protocol
    python3.11 xenstore_probe.py vifs <guest> <bridge> <ip>

`protocol`: reads, writes, a watch fired by another connection's write while a request waits,
an error reply, a transaction, the transactional remove, over the xenbus device and over
xenstored's socket. `vifs`: VifBackends on the dom0's own backend/vif (the dom0 serves the
guest's vifs) while `xl network-attach` adds a vif with an `ip` and `xl network-detach` takes
it away: what it decided and when, and the backend states seen.
"""

import json
import os
import select
import subprocess
import sys
import time

from appliance import vifs
from appliance.xenstore import XENBUS_DEVICE, XENSTORED_SOCKET, Xenstore, XenstoreError

XL = "/usr/lib/xen-4.17/bin/xl"
PROBE = "/local/domain/0/natvm-probe"


def events(store: Xenstore, count: int, timeout: float = 5.0) -> list[list[str]]:
    """At least `count` watch events (or what came within `timeout`)."""
    got: list[list[str]] = []
    poller = select.poll()
    poller.register(store.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        poller.poll(100)
        got += [[event.path, event.token] for event in store.receive()]
    return got


def protocol_over(path: str) -> dict[str, object]:
    result: dict[str, object] = {}
    with Xenstore.open(path) as ours, Xenstore.open(XENSTORED_SOCKET) as other:
        result["name"] = ours.read("/local/domain/0/name")
        result["domain_path"] = ours.get_domain_path(0)
        ours.write(f"{PROBE}/x", "1")
        ours.watch(PROBE, "probe")
        result["first_event"] = events(ours, 1)
        other.write(f"{PROBE}/y", "2")  # another connection's write: our event comes unasked
        result["read_after_other_write"] = ours.read(f"{PROBE}/x")
        result["events"] = events(ours, 1)
        result["directory"] = sorted(ours.directory(PROBE))
        try:
            ours.read(f"{PROBE}/missing")
        except XenstoreError as error:
            result["error"] = [error.name, error.errno, str(error)]
        tx_id = ours.transaction_start()
        ours.write(f"{PROBE}/t", "3", tx_id)
        result["outside_transaction"] = other.read_optional(f"{PROBE}/t")
        ours.transaction_end(tx_id)
        result["after_commit"] = other.read_optional(f"{PROBE}/t")
        ours.write(f"{PROBE}/deep/er/leaf", "4")
        ours.remove(f"{PROBE}/deep/er/leaf", keep=PROBE)
        result["after_remove"] = sorted(ours.directory(PROBE))
        ours.unwatch(PROBE, "probe")
        ours.rm(PROBE)
        result["gone"] = ours.read_optional(PROBE)
        try:
            result["own_domid"] = ours.own_domid()
        except XenstoreError as error:  # relative paths are for domains, not socket clients
            result["own_domid"] = error.name
    return result


def protocol() -> dict[str, object]:
    return {path: protocol_over(path) for path in (XENBUS_DEVICE, XENSTORED_SOCKET)}


class Shell:
    """What natvm's shell will do with the decisions, minus the packet sockets."""

    def __init__(self, store: Xenstore, backends: vifs.VifBackends) -> None:
        self.store, self.backends = store, backends
        self.start = time.monotonic()
        self.log: list[dict[str, object]] = []
        self.awaited: set[str] = set()

    def record(self, decision: vifs.Decision) -> None:
        entry: dict[str, object] = {"at": round(time.monotonic() - self.start, 2)}
        entry["decision"] = type(decision).__name__
        if isinstance(decision, vifs.Attach | vifs.Detach):
            client = decision.client
            entry |= {"interface": client.interface, "ip": str(client.ip)}
            entry["mac"] = client.mac.hex(":")
        if isinstance(decision, vifs.AwaitInterface):
            entry["interface"] = decision.name
        if isinstance(decision, vifs.Detach | vifs.Dropped):
            entry["reason"] = decision.reason
        if isinstance(decision, vifs.Dropped):
            entry["path"] = decision.path
        self.log.append(entry)

    def handle(self, decisions: list[vifs.Decision]) -> None:
        while decisions:
            decision = decisions.pop(0)
            self.record(decision)
            outputs: list[vifs.Output] = []
            if isinstance(decision, vifs.AwaitInterface):
                self.awaited.add(decision.name)
            elif isinstance(decision, vifs.Attach):
                outputs = self.backends.attached(decision.client.vif)
            decisions += vifs.carry_out(self.backends, self.store, outputs)

    def pump(self, seconds: float) -> None:
        """The poll loop, for `seconds`: store events, and awaited interfaces (checked every
        50 ms, as a netlink-less shell would on its tick)."""
        poller = select.poll()
        poller.register(self.store.fileno(), select.POLLIN)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if poller.poll(50):
                self.handle(vifs.service(self.backends, self.store))
            for name in sorted(self.awaited):
                if os.path.exists(f"/sys/class/net/{name}"):
                    self.awaited.discard(name)
                    outputs = self.backends.interface_present(name)
                    self.handle(vifs.carry_out(self.backends, self.store, outputs))


def xl(shell: Shell, *argv: str, timeout: float = 90.0) -> dict[str, object]:
    """Run xl while the loop runs; its status, output and duration."""
    began = time.monotonic()
    proc = subprocess.Popen(
        [XL, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    while proc.poll() is None and time.monotonic() - began < timeout:
        shell.pump(0.2)
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate()[0].decode(errors="replace")
    return {"status": proc.returncode, "output": output, "seconds": time.monotonic() - began}


def states_until(shell: Shell, path: str, wanted: str | None, seconds: float) -> list[str | None]:
    """The backend's state each time it changed, until it is `wanted` (None: the directory is
    gone) or `seconds` passed."""
    seen: list[str | None] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = shell.store.read_optional(f"{path}/state")
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == wanted:
            break
        shell.pump(0.1)
    return seen


def guest_domid(guest: str, timeout: float = 120.0) -> int:
    """The domain id of `guest`, waiting while it has none: a guest that xl is restarting
    (on_reboot) is briefly without a domain."""
    deadline = time.monotonic() + timeout
    while True:
        found = subprocess.run([XL, "domid", guest], capture_output=True, text=True)
        if found.returncode == 0:
            return int(found.stdout)
        if time.monotonic() > deadline:
            listed = subprocess.run([XL, "list"], capture_output=True, text=True).stdout
            raise SystemExit(f"no domain {guest} after {timeout:.0f} s; xl list:\n{listed}")
        time.sleep(1.0)


def vif_cycle(guest: str, bridge: str, ip: str) -> dict[str, object]:
    result: dict[str, object] = {}
    domid = guest_domid(guest)
    with Xenstore.open(XENBUS_DEVICE) as store:
        home = store.get_domain_path(store.own_domid())
        # the dom0's libxl removes its own closed backends, after its hotplug script
        backends = vifs.VifBackends(home, removes_closed=False)
        shell = Shell(store, backends)
        shell.handle(vifs.carry_out(backends, store, backends.start()))
        shell.pump(2.0)
        result["domid"], result["home"] = domid, home
        result["before"] = sorted(store.directory(f"{home}/backend/vif/{domid}"))
        result["attach"] = xl(shell, "network-attach", guest, f"ip={ip}", f"bridge={bridge}")
        added = sorted(set(store.directory(f"{home}/backend/vif/{domid}")) - set(result["before"]))
        result["added"] = added
        path = f"{home}/backend/vif/{domid}/{added[0]}" if added else ""
        if path:
            result["hotplug_status"] = store.read_optional(f"{path}/hotplug-status")
            result["states_attached"] = states_until(shell, path, "4", 30.0)
            result["detach"] = xl(shell, "network-detach", guest, added[0])
            result["states_detached"] = states_until(shell, path, None, 30.0)
            shell.pump(1.0)
        result["log"] = shell.log
        result["clients_left"] = [c.interface for c in backends.clients()]
    return result


def main(argv: list[str]) -> int:
    if argv[1:2] == ["protocol"]:
        print(json.dumps(protocol()))
    elif argv[1:2] == ["vifs"] and len(argv) == 5:
        print(json.dumps(vif_cycle(*argv[2:])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
