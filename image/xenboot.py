"""Booting natvm under real Xen, nested in QEMU: the command line, the guest's files, the console.

Theory of operation: QEMU (TCG; the machine has no usable KVM, and Xen's HVM/PVH guests need
SVM with nested paging, which `-cpu qemu64,+svm,+npt` emulates) loads the test dom0 of
build/xen-host/ through its multiboot loader: `-kernel xen`, and as modules the dom0 kernel with
its command line and the dom0's initrd. That initrd is the xen-host initramfs with a second
archive appended (Linux unpacks concatenated archives in turn): the guest's deployment directory,
its xen.cfg unchanged at /guest/xen.cfg and each file it names where xl will look for it (an
absolute path as is, a relative one under /guest, the file's folder: the dom0 runs xl with the
command line of natvm's xen-create.sh). So one dom0 boots any
build of natvm, and the file users get is the file tested.

QEMU's two NICs are taps (WAN first), which the dom0 bridges to the guest's vifs; a virtio-serial
port carries the control channel (image/dom0/control.py) on a unix socket. The serial console
carries Xen's lines ("(XEN) ..."), the dom0's ("dom0: ...", and its kernel's), and the guest's
console as the dom0 streams it ("natvm| ..."); `Console` splits them again.
"""

import base64
import contextlib
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image import cpio, qemu
from image.dom0 import control, xlcfg
from image.dom0.init import GUEST_CFG, READY_LINE
from image.errors import ImageError

MEMORY_MIB = 1536  # the dom0's 512 MiB, the guest's, and room for the client domUs to come
CPUS = 2
CPU = "qemu64,+svm,+npt"
DOM0_MEMORY = "512M"
# com1 is QEMU's serial console; no boot-time scrubbing of all memory (slow under TCG, and it
# would make QEMU touch every page); the dom0 gets one vCPU, the rest is for guests.
XEN_CMDLINE = (
    "console=com1",
    "com1=115200,8n1",
    f"dom0_mem={DOM0_MEMORY},max:{DOM0_MEMORY}",
    "dom0_max_vcpus=1",
    "bootscrub=0",
)
DOM0_CMDLINE = ("console=hvc0", "earlyprintk=xen", "quiet")
TAIL_LINES = 40
# The Xen tier's client VM in the dom0 (image/xenclient.py: test equipment, beside the guest).
CLIENT_KERNEL = "/guest/client-vmlinuz"
CLIENT_RAMDISK = "/guest/client-initramfs"
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")
_GUEST_LINE = re.compile(r"^([\w.-]+)\| ?(.*)$")
# What names the reason of a failed boot, first one seen: the dom0's init or natvm giving up, a
# kernel's or Xen's panic.
_FAILURE_MARKS = ("fatal:", "Kernel panic", "Panic on CPU")


@dataclass(frozen=True)
class Machine:
    """What a nested boot needs: build/xen-host/, the dom0 initrd with the guest appended,
    the host taps (WAN, LAN) and where the control channel's socket goes."""

    host: Path
    dom0_initrd: Path
    taps: tuple[str, str]
    control_socket: Path
    memory_mib: int = MEMORY_MIB
    cpus: int = CPUS


def _module(path: Path, *args: str) -> str:
    """One multiboot module for QEMU's -initrd: its path and command line (commas doubled)."""
    return " ".join((str(path), *args)).replace(",", ",,")


def command(machine: Machine) -> list[str]:
    """The full QEMU argv; one option and its value per line."""
    modules = ",".join(
        (_module(machine.host / "vmlinuz", *DOM0_CMDLINE), _module(machine.dom0_initrd))
    )
    port = f"virtserialport,chardev=control,name={control.PORT_NAME}"
    argv = [
        qemu.QEMU,
        "-nodefaults",
        "-nographic",
        "-accel", "tcg",
        "-cpu", CPU,
        "-m", str(machine.memory_mib),
        "-smp", str(machine.cpus),
        "-serial", "stdio",
        "-no-reboot",
        "-kernel", str(machine.host / "xen"),
        "-append", " ".join(XEN_CMDLINE),
        "-initrd", modules,
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=control,path={machine.control_socket},server=on,wait=off",
        "-device", port,
    ]  # fmt: skip
    for role, tap, mac in zip(qemu.ROLES, machine.taps, qemu.MACS, strict=True):
        argv += qemu._nic(role, tap, mac)
    return argv


