"""The test dom0's vif hotplug script (xl.conf's `vif.default.script`): what Xen's vif-bridge
does, without a shell, `ip` or `brctl`.

libxl runs it with the action ("online" when the guest's vif appears in the dom0, "offline"
when it goes) and the environment `vif` (the backend interface, vif<domid>.<devid>) and
`XENBUS_PATH` (the vif's backend directory in xenstore, relative to the dom0's home). Online, it
makes the vif a port of the bridge the guest's configuration names, lengthens its queue and sets
it up, then writes `hotplug-status=connected`: until then xen-netback keeps the vif from
connecting. Offline there is nothing to undo: the vif and its bridge port go with the domain. A
failure is written as `hotplug-error` and `hotplug-status=error`, which xl reports.
"""

import subprocess
import sys
from collections.abc import Mapping

from image.dom0 import links

# xen-netback gives a vif a transmit queue of 32 frames: a burst towards a guest that is slower
# than the dom0 (nested under TCG, always) overflows it and is dropped in the dom0, before the
# guest sees it. Ethernet's usual 1000 lets a burst wait for the guest instead.
QUEUE_FRAMES = 1000


def xenstore_read(path: str) -> str:
    return subprocess.run(
        ["/usr/bin/xenstore-read", path], capture_output=True, text=True, check=True
    ).stdout.strip()


def xenstore_write(path: str, value: str) -> None:
    subprocess.run(["/usr/bin/xenstore-write", path, value], capture_output=True, check=True)


def online(vif: str, backend: str) -> None:
    bridge = xenstore_read(f"{backend}/bridge")
    links.enslave(bridge, vif)
    links.set_queue_length(vif, QUEUE_FRAMES)
    links.set_up(vif)
    xenstore_write(f"{backend}/hotplug-status", "connected")


def main(argv: list[str], env: Mapping[str, str]) -> int:
    action, backend = argv[1] if len(argv) > 1 else "", env.get("XENBUS_PATH", "")
    if action != "online":
        return 0
    try:
        online(env["vif"], backend)
    except (OSError, KeyError, subprocess.CalledProcessError) as error:
        message = f"vif hotplug {action} failed: {type(error).__name__}: {error}"
        print(message, file=sys.stderr)
        xenstore_write(f"{backend}/hotplug-error", message)
        xenstore_write(f"{backend}/hotplug-status", "error")
        return 1
    return 0
