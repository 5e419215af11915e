"""The NAT child's memory cgroup: a limit that makes the kernel kill the NAT, not starve the VM.

Theory of operation: PID 1 mounts cgroup2 on /sys/fs/cgroup (appliance/init.py), and before it
starts the NAT it creates one cgroup, `natvm`, with the memory controller and a `memory.max`
derived from the guest's memory (`nat_memory_limit`); each child joins it before it does
anything else. What the child allocates is charged there: its heap (the flow table grows by
about 360 bytes a session), the pages it copies from PID 1, its kernel objects, and the flows'
state file it writes to the tmpfs. When a flood of new flows pushes it past the limit, the
kernel's memory cgroup OOM killer kills it ("Memory cgroup out of memory" on the console) while
the rest of the guest still has the memory it needs: the kernel's socket buffers (not charged to
the cgroup), PID 1, and the next child, which PID 1 starts and which restores the flows.
Without a cgroup the same flood would run the whole guest out of memory, and the global OOM
killer (the child's oom_score_adj is 1000) would pick the child only once nothing was left.

The limit: what the guest has available when PID 1 is about to start the NAT (MemAvailable: MemTotal
less the kernel, PID 1 and, under Xen, the root filesystem's RAM disk), less the files processes
have mapped (Mapped: python3.11 and its libraries, read from the root filesystem into the page
cache; MemAvailable counts them as reclaimable, but a NAT that grew into them would have them read
and decompressed again at every turn), less a reserve of MemTotal / 8 for the kernel's own
allocations under a flood (its receive buffers can hold up to about 15 % of MemTotal:
appliance/shell.py, socket_buffer_size), and never less than
`MIN_LIMIT`, what a child needs to start and forward (in a guest that small the reserve is not
there to keep, and the global OOM killer is the guard).
"""

import os
from collections.abc import Callable

from appliance.linux import read_text, write_text

CGROUP_FS = "/sys/fs/cgroup"
NAT_CGROUP = "natvm"
KERNEL_RESERVE_DIVISOR = 8  # MemTotal / 8 kept outside the limit
MIN_LIMIT = 8 << 20


def nat_memory_limit(meminfo: str) -> int:
    """The NAT child's memory.max in bytes, from /proc/meminfo read just before it starts."""
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    total, available = (int(fields[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
    mapped = int(fields.get("Mapped", "0").split()[0]) * 1024
    return max(MIN_LIMIT, available - mapped - total // KERNEL_RESERVE_DIVISOR)


def create_nat_cgroup(
    meminfo: str, log: Callable[[str], None], root: str = CGROUP_FS
) -> str | None:
    """Create the NAT's cgroup under `root` (a mounted cgroup2) with its memory limit; returns
    its directory, or None (said in one line) when the kernel offers no memory controller
    (`cgroup_disable=memory` on its command line): the NAT then runs without a limit of its
    own, with the global OOM killer as the guard, rather than the VM rebooting for good."""
    cgroup = os.path.join(root, NAT_CGROUP)
    limit = nat_memory_limit(meminfo)
    try:
        write_text(os.path.join(root, "cgroup.subtree_control"), "+memory")
        os.makedirs(cgroup, exist_ok=True)
        write_text(os.path.join(cgroup, "memory.max"), str(limit))
    except OSError as error:
        log(f"memory: no memory cgroup for the NAT ({error.strerror}); it runs without a limit")
        return None
    log(f"memory: the NAT's cgroup {cgroup} is limited to {limit / 2**20:.1f} MiB")
    return cgroup


def enter(cgroup: str | None, log: Callable[[str], None]) -> None:
    """Move the calling process into `cgroup` (if there is one); when the cgroup's OOM killer
    has killed in it before, say how often and what it used at its peak (why a restarted
    child's predecessor died)."""
    if cgroup is None:
        return
    write_text(os.path.join(cgroup, "cgroup.procs"), "0")  # "0": the writing process
    events = dict(
        line.split()
        for line in read_text(os.path.join(cgroup, "memory.events")).splitlines()
        if line
    )
    kills = int(events.get("oom_kill", 0))
    if kills:
        peak = int(read_text(os.path.join(cgroup, "memory.peak")))
        log(f"memory: {kills} OOM kill(s) in the NAT's cgroup so far, peak {peak / 2**20:.1f} MiB")
