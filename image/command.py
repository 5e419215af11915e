"""Running host tools: a missing tool or a failed command becomes one ImageError line."""

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from image.errors import ImageError


def require(tool: str, package: str) -> str:
    """The path of `tool`, or an ImageError saying which Debian package provides it."""
    found = shutil.which(tool)
    if found is None:
        raise ImageError(f"{tool} is not installed", f"apt-get install {package}")
    return found


def run(argv: Sequence[str], cwd: Path | None = None, hint: str = "") -> str:
    """Run `argv`, return its stdout; on failure raise with the whole command line."""
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ImageError(f"`{shlex.join(argv)}` failed ({proc.returncode}): {last[0]}", hint)
    return proc.stdout
