"""libvirt for the libvirt tier: its daemon, and natvm's domain defined from a build's files.

- ``running_libvirtd``: the machine's libvirtd if one answers on ``qemu:///system`` (a service,
  or socket activation under systemd); else virtlogd and libvirtd started here in the foreground,
  as children of the test session, and stopped after it (CI machines start no services, and
  systemd may not be PID 1). Debian defines libvirt's ``default`` NAT network but does not
  autostart it, and nothing here starts a network: the domain's NICs are on bridges the test made.
- ``LibvirtDomain``: a ``Nat``. It defines the domain with the build folder's own
  ``libvirt-define.sh``, as a user does, starts it, and keeps its serial console line by line,
  read from the pty libvirt gives it; ``stop`` destroys and undefines it.

A domain or folder left by a test session that is gone (a kill -9) is removed by the next one; a
domain named natvm that is not a test's is never touched: the tier fails instead.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import threading
import time
import tty
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from image import deploy
from tests.support.routers import BOOT_TIMEOUT, CONSOLE_ESCAPES, stats_counter
from tests.support.topology import left_by_a_gone_session, stop_process

URI = "qemu:///system"
DAEMONS = ("virtlogd", "libvirtd")  # libvirtd's QEMU driver hands QEMU's output to virtlogd
DAEMON_TIMEOUT = 60.0
# Where /dev/kvm is root's alone (no udev to give it to the kvm group, as on these machines),
# libvirt finds its cached QEMU capabilities stale at every look and probes QEMU again, a dozen
# times per define: a minute here.
VIRSH_TIMEOUT = 300.0
CONSOLE_TAIL = 40  # console lines shown when the guest never says READY


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``virsh`` on ``qemu:///system``; a failure names the whole command."""
    command = ["virsh", "--connect", URI, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=VIRSH_TIMEOUT)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(command)} exited {result.returncode}: {result.stderr}")
    return result


def _answers() -> bool:
    return virsh("version", check=False).returncode == 0


