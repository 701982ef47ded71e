"""Command line: ``<job> --config conf/<env>.yaml [--ships A,B] [--start T] [--end T] …``.

Exit codes: 0 success, 1 the job ran and found a problem (or another run of the same job holds
the ship: status "busy"; or an unexpected error, whose real cause is named), 2 bad input or config
(one line naming the key or argument and what is wrong, never a traceback). Progress, messages and
reports go to stderr; the one-line JSON summary goes alone to stdout, last (or, under
``spark-submit.sh``, which merges the driver's stderr into its stdout, to the file
``WIDEN_SUMMARY_FILE`` that the wrapper prints to stdout at the end).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import traceback
from typing import TYPE_CHECKING

from widen import errors, log, secrets
from widen.catalog.locks import JobBusy
from widen.config import BadInput, load
from widen.jobs import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_PROBLEM, STOPPING, Result

if TYPE_CHECKING:
    from typing import NoReturn

    from widen.config import Config

logger = logging.getLogger(__name__)


def parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO timestamp: {text!r} (e.g. 2026-01-01T00:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_ships(text: str) -> list[str]:
    ships = [s for s in text.split(",") if s]
    if not ships:
        raise argparse.ArgumentTypeError("--ships needs at least one ship id")
    return ships


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of hours, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 2 with the JSON line, like every other bad input
        raise BadInput(f"{self.prog}: {message}")


#: what each job does (``widen --help``)
JOB_HELP = {
    "plan": "layouts, reader views and per-ship estimates",
    "backfill": "the history, chunk by chunk",
    "rollback": "a ship (or a time range of it) out of the wide tables",
    "resume": "a rolled-back ship back into the migration",
    "stream": "the live tail (poll or cdc)",
    "reconcile": "checksums of both sides per ship and bucket; --repair re-merges differences",
    "status": "state per ship and fleet, from the catalog (read-only)",
    "report": "one self-contained HTML page",
    "cutover": "gates, then the ships' reader views to the wide tables",
    "demo": "embedded server, fleet, plan -> backfill -> stream -> reconcile -> report",
    "generate": "a synthetic fleet into the narrow table",
}
JOBS = tuple(JOB_HELP)

#: the command-line form of every field of the jobs' options dataclasses (``run.Options``): a job
#: takes exactly the options its dataclass has, so another job's option is an error (exit 2)
OPTION_ARGUMENTS: dict[str, tuple[tuple[str, ...], dict]] = {
    "ships": (("--ships",), {"type": parse_ships, "help": "comma-separated ship ids (default: all)"}),
    "start": (("--start",), {"type": parse_time, "help": "first created_time to include"}),
    "end": (("--end", "--cutoff"), {"type": parse_time,
                                    "help": "created_time to stop before (the backfill/stream hand-off)"}),
    "dry_run": (("--dry-run",), {"action": "store_true", "help": "print what would be done, change nothing"}),
    "undo": (("--undo",), {"action": "store_true", "help": "switch the ships' readers back to the narrow table"}),
    "once": (("--once",), {"action": "store_true", "help": "process what is there, then stop"}),
    "drop_slot": (("--drop-slot",), {"action": "store_true",
                                     "help": "(source.mode cdc) drop widen's replication slot and publication, "
                                             "then stop"}),
    "repair": (("--repair",), {"action": "store_true",
                               "help": "re-merge what differs from the source, then check again"}),
    "exact": (("--exact",), {"action": "store_true",
                             "help": "exact channel statistics, rejected rows and duplicate keys (scans the "
                                     "narrow table; by default channels come from an index skip scan or a sample)"}),
    "duplicates": (("--no-duplicates",), {"action": "store_false", "dest": "duplicates",
                                          "help": "with --exact: skip the duplicate-key count (a full GROUP BY)"}),
    "out": (("--out",), {"help": "the HTML file to write (default: <home>/report/widen-report.html)"}),
    "refresh": (("--refresh",), {"type": _seconds, "help": "the page asks a browser to reload it every N seconds"}),
    "fleet_ships": (("--fleet-ships",), {"type": _count(0), "help": "ships in the fleet"}),
    "channels": (("--channels",), {"type": _count(1), "help": "channels per ship"}),
    "hours": (("--hours",), {"type": _hours, "help": "hours of readings"}),
    "seed": (("--seed",), {"type": int, "help": "random seed"}),
    "replace": (("--replace",), {"action": "store_true",
                                 "help": "empty the narrow table first (only a table generate made)"}),
    "replace_any_table": (("--replace-any-table",), {"action": "store_true",
                                                     "help": "empty the narrow table even if generate did not "
                                                             "make it (dangerous)"}),
}


def job_options(job: str) -> type:
    """The options dataclass of ``job`` (its ``run.Options``)."""
    from importlib import import_module

    return import_module(f"widen.jobs.{job}").run.Options


def _add_job_parser(subparsers: argparse._SubParsersAction, job: str) -> None:
    options = job_options(job)
    parser = subparsers.add_parser(job, help=JOB_HELP[job], description=f"widen {job}: {JOB_HELP[job]}.")
    parser.add_argument("--config", default="conf/local.yaml", help="YAML config (default: %(default)s)")
    for f in dataclasses.fields(options):
        names, spec = OPTION_ARGUMENTS[f.name]
        spec = dict(spec)
        if f.default is not dataclasses.MISSING and spec.get("action") not in ("store_true", "store_false"):
            spec["default"] = f.default
            if f.default is not None:
                spec["help"] = spec.get("help", "") + " (default: %(default)s)"
        parser.add_argument(*names, **({"dest": f.name} | spec))
        if f.name == "ships":
            parser.add_argument("--ships-file", help="file with one ship id a line (ids may contain commas)")
    parser.add_argument("--verbose", action="store_true", help="debug lines, tracebacks and Spark's own logs")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="stderr lines as text (default) or one JSON object a line")


def build_parser() -> argparse.ArgumentParser:
    """``widen <job> [options]``: one subcommand per job, each with the options its dataclass has."""
    parser = _Parser(prog="widen", description="Migrate narrow ship telemetry into wide tables, one job at a "
                                               "time: widen <job> --help shows a job's options.")
    subparsers = parser.add_subparsers(dest="job", required=True, metavar="<job>", parser_class=_Parser,
                                       title="jobs")
    for job in JOBS:
        _add_job_parser(subparsers, job)
    return parser


def read_ships(args: argparse.Namespace) -> list[str] | None:
    ships = list(getattr(args, "ships", None) or [])
    ships_file = getattr(args, "ships_file", None)
    if ships_file:
        try:
            with open(ships_file, encoding="utf-8") as fh:
                ships += [line.rstrip("\r\n") for line in fh if line.rstrip("\r\n")]
        except OSError as err:
            raise BadInput(f"--ships-file: cannot read {ships_file!r} ({err.strerror})") from None
        except UnicodeDecodeError:
            raise BadInput(f"--ships-file: {ships_file!r} is not UTF-8 text") from None
        if not ships:
            raise BadInput(f"--ships-file: {ships_file!r} names no ship")
    return ships or None


def check_range(start: dt.datetime | None, end: dt.datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise BadInput(f"--start {start.isoformat()} is not before --end {end.isoformat()}: the range is empty")


def run_job(args: argparse.Namespace, config: Config) -> Result:
    """The job's ``run`` with its own options dataclass, built from the arguments it took."""
    from importlib import import_module

    from widen.jobs import options_from

    module = import_module(f"widen.jobs.{args.job}")
    check_range(getattr(args, "start", None), getattr(args, "end", None))
    values = {**vars(args), "ships": read_ships(args)}
    return module.run(config, options=options_from(module.run.Options, values))


