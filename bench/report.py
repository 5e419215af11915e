"""Figures of all runs -> the printed table and the JSON document.

Ratios are natvm/kernel, paired run by run (run i's natvm figure over run i's kernel figure), then
summarised as min, median and max, so a machine that drifts between runs skews no ratio.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .workloads import FIGURES

KINDS = ("kernel", "natvm")
Runs = list[dict[str, Any]]  # [{"kernel": {figure: Measurement as dict}, "natvm": {...}}, ...]


def spread(values: Sequence[float | None]) -> list[float] | None:
    """[min, median, max] of the values that exist, or None when none does."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if not present:
        return None
    return [min(present), statistics.median(present), max(present)]


def values(runs: Runs, kind: str, figure: str) -> list[float | None]:
    return [run[kind].get(figure, {}).get("value") for run in runs]


def ratios(runs: Runs, figure: str) -> list[float | None]:
    pairs = zip(values(runs, "natvm", figure), values(runs, "kernel", figure), strict=True)
    return [n / k if n is not None and k else None for n, k in pairs]


def summary(runs: Runs) -> dict[str, dict[str, list[float] | None]]:
    figures = [f for f in FIGURES if any(f in run[kind] for run in runs for kind in KINDS)]
    return {
        f: {
            "kernel": spread(values(runs, "kernel", f)),
            "natvm": spread(values(runs, "natvm", f)),
            "ratio": spread(ratios(runs, f)),
        }
        for f in figures
    }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(triple: list[float] | None, single: bool) -> str:
    if triple is None:
        return "n/a"
    low, middle, high = triple
    if single:
        return _number(middle)
    return f"{_number(middle)} [{_number(low)}..{_number(high)}]"


def table(runs: Runs) -> str:
    """The table: one row per figure; cells are 'median [min..max]' over the runs."""
    single = len(runs) == 1
    header = ("figure", "unit", "better", "kernel", "natvm", "natvm/kernel")
    rows = [header]
    for figure, cells in summary(runs).items():
        spec = FIGURES[figure]
        better = "higher" if spec.higher_is_better else "lower"
        rows.append(
            (
                spec.label,
                spec.unit,
                better,
                _cell(cells["kernel"], single),
                _cell(cells["natvm"], single),
                _cell(cells["ratio"], single),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def notes(runs: Runs) -> list[str]:
    """Every note and error a measurement carried, once each, with the runs it came from."""
    seen: dict[str, list[int]] = {}
    for number, run in enumerate(runs, 1):
        for kind in KINDS:
            for figure, measured in run[kind].items():
                if measured.get("note"):
                    seen.setdefault(f"{kind} {figure}: {measured['note']}", []).append(number)
    return [f"{text} (run {', '.join(map(str, numbers))})" for text, numbers in seen.items()]
