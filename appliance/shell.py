"""The I/O shell: AF_PACKET sockets on the interfaces, a poll loop, the clock and the log.

Everything that decides anything lives in the engine; this module only moves frames between the
kernel and `Nat.handle`, runs `Nat.tick` about once a second, prints a stats line periodically and
turns OS failures into one-line `ShellError`s. It is the same in the image (called by init) and on
a host (called by cli). A frame never kills it: an unexpected exception while handling one is
counted and logged (rate-limited), and the loop goes on.

Two engines, one loop: `Nat` between a WAN and a LAN NIC (`run`, here), and `NetVm` between the
uplink and client interfaces that come and go (appliance/netvmshell.py, which builds on `Shell`;
`add_reader` and `add_port` are there for it). A two-NIC appliance never imports the net VM's
side, which took a tenth of a second in the guest's `-X importtime`.

Sockets come from `_socket`, the C module under `socket`, here and in the appliance's other
modules: `socket`'s Python half (its enums and `selectors`, for conveniences natvm does not use)
took 80 ms in the guest's `-X importtime`.
"""

import _socket
import array
import contextlib
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Generic, NamedTuple, Protocol, TypeVar

from appliance import linux
from appliance.config import ApplianceConfig
from appliance.counters import Counters
from appliance.engine import Nat, Offload, Side
from appliance.flows import FlowTable
from appliance.statefile import FlowStateFile

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23

RECV_BATCH = 64  # frames drained from one socket before looking at the other
OPENING_BATCH = 16  # connection openings drained per round, after every other frame waiting
FRAME_BUFFER = 65536 + 64
HEADER_MEMO = 256  # distinct virtio_net_hdr values remembered decoded

# struct virtio_net_hdr, before every frame on a socket with PACKET_VNET_HDR.
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_NEEDS_CSUM, VNET_DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_ECN = 0, 1, 0x80
NO_VNET_HDR = bytes(VNET_HDR.size)


def decode_vnet_hdr(header: bytes) -> tuple[Offload | None, bool]:
    """(the offload of a received frame, or None; whether its L4 checksum is known valid).
    Raises ValueError for a segmentation type the engine does not translate (not TCPv4)."""
    flags, gso_type, _, gso_size, _, _ = VNET_HDR.unpack_from(header)
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & VNET_NEEDS_CSUM:
            return Offload(needs_csum=True), False
        return None, bool(flags & VNET_DATA_VALID)
    if kind != GSO_TCPV4 or not flags & VNET_NEEDS_CSUM:
        raise ValueError(gso_type)
    return Offload(True, gso_size, bool(gso_type & GSO_ECN)), False


def encode_vnet_hdr(frame: bytes, offload: Offload | None) -> bytes:
    """The virtio_net_hdr to send `frame` (Ethernet + IPv4 + TCP/UDP) with `offload`."""
    if offload is None or not offload.needs_csum:
        return NO_VNET_HDR
    csum_start = 14 + (frame[14] & 0x0F) * 4
    csum_offset = 16 if frame[23] == 6 else 6
    if not offload.gso_size:
        return VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_NONE, 0, 0, csum_start, csum_offset)
    header_len = csum_start + (frame[csum_start + 12] >> 4) * 4
    gso_type = GSO_TCPV4 | (GSO_ECN if offload.ecn else 0)
    return VNET_HDR.pack(
        VNET_NEEDS_CSUM, gso_type, header_len, offload.gso_size, csum_start, csum_offset
    )


def poll_timeout_ms(now: float, next_timer: float, busy_until: float) -> int:
    """How long the loop may sleep in poll: not at all while busy polling, else until the next
    timer, rounded up (a little late is harmless; early would wake it for nothing)."""
    if now < busy_until:
        return 0
    return max(0, int((next_timer - now) * 1000)) + 1


class ShellError(Exception):
    """A fatal condition the operator can fix, as one line."""


Log = Callable[[str], None]


