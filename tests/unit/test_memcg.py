"""The NAT child's memory cgroup (appliance/memcg.py): the limit's formula and the files written."""

from pathlib import Path

from appliance import memcg

MIB = 1 << 20


def meminfo(total_mib: float, available_mib: float, mapped_mib: float = 0) -> str:
    return (
        f"MemTotal: {int(total_mib * 1024)} kB\nMemFree: 1 kB\n"
        f"MemAvailable: {int(available_mib * 1024)} kB\nMapped: {int(mapped_mib * 1024)} kB\n"
    )


def test_the_limit_is_what_is_available_less_an_eighth_of_the_guest() -> None:
    # The guests of the VM tier: -m 128 and -m 96 (MemTotal and MemAvailable as their boot logs
    # give them just before the NAT starts).
    assert round(memcg.nat_memory_limit(meminfo(92.6, 55)) / MIB, 1) == 43.4
    assert round(memcg.nat_memory_limit(meminfo(60.6, 23.4)) / MIB, 1) == 15.8
    # The smallest guest that boots (-m 77) has no eighth to spare: the floor, and the global
    # OOM killer as the guard.
    assert memcg.nat_memory_limit(meminfo(45, 6)) == memcg.MIN_LIMIT


def test_the_mapped_files_stay_outside_the_limit() -> None:
    # python3.11 and its libraries mapped from the squashfs root: 6.2 MiB of page cache that
    # MemAvailable counts as reclaimable, and that the NAT must not grow into.
    assert round(memcg.nat_memory_limit(meminfo(53.7, 29.7, 6.2)) / MIB, 1) == 16.8


def test_the_cgroup_is_made_limited_and_entered(tmp_path: Path) -> None:
    lines: list[str] = []
    (tmp_path / "cgroup.subtree_control").write_text("")
    made = memcg.create_nat_cgroup(meminfo(92, 55), lines.append, root=str(tmp_path))
    assert made == str(tmp_path / memcg.NAT_CGROUP)
    cgroup = Path(made)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    assert int((cgroup / "memory.max").read_text()) == memcg.nat_memory_limit(meminfo(92, 55))
    assert lines == [f"memory: the NAT's cgroup {cgroup} is limited to 43.5 MiB"]
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n")
    memcg.enter(cgroup, lines.append)
    assert (cgroup / "cgroup.procs").read_text() == "0"
    assert len(lines) == 1  # nothing to say before the first kill
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    (cgroup / "memory.peak").write_text(str(18 * MIB))
    memcg.enter(cgroup, lines.append)
    assert lines[-1] == "memory: 1 OOM kill(s) in the NAT's cgroup so far, peak 18.0 MiB"


def test_without_a_memory_controller_the_nat_runs_unlimited(tmp_path: Path) -> None:
    """cgroup_disable=memory: writing +memory fails; one line, and no cgroup to enter."""
    lines: list[str] = []
    (tmp_path / "cgroup.subtree_control").mkdir()  # the write fails, as the kernel's would
    assert memcg.create_nat_cgroup(meminfo(92, 55), lines.append, root=str(tmp_path)) is None
    assert len(lines) == 1 and lines[0].startswith("memory: no memory cgroup for the NAT (")
    memcg.enter(None, lines.append)
    assert len(lines) == 1
