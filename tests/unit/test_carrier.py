"""Waiting for links before READY (appliance/shell.py), on this machine's own interfaces."""

import time

from appliance import shell


def test_a_link_that_is_up_is_not_waited_for() -> None:
    started = time.monotonic()
    assert shell.wait_for_carrier("lo", timeout=5.0)  # loopback's operstate is "unknown"
    assert time.monotonic() - started < 1.0


def test_a_missing_link_is_logged_after_its_timeout_and_the_rest_still_checked() -> None:
    lines: list[str] = []
    started = time.monotonic()
    shell.wait_for_carriers(("natvm-absent0", "lo"), lines.append, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2.0
    assert lines == ["warning: natvm-absent0 has no carrier after 0.2 s; going on"]
