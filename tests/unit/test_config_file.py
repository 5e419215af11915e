"""Reading the configuration file: bounded in size and time, one clear line for what is refused.

Issue 14, finding 5: `--config /dev/zero` grew to 4.7 GB, a FIFO with no writer blocked forever
and a 50 MB file was accepted at a 1 GB peak.
"""

import os
import threading
from pathlib import Path

import pytest

from appliance.config import MAX_CONFIG_BYTES, ConfigError, load_config

DEMO_PATH = Path(__file__).resolve().parents[2] / "ops-config.json"


def load_error(path: str | Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_device_is_refused_without_reading_it() -> None:
    assert (
        load_error("/dev/zero")
        == "/dev/zero: cannot read: not a regular file (a device, FIFO or socket)"
    )


def test_fifo_without_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(load_error(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "load_config blocked on a FIFO with no writer"
    assert outcome == [f"{fifo}: cannot read: not a regular file (a device, FIFO or socket)"]


def test_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b" " * MAX_CONFIG_BYTES + b"{}")
    assert load_error(path) == f"{path}: larger than 1024 KiB"


def test_file_at_the_limit_is_read(tmp_path: Path) -> None:
    demo = DEMO_PATH.read_bytes()
    path = tmp_path / "config.json"
    path.write_bytes(demo + b" " * (MAX_CONFIG_BYTES - len(demo)))
    assert load_config(path) == load_config(DEMO_PATH)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_other_unicode_encodings_are_refused_by_name(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(DEMO_PATH.read_text().encode(encoding))
    assert load_error(path) == f"{path}: not UTF-8 (UTF-16 or UTF-32?): save it as UTF-8"


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + DEMO_PATH.read_bytes())
    assert load_config(path) == load_config(DEMO_PATH)
