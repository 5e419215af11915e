"""`python -m appliance`: run the NAT as an ordinary root process between two interfaces."""

import argparse
import sys
from pathlib import Path

from appliance.config import ConfigError, load_config
from appliance.shell import ShellError, run


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m appliance",
        description="natvm's NAT: forward and translate between a WAN and a LAN interface.",
    )
    parser.add_argument("--config", required=True, help="ops-config.json to read")
    parser.add_argument("--wan", required=True, help="uplink interface (no IP configured)")
    parser.add_argument("--lan", required=True, help="downstream interface (no IP configured)")
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds between stats lines (default 10)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="directory (a tmpfs, e.g. /run/natvm) where the flows are saved as they change, "
        "and restored from at start: a restarted appliance keeps established connections",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
        run(
            config,
            args.wan,
            args.lan,
            stats_interval=args.stats_interval,
            state_dir=args.state_dir,
        )
    except (ConfigError, ShellError) as error:
        print(f"natvm: error: {error}", file=sys.stderr, flush=True)
        return 2 if isinstance(error, ConfigError) else 1
    return 0