def _emit(line: str) -> None:
    """The JSON summary: alone on stdout, or into the wrapper's summary file. Never rewritten: no
    secret reaches a summary in the first place (``widen.secrets``)."""
    target = os.environ.get("WIDEN_SUMMARY_FILE")
    if target:
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return
    print(line, flush=True)


def _fail(job: str, status: str, message: str, code: int, hint: str = "") -> int:
    log.console(f"widen: {message}{hint}", logging.ERROR)
    _emit(json.dumps({"job": job, "status": status, "error": message}))
    return code


def _announce_driver() -> None:
    """Under ``spark-submit.sh``: this driver's pid into ``WIDEN_DRIVER_PID_FILE``, where the wrapper
    sends a supervisor's stop (written whole, then renamed: never read half-written)."""
    path = os.environ.get("WIDEN_DRIVER_PID_FILE")
    if not path:
        return
    try:
        with open(path + ".new", "w", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        os.replace(path + ".new", path)
    except OSError as err:
        logger.warning("cannot write the driver's pid to %s (%s): a stop must be sent to this process, pid %d",
                       path, err.strerror, os.getpid())


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT: interrupt the job once (exit 130, finished work kept), its Spark jobs
    cancelled. Once: a supervisor's signal can come twice (the process group's, and the one
    ``spark-submit.sh`` hands on). The stream sets its own handlers: stop after the batch."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    STOPPING.set()
    context = getattr(sys.modules.get("pyspark"), "SparkContext", None)
    active = getattr(context, "_active_spark_context", None)
    if active is not None:
        try:
            active.cancelAllJobs()
        except Exception:  # noqa: BLE001, S110 - the JVM may be gone already; the interrupt goes on
            pass
    raise KeyboardInterrupt


