"""New TCP connections per second: a server that accepts and closes, a client that opens many.

Run as a script inside a namespace (stdlib only)::

    python connections.py server ADDRESS PORT
    python connections.py client ADDRESS PORT SECONDS CONCURRENCY

Each connection is a whole TCP life: SYN, SYN-ACK, ACK; the server closes first (FIN), the client
reads the end of stream and closes (FIN). The server closing first keeps the client's ports out of
TIME_WAIT, so a short run does not exhaust them. The client keeps ``CONCURRENCY`` connections in
flight with epoll, counts the completed ones for ``SECONDS`` and prints one JSON line.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

STALLED = 1.0  # a connection older than this lost a packet (SYN retries take 1 s): abandon it


def serve(address: str, port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(4096)
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            continue  # reset while queued: nothing to close
        connection.close()


class Client:
    def __init__(self, address: str, port: int, concurrency: int) -> None:
        self.target, self.concurrency = (address, port), concurrency
        self.poll = select.epoll()
        self.open: dict[int, tuple[socket.socket, float, bool]] = {}  # fd -> (sock, t0, connected)
        self.completed = self.failed = self.stalled = 0

    def run(self, seconds: float) -> dict[str, float]:
        started = time.monotonic()
        deadline = started + seconds
        while (now := time.monotonic()) < deadline:
            while len(self.open) < self.concurrency:
                self._connect(now)
            for fd, _ in self.poll.poll(0.05):
                self._event(fd)
            self._abandon_stalled(now)
        elapsed = time.monotonic() - started
        for fd in list(self.open):
            self._close(fd)
        return {
            "seconds": elapsed,
            "completed": self.completed,
            "failed": self.failed,
            "stalled": self.stalled,
            "per_second": self.completed / elapsed,
        }

    def _connect(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(self.target)
        self.open[sock.fileno()] = (sock, now, False)
        self.poll.register(sock.fileno(), select.EPOLLOUT)

    def _event(self, fd: int) -> None:
        sock, opened, connected = self.open[fd]
        if not connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.failed += 1
                self._close(fd)
                return
            self.open[fd] = (sock, opened, True)
            self.poll.modify(fd, select.EPOLLIN)
            return
        try:
            data = sock.recv(1)
        except OSError:
            data = b"x"
        if data:
            self.failed += 1  # the server sends nothing: a reset or garbage
        else:
            self.completed += 1
        self._close(fd)

    def _abandon_stalled(self, now: float) -> None:
        for fd, (_, opened, _) in list(self.open.items()):
            if now - opened > STALLED:
                self.stalled += 1
                self._close(fd)

    def _close(self, fd: int) -> None:
        sock = self.open.pop(fd)[0]
        self.poll.unregister(fd)
        sock.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"] and len(argv) == 3:
        serve(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["client"] and len(argv) == 5:
        client = Client(argv[1], int(argv[2]), int(argv[4]))
        print(json.dumps(client.run(float(argv[3]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: end quietly
        sys.exit(130)