def guest_entries(cfg: Path) -> list[cpio.Entry]:
    """The guest's archive: `cfg` as /guest/xen.cfg and each file it names where xl finds it."""
    text = cfg.read_text()
    entries = [cpio.file(str(GUEST_CFG).lstrip("/"), text.encode())]
    for key in xlcfg.FILE_KEYS:
        named = Path(xlcfg.string(text, key))
        source = named if named.is_absolute() else cfg.parent / named
        if not source.is_file():
            raise ImageError(f"{cfg} names {key} {named}, which is not there", "run `invoke build`")
        inside = named if named.is_absolute() else GUEST_CFG.parent / named
        entries.append(cpio.file(str(inside).lstrip("/"), source.read_bytes()))
    return entries


def client_entries(host: Path) -> list[cpio.Entry]:
    """The Xen tier's client VM files (image/xenclient.py) where the tests' `xl create` finds
    them, if the xen-host build has them: in the boot's archive, since writing the 14 MB kernel
    through the control channel took over two minutes under TCG."""
    files = {"vmlinuz": CLIENT_KERNEL, "initramfs": CLIENT_RAMDISK}
    built = {host / "client" / name: inside for name, inside in files.items()}
    return [
        cpio.file(inside[1:], path.read_bytes()) for path, inside in built.items() if path.exists()
    ]


def write_dom0_initrd(host: Path, cfg: Path, target: Path) -> None:
    """The xen-host initramfs, then the guest's archive and the client VM's files at a 4-byte
    boundary (as the kernel looks for the next archive's magic)."""
    base = (host / "initramfs").read_bytes()
    with target.open("wb") as out:
        out.write(base + b"\0" * (-len(base) % 4))
        out.write(cpio.archive([*guest_entries(cfg), *client_entries(host)]))


def missing_outputs(host: Path) -> list[str]:
    return [name for name in ("xen", "vmlinuz", "initramfs") if not (host / name).is_file()]


@dataclass(frozen=True)
class Line:
    at: float  # seconds since QEMU started
    source: str  # "xen", "dom0" or the guest's domain name
    text: str


def classify(raw: str) -> tuple[str, str]:
    """(source, text) of one serial console line."""
    if raw.startswith("(XEN)"):
        return "xen", raw
    guest = _GUEST_LINE.match(raw)
    if guest:
        return guest.group(1), guest.group(2)
    return "dom0", raw


class BootError(ImageError):
    """A nested boot that did not get where it had to; the message ends with the console tails."""