@contextlib.contextmanager
def running_libvirtd(logs: Path) -> Iterator[None]:
    """A libvirtd that answers on ``qemu:///system`` for as long as the block runs; the daemons'
    output goes to ``logs``."""
    if _answers():
        yield
        return
    started: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as files:
        try:
            for daemon in DAEMONS:
                log = files.enter_context((logs / f"{daemon}.log").open("wb"))
                started[daemon] = subprocess.Popen(
                    [daemon], stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            _wait_for_daemon(started, logs)
            yield
        finally:
            for process in reversed(started.values()):
                stop_process(process)


def _wait_for_daemon(started: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + DAEMON_TIMEOUT
    while not _answers():
        exited = [name for name, process in started.items() if process.poll() is not None]
        if exited or time.monotonic() > deadline:
            output = "\n".join(f"{p.name}:\n{p.read_text()}" for p in sorted(logs.glob("*.log")))
            why = f"{', '.join(exited)} exited" if exited else f"no answer in {DAEMON_TIMEOUT} s"
            raise AssertionError(f"libvirtd did not start ({why}):\n{output}")
        time.sleep(0.2)


def remove_stale_domain() -> None:
    """Destroy and undefine a natvm domain, and remove its folder, if a test session that is gone
    defined it; fail if a natvm domain exists that is not a test's."""
    defined = virsh("dumpxml", deploy.NAME, check=False)
    if defined.returncode != 0:
        return
    folder = Path(ET.fromstring(defined.stdout).findtext("os/kernel") or "").parent
    if not left_by_a_gone_session(folder.name):
        raise AssertionError(
            f"a libvirt domain named {deploy.NAME} already exists (a deployment's, or a running "
            f"test session's; its kernel is in {folder}): the libvirt tier needs the name"
        )
    _remove_domain()
    shutil.rmtree(folder, ignore_errors=True)


def _remove_domain() -> None:
    virsh("destroy", deploy.NAME, check=False)  # fails if it is not running: nothing to do
    virsh("undefine", deploy.NAME)


class LibvirtDomain:
    """natvm's domain, defined from ``folder``'s libvirt.xml by its libvirt-define.sh as
    ``domain_type`` (kvm or qemu), its console kept line by line."""

    kind = "libvirt"

    def __init__(self, folder: Path, domain_type: str) -> None:
        self.folder = folder
        self.domain_type = domain_type
        self.ready_after: float | None = None  # seconds from `virsh start` to READY
        self.returncode: int | None = None
        self._defined = False
        self._console: int | None = None
        self._lines: list[str] = []

    def start(self) -> None:
        """Define, start, and wait for READY; fail with the console's last lines if it never
        comes."""
        remove_stale_domain()
        define = [str(self.folder / "libvirt-define.sh"), self.domain_type]
        env = {**os.environ, "LIBVIRT_DEFAULT_URI": URI}  # the script's virsh: the same daemon
        defined = subprocess.run(
            define, env=env, capture_output=True, text=True, timeout=VIRSH_TIMEOUT, check=False
        )
        assert defined.returncode == 0, f"{shlex.join(define)}: {defined.stdout}{defined.stderr}"
        self._defined = True
        started = time.monotonic()
        virsh("start", deploy.NAME)
        self._open_console(virsh("ttyconsole", deploy.NAME).stdout.strip())
        for tap in self.interfaces():
            # libvirt's taps have IPv6 on, as the root namespace's links do: without it the
            # machine's own stack sends nothing into the test's links through them.
            Path(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6").write_text("1")
        self._wait_ready(started)

    def _open_console(self, pty: str) -> None:
        # QEMU drops what the guest prints while no one has the pty open: open it at once. Raw
        # mode, so nothing echoes what the guest prints back into its console as input.
        self._console = os.open(pty, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._console)
        threading.Thread(target=self._read, args=(self._console,), daemon=True).start()

    def _read(self, console: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(console, 4096)
            except OSError:  # EIO once QEMU has closed its end, EBADF once stop closed ours
                return
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._lines.append(CONSOLE_ESCAPES.sub("", line.decode(errors="replace")).strip())

    def _wait_ready(self, started: float) -> None:
        deadline = started + BOOT_TIMEOUT
        while not any(line.startswith("READY") for line in self._lines):
            if not self.alive() or time.monotonic() > deadline:
                tail = "\n".join(self._lines[-CONSOLE_TAIL:])
                raise AssertionError(
                    f"no READY from the libvirt domain {deploy.NAME} (type {self.domain_type}); "
                    f"the console's last lines:\n{tail}"
                )
            time.sleep(0.1)
        self.ready_after = time.monotonic() - started

    def interfaces(self) -> dict[str, str]:
        """The running domain's NICs: host tap name -> the bridge it is on, WAN first."""
        domain = ET.fromstring(virsh("dumpxml", deploy.NAME).stdout)
        return {
            target.get("dev", ""): source.get("bridge", "")
            for nic in domain.findall("devices/interface")
            if (target := nic.find("target")) is not None
            and (source := nic.find("source")) is not None
        }

    def running_type(self) -> str:
        """The domain type libvirt runs it as (kvm or qemu)."""
        return ET.fromstring(virsh("dumpxml", deploy.NAME).stdout).get("type", "")

    def alive(self) -> bool:
        state = virsh("domstate", deploy.NAME, check=False)
        return state.returncode == 0 and state.stdout.strip() == "running"

    def output(self) -> list[str]:
        """Every console line so far."""
        return list(self._lines)

    def dropped(self) -> int | None:
        return stats_counter(self._lines, "dropped")

    def stop(self) -> int | None:
        """Destroy and undefine the domain; ``None`` if it was never defined."""
        if self._console is not None:
            os.close(self._console)
            self._console = None
        if self._defined and self.returncode is None:
            _remove_domain()
            self.returncode = 0
        return self.returncode
