"""The control channel between the host and the test dom0: JSON lines over a virtio-serial port.

The host sends one request per line and reads one response line, in order:
  {"run": [argv...], "cwd": "/dir", "timeout": seconds} -> {"status": exit status, "output": text}
  {"write": "/path", "text": "..."}                       -> {"status": 0, "output": ""}
  {"write": "/path", "base64": "..."}                     (the same, for bytes: a guest's
                                                          kernel or initramfs)
A request the dom0 cannot carry out is answered with status -1 and the reason as output, so the
host always gets one line back. The serial console stays for logs: commands and their output never
mix with it.
"""

import base64
import json
import subprocess
from pathlib import Path

PORT_NAME = "org.natvm.control"  # the virtserialport's name, as the dom0 finds it in sysfs
DEFAULT_TIMEOUT = 120.0


def encode(message: dict[str, object]) -> bytes:
    return json.dumps(message, sort_keys=True).encode() + b"\n"


def decode(line: bytes) -> dict[str, object]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {line[:80]!r}")
    return message


def _run(request: dict[str, object]) -> dict[str, object]:
    argv, cwd = request["run"], request.get("cwd")
    timeout = float(str(request.get("timeout", DEFAULT_TIMEOUT)))
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        raise ValueError("'run' takes a list of strings")
    proc = subprocess.run(
        argv,
        cwd=str(cwd) if cwd else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return {"status": proc.returncode, "output": proc.stdout.decode(errors="replace")}


def answer(request: dict[str, object]) -> dict[str, object]:
    """Carry out one request (in the dom0); every failure becomes a status -1 answer."""
    try:
        if "run" in request:
            return _run(request)
        if "write" in request and "base64" in request:
            data = base64.b64decode(str(request["base64"]), validate=True)
            Path(str(request["write"])).write_bytes(data)
            return {"status": 0, "output": ""}
        if "write" in request:
            Path(str(request["write"])).write_text(str(request["text"]))
            return {"status": 0, "output": ""}
        raise ValueError(f"unknown request {sorted(request)}")
    # ValueError covers bad base64 too (binascii.Error).
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
        return {"status": -1, "output": f"{type(error).__name__}: {error}"}
