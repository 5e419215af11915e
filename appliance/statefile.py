"""The file that keeps the translation table's sessions across a restart of the appliance.

The format and the replay are appliance/flowstate.py's; this is the I/O around them. At start the
file is read and replayed into the fresh table, then replaced (write aside, rename over: a kill at
any moment leaves either the old or the new file whole) by a snapshot of what was restored, and
from then on records are appended with one write per round of the shell's loop that made any.
A SIGKILL loses at most the round in progress. Kept in a tmpfs (the image's rootfs; /run on a
host), it costs no disk I/O: its pages are memory, bounded by compaction (flowstate).

A write that fails (the filesystem full) stops the saving with one line; forwarding goes on.

In a memory cgroup with a limit (the image's NAT child, appliance/memcg.py), at most as many
sessions are restored as half the memory left under the limit holds, at `SESSION_BYTES` each:
when the limit is what killed the last appliance, its whole table does not fit again, and
restoring it all would get each new one killed in turn. Established TCP connections go first
(flowstate.restore).
"""

import os
from collections.abc import Callable

from appliance import flowstate
from appliance.flows import FlowTable
from appliance.linux import read_text

FILE_NAME = "flows"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
OWN_CGROUP, CGROUP_FS = "/proc/self/cgroup", "/sys/fs/cgroup"
SESSION_BYTES = 400  # a session in the table: 360 bytes measured with tracemalloc, and slack


def restore_limit(
    own_cgroup: str = OWN_CGROUP, cgroup_fs: str = CGROUP_FS, session_bytes: int = SESSION_BYTES
) -> int | None:
    """How many sessions to restore at most: as many as half the memory left under this
    process's cgroup v2 limit holds; None without a limit (or cgroup v2)."""
    try:
        lines = read_text(own_cgroup).splitlines()
        path = next(line[len("0::/") :] for line in lines if line.startswith("0::/"))
        limit = read_text(os.path.join(cgroup_fs, path, "memory.max")).strip()
        used = int(read_text(os.path.join(cgroup_fs, path, "memory.current")))
    except (OSError, StopIteration, ValueError):
        return None
    if not limit.isdigit():  # "max"
        return None
    return max(0, int(limit) - used) // 2 // session_bytes


def boot_id() -> str:
    try:
        return read_text(BOOT_ID).strip()
    except OSError:  # no /proc: a file then cannot be told from another boot's
        return "unknown"


class FlowStateFile:
    """The state file of one appliance, in `directory` (created if missing)."""

    def __init__(self, directory: str, log: Callable[[str], None]) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        self.log = log
        self.boot = boot_id()
        self.journal = flowstate.FlowJournal()
        self._fd = -1
        self._table: FlowTable | None = None

    def open(self, table: FlowTable, now: float) -> str:
        """Restore what the file holds into `table`, start saving `table`'s changes, and return
        a line saying what was restored. Raises OSError when the directory is unusable."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            data = b""
        saved = flowstate.replay(data, self.boot)
        del data
        limit = restore_limit()
        restored = flowstate.restore(table, saved, now, limit)
        self._rewrite(table)
        table.journal, self._table = self.journal, table
        line = f"flows: restored {restored} of {len(saved)} saved in {self.path}"
        if limit is not None:
            line += f" (room for {limit} in half the memory left under the cgroup's limit)"
        return line

    def flush(self) -> None:
        """Write out the records made since the last call (a no-op when none were)."""
        if self.journal.pending and self._fd >= 0:
            data = self.journal.take()
            try:
                os.write(self._fd, data)
            except OSError as error:
                self._give_up(error)

    def maintain(self, table: FlowTable) -> None:
        """Compact the file when it has grown well past the table (see flowstate)."""
        if self._fd >= 0 and flowstate.compaction_due(self.journal.records, len(table)):
            try:
                self._rewrite(table)
            except OSError as error:
                self._give_up(error)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _rewrite(self, table: FlowTable) -> None:
        sessions = table.all_sessions()
        aside = self.path + ".new"
        with open(aside, "wb") as file:
            file.write(flowstate.header(self.boot) + flowstate.snapshot(sessions))
        os.replace(aside, self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.journal.pending.clear()  # the snapshot holds what they said
        self.journal.records = len(sessions)

    def _give_up(self, error: OSError) -> None:
        self.log(f"error: saving flows to {self.path}: {error.strerror}; no longer saved")
        if self._table is not None:
            self._table.journal = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.journal.pending.clear()
