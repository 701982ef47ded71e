"""Job orchestration. A job is ``run(config, spark=None, **options) -> Result``."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_BAD_INPUT = 2


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


def exclusive(job: str, what: str = "ship", keys=lambda config, options: options.get("ships"),
              reads_narrow_table: bool = True):
    """Decorate a job's ``run``: at most one run of ``job`` per ship (or per ``keys``) at a time.

    The second run raises ``widen.locks.JobBusy`` before touching anything; the CLI turns it into
    exit code 1 with a clear message (see ``widen.locks``).
    """
    def wrap(run):
        @functools.wraps(run)
        def locked(config, spark=None, **options):
            from widen.locks import job_lock
            from widen.session import resolve_connections

            config = resolve_connections(config)
            if reads_narrow_table and config.source.kind == "postgres":
                from widen.sources import require_table

                require_table(config.source)
            with job_lock(config.target.connection, job, keys(config, options), what):
                return run(config, spark, **options)
        return locked
    return wrap
