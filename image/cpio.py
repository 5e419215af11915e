"""A deterministic writer (and a small reader) for the newc cpio format the kernel unpacks.

Rules, as virtme does it: every field that could leak the build host is fixed: owner 0:0,
mtime `SOURCE_DATE_EPOCH` (0 by default), inode numbers counted from 1 in archive order, and
entries sorted by path, so a parent directory always comes before what it holds. The kernel
does not create missing parents, so the writer adds them. Format: see the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst.
"""

import io
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_FIELDS = (
    13  # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
)


@dataclass(frozen=True)
class Entry:
    """One archive member. `data` is a file's content or a symlink's target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _member(entry: Entry, ino: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    header = MAGIC + b"".join(b"%08x" % f for f in fields)
    return header + name + _pad(len(header) + len(name)) + entry.data + _pad(len(entry.data))


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    by_path = {e.path.strip("/"): e for e in entries}
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            by_path.setdefault("/".join(parts[:i]), directory("/".join(parts[:i])))
    return [Entry(p, e.mode, e.data, e.rdev) for p, e in sorted(by_path.items())]


def archive(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """The newc archive of `entries` (paths relative to /), parents added, sorted, with trailer."""
    out = io.BytesIO()
    members = with_parents(entries)
    for ino, entry in enumerate(members, start=1):
        out.write(_member(entry, ino, mtime))
    out.write(_member(Entry(TRAILER, 0), 0, 0))
    return out.getvalue()


def read(blob: bytes) -> Iterator[Entry]:
    """The members of a newc archive, up to the trailer (for tests and the build report)."""
    pos = 0
    while True:
        if blob[pos : pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(_FIELDS)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        pos += 110
        name = blob[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        data = blob[pos : pos + size]
        pos += size + (-size % 4)
        if name == TRAILER:
            return
        yield Entry(name, mode, data, rdev)
