"""QEMU's root disk: the uncompressed squashfs in a read-only qcow2 whose clusters are zstd frames.

Why: under TCG the guest's kernel decompresses its squashfs at a few MB/s, and Python's start
reads most of the root (README: figures, QEMU start to `READY`). In a qcow2 file QEMU
decompresses each cluster itself, natively and off the guest's CPU, so the guest reads a squashfs
that needs no decompression. Its frames, every cluster at zstd's level 19, take what the zstd
squashfs takes; the qcow2's metadata adds about two and a half clusters. Xen and Qubes cannot read
a qcow2 as a RAM disk: they keep the zstd squashfs (image/squashfs.py), the same files.

The layout (qcow2 version 3, https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/
qcow2.txt): each metadata structure starts a cluster, as the format requires. The L2 tables and
the refcount block have theirs to themselves and the refcount table ends the file (below: what
`qemu-img check` wants of them); the compressed clusters, which need no alignment, fill every
other byte, the rest of the header's and the L1 table's clusters included. A cluster of zeros is
left unallocated (it reads as zeros). Refcounts count what `qemu-img check` counts: one per
metadata structure in each cluster it covers, one per compressed cluster in each host cluster its
sectors touch.

`layout` is pure (the frames in, the file out); `image` compresses with the zstd tool, one frame
per cluster, in one run of it.
"""

import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from image.command import require, run

CLUSTER_BITS = 17  # 128 KiB, as the squashfs's blocks: QEMU decompresses a whole cluster per read
ZSTD = ("-19", "--no-check", "-q", "--no-progress")
PACKAGE = "zstd"

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQIIB7x")  # version 3's 104 bytes + compression type
INCOMPATIBLE_COMPRESSION_TYPE = 1 << 3  # the header names a compression type other than zlib
COMPRESSION_ZSTD = 1
REFCOUNT_ORDER = 4  # 16-bit refcounts
COPIED = 1 << 63  # an L1 entry's L2 table has refcount 1
COMPRESSED = 1 << 62
SECTOR = 512


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _compressed_entry(offset: int, length: int, cluster_bits: int) -> int:
    """An L2 entry for a compressed cluster: where it starts and how many more sectors it spans."""
    shift = 62 - (cluster_bits - 8)
    if offset >= 1 << shift:
        raise ValueError(f"compressed cluster at {offset} is beyond what an L2 entry can address")
    extra_sectors = (offset + length - 1) // SECTOR - offset // SECTOR
    return COMPRESSED | extra_sectors << shift | offset


def _read_span(offset: int, length: int) -> tuple[int, int]:
    """The bytes QEMU reads (and `qemu-img check` counts) for a compressed cluster: from its
    start to the end of its last sector."""
    return offset, _round_up(offset + length, SECTOR) - offset


def layout(size: int, frames: Sequence[bytes | None], cluster_bits: int = CLUSTER_BITS) -> bytes:
    """A qcow2 file of virtual `size` bytes whose cluster i is the zstd frame `frames[i]`
    (each decompressing to exactly one cluster) or, for None, zeros."""
    cluster = 1 << cluster_bits
    if len(frames) != _round_up(size, cluster) // cluster:
        raise ValueError(f"{len(frames)} frames for {size} bytes in {cluster}-byte clusters")
    l2_entries = cluster // 8
    l1_size = max(1, _round_up(len(frames), l2_entries) // l2_entries)
    # The clusters the file takes at most: the frames', the gaps before the metadata (a frame
    # that does not fit before it goes after it) and the metadata's.
    most_clusters = sum(len(f) for f in frames if f is not None) // cluster + l1_size + 8
    if most_clusters > cluster // 2:
        raise ValueError(f"{size} bytes need more than one refcount block")

    # What `qemu-img check` wants of the metadata: L2 tables it scans whole, so they must be
    # zeros past their entries; a refcount block in a cluster nothing else uses; the refcount
    # table, also scanned whole, goes last, where the bytes past the end of the file read as
    # zeros. The header and the L1 table are read only as far as they go: the frames fill the
    # rest of their clusters, and every byte in between.
    l2_tables = [(1 + i) * cluster for i in range(l1_size)]
    refcount_block = (1 + l1_size) * cluster
    l1_table = (2 + l1_size) * cluster
    spans = [
        (0, _round_up(HEADER.size + 8, SECTOR)),  # the header and its empty extension list
        (cluster, l1_table + _round_up(8 * l1_size, SECTOR)),
    ]
    placed: dict[int, tuple[int, bytes]] = {}  # cluster index: where its frame starts, the frame
    cursor = 0
    for index, frame in enumerate(frames):
        if frame is None:
            continue
        start = cursor
        for span_start, span_end in spans:
            if start < span_end and span_start < start + len(frame):
                start = span_end
        placed[index] = (start, frame)
        cursor = start + len(frame)
    refcount_table = _round_up(max(cursor, spans[-1][1]), cluster)
    end = refcount_table + SECTOR
    clusters = _round_up(end, cluster) // cluster
    assert clusters <= most_clusters, (clusters, most_clusters)

    refcounts = [0] * clusters

    def count(offset: int, length: int) -> None:
        for index in range(offset // cluster, (offset + length - 1) // cluster + 1):
            refcounts[index] += 1

    count(0, cluster)  # the header: qemu-img check counts its whole cluster
    count(l1_table, 8 * l1_size)
    count(refcount_block, cluster)
    count(refcount_table, cluster)
    for offset in l2_tables:
        count(offset, cluster)
    for start, frame in placed.values():
        count(*_read_span(start, len(frame)))

    out = bytearray(end)
    out[: HEADER.size] = HEADER.pack(
        MAGIC, VERSION, 0, 0, cluster_bits, size, 0, l1_size, l1_table, refcount_table, 1, 0, 0,
        INCOMPATIBLE_COMPRESSION_TYPE, 0, 0, REFCOUNT_ORDER, HEADER.size, COMPRESSION_ZSTD,
    )  # fmt: skip
    struct.pack_into(">Q", out, refcount_table, refcount_block)
    struct.pack_into(f">{clusters}H", out, refcount_block, *refcounts)
    for index, offset in enumerate(l2_tables):
        struct.pack_into(">Q", out, l1_table + 8 * index, offset | COPIED)
    for index, (start, frame) in placed.items():
        out[start : start + len(frame)] = frame
        table, slot = divmod(index, l2_entries)
        entry = _compressed_entry(start, len(frame), cluster_bits)
        struct.pack_into(">Q", out, l2_tables[table] + 8 * slot, entry)
    return bytes(out)


def image(raw: bytes, cluster_bits: int = CLUSTER_BITS) -> bytes:
    """`raw` as a read-only qcow2 disk, each cluster compressed with zstd at level 19."""
    zstd = require("zstd", PACKAGE)
    cluster = 1 << cluster_bits
    chunks = [raw[i : i + cluster].ljust(cluster, b"\0") for i in range(0, len(raw), cluster)]
    with tempfile.TemporaryDirectory(prefix="natvm-qcow2-") as scratch:
        # One file a cluster that is not all zeros; zstd writes each one's frame beside it.
        files = {i: Path(scratch, f"{i:08}") for i, chunk in enumerate(chunks) if any(chunk)}
        for index, path in files.items():
            path.write_bytes(chunks[index])
        if files:
            run([zstd, *ZSTD, *map(str, files.values())], hint=PACKAGE)
        frames = [
            files[i].with_suffix(".zst").read_bytes() if i in files else None
            for i in range(len(chunks))
        ]
    return layout(len(raw), frames, cluster_bits)
