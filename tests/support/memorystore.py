"""xenstore in memory, with xenstored's watch rules (docs/misc/xenstore.txt), and the toolstack and
netback around natvm's vif state machine (appliance/vifs.py) writing to it as they do: a watch
fires once when set, then for every node written or removed under it.
"""

from dataclasses import dataclass

from appliance import vifs
from appliance.vifs import Attach, AwaitInterface, VifBackends

HOME = "/local/domain/2"  # the net VM
BASE = f"{HOME}/backend/vif"


@dataclass(frozen=True)
class Event:
    path: str
    token: str


class MemoryStore:
    """xenstore in a dict (path -> value; every parent present), with watches."""

    def __init__(self) -> None:
        self.tree: dict[str, str] = {"/local": "", "/local/domain": "", HOME: ""}
        self.watches: list[tuple[str, str]] = []
        self.events: list[Event] = []
        self.requests = 0

    def _fire(self, path: str) -> None:
        for watched, token in self.watches:
            if path == watched or path.startswith(watched + "/"):
                self.events.append(Event(path, token))
            elif watched.startswith(path + "/"):  # a parent of the watched path went
                self.events.append(Event(watched, token))

    def put(self, path: str, value: str) -> None:
        parts = path.split("/")
        for end in range(2, len(parts)):
            self.tree.setdefault("/".join(parts[:end]), "")
        self.tree[path] = value
        self._fire(path)

    def delete(self, path: str) -> None:
        for key in [k for k in self.tree if k == path or k.startswith(path + "/")]:
            del self.tree[key]
        self._fire(path)

    # vifs.Store
    def receive(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def watch(self, path: str, token: str) -> None:
        self.requests += 1
        self.watches.append((path, token))
        self.events.append(Event(path, token))

    def directory_optional(self, path: str) -> list[str] | None:
        self.requests += 1
        if path not in self.tree:
            return None
        return sorted(
            {k[len(path) + 1 :].split("/")[0] for k in self.tree if k.startswith(path + "/")}
        )

    def read_optional(self, path: str) -> str | None:
        self.requests += 1
        return self.tree.get(path)

    def write(self, path: str, value: str) -> None:
        self.requests += 1
        self.put(path, value)

    def remove(self, path: str, keep: str) -> None:
        self.requests += 1
        self.delete(path)
        parent = path.rpartition("/")[0]
        while parent.startswith(keep + "/") and not self.directory_optional(parent):
            self.delete(parent)
            parent = parent.rpartition("/")[0]


def backend_keys(domid: int, devid: int, ip: str, mac: str) -> dict[str, str]:
    """What libxl writes for `vif=['backend=<netvm>,ip=...,mac=...']` (libxl_nic.c)."""
    return {
        "frontend": f"/local/domain/{domid}/device/vif/{devid}",
        "frontend-id": str(domid),
        "online": "1",
        "state": "1",
        "script": "/etc/xen/scripts/vif-route-qubes",
        "mac": mac,
        "ip": ip,
        "handle": str(devid),
        "type": "vif",
        "hotplug-status": "",
    }


class Xen:
    """The toolstack and netback around the state machine, writing as they do."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.backends = VifBackends(HOME)
        self.decisions = vifs.carry_out(self.backends, self.store, self.backends.start())

    def service(self) -> list[vifs.Decision]:
        return vifs.service(self.backends, self.store)

    def path(self, domid: int, devid: int) -> str:
        return f"{BASE}/{domid}/{devid}"

    def attach(self, domid: int, devid: int, ip: str = "", mac: str = "") -> None:
        """xl network-attach (libxl__device_add_async), then netback's probe (state 2)."""
        ip = ip or f"10.137.0.{domid}"
        mac = mac or f"00:16:3e:5e:6c:{domid:02x}"
        for key, value in backend_keys(domid, devid, ip, mac).items():
            self.store.put(f"{self.path(domid, devid)}/{key}", value)
        self.store.put(f"{self.path(domid, devid)}/state", "2")

    def connect(self, domid: int, devid: int) -> None:
        """netback, once hotplug-status is connected and the frontend too."""
        assert self.store.tree[f"{self.path(domid, devid)}/hotplug-status"] == "connected"
        self.store.put(f"{self.path(domid, devid)}/state", "4")

    def detach(self, domid: int, devid: int) -> None:
        """xl network-detach: online=0, state 5 (one transaction); the frontend closes and
        netback writes 6; libxl then waits for the driver domain to remove the directory."""
        self.store.put(f"{self.path(domid, devid)}/online", "0")
        self.store.put(f"{self.path(domid, devid)}/state", "5")

    def closed(self, domid: int, devid: int) -> None:
        self.store.put(f"{self.path(domid, devid)}/state", "6")

    def serve(self, decisions: list[vifs.Decision]) -> list[vifs.Decision]:
        """The shell: every awaited interface exists; every attach succeeds."""
        done: list[vifs.Decision] = []
        while decisions:
            decision = decisions.pop(0)
            done.append(decision)
            if isinstance(decision, AwaitInterface):
                outputs = self.backends.interface_present(decision.name)
            elif isinstance(decision, Attach):
                outputs = self.backends.attached(decision.client.vif)
            else:
                continue
            decisions += vifs.carry_out(self.backends, self.store, outputs)
        return done
