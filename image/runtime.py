"""The image's Python runtime: Debian's python3.11, the shared objects it needs, and the
standard-library modules the appliance loads, compiled to bytecode by that same interpreter.

The build runs the *target* interpreter on the host (through the package's own dynamic loader
and libraries), so the module set and the bytecode are exactly the image's, whatever Python
runs the build. Modules are found by importing the appliance's entry points and listing
`sys.modules`; the appliance imports what it needs at module level (see appliance/init.py).
"""

import json
import os
import subprocess
from pathlib import Path

from image.elf import Elf
from image.errors import ImageError

PYTHON = "usr/bin/python3.11"
STDLIB = "usr/lib/python3.11"
LOADER = "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
APP_DIR = "opt/natvm"  # where the appliance package lives in the image
# Loaded before any code runs. (Crash reports need no module: the appliance prints them with the
# interpreter's own printer, appliance/init.py.)
STARTUP = ("encodings.utf_8", "encodings.ascii", "encodings.latin_1")
_JOB = Path(__file__).with_name("target_job.py")


def _job(root: Path, job: dict[str, object]) -> dict[str, object]:
    argv = [
        str(root / LOADER),
        "--library-path",
        ":".join(str(root / d) for d in LIBDIRS),
        str(root / PYTHON),
        "-S",
        # The bytecode it compiles keeps line numbers but not the column ranges a traceback
        # underlines with ^^^: 9 % smaller, so less to read and unmarshal at boot and less memory.
        "-X",
        "no_debug_ranges",
        str(_JOB),
    ]
    env = {"PYTHONHOME": str(root / "usr"), "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(
        argv, input=json.dumps(job), capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"the image's python3.11 failed on the host: {last[0]}")
    answer: dict[str, object] = json.loads(proc.stdout)
    return answer


def modules(root: Path, source: Path, entry: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file, for everything importing `entry` (from `source`) loads."""
    stdlib = root / STDLIB
    path = [str(source), str(stdlib), str(stdlib / "lib-dynload")]
    answer = _job(root, {"find": {"path": path, "modules": [*STARTUP, *entry]}})
    files = answer["files"]
    assert isinstance(files, dict)
    return {name: Path(f) for name, f in files.items() if any(f.startswith(p) for p in path)}


def compile_to(root: Path, jobs: list[tuple[Path, Path, str]]) -> None:
    """Compile each (source, destination .pyc, path shown in tracebacks) with the target."""
    for _source, destination, _shown in jobs:
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            os.unlink(destination)
    _job(root, {"compile": [[str(s), str(d), shown] for s, d, shown in jobs]})


def _find_library(root: Path, name: str) -> Path:
    for libdir in LIBDIRS:
        if (root / libdir / name).exists():
            return root / libdir / name
    raise ImageError(
        f"{name} is needed by a program of the image but no pinned package has it",
        "add its package to PACKAGES (or REFERENCE_PACKAGES) in image/lock.py, then `invoke lock`",
    )


def libraries(root: Path, binaries: list[Path]) -> list[Path]:
    """The shared libraries (as found under `root`) that `binaries` need, transitively."""
    found: dict[str, Path] = {}
    todo = list(binaries)
    while todo:
        for name in Elf(todo.pop().read_bytes()).needed():
            if name not in found:
                found[name] = _find_library(root, name)
                todo.append(found[name])
    return [found[name] for name in sorted(found)]
