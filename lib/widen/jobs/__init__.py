"""Job orchestration. A job is ``run(config, spark=None, options=None, **fields) -> Result``.

``options`` is the job's own dataclass (``fields`` builds one: an unknown option is an error, not
ignored); the CLI and the notebooks build the same dataclasses. Jobs only orchestrate: statements
live with the source (``widen.sources``), the target (``widen.targets``) and the catalog.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from widen.config import Config

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: Set by the command line's SIGTERM/SIGINT handler: work running in other threads (a backfill's
#: chunks) starts no new attempt and records no failure for what the stop cancelled.
STOPPING = threading.Event()


@dataclass
class Result:
    job: str
    exit_code: int = EXIT_OK
    summary: dict = field(default_factory=dict)
    report: str = ""

    def json_line(self) -> str:
        status = {EXIT_OK: "ok", EXIT_PROBLEM: "problem", EXIT_BAD_INPUT: "bad_input"}[self.exit_code]
        return json.dumps({"job": self.job, "status": status, **self.summary}, default=str,
                          sort_keys=False)


Opts = TypeVar("Opts")
#: a job's ``run(config, spark=None, options=None, **fields) -> Result``
JobRun = Callable[..., Result]


def options_from(cls: type[Opts], values: dict[str, Any]) -> Opts:
    """An options dataclass from a mapping that may hold other jobs' options too (the CLI's)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def check_selection(config: Config, options: Any, ships_from: str | None) -> None:
    """Bad input (exit 2) for an empty or reversed range and for ships that do not exist: in the
    narrow table or the catalog (``ships_from="narrow"``) or in the catalog only (``"catalog"``;
    None: the job checks its ships itself)."""
    from widen.catalog.layouts import laid_out_ships
    from widen.config import BadInput
    from widen.pg import db
    from widen.sources import NarrowTable, open_source

    start, end = getattr(options, "start", None), getattr(options, "end", None)
    if start is not None and end is not None and start >= end:
        raise BadInput(f"--start {start.isoformat()} is not before --end {end.isoformat()}: the range is empty")
    ships = getattr(options, "ships", None)
    if not ships or ships_from is None:
        return
    source = open_source(config.source)
    if ships_from == "narrow" and isinstance(source, NarrowTable):
        with source.connect() as conn:
            unknown = source.unknown_ships(conn, ships)
    else:
        unknown = list(ships)
    if not unknown:
        return
    with db.connection(config.target.connection) as conn:
        known = laid_out_ships(conn, config.target.catalog_schema)
    unknown = [s for s in unknown if s not in known]
    if unknown:
        where = "the catalog" if ships_from == "catalog" else \
            f"{config.source.schema}.{config.source.table} or the catalog"
        hints = [f"{s!r} (did you mean {', '.join(map(repr, close))}?)" if (close := difflib.get_close_matches(
            s, sorted(known), n=2)) else repr(s) for s in unknown[:10]]
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise BadInput(f"--ships: no ship {', '.join(hints)}{more} in {where}")


def _measured(name: str, config: Config, ships: list[str] | None, run: Callable[[], Result]) -> Result:
    """``run()`` with the job's metrics open (``widen.metrics``, grouped by the ships it was
    given): pushed while it runs, and with its exit code when it ends (1 for an exception, which
    goes on up; 2 for bad input; 130 for an interrupt)."""
    from widen import metrics
    from widen.config import BadInput

    token = metrics.open_run(name, config.metrics, ships)
    exit_code = EXIT_PROBLEM
    try:
        result = run()
        exit_code = result.exit_code
        return result
    except BadInput:
        exit_code = EXIT_BAD_INPUT
        raise
    except KeyboardInterrupt:
        exit_code = EXIT_INTERRUPTED
        raise
    finally:
        metrics.close_run(token, exit_code)


def job(name: str, options_class: type, what: str = "ship",
        keys: Callable[[Any, Any], list[str] | None] = lambda config, options: getattr(options, "ships", None),
        reads_narrow_table: bool = True, ships_from: str | None = "narrow",
        lock: bool = True, metrics_name: str | None = None) -> Callable[[JobRun], JobRun]:
    """Decorate a job's ``run(config, spark, options)``: options built and checked, connections
    resolved (the embedded server started when the config says so) with the job's statement
    timeout, the narrow table checked, then at most one run of ``name`` per ship (or per ``keys``)
    at a time: a second run raises ``widen.catalog.locks.JobBusy`` before touching anything (its
    metrics too, ``widen_<metrics_name or name>_…``: they open inside the lock)."""
    def wrap(run: JobRun) -> JobRun:
        @functools.wraps(run)
        def checked(config: Config, spark: SparkSession | None = None, options: Any | None = None,
                    **fields: Any) -> Result:
            from widen.catalog.locks import job_lock
            from widen.session import resolve_connections
            from widen.sources import open_source

            options = options if options is not None else options_class(**fields)
            config = resolve_connections(config).for_job(name)
            if reads_narrow_table:
                open_source(config.source).require()
            check_selection(config, options, ships_from)
            if not lock:
                return _measured(metrics_name or name, config, getattr(options, "ships", None),
                                 lambda: run(config, spark, options))
            with job_lock(config.target.connection, name, keys(config, options), what):
                return _measured(metrics_name or name, config, getattr(options, "ships", None),
                                 lambda: run(config, spark, options))
        checked.Options = options_class
        return checked
    return wrap