class Console:
    """QEMU's serial console, kept line by line with the time and source of each; `echo` gets
    every line as it comes (for `invoke run --xen`)."""

    def __init__(self, proc: "subprocess.Popen[bytes]", echo: Callable[[Line], None]) -> None:
        self.proc = proc
        self.started = time.monotonic()
        self.lines: list[Line] = []
        self.ended = threading.Event()
        self._echo = echo
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = _ESCAPES.sub("", raw.decode(errors="replace")).rstrip()
            if not text:
                continue
            line = Line(time.monotonic() - self.started, *classify(text))
            self.lines.append(line)
            self._echo(line)
        self.ended.set()

    def of(self, source: str) -> list[str]:
        return [line.text for line in self.lines if line.source == source]

    def first(self, test: Callable[[Line], bool], start: int = 0) -> Line | None:
        return next((line for line in self.lines[start:] if test(line)), None)

    def tails(self, guest: str) -> str:
        """The last lines of the dom0 (Xen's among them) and of the guest."""
        host = [f"{line.text}" for line in self.lines if line.source != guest]
        return (
            f"last {TAIL_LINES} console lines of dom0 (and Xen):\n"
            + "\n".join(host[-TAIL_LINES:])
            + f"\nlast {TAIL_LINES} console lines of {guest}:\n"
            + "\n".join(self.of(guest)[-TAIL_LINES:])
        )

    def wait_for(
        self, test: Callable[[Line], bool], what: str, timeout: float, guest: str, start: int = 0
    ) -> Line:
        """The first line from index `start` on that passes `test`; a BootError naming `what`,
        with the console tails, if QEMU ends or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.first(test, start)
            if found is not None:
                return found
            if self.ended.is_set() or time.monotonic() > deadline:
                ending = (
                    f"QEMU exited ({self.proc.wait()})"
                    if self.ended.is_set()
                    else f"{timeout:.0f} s passed"
                )
                # From `start` on: an older failure (a test's deliberate fatal word) is not why.
                cause = self.first(lambda line: any(m in line.text for m in _FAILURE_MARKS), start)
                said = f"; {cause.source} said: {cause.text}" if cause else ""
                raise BootError(f"{what}: {ending}{said}\n{self.tails(guest)}")
            time.sleep(0.1)


class Control:
    """The host end of the control channel: one request, one answer, in order."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise ImageError(f"QEMU made no control socket {path} in {timeout:.0f} s")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")

    def request(self, message: dict[str, object], timeout: float) -> dict[str, object]:
        self.sock.settimeout(timeout)
        self.sock.sendall(control.encode(message))
        line = self.reader.readline()
        if not line:
            raise ImageError("the dom0 closed the control channel")
        return control.decode(line)

    def run(self, *argv: str, cwd: str = "", timeout: float = 120.0, check: bool = True) -> str:
        """Run `argv` in the dom0; its output (stdout and stderr). `check`: fail unless it
        exits 0."""
        message: dict[str, object] = {"run": list(argv), "timeout": timeout}
        if cwd:
            message["cwd"] = cwd
        answer = self.request(message, timeout + 10)
        output = str(answer["output"])
        if check and answer["status"] != 0:
            raise ImageError(f"in the dom0, `{shlex.join(argv)}` failed: {output.strip()}")
        return output

    def write(self, path: str, content: str | bytes) -> None:
        """Write `content` (text, or bytes such as a client guest's kernel) to `path` in the
        dom0."""
        message: dict[str, object]
        if isinstance(content, bytes):
            message = {"write": path, "base64": base64.b64encode(content).decode()}
        else:
            message = {"write": path, "text": content}
        answer = self.request(message, 120)
        if answer["status"] != 0:
            raise ImageError(f"in the dom0, writing {path} failed: {answer['output']}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def is_ready(guest: str) -> Callable[[Line], bool]:
    return lambda line: line.source == guest and line.text.startswith("READY")


@dataclass(frozen=True)
class Split:
    """Seconds from QEMU's start to each milestone of the nested boot."""

    xen: float
    dom0: float
    guest: float

    def __str__(self) -> str:
        return (
            f"QEMU start -> Xen {self.xen:.1f} s -> dom0 ready {self.dom0:.1f} s "
            f"-> natvm READY {self.guest:.1f} s (TCG, Xen nested)"
        )


class NestedXen:
    """A running nested boot: its console, its control channel, and how to stop it."""

    def __init__(
        self,
        proc: "subprocess.Popen[bytes]",
        machine: Machine,
        guest: str,
        echo: Callable[[Line], None],
    ) -> None:
        self.machine = machine
        self.guest = guest
        self.console = Console(proc, echo)
        self.control: Control | None = None

    def wait_booted(self, timeout: float) -> Split:
        """Wait for Xen, the dom0 and the guest's READY; the boot split."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        c, guest = self.console, self.guest
        xen = c.wait_for(lambda line: line.source == "xen", "Xen never started", left(), guest)
        dom0 = c.wait_for(
            lambda line: line.text.startswith(READY_LINE), "the dom0 never got ready", left(), guest
        )
        self.control = Control(self.machine.control_socket)
        ready = c.wait_for(is_ready(guest), f"{guest} never printed READY", left(), guest)
        return Split(xen.at, dom0.at, ready.at)

    def alive(self) -> bool:
        return self.console.proc.poll() is None

    def stop(self) -> int:
        if self.control is not None:
            self.control.close()
        proc = self.console.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.console.ended.wait(5)
        return proc.returncode


@contextlib.contextmanager
def booted(
    machine: Machine,
    cfg: Path,
    spawn: Callable[[list[str]], "subprocess.Popen[bytes]"],
    echo: Callable[[Line], None] = lambda line: None,
) -> Iterator[NestedXen]:
    """Write the dom0 initrd for guest configuration `cfg`, start QEMU with `spawn` (which runs
    the argv where the taps are, its stdout a pipe), and stop it however the block ends. `echo`
    gets each console line as it comes."""
    if missing := missing_outputs(machine.host):
        raise ImageError(
            f"{machine.host} lacks {', '.join(missing)}", "run `invoke build --xen-host`"
        )
    write_dom0_initrd(machine.host, cfg, machine.dom0_initrd)
    guest = xlcfg.string(cfg.read_text(), "name")
    nested = NestedXen(spawn(command(machine)), machine, guest, echo)
    try:
        yield nested
    finally:
        nested.stop()