def _take_signals() -> dict:
    """Set the handlers of SIGTERM and SIGINT (main thread only); the previous ones, to put back.
    Set, not inherited: under ``spark-submit.sh`` the driver starts with both ignored (its JVM must
    outlive a process group's SIGTERM, see the script), and Python keeps a SIGINT ignored at start."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}


def _wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None) -> int:
    STOPPING.clear()
    previous = _take_signals()
    _announce_driver()
    try:
        return _main(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    job = argv[0] if argv and argv[0] in JOBS else "?"
    verbose = "--verbose" in argv
    log.setup(verbose, "json" if "--log-format=json" in argv or
              any(a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:])) else "text")
    try:
        try:
            args, extra = build_parser().parse_known_args(argv)
        except SystemExit as done:      # --help: argparse printed it; no job runs, no summary
            return int(done.code or 0)
        if extra:
            raise BadInput(f"{args.job} does not take {' '.join(extra)} (widen {args.job} --help lists its options)")
        config = load(os.path.abspath(args.config))
        result = run_job(args, config)
    except JobBusy as err:
        # A scheduler's overlapping run: say so and stop; the running one is left alone.
        return _fail(job, "busy", str(err), EXIT_PROBLEM)
    except BadInput as err:
        return _fail(job, "bad_input", str(err), EXIT_BAD_INPUT)
    except ConnectionError as err:
        return _fail(job, "bad_input", str(err), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        for sig in (signal.SIGTERM, signal.SIGINT):     # a repeated stop cannot cut the summary short
            signal.signal(sig, signal.SIG_IGN)
        return _fail(job, "interrupted", "interrupted (SIGTERM/SIGINT); finished work is kept, a rerun goes on from it",
                     EXIT_INTERRUPTED)
    except Exception as err:  # noqa: BLE001 - every failure ends with the summary line
        # Text from outside (a driver's or Spark's exception) is the one place a secret could
        # still appear: it alone is scrubbed (widen.secrets.scrub; errors.describe does so too).
        if verbose:
            log.console(secrets.scrub(traceback.format_exc().rstrip("\n")), logging.ERROR)
        return _fail(job, "error", errors.describe(err), EXIT_PROBLEM,
                     "" if verbose else " (--verbose shows the traceback)")
    if result.report:
        log.console(result.report)
    _emit(result.json_line())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
