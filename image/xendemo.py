"""`invoke run --xen`: the demo of image/demo.py, with natvm booted under real Xen nested in QEMU.

The same namespaces, HTTP server and checks as `invoke run` (demo.py); only what boots on the
router namespace's taps differs: Xen, the test dom0 of build/xen-host/, and natvm as a PVH guest
created by `xl` from build/xen.cfg as built (image/xenboot.py). Xen's, the dom0's and natvm's
console lines stream as they come; Ctrl-C (or any failure) stops QEMU and removes the wiring.
"""

import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from image import demo, qemu, xenboot

READY_TIMEOUT = 300.0  # QEMU start to natvm's READY; about 40 s on two cores under TCG


def machine(host: Path, work: Path) -> xenboot.Machine:
    return xenboot.Machine(host, work / "dom0-initrd", demo.TAPS, work / "control.sock")


def command(host: Path, work: Path) -> list[str]:
    """The QEMU argv, run in the demo's router namespace where the taps are."""
    return ["ip", "netns", "exec", demo.ROUTER, *xenboot.command(machine(host, work))]


def show_command(host: Path) -> str:
    work = Path(tempfile.gettempdir(), "natvm-xen-demo")
    shown = qemu.format_command(xenboot.command(machine(host, work)))
    return f"ip netns exec {demo.ROUTER} \\\n{shown}"


def _echo(line: xenboot.Line) -> None:
    print(f"  {line.source:>5} | {line.text}", flush=True)


def _spawn(argv: list[str]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        ["ip", "netns", "exec", demo.ROUTER, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us, not QEMU: we stop it ourselves
    )


def run_demo(out: Path, host: Path, hosts: demo.Addresses) -> None:
    """Wire the namespaces, boot Xen, the dom0 and natvm, show NAT, stay until Ctrl-C."""
    demo.preflight("invoke run --xen")
    demo.say("accelerator: TCG (Xen nested in QEMU: guests of a nested Xen need no KVM)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _boot_and_show(out, host, hosts)
    except KeyboardInterrupt:
        demo.say("interrupted")
    finally:
        demo.destroy_topology()
        demo.say("stopped and cleaned up")


def _boot_and_show(out: Path, host: Path, hosts: demo.Addresses) -> None:
    started = time.monotonic()
    demo.build_topology(hosts)
    demo.say(f"namespaces {demo.LAN} and {demo.WAN} wired through {demo.ROUTER}", started)
    with (
        tempfile.TemporaryDirectory(prefix="natvm-xen-") as work,
        xenboot.booted(machine(host, Path(work)), out / "xen.cfg", _spawn, _echo) as nested,
        demo.http_server(True),
    ):
        demo.say(f"booting: {shlex.join(command(host, Path(work)))}")
        split = nested.wait_booted(READY_TIMEOUT)
        demo.say(f"natvm READY under Xen: {split}")
        demo.show_nat(hosts)
        demo.say("running; Ctrl-C stops QEMU (Xen, the dom0, natvm) and removes the wiring")
        while nested.alive():
            time.sleep(0.5)
        status = nested.console.proc.returncode
        raise xenboot.BootError(f"QEMU exited ({status})\n{nested.console.tails(nested.guest)}")
