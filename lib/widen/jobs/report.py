"""``report``: the migration on one self-contained HTML page, from the catalog alone.

The fleet's ships per lifecycle state, each ship's state, backfill progress and figures, throughput
over time (narrow rows per interval, from both ledgers), the stream's freshness per query (now and
batch by batch), a ship x day heatmap of the latest reconcile of every bucket, and rejects by reason.
No external asset and no script: the file can be mailed, or published by cron
(``--refresh SECONDS`` makes a browser reload it). ``--out`` names the file (default
``<home>/report/widen-report.html``); the summary gives its path. Like ``status``, it never reads
the narrow table.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg2 import sql

from widen import dashboard
from widen.catalog import schema
from widen.config import BadInput, Config
from widen.core import lifecycle
from widen.jobs import EXIT_OK, Result, job, status as status_job
from widen.pg import db

if TYPE_CHECKING:
    from psycopg2.extensions import cursor
    from pyspark.sql import SparkSession

JOB = "report"
#: the throughput chart covers this much time back from now, and each stream query's last batches
WINDOW = dt.timedelta(hours=48)
STREAM_BATCHES = 20_000
#: bar widths the throughput chart picks from: the narrowest giving at most MAX_BARS bars
WIDTHS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
MAX_BARS = 60
#: reconcile buckets of the heatmap: this many days up to today (not up to the newest bucket: one
#: reading dated 2099 would push the whole fleet out of the window)
HEATMAP_DAYS = 31
#: stream batches the freshness chart shows per query
FRESHNESS_BATCHES = 300


@dataclass(frozen=True)
class ReportOptions:
    ships: list[str] | None = None
    out: str | None = None
    refresh: float | None = None


def throughput(cur: cursor, cat: str, now: dt.datetime, queries: list[str]) -> dict[str, Any]:
    """Narrow rows per interval over the last ``WINDOW``: the backfill's chunks by finished_at (one
    pass over the chunk ledger) and each stream query's batches by committed_at (its last
    ``STREAM_BATCHES`` by the ledger's primary key)."""
    since = now - WINDOW
    cur.execute(sql.SQL("SELECT finished_at, narrow_rows FROM {} WHERE status <> 'failed' AND finished_at > %s").format(
        sql.Identifier(cat, "backfill_chunks")), (since,))
    events = [("backfill", at, rows) for at, rows in cur.fetchall()]
    for name in queries:
        cur.execute(sql.SQL("SELECT committed_at, narrow_rows FROM (SELECT committed_at, narrow_rows FROM {} "
                            "WHERE query_name = %s ORDER BY batch_id DESC LIMIT %s) recent WHERE committed_at > %s")
                    .format(sql.Identifier(cat, "stream_batches")), (name, STREAM_BATCHES, since))
        events += [("stream", at, rows) for at, rows in cur.fetchall()]
    if not events:
        return {"width": None, "bars": []}
    oldest = min(at for _, at, _ in events)
    span = (max(at for _, at, _ in events) - oldest).total_seconds()
    width = next((w for w in WIDTHS if span / w < MAX_BARS), WIDTHS[-1])
    bars: dict[dt.datetime, dict[str, int]] = {}
    for job_name, at, rows in events:
        bar = dt.datetime.fromtimestamp(at.timestamp() // width * width, dt.UTC)
        counts = bars.setdefault(bar, {"backfill": 0, "stream": 0})
        counts[job_name] += int(rows or 0)
    return {"width": width, "bars": sorted(bars.items())}


def freshness(cur: cursor, cat: str, queries: list[str]) -> dict[str, list[tuple[dt.datetime, float]]]:
    """Per stream query, its last batches' freshness lag at commit (committed_at - the newest
    created_time the batch wrote), oldest first (by the ledger's primary key)."""
    out = {}
    for name in queries:
        cur.execute(sql.SQL("SELECT committed_at, extract(epoch FROM committed_at - newest_created_time) FROM {} "
                            "WHERE query_name = %s AND newest_created_time IS NOT NULL "
                            "ORDER BY batch_id DESC LIMIT %s").format(sql.Identifier(cat, "stream_batches")),
                    (name, FRESHNESS_BATCHES))
        out[name] = [(at, max(0.0, float(lag))) for at, lag in reversed(cur.fetchall())]
    return out


def heatmap(cur: cursor, cat: str, ships: list[str] | None, now: dt.datetime) -> dashboard.Heatmap:
    """(ship, day) -> buckets per status of their latest reconcile (match / repaired / mismatch),
    for the ``HEATMAP_DAYS`` days (UTC) ending today; and how many checked buckets lie before
    that window and after now (readings dated in the future), which the page names apart."""
    t = sql.Identifier(cat, "reconcile_results")
    where = sql.SQL("AND ship_id = ANY(%s)") if ships else sql.SQL("")
    selected = (ships,) if ships else ()
    last = now.astimezone(dt.UTC).date()
    first = last - dt.timedelta(days=HEATMAP_DAYS - 1)
    since = dt.datetime.combine(first, dt.time(), dt.UTC)
    latest = sql.SQL("SELECT DISTINCT ON (ship_id, bucket_start) ship_id, bucket_start, status FROM {} WHERE true {} "
                     "ORDER BY ship_id, bucket_start, checked_at DESC, run_id DESC").format(t, where)
    cur.execute(sql.SQL("SELECT count(*) FILTER (WHERE bucket_start < %s), count(*) FILTER (WHERE bucket_start > %s) "
                        "FROM ({}) latest").format(latest), (since, now, *selected))
    before, after = cur.fetchone()
    in_window = sql.SQL("SELECT DISTINCT ON (ship_id, bucket_start) ship_id, bucket_start, status FROM {} "
                        "WHERE bucket_start >= %s AND bucket_start <= %s {} "
                        "ORDER BY ship_id, bucket_start, checked_at DESC, run_id DESC").format(t, where)
    cur.execute(sql.SQL(
        "SELECT ship_id, (bucket_start AT TIME ZONE 'UTC')::date AS day, status, count(*) FROM ({}) latest "
        "GROUP BY 1, 2, 3").format(in_window), (since, now, *selected))
    cells: dict[tuple[str, dt.date], dict[str, int]] = {}
    for ship, day, state, count in cur.fetchall():
        cells.setdefault((ship, day), {})[state] = int(count)
    return dashboard.Heatmap(cells, first, last, int(before), int(after))


def rejects(cur: cursor, cat: str, ships: list[str] | None) -> list[tuple[str, str, int]]:
    """(reason, job, rows) of the rejects table, most first."""
    where = sql.SQL("WHERE ship_id = ANY(%s)") if ships else sql.SQL("")
    cur.execute(sql.SQL("SELECT reason, job, count(*) FROM {} {} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2").format(
        sql.Identifier(cat, "rejects"), where), (ships,) if ships else ())
    return [(reason, job_name, int(n)) for reason, job_name, n in cur.fetchall()]


def default_path(config: Config) -> str:
    return os.path.join(config.home, "report", "widen-report.html")


@job(JOB, ReportOptions, reads_narrow_table=False, ships_from=None, lock=False)
def run(config: Config, spark: SparkSession | None, options: ReportOptions) -> Result:
    began = time.monotonic()
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        if not schema.open_existing(conn, cat):
            return status_job.no_catalog(JOB, config, began)
        with conn.cursor() as cur:
            cur.execute("SET LOCAL TIME ZONE 'UTC'")
            now, ships, queries = status_job.snapshot(cur, cat, options.ships)
            page = dashboard.Page(
                now=now, ships=ships, states=lifecycle.STATES, queries=queries,
                throughput=throughput(cur, cat, now, [q["query_name"] for q in queries]),
                freshness=freshness(cur, cat, [q["query_name"] for q in queries]),
                heatmap=heatmap(cur, cat, options.ships, now), rejects=rejects(cur, cat, options.ships),
                attention={r["ship_id"]: why for r in ships if (why := status_job.attention(r))},
                max_lag_seconds=config.cutover.max_lag_seconds, refresh_seconds=options.refresh)
        conn.rollback()
    path = os.path.abspath(options.out or default_path(config))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w", encoding="utf-8") as fh:
            fh.write(dashboard.render(page))
        os.replace(partial, path)               # a reader (a web server, a mailer) never sees half a page
    except OSError as err:
        raise BadInput(f"--out: cannot write {path} ({err.strerror or err})") from None
    summary = {"path": path, "ships": len(ships), "seconds": round(time.monotonic() - began, 3)}
    return Result(JOB, EXIT_OK, summary, f"report: {path}")