def where_raised(error: BaseException, frames: int = 3) -> str:
    """One line: the innermost `frames` frames of error's traceback, then the error. Written out,
    not the traceback module's: importing that (and linecache, tokenize) cost 0.1 s of every boot
    under TCG, and the image has no sources for it to quote anyway."""
    where = []
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        where.append(f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}")
        tb = tb.tb_next
    return " | ".join([*where[-frames:], f"{type(error).__name__}: {error}"])


def log_line(line: str) -> None:
    # A closed or full console (a reader that went away) must not stop the forwarding.
    with contextlib.suppress(OSError):
        print(line, flush=True)


class RateLimitedLog:
    """At most `burst` lines per `interval` seconds per key, so a flood cannot flood the console."""

    def __init__(self, log: Log, interval: float = 10.0, burst: int = 3) -> None:
        self.log, self.interval, self.burst = log, interval, burst
        self._windows: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, line: str, now: float) -> None:
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.interval:
            start, count = now, 0
        if count < self.burst:
            self.log(line)
        self._windows[key] = (start, count + 1)


class ChangedLineLog:
    """Logs a line only when it differs from the last one it logged: an idle appliance's
    console stays quiet, and a busy one says each new state once per interval."""

    def __init__(self, log: Log) -> None:
        self.log, self.last = log, ""

    def __call__(self, line: str) -> None:
        if line != self.last:
            self.log(line)
            self.last = line


# Each NIC has two receive sockets, split by a classic BPF filter in the kernel: TCP SYNs without
# ACK (connection openings, the stuff of floods) on one, every other frame on the other, which the
# loop always drains first. A SYN flood then overflows only its own queue and cannot starve the
# established flows' frames (issue: 370k SYNs/s at the WAN address cost LAN traffic 95 % of its
# pings). Fragments count as "other": only a first fragment would hold TCP flags.
SO_ATTACH_FILTER = 26
_BPF = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
ACCEPT, REJECT = 0xFFFFFFFF, 0


def opening_filter(openings: bool) -> list[tuple[int, int, int, int]]:
    """The filter program: accept only connection openings (`openings`) or only the rest."""
    opening, other = (ACCEPT, REJECT) if openings else (REJECT, ACCEPT)
    return [
        (0x28, 0, 0, 12),  # ldh [12]: the ethertype
        (0x15, 0, 9, 0x0800),  # IPv4, else other
        (0x30, 0, 0, 23),  # ldb [23]: the protocol
        (0x15, 0, 7, 6),  # TCP, else other
        (0x28, 0, 0, 20),  # ldh [20]: flags and fragment offset
        (0x45, 5, 0, 0x1FFF),  # a fragment (offset or MF): other
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): X = the IP header's length
        (0x50, 0, 0, 27),  # ldb [x+27]: the TCP flags
        (0x54, 0, 0, 0x12),  # and SYN|ACK
        (0x15, 0, 1, 0x02),  # SYN alone: an opening, else other
        (0x06, 0, 0, opening),
        (0x06, 0, 0, other),
    ]


