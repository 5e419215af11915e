"""`python -m appliance`: run the NAT as an ordinary root process between its interfaces."""

import argparse
import json
import sys
from ipaddress import IPv4Address
from pathlib import Path

from appliance.config import ConfigError, load_config
from appliance.netvmshell import ClientSpec, NetVmShell, run_netvm
from appliance.rules import RuleError, RuleSet, parse_rule_set
from appliance.shell import ShellError, run


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


def firewall_spec(text: str) -> tuple[IPv4Address, Path]:
    """`IP=FILE` for --firewall; argparse turns the ValueError into one usage line."""
    ip, _, path = text.partition("=")
    try:
        address = IPv4Address(ip)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP=FILE") from None
    if not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP=FILE")
    return address, Path(path)


def load_rules(path: Path) -> RuleSet:
    """A client's rules from a JSON object holding what QubesDB holds under
    /qubes-firewall/<ip>/: {"policy": "drop", "0000": "action=accept proto=tcp ...", ...}."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ShellError(f"--firewall {path}: {error}") from None
    if not isinstance(entries, dict) or not all(
        isinstance(value, str) for value in entries.values()
    ):
        raise ShellError(f"--firewall {path}: not a JSON object of strings")
    try:
        return parse_rule_set(entries, f"{path}:")
    except RuleError as error:
        raise ShellError(f"--firewall {error}") from None


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
        "--firewall",
        type=firewall_spec,
        action="append",
        default=[],
        metavar="IP=FILE",
        help="netvm mode: the rules for new flows from client address IP, a JSON object of "
        "the keys QubesDB holds under /qubes-firewall/IP/ (policy, 0000, ...); repeatable",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds between stats lines (default 10)",
    )
    parser.add_argument(
        "--state-dir",
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
            rules = {ip: load_rules(path) for ip, path in args.firewall}

            def put_rules_in_force(shell: NetVmShell) -> None:
                for ip, rule_set in rules.items():
                    shell.netvm.set_rules(ip, rule_set)

            run_netvm(
                config,
                args.wan,
                args.client,
                stats_interval=args.stats_interval,
                watch=put_rules_in_force,
            )
        else:
            if args.lan is None or args.client or args.firewall:
                raise ShellError(
                    "--lan is required and --client and --firewall are for netvm mode only"
                )
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
