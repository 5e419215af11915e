"""The soak's verdict from its samples: pure, no clock, no I/O.

A soak passes when the appliance's memory levels off and nothing that clean traffic never
causes was counted:

- **RSS**: the last sample's resident set against the first sample taken once the warm-up is
  over (the table fills while the first flows open; what grows after that is a leak). More than
  ``RSS_GROWTH_LIMIT`` percent fails.
- **Counters that should not move** (``SHOULD_NOT_MOVE``): each must end where it started. A
  counter absent from a stats line is 0 (the appliance prints a drop reason only once it occurs).
- **Traffic**: every kind of traffic must have succeeded at least once, or the soak measured an
  idle appliance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RSS_GROWTH_LIMIT = 5.0  # percent, after the warm-up

# The counters clean traffic never moves, in one place. Under the soak's traffic (well-formed
# frames from hosts with real addresses, rates far below the table's limits, offloads off) each
# of these can only count a fault of the appliance or of the wiring:
SHOULD_NOT_MOVE = (
    "tx_errors",  # a send on a NIC failed (EMSGSIZE, ENOBUFS): frames lost on the way out
    "drop_internal-error",  # a frame raised inside the engine
    "drop_unsupported-offload",  # a virtio_net_hdr it cannot translate
    "drop_truncated-ethernet",
    "drop_spoofed-source",
    "drop_no-route",
    "drop_icmp-error-mismatch",  # an ICMP error whose quote does not match its own header
    "drop_arp-queue-full",  # frames queued for a neighbour that never answered
    "drop_arp-unresolved",
    "drop_refused-hairpin",
    "refused_table-full",  # a new flow refused: the table must have room for this traffic
    "refused_host-limit",
    "refused_no-free-port",
)


@dataclass(frozen=True)
class Sample:
    """One look at the appliance: `at` seconds after the soak started."""

    at: float
    rss_kib: int
    cpu_seconds: float  # user + system time of the process so far
    counters: Mapping[str, int]  # its last stats line, field by field

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)


@dataclass(frozen=True)
class Growth:
    """RSS at the end of the warm-up and at the end, and the growth between them."""

    baseline: Sample
    final: Sample

    @property
    def percent(self) -> float:
        return 100.0 * (self.final.rss_kib - self.baseline.rss_kib) / self.baseline.rss_kib


def rss_growth(samples: Sequence[Sample], warmup: float) -> Growth:
    """The growth from the first sample at or after `warmup` seconds to the last one; a
    ValueError if no sample came after the warm-up (the soak was too short to judge)."""
    after = [sample for sample in samples if sample.at >= warmup]
    if len(after) < 2:
        raise ValueError(f"fewer than two samples after the {warmup:.0f} s warm-up: too short")
    return Growth(after[0], after[-1])


def moved(samples: Sequence[Sample]) -> dict[str, tuple[int, int]]:
    """The should-not-move counters that moved: name -> (first value, last value)."""
    first, last = samples[0], samples[-1]
    return {
        name: (first.counter(name), last.counter(name))
        for name in SHOULD_NOT_MOVE
        if last.counter(name) != first.counter(name)
    }


def failures(samples: Sequence[Sample], warmup: float, successes: Mapping[str, int]) -> list[str]:
    """Why the soak failed, one line each (empty: it passed). `successes`: per kind of
    traffic, how many of its exchanges succeeded."""
    found = []
    growth = rss_growth(samples, warmup)
    if growth.percent > RSS_GROWTH_LIMIT:
        found.append(
            f"RSS grew {growth.percent:.1f} % after the first {warmup:.0f} s "
            f"({growth.baseline.rss_kib} KiB at {growth.baseline.at:.0f} s, "
            f"{growth.final.rss_kib} KiB at {growth.final.at:.0f} s; limit {RSS_GROWTH_LIMIT} %)"
        )
    for name, (start, end) in moved(samples).items():
        found.append(f"{name} moved from {start} to {end} (clean traffic never moves it)")
    for kind, count in successes.items():
        if count == 0:
            found.append(f"no {kind} exchange succeeded: the soak did not load the appliance")
    return found
