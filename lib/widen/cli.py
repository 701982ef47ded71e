"""Command line: ``<job> --config conf/<env>.yaml [--ships A,B] [--start T] [--end T] …``.

Exit codes: 0 success, 1 the job ran and found a problem (or another run of the same job holds
the ship: status "busy"), 2 bad input or config. The one-line JSON summary is always the last line
on stdout.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from widen.config import ConfigError, load
from widen.jobs import EXIT_BAD_INPUT, EXIT_PROBLEM, Result
from widen.locks import JobBusy

JOBS = ("plan", "backfill", "rollback", "stream", "reconcile", "demo", "generate")


def parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO timestamp: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def parse_ships(text: str) -> list[str]:
    ships = [s for s in text.split(",") if s]
    if not ships:
        raise argparse.ArgumentTypeError("--ships needs at least one ship id")
    return ships


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit 2 with the JSON line, like every other bad input
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="widen", description="Migrate narrow ship telemetry into wide tables.")
    parser.add_argument("job", choices=JOBS)
    parser.add_argument("--config", default="conf/local.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--ships", type=parse_ships, help="comma-separated ship ids (default: all)")
    parser.add_argument("--ships-file", help="file with one ship id a line (ids may contain commas)")
    parser.add_argument("--start", type=parse_time, help="first created_time to include")
    parser.add_argument("--end", "--cutoff", dest="end", type=parse_time,
                        help="created_time to stop before (the backfill/stream hand-off)")
    parser.add_argument("--dry-run", action="store_true", help="rollback: print what would be done")
    parser.add_argument("--once", action="store_true", help="stream: process what is there, then stop")
    parser.add_argument("--repair", action="store_true",
                        help="reconcile: re-merge what differs from the source, then check again")
    parser.add_argument("--no-duplicates", action="store_true",
                        help="plan: skip the duplicate-key count (a full GROUP BY)")
    # generate / demo
    parser.add_argument("--fleet-ships", type=int, default=4)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--replace", action="store_true",
                        help="generate: empty the narrow table first (it refuses to mix otherwise)")
    return parser


def run_job(args, config) -> Result:
    from importlib import import_module

    module = import_module(f"widen.jobs.{args.job}")
    ships = list(args.ships or [])
    if args.ships_file:
        with open(args.ships_file, encoding="utf-8") as fh:
            ships += [line.rstrip("\n") for line in fh if line.rstrip("\n")]
    return module.run(config, ships=ships or None, start=args.start, end=args.end,
                      dry_run=args.dry_run, once=args.once, repair=args.repair, duplicates=not args.no_duplicates,
                      fleet_ships=args.fleet_ships, channels=args.channels, hours=args.hours,
                      seed=args.seed, replace=args.replace)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config = load(args.config)
        result = run_job(args, config)
    except JobBusy as err:
        # A scheduler's overlapping run: say so and stop; the running one is left alone.
        print(f"widen: {err}", file=sys.stderr)
        print(json.dumps({"job": (argv or sys.argv[1:] or ["?"])[0], "status": "busy", "error": str(err)}))
        return EXIT_PROBLEM
    except (ConfigError, FileNotFoundError, ConnectionError) as err:
        message = str(err)
        print(f"widen: {message}", file=sys.stderr)
        print(json.dumps({"job": (argv or sys.argv[1:] or ["?"])[0], "status": "bad_input",
                          "error": message}))
        return EXIT_BAD_INPUT
    if result.report:
        print(result.report)
    print(result.json_line())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
