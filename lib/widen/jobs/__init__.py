"""Job orchestration. A job is ``run(config, spark=None, **options) -> Result``."""
from __future__ import annotations

import difflib
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


def catalog_ships(conn, catalog_schema: str) -> set[str]:
    """Ships the catalog has tables for (none when there is no catalog yet)."""
    import psycopg2
    from psycopg2 import sql

    with conn.cursor() as cur:
        try:
            cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(
                sql.Identifier(catalog_schema, "wide_tables")))
        except psycopg2.errors.UndefinedTable:
            conn.rollback()
            return set()
        return {r[0] for r in cur.fetchall()}


def check_selection(config, options: dict, ships_from: str) -> None:
    """Bad input (exit 2) for an empty or reversed range and for ships that do not exist: in the
    narrow table or the catalog (``ships_from="narrow"``) or in the catalog only (``"catalog"``;
    None: the job checks its ships itself)."""
    from widen import db, sources
    from widen.config import BadInput

    start, end = options.get("start"), options.get("end")
    if start is not None and end is not None and start >= end:
        raise BadInput(f"--start {start.isoformat()} is not before --end {end.isoformat()}: the range is empty")
    ships = options.get("ships")
    if not ships or ships_from is None:
        return
    if ships_from == "narrow" and config.source.kind == "postgres":
        with db.connection(config.source.connection) as conn:
            unknown = sources.unknown_ships(conn, config.source, ships)
    else:
        unknown = list(ships)
    if not unknown:
        return
    with db.connection(config.target.connection) as conn:
        known = catalog_ships(conn, config.target.catalog_schema)
    unknown = [s for s in unknown if s not in known]
    if unknown:
        where = "the catalog" if ships_from == "catalog" else \
            f"{config.source.schema}.{config.source.table} or the catalog"
        hints = [f"{s!r} (did you mean {', '.join(map(repr, close))}?)" if (close := difflib.get_close_matches(
            s, sorted(known), n=2)) else repr(s) for s in unknown[:10]]
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise BadInput(f"--ships: no ship {', '.join(hints)}{more} in {where}")


def exclusive(job: str, what: str = "ship", keys=lambda config, options: options.get("ships"),
              reads_narrow_table: bool = True, ships_from: str = "narrow"):
    """Decorate a job's ``run``: inputs checked (the narrow table, the ships, the range), then at
    most one run of ``job`` per ship (or per ``keys``) at a time.

    The second run raises ``widen.locks.JobBusy`` before touching anything; the CLI turns it into
    exit code 1 with a clear message (see ``widen.locks``).
    """
    def wrap(run):
        @functools.wraps(run)
        def locked(config, spark=None, **options):
            from widen.locks import job_lock
            from widen.session import resolve_connections

            config = resolve_connections(config).for_job(job)
            if reads_narrow_table and config.source.kind == "postgres":
                from widen.sources import require_table

                require_table(config.source)
            check_selection(config, options, ships_from)
            with job_lock(config.target.connection, job, keys(config, options), what):
                return run(config, spark, **options)
        return locked
    return wrap
