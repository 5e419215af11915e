"""A test QubesDB for the Xen tier's dom0: the dom0 side of one VM's database (test equipment).

Qubes' dom0 runs a qubesdb-daemon per VM that serves the VM a vchan on port 111; this stands in
for it with what Debian's Xen packages have. `vchan-socket-proxy -m server` (xen-utils) is
the vchan server: libxenvchan_server_init writes ring-ref and event-channel under the path it
is given, /local/domain/0/data/vchan/<domid>/111 as Qubes' libvchan names it, readable by that
domain only, and once the VM's client connects, the proxy connects to a unix socket where this
script listens and carries the bytes both ways. This script speaks qubesdb-daemon's side of the
protocol (qubes-core-qubesdb daemon/db-cmds.c) on that socket: MULTIREAD is answered with every
entry and an empty one, and writes the test asks for are pushed as WRITE and RM, which the VM
acknowledges. It holds its own copy of the 72-byte header, not natvm's, so the two ends are
independent.

Differences from Qubes: the proxy's rings are libxenvchan's defaults (1024 and 2048 bytes,
inside the shared page), where qubesdb-daemon asks for 4096 each (one granted page per ring).

Usage, in the dom0 (standard library only: the dom0's Python has little else):
  qubesdb_server.py start DOMID DB.json DIR   serve in the background (logs in DIR/log);
                                              returns once the vchan is offered
  qubesdb_server.py serve DOMID DB.json DIR   serve in the foreground
  qubesdb_server.py send DIR JSON             {"write": [[path, value], ...], "rm": [path, ...]}
                                              pushed in that order; prints JSON once every one
                                              is acknowledged (or it timed out)
"""

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

PROXY = "/usr/lib/xen-4.17/bin/vchan-socket-proxy"
XENSTORE_READ = "/usr/bin/xenstore-read"
HEADER = struct.Struct("<B64s3xI")  # struct qdb_hdr
CMD_WRITE, CMD_MULTIREAD, CMD_RM = 1, 2, 4
RESP_OK, RESP_ERROR_NOENT, RESP_MULTIREAD = 7, 8, 11
PORT = 111
ACK_TIMEOUT = 10.0


def vchan_path(domid: int) -> str:
    return f"/local/domain/0/data/vchan/{domid}/{PORT}"


def message(kind: int, path: str, data: bytes = b"") -> bytes:
    return HEADER.pack(kind, path.encode(), len(data)) + data


class Server:
    def __init__(self, domid: int, db: dict[str, str], folder: str) -> None:
        self.domid, self.db, self.folder = domid, db, folder
        self.link: socket.socket | None = None
        self.buffer = b""
        self.acks = 0
        self.waiting: list[tuple[socket.socket, int, float]] = []  # (control client, acks, t0)

    def log(self, line: str) -> None:
        print(f"{time.monotonic():.3f} {line}", flush=True)

    def serve(self) -> None:
        listener = self._listen("vchan.sock")
        control = self._listen("control.sock")
        proxy = subprocess.Popen(
            [PROXY, "-m", "server", str(self.domid), vchan_path(self.domid), self._at("vchan.sock")]
        )
        self.log(f"proxy {proxy.pid} serves {vchan_path(self.domid)}")
        while proxy.poll() is None:
            sockets = [listener, control, *([self.link] if self.link else [])]
            readable, _, _ = select.select(sockets, [], [], 1.0)
            for sock in readable:
                if sock is listener:
                    self._connected(listener.accept()[0])
                elif sock is control:
                    self._command(control.accept()[0])
                else:
                    self._from_vm()
            self._answer_waiting()
        self.log(f"proxy exited with {proxy.returncode}")

    def _at(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _listen(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self._at(name))
        sock.listen(4)
        return sock

    def _connected(self, sock: socket.socket) -> None:
        if self.link is not None:
            self.link.close()
        self.link, self.buffer = sock, b""
        self.log("the VM connected")

    def _from_vm(self) -> None:
        assert self.link is not None
        data = self.link.recv(65536)
        if not data:
            self.log("the VM disconnected")
            self.link.close()
            self.link = None
            return
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            kind, raw_path, length = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + length:
                break
            path = raw_path.split(b"\0", 1)[0].decode()
            self.buffer = self.buffer[HEADER.size + length :]
            self._handle(kind, path)

    def _handle(self, kind: int, path: str) -> None:
        if kind == CMD_MULTIREAD:
            dump = b"".join(
                message(RESP_MULTIREAD, key, value.encode())
                for key, value in sorted(self.db.items())
            )
            self._send(dump + message(RESP_MULTIREAD, ""))
            self.log(f"MULTIREAD answered: {len(self.db)} entries")
        elif kind in (RESP_OK, RESP_ERROR_NOENT):
            self.acks += 1
            self.log(f"acknowledged {path} ({'OK' if kind == RESP_OK else 'NOENT'})")
        else:
            self.log(f"unexpected message type {kind} for {path!r}")

    def _send(self, data: bytes) -> None:
        assert self.link is not None
        self.link.sendall(data)

    def _command(self, client: socket.socket) -> None:
        client.settimeout(5.0)
        request = json.loads(client.makefile("rb").readline())
        if self.link is None:
            client.sendall(json.dumps({"error": "the VM is not connected"}).encode() + b"\n")
            client.close()
            return
        started, pushed = time.monotonic(), b""
        for path, value in request.get("write", []):
            self.db[path] = value
            pushed += message(CMD_WRITE, path, value.encode())
            self.log(f"WRITE {path} = {value!r}")
        for path in request.get("rm", []):
            self.db = {k: v for k, v in self.db.items() if not _removes(path, k)}
            pushed += message(CMD_RM, path)
            self.log(f"RM {path}")
        count = len(request.get("write", [])) + len(request.get("rm", []))
        self._send(pushed)
        self.waiting.append((client, self.acks + count, started))

    def _answer_waiting(self) -> None:
        for entry in list(self.waiting):
            client, needed, started = entry
            waited = time.monotonic() - started
            if self.acks >= needed or waited > ACK_TIMEOUT:
                answer = {"acknowledged": self.acks >= needed, "seconds": waited}
                client.sendall(json.dumps(answer).encode() + b"\n")
                client.close()
                self.waiting.remove(entry)


def _removes(path: str, key: str) -> bool:
    return key == path or (path.endswith("/") and key.startswith(path))


def start(domid: int, db_file: str, folder: str) -> None:
    """Serve in a process of its own (logs in `folder`/log), once dom0 offers the vchan."""
    log = open(os.path.join(folder, "log"), "w")  # noqa: SIM115 - the child's, kept open
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", str(domid), db_file, folder],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    key = f"{vchan_path(domid)}/event-channel"
    while subprocess.run([XENSTORE_READ, key], capture_output=True).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            print(json.dumps({"error": f"{key} never appeared", "exit": process.poll()}))
            sys.exit(1)
        time.sleep(0.2)
    print(json.dumps({"pid": process.pid, "offered": key}))


def send(folder: str, request: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ACK_TIMEOUT + 5)
    sock.connect(os.path.join(folder, "control.sock"))
    sock.sendall(request.encode() + b"\n")
    print(sock.makefile("rb").readline().decode().strip())


def main(argv: list[str]) -> None:
    if argv[1] == "start":
        start(int(argv[2]), argv[3], argv[4])
    elif argv[1] == "serve":
        with open(argv[3]) as db:
            Server(int(argv[2]), json.load(db), argv[4]).serve()
    elif argv[1] == "send":
        send(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
