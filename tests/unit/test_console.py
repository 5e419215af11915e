"""The console stays quiet: a stats line only when something changed, errors rate-limited."""

from appliance.shell import ChangedLineLog, RateLimitedLog


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
