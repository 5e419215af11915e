"""python -m fuzz: run a campaign, replay inputs, measure coverage (see fuzz/__init__.py)."""

import argparse
import sys
from pathlib import Path

from fuzz import campaign


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a campaign of generated and mutated frames")
    run.add_argument("--frames", type=int, default=10_000_000)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    run.add_argument("--work", type=Path, default=campaign.ROOT / "build" / "fuzz")
    again = commands.add_parser("replay", help="run saved inputs and report each")
    again.add_argument("paths", type=Path, nargs="+")
    measure = commands.add_parser("coverage", help="what saved (and random) inputs reach")
    measure.add_argument("directories", type=Path, nargs="*", default=[campaign.CORPUS])
    measure.add_argument("--random", type=int, default=0, help="also this many random inputs")
    measure.add_argument("--seed", type=int, default=1)
    measure.add_argument(
        "--out", type=Path, default=campaign.ROOT / "build" / "fuzz" / "coverage.json"
    )
    shrink = commands.add_parser("minimize", help="shrink a failing input, keeping its failure")
    shrink.add_argument("path", type=Path)
    shrink.add_argument("out", type=Path)
    commands.add_parser("seeds", help="write the seed inputs into fuzz/corpus")
    options = parser.parse_args()

    if options.command == "replay":
        return 1 if campaign.replay(options.paths) else 0
    if options.command == "coverage":
        campaign.coverage(options.directories, options.random, options.seed, options.out)
        return 0
    if options.command == "minimize":
        data = campaign.minimize(options.path.read_bytes())
        options.out.write_bytes(data)
        print(f"{options.out}: {len(data)} bytes, {campaign.failure(data)}")
        return 0
    if options.command == "seeds":
        from fuzz import seeds

        for path in seeds.write(campaign.CORPUS):
            print(path.relative_to(campaign.ROOT))
        return 0
    if options.engine == "atheris":
        campaign.atheris_campaign(options.frames, options.seed, options.work)
        return 1  # atheris exits by itself: done, or a finding
    try:
        report = campaign.random_campaign(
            options.frames, options.seed, campaign.load_corpus(campaign.CORPUS), progress=True
        )
    except campaign.Finding as finding:
        path = campaign.save_finding(finding, options.work)
        print(f"fuzz: finding: {finding}\n  replay: python -m fuzz replay {path}", file=sys.stderr)
        return 1
    print(report.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
