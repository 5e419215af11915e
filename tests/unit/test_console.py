"""The console stays quiet: a stats line only when something changed, errors rate-limited."""

from appliance.shell import ChangedLineLog, RateLimitedLog, where_raised


def test_stats_line_logged_only_when_it_changed() -> None:
    lines: list[str] = []
    stats = ChangedLineLog(lines.append)
    for line in ["stats a=1", "stats a=1", "stats a=2", "stats a=2", "stats a=2", "stats a=1"]:
        stats(line)
    assert lines == ["stats a=1", "stats a=2", "stats a=1"]


def test_error_lines_limited_per_key_and_interval() -> None:
    lines: list[str] = []
    errors = RateLimitedLog(lines.append, interval=10.0, burst=3)
    for i in range(1000):
        errors("tx", f"tx {i}", now=i / 100)  # 1000 errors in 10 s
        errors("internal", f"internal {i}", now=i / 100)
    assert lines == ["tx 0", "internal 0", "tx 1", "internal 1", "tx 2", "internal 2"]
    errors("tx", "tx later", now=10.0)
    assert lines[-1] == "tx later"


def _deep(depth: int) -> None:
    if depth == 0:
        raise KeyError("lost")
    _deep(depth - 1)


def test_where_raised_names_the_innermost_frames_and_the_error() -> None:
    try:
        _deep(4)
    except KeyError as error:
        line = where_raised(error)
    parts = line.split(" | ")
    assert len(parts) == 4  # three frames, then the error
    assert all(
        part.startswith("test_console.py:") and part.endswith(" in _deep") for part in parts[:3]
    )
    assert parts[-1] == "KeyError: 'lost'"
    assert "\n" not in line