def _attach_filter(sock: _socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    # struct sock_fprog holds a pointer to the instructions: an array's buffer gives one without
    # ctypes; the kernel copies the program during the call.
    code = array.array("B", b"".join(_BPF.pack(*instruction) for instruction in program))
    address, _ = code.buffer_info()
    sock.setsockopt(_socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", len(program), address))


def open_interface(
    name: str, buffer_size: int, openings: bool = False
) -> tuple[_socket.socket, bytes]:
    """An AF_PACKET socket bound to `name`, the interface up, and its MAC. Every frame on it
    carries a virtio_net_hdr (PACKET_VNET_HDR), so GRO stays on: TCP aggregates come in whole,
    checksums may be left partial, and both go out for the kernel to finish. The socket never
    sees the frames it sends itself (PACKET_IGNORE_OUTGOING), so a frame is read with a plain
    recv_into: Python's recvfrom would cost one more system call per frame (an ioctl that names the
    interface in the address it returns). `openings`: the socket for connection openings only
    (see `opening_filter`); else the one for every other frame."""
    try:
        _socket.if_nametoindex(name)
    except OSError:
        raise ShellError(f"no network interface named {name!r}") from None
    try:
        sock = _socket.socket(_socket.AF_PACKET, _socket.SOCK_RAW, _socket.htons(ETH_P_ALL))
    except PermissionError:
        raise ShellError("opening an AF_PACKET socket needs root (CAP_NET_RAW)") from None
    try:
        # Up before bind: binding to a down interface leaves ENETDOWN pending on the socket,
        # and the first send would fail with it.
        linux.bring_up(name)
        for option in (PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING):
            try:
                sock.setsockopt(SOL_PACKET, option, 1)
            except OSError:
                raise ShellError(
                    "this kernel lacks PACKET_VNET_HDR or PACKET_IGNORE_OUTGOING: "
                    "natvm needs Linux 4.20 or later"
                ) from None
        linux.disable_lro(name)
        _grow_buffers(sock, buffer_size)
        _attach_filter(sock, opening_filter(openings))  # before bind: no frame gets in unfiltered
        sock.bind((name, ETH_P_ALL))
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ShellError(f"cannot use interface {name!r}: {error.strerror}") from None
    mac = sock.getsockname()[4]
    if len(mac) != 6:
        sock.close()
        raise ShellError(f"interface {name!r} is not an Ethernet interface")
    return sock, bytes(mac)


SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER = 256 << 10, 8 << 20


def socket_buffer_size(memory_total: int) -> int:
    """The size of each socket buffer on a machine with `memory_total` bytes: 1/128 of it,
    within 256 KiB..8 MiB (8 MiB from 1 GiB up).

    The default (about 200 KiB) holds only three 64 KiB aggregates: a burst would be dropped on
    receive, or fail with EAGAIN on send. But a full receive buffer holds far more memory than
    its size: the kernel doubles the value set, and the frames a virtio NIC received keep the
    larger pages they were received into (measured in a guest under a UDP flood: 2 MiB queued
    by account, 9.5 MiB gone). 8 MiB buffers so ran a 128 MiB guest out of memory, and as PID 1
    cannot be killed, the kernel panicked; with 1/128, a 77 MiB guest lives through floods."""
    return max(MIN_SOCKET_BUFFER, min(MAX_SOCKET_BUFFER, memory_total // 128))


def memory_total(meminfo: str = "/proc/meminfo", field: str = "MemTotal") -> int:
    """MemTotal (or another `field` of /proc/meminfo) in bytes; 0 if unreadable (the smallest
    buffers then)."""
    try:
        with open(meminfo) as lines:
            for line in lines:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _grow_buffers(sock: _socket.socket, size: int) -> None:
    for force, plain in ((SO_RCVBUFFORCE, _socket.SO_RCVBUF), (SO_SNDBUFFORCE, _socket.SO_SNDBUF)):
        try:
            sock.setsockopt(_socket.SOL_SOCKET, force, size)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.*mem_max allows
            sock.setsockopt(_socket.SOL_SOCKET, plain, size)


CARRIER_WAIT = 5.0


def wait_for_carrier(name: str, timeout: float) -> bool:
    """Whether the link is operational within `timeout` s. A fresh veth or virtio link takes a
    moment (the kernel's link watch runs deferred), and frames sent before that are lost."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/sys/class/net/{name}/operstate") as operstate:
                if operstate.read().strip() in ("up", "unknown"):
                    return True
        except OSError:
            pass  # the interface went away: reported by the first send
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)  # it is READY's last wait at boot: a coarse poll would delay it


def wait_for_carriers(names: Iterable[str], log: Log, timeout: float = CARRIER_WAIT) -> None:
    """Wait for each link in turn (see above); one without carrier is logged, not fatal: the
    NAT forwards once it comes up."""
    for name in names:
        if not wait_for_carrier(name, timeout):
            log(f"warning: {name} has no carrier after {timeout:g} s; going on")


# Where a frame comes in and goes out: a `Side` for `Nat`, an interface name for `NetVm`.
P = TypeVar("P", bound=str)


class Engine(Protocol[P]):
    """What the shell needs of an engine (`Nat`, `NetVm`)."""

    config: ApplianceConfig
    counters: Counters
    table: FlowTable

    def handle(
        self, port: P, frame: bytes, now: float, l4_verified: bool = False
    ) -> Sequence[tuple[P, bytes]]: ...

    def handle_offload(
        self, port: P, frame: bytes, now: float, offload: Offload
    ) -> Sequence[tuple[P, bytes, Offload | None]]: ...

    def tick(self, now: float) -> Sequence[tuple[P, bytes]]: ...


class Receiver(NamedTuple, Generic[P]):
    side: P
    sock: _socket.socket
    openings: bool  # connection openings only: drained after every other socket, in small batches


class Shell(Generic[P]):
    def __init__(
        self,
        nat: Engine[P],
        sockets: dict[P, _socket.socket],
        log: Log,
        stats_interval: float,
        opening_sockets: dict[P, _socket.socket] | None = None,
    ) -> None:
        """`sockets` send, and receive every frame but connection openings, which come in on
        `opening_sockets` (where given) and are handled only once the others are drained."""
        self.nat, self.sockets, self.log = nat, dict(sockets), log
        self.opening_sockets = dict(opening_sockets or {})
        self.headers: dict[bytes, tuple[Offload | None, bool | None]] = {}
        # Every frame is received here and copied out at its own size. `sock.recv(FRAME_BUFFER)`
        # would allocate 65 KiB per frame and shrink it: thousands of times a second, that carves
        # up the C heap around longer-lived objects until it must grow to find 65 KiB in one
        # piece (the soak's resident size grew 14 % in 40 minutes; tests/unit/test_receive_memory).
        self._received = memoryview(bytearray(FRAME_BUFFER + VNET_HDR.size))
        self.stats_interval = stats_interval
        self.errors = RateLimitedLog(log)
        self.stats = ChangedLineLog(log)
        self.stopping = False
        self.tx_errors = 0
        self.flows_file: FlowStateFile | None = None  # where the table's changes are saved
        self._poller = select.poll()
        self._receivers: dict[int, Receiver[P]] = {}
        self._readers: dict[int, Callable[[], None]] = {}
        self._tickers: list[Callable[[], None]] = []
        for side, sock in self.sockets.items():
            self._receive(Receiver(side, sock, False))
        for side, sock in self.opening_sockets.items():
            self._receive(Receiver(side, sock, True))

    def _receive(self, receiver: Receiver[P]) -> None:
        fd = receiver.sock.fileno()
        self._receivers[fd] = receiver
        self._poller.register(fd, select.POLLIN)

    def add_port(self, port: P, sock: _socket.socket, openings: _socket.socket | None) -> None:
        """Receive and send on `port` from now on (`openings`: its socket for connection
        openings, if it has one)."""
        self.sockets[port] = sock
        self._receive(Receiver(port, sock, False))
        if openings is not None:
            self.opening_sockets[port] = openings
            self._receive(Receiver(port, openings, True))

    def remove_port(self, port: P) -> None:
        """Stop using `port` and close its sockets (nothing if it has none)."""
        for sockets in (self.sockets, self.opening_sockets):
            sock = sockets.pop(port, None)
            if sock is not None:
                fd = sock.fileno()
                del self._receivers[fd]
                self._poller.unregister(fd)
                sock.close()

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT end `serve` after the frames in hand (they set `stopping`)."""

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)

    def close(self) -> None:
        """Close every port's sockets."""
        for port in list(self.sockets):
            self.remove_port(port)

    def add_reader(self, fd: int, ready: Callable[[], None]) -> None:
        """Call `ready` from the loop whenever `fd` is readable (after the frames waiting)."""
        self._readers[fd] = ready
        self._poller.register(fd, select.POLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def add_ticker(self, tick: Callable[[], None]) -> None:
        """Call `tick` from the loop once a second (for a reader whose wakeups may be lost)."""
        self._tickers.append(tick)

    def serve(self) -> None:
        poller, by_fd, readers = self._poller, self._receivers, self._readers
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        poller.register(wake_read, select.POLLIN)
        previous = signal.set_wakeup_fd(wake_write)
        next_tick = next_stats = time.monotonic()
        busy_poll, busy_until = self.nat.config.nat.busy_poll_us / 1e6, 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= next_tick:
                    self._send(self.nat.tick(now))
                    for tick in self._tickers:
                        tick()
                    if self.flows_file is not None:
                        self.flows_file.maintain(self.nat.table)
                    next_tick = now + 1.0
                if now >= next_stats:
                    self.stats(self.stats_line())
                    next_stats = now + self.stats_interval
                ready = poller.poll(poll_timeout_ms(now, min(next_tick, next_stats), busy_until))
                receivers = [(fd, by_fd[fd]) for fd, _ in ready if fd in by_fd]
                receivers.sort(key=lambda item: item[1].openings)  # openings last
                for fd, (side, sock, openings) in receivers:
                    # A port may go while the round runs (its interface went away).
                    if fd in by_fd:
                        self._drain(side, sock, OPENING_BATCH if openings else RECV_BATCH)
                for fd, _ in ready:
                    reader = readers.get(fd)
                    if reader is not None:
                        reader()
                if self.flows_file is not None:  # once a round: a kill loses only this round's
                    self.flows_file.flush()
                if ready and busy_poll:
                    busy_until = time.monotonic() + busy_poll
        finally:
            signal.set_wakeup_fd(previous)
            poller.unregister(wake_read)
            os.close(wake_read)
            os.close(wake_write)

    def stats_line(self) -> str:
        return self.nat.counters.line(len(self.nat.table)) + f" tx_errors={self.tx_errors}"

    def _drain(self, side: P, sock: _socket.socket, batch: int) -> None:
        # Per frame this is the hot loop: names are bound once, and the clock is read once per
        # batch (a batch takes well under a millisecond; the engine's timers count seconds).
        recv_into, received, nat, send = sock.recv_into, self._received, self.nat, self._send
        handle, header_size, headers = nat.handle, VNET_HDR.size, self.headers
        now = time.monotonic()
        for _ in range(batch):
            try:
                data = received[: recv_into(received)]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._receive_failed(side, error)
                return
            # A link sends few distinct headers (per kind of frame and segment size): decoding
            # each once saves building an Offload per frame.
            header = data[:header_size].tobytes()
            decoded = headers.get(header)
            if decoded is None:
                decoded = self._decode(header)
            offload, valid = decoded
            if valid is None:  # UDP or IPv6 segmentation; a short read
                nat.counters.frames_in[self._side_of(side)] += 1
                nat.counters.drop("unsupported-offload")
                continue
            frame = data[header_size:].tobytes()
            try:
                if offload is None:
                    send(handle(side, frame, now, valid))
                else:
                    self._send_offloaded(nat.handle_offload(side, frame, now, offload))
            except Exception as error:  # the appliance must outlive any frame
                self._internal_error(side, now, error)

    def _decode(self, header: bytes) -> tuple[Offload | None, bool | None]:
        """`decode_vnet_hdr`, remembered (valid None: not translatable); a bounded memo."""
        try:
            decoded: tuple[Offload | None, bool | None] = decode_vnet_hdr(header)
        except (ValueError, struct.error):
            decoded = None, None
        if len(self.headers) >= HEADER_MEMO:
            self.headers.clear()  # a peer sending ever new headers must not grow it unbounded
        self.headers[header] = decoded
        return decoded

    def _side_of(self, port: P) -> Side:
        """The side of the appliance `port` is on, for the counters."""
        return Side(port)

    def _receive_failed(self, side: P, error: OSError) -> None:
        """A receive failed for a reason other than "nothing to read" (the interface went
        down or away): fatal here, as it always was; `NetVmShell` survives a client's."""
        raise error

    def _send_offloaded(self, out: Sequence[tuple[P, bytes, Offload | None]]) -> None:
        sockets = self.sockets
        for side, frame, offload in out:
            sock = sockets.get(side)
            if sock is None:
                continue  # its port closed while the frame was on its way
            try:
                sock.sendmsg([encode_vnet_hdr(frame, offload), frame])
            except OSError as error:
                self._tx_error(side, error)

    def _internal_error(self, side: P, now: float, error: Exception) -> None:
        self.nat.counters.drop("internal-error")
        self.errors("internal", f"error: frame from {side} raised: {where_raised(error)}", now)

    def _tx_error(self, side: P, error: OSError) -> None:
        self.tx_errors += 1
        self.errors(
            f"tx-{error.errno}", f"error: send on {side}: {error.strerror}", time.monotonic()
        )

    def _send(self, out: Sequence[tuple[P, bytes]]) -> None:
        sockets = self.sockets
        for side, frame in out:
            sock = sockets.get(side)
            if sock is None:
                continue  # its port closed while the frame was on its way
            try:
                sock.send(NO_VNET_HDR + frame)
            except OSError as error:
                self._tx_error(side, error)


def ready_line(config: ApplianceConfig, wan: str, lan: str, macs: tuple[str, str]) -> str:
    """The line that says the NAT forwards: what `invoke run` and the tests wait for."""
    return (
        f"READY wan={wan} {config.wan.address} mac={macs[0]} "
        f"lan={lan} {config.lan.address} mac={macs[1]}"
    )


def run(
    config: ApplianceConfig,
    wan_ifname: str,
    lan_ifname: str,
    stats_interval: float = 10.0,
    log: Log = log_line,
    state_dir: str | None = None,
) -> None:
    """Forward between the two interfaces until SIGTERM or SIGINT; raises ShellError.
    `state_dir`: where the flows are saved as they change and restored from at start, so that
    a restart (after a crash or kill) keeps the established connections."""
    if config.nat.netvm:
        raise ShellError("the configuration is in netvm mode: it serves clients, not a LAN NIC")
    if wan_ifname == lan_ifname:
        raise ShellError("the WAN and LAN interfaces must differ")
    buffer_size = socket_buffer_size(memory_total())
    opened: list[_socket.socket] = []
    try:
        wan_sock, wan_mac = open_interface(wan_ifname, buffer_size)
        opened.append(wan_sock)
        lan_sock, lan_mac = open_interface(lan_ifname, buffer_size)
        opened.append(lan_sock)
        # Openings need no large buffer: under a flood most are dropped there anyway.
        openings = {
            side: open_interface(name, MIN_SOCKET_BUFFER, openings=True)[0]
            for side, name in ((Side.WAN, wan_ifname), (Side.LAN, lan_ifname))
        }
        opened += openings.values()
    except ShellError:
        for sock in opened:
            sock.close()
        raise
    nat = Nat(config, wan_mac, lan_mac)
    shell = Shell(nat, {Side.WAN: wan_sock, Side.LAN: lan_sock}, log, stats_interval, openings)
    if state_dir is not None:
        shell.flows_file = FlowStateFile(state_dir, log)
        try:
            log(shell.flows_file.open(nat.table, time.monotonic()))
        except OSError as error:
            for sock in opened:
                sock.close()
            raise ShellError(f"cannot keep flows in {state_dir}: {error.strerror}") from None

    shell.stop_on_signals()
    wait_for_carriers((wan_ifname, lan_ifname), log)
    shell._send(nat.start(time.monotonic()))
    log(ready_line(config, wan_ifname, lan_ifname, (wan_mac.hex(":"), lan_mac.hex(":"))))
    try:
        shell.serve()
    finally:
        log(shell.stats_line())
        log("stopped")
        for sock in opened:
            sock.close()
        if shell.flows_file is not None:
            shell.flows_file.close()
        sys.stdout.flush()
