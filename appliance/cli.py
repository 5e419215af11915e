"""`python -m appliance`: run the NAT as an ordinary root process between its interfaces."""

import argparse
import sys
from ipaddress import IPv4Address
from pathlib import Path

from appliance.config import ConfigError, load_config
from appliance.shell import ClientSpec, ShellError, run, run_netvm


def client_spec(text: str) -> ClientSpec:
    """`IF=IP,MAC` as a ClientSpec; argparse turns the ValueError into one usage line."""
    ifname, _, rest = text.partition("=")
    ip, _, mac = rest.partition(",")
    try:
        address, mac_bytes = IPv4Address(ip), bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not IF=IP,MAC") from None
    if not ifname or len(mac_bytes) != 6:
        raise argparse.ArgumentTypeError(f"{text!r} is not IF=IP,MAC")
    return ClientSpec(ifname, address, mac_bytes)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m appliance",
        description="natvm's NAT: forward and translate between a WAN and a LAN interface, "
        "or (netvm mode, nat.netvm in the config) between a WAN and client interfaces.",
    )
    parser.add_argument("--config", required=True, help="ops-config.json to read")
    parser.add_argument("--wan", required=True, help="uplink interface (no IP configured)")
    parser.add_argument("--lan", help="downstream interface (no IP configured); not in netvm mode")
    parser.add_argument(
        "--client",
        type=client_spec,
        action="append",
        default=[],
        metavar="IF=IP,MAC",
        help="netvm mode: serve the client with address IP and MAC on interface IF; repeatable",
    )
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
        if config.nat.netvm:
            if args.lan is not None:
                raise ShellError("--lan: netvm mode has no LAN NIC; name clients with --client")
            run_netvm(config, args.wan, args.client, stats_interval=args.stats_interval)
        else:
            if args.lan is None or args.client:
                raise ShellError("--lan is required and --client is for netvm mode only")
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
