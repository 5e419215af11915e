"""Fetching the pinned Debian packages into a cache outside the tree, checking, extracting.

The cache is `$XDG_CACHE_HOME/natvm` (default `~/.cache/natvm`): `debs/` holds the downloaded
packages, `root-<digest>/` the union of their contents, one per lock, extracted once.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from image.command import require, run
from image.errors import ImageError
from image.lock import Pin


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "natvm"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(pin: Pin, debs: Path) -> Path:
    """The checked .deb of `pin` in `debs`, downloaded with `apt-get download` if absent."""
    deb = debs / pin.deb_name
    if not deb.exists():
        require("apt-get", "apt")
        debs.mkdir(parents=True, exist_ok=True)
        hint = f"{pin.name}={pin.version} may be gone: run `apt-get update` then `invoke lock`"
        run(["apt-get", "download", f"{pin.name}={pin.version}"], cwd=debs, hint=hint)
    actual = sha256_of(deb)
    if actual != pin.sha256:
        raise ImageError(
            f"{deb} has sha256 {actual}, the lock says {pin.sha256}",
            f"delete {deb} and rebuild; if apt serves it so, run `invoke lock` and review",
        )
    return deb


def extract(pins: list[Pin]) -> Path:
    """A directory holding the contents of all `pins` (fetched if needed), extracted once."""
    key = hashlib.sha256("".join(p.sha256 for p in pins).encode()).hexdigest()[:16]
    root = cache_dir() / f"root-{key}"
    if root.exists():
        return root
    require("dpkg-deb", "dpkg")
    debs = [fetch(pin, cache_dir() / "debs") for pin in pins]
    staging = Path(tempfile.mkdtemp(prefix="root-", dir=cache_dir()))
    try:
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(staging)])
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
