"""The soak's verdict (soak/judge.py): RSS growth after the warm-up, counters that must not move,
traffic that must get through."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.counters import Counters
from appliance.frames import Side
from soak.judge import (
    RSS_GROWTH_LIMIT,
    SHOULD_NOT_MOVE,
    Sample,
    failures,
    moved,
    rss_growth,
)
from tests.support import REPO
from tests.support.routers import stats_counters

TRAFFIC_OK = {"http": 10, "dns": 5}


def samples(rss: list[int], every: float = 30.0, **last_counters: int) -> list[Sample]:
    """One sample per `every` seconds with these RSS values; the last one with `last_counters`."""
    made = [Sample(i * every, kib, 0.0, {"flows": 3}) for i, kib in enumerate(rss)]
    if last_counters:
        last = made[-1]
        made[-1] = Sample(last.at, last.rss_kib, 0.0, {"flows": 3, **last_counters})
    return made


def test_growth_during_the_warm_up_is_not_judged() -> None:
    steady = samples([10_000, 15_000, 20_000, 20_500, 20_900])  # at 0, 30, 60, 90, 120 s
    growth = rss_growth(steady, warmup=60)
    assert (growth.baseline.at, growth.final.at) == (60, 120)
    assert growth.percent == pytest.approx(4.5)
    assert failures(steady, 60, TRAFFIC_OK) == []


def test_growth_past_the_limit_after_the_warm_up_fails() -> None:
    leaking = samples([10_000, 20_000, 20_000, 20_600, 21_100])
    (reason,) = failures(leaking, 60, TRAFFIC_OK)
    assert reason.startswith("RSS grew 5.5 % after the first 60 s")
    assert "20000 KiB at 60 s, 21100 KiB at 120 s" in reason
    assert RSS_GROWTH_LIMIT == 5.0


def test_a_soak_with_nothing_after_the_warm_up_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="too short"):
        failures(samples([10_000, 10_000, 10_000]), 60, TRAFFIC_OK)


@pytest.mark.parametrize("name", SHOULD_NOT_MOVE)
def test_each_watched_counter_that_moves_fails_the_soak(name: str) -> None:
    counted = samples([20_000] * 5, **{name: 2})
    assert moved(counted) == {name: (0, 2)}
    assert failures(counted, 60, TRAFFIC_OK) == [
        f"{name} moved from 0 to 2 (clean traffic never moves it)"
    ]


def test_counters_clean_traffic_moves_are_not_watched() -> None:
    busy = samples([20_000] * 5, dropped=40, **{"drop_filtered": 30, "drop_arp-not-for-us": 10})
    assert failures(busy, 60, TRAFFIC_OK) == []


def test_traffic_that_never_got_through_fails_the_soak() -> None:
    assert failures(samples([20_000] * 5), 60, {"http": 10, "dns": 0}) == [
        "no dns exchange succeeded: the soak did not load the appliance"
    ]


def test_the_watched_counters_are_read_from_a_real_stats_line() -> None:
    counters = Counters()
    counters.frames_in[Side.WAN] = 7
    counters.drop("internal-error")
    counters.refuse("host-limit")
    line = counters.line(flows=4) + " tx_errors=3"
    read = Sample(90.0, 20_000, 1.0, stats_counters(["READY", line]))
    assert (read.counter("flows"), read.counter("wan_in")) == (4, 7)
    first = Sample(0.0, 20_000, 0.0, {})
    assert moved([first, read]) == {
        "tx_errors": (0, 3),
        "drop_internal-error": (0, 1),
        "refused_host-limit": (0, 1),
    }


@pytest.mark.parametrize("name", SHOULD_NOT_MOVE)
def test_each_watched_counter_is_one_the_appliance_counts(name: str) -> None:
    """A misspelt name would be a counter that never moves, whatever happens."""
    source = "".join(path.read_text() for path in Path(REPO, "appliance").glob("*.py"))
    prefix, _, reason = name.partition("_")
    assert (prefix, reason) == ("tx", "errors") or f'"{reason}"' in source
