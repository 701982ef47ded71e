"""``status``: where every ship is in its migration, from the catalog alone (never the narrow table).

Per ship: its lifecycle state and since when, the backfill's chunks done / failed / total, the
narrow rows it moved, rejects, when the stream last wrote it, the last reconcile (result, range,
when), when it was switched. For the fleet: ships per state and the stream's freshness lag (now -
the newest created_time its recent batches wrote). Exit 1 when something needs attention: failed
chunks, a reconcile that left differences or could not check, rows the stream could not write since
the ship's last reconcile, a lag above ``cutover.max_lag_seconds``. A rolled-back ship needs none
(``rollback`` took it out on purpose; ``resume`` brings it back): its last reconcile is not shown.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg2 import sql

from widen.catalog import schema
from widen.config import BadInput, Config
from widen.core import lifecycle
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, job
from widen.pg import db

if TYPE_CHECKING:
    from psycopg2.extensions import cursor
    from pyspark.sql import SparkSession

#: recent batches a stream's freshness is read from
RECENT_BATCHES = 1000


@dataclass(frozen=True)
class StatusOptions:
    ships: list[str] | None = None


def _rows(cur: cursor, query: sql.Composable, params: tuple = ()) -> list[dict[str, Any]]:
    cur.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def streams(cur: cursor, cat: str) -> list[dict[str, Any]]:
    """Each stream query's last batch and the newest created_time of its recent batches (by the
    ledger's primary key: a few index probes whatever the ledger's length)."""
    t = sql.Identifier(cat, "stream_batches")
    out = []
    cur.execute(sql.SQL("SELECT DISTINCT query_name FROM {}").format(sql.Identifier(cat, "stream_starts")))
    for (name,) in cur.fetchall():
        cur.execute(sql.SQL("SELECT batch_id, committed_at FROM {} WHERE query_name = %s "
                            "ORDER BY batch_id DESC LIMIT 1").format(t), (name,))
        last = cur.fetchone()
        if last is None:
            continue
        cur.execute(sql.SQL("SELECT max(newest_created_time) FROM (SELECT newest_created_time FROM {} "
                            "WHERE query_name = %s ORDER BY batch_id DESC LIMIT %s) recent").format(t),
                    (name, RECENT_BATCHES))
        out.append({"query_name": name, "last_batch": last[0], "committed_at": last[1],
                    "newest_created_time": cur.fetchone()[0]})
    return out


def gather(cur: cursor, cat: str, ships: list[str] | None) -> list[dict[str, Any]]:
    """One row per ship: lifecycle, chunks, rejects and stream failures (one grouped query each)."""
    where = sql.SQL("WHERE ship_id = ANY(%s)") if ships else sql.SQL("")
    params = (ships,) if ships else ()

    def table(name: str) -> sql.Identifier:
        return sql.Identifier(cat, name)

    rows = {r["ship_id"]: r for r in _rows(cur, sql.SQL("SELECT * FROM {} {} ORDER BY ship_id").format(
        table("ship_lifecycle"), where), params)}
    chunks = {r["ship_id"]: r for r in _rows(cur, sql.SQL(
        # a partial cell (cut by the hand-off's --end) is done as far as the backfill went
        "SELECT ship_id, count(*) FILTER (WHERE status IN ('done', 'partial')) AS chunks_done, "
        "count(*) FILTER (WHERE status = 'partial') AS chunks_partial, "
        "count(*) FILTER (WHERE status NOT IN ('done', 'partial')) AS chunks_failed, "
        "coalesce(sum(narrow_rows) FILTER (WHERE status IN ('done', 'partial')), 0) AS narrow_rows, "
        "coalesce(sum(rejected_rows) FILTER (WHERE status IN ('done', 'partial')), 0) AS backfill_rejects "
        "FROM {} {} GROUP BY ship_id").format(table("backfill_chunks"), where), params)}
    cur.execute(sql.SQL("SELECT ship_id, count(*) FROM {} {} GROUP BY ship_id").format(table("rejects"), where),
                params)
    rejects = dict(cur.fetchall())
    failures = {r["ship_id"]: r for r in _rows(cur, sql.SQL(
        "SELECT ship_id, count(*) AS stream_failures, max(failed_at) AS last_stream_failure "
        "FROM {} {} GROUP BY ship_id").format(table("stream_failures"), where), params)}
    out = []
    for ship in sorted(set(rows) | set(chunks)):
        row = {"ship_id": ship, "state": lifecycle.PLANNED, **rows.get(ship, {})}
        c = chunks.get(ship, {})
        row.update(chunks_done=c.get("chunks_done", 0), chunks_partial=c.get("chunks_partial", 0),
                   chunks_failed=c.get("chunks_failed", 0),
                   narrow_rows=c.get("narrow_rows", 0), rejects=rejects.get(ship, 0),
                   **failures.get(ship, {"stream_failures": 0, "last_stream_failure": None}))
        out.append(row)
    return out


def attention(row: dict[str, Any]) -> list[str]:
    """Why a ship needs an operator, if it does (a rolled-back ship does not: it was taken out on
    purpose, and its last reconcile and stream failures are about tables that are gone)."""
    why: list[str] = []
    if row["state"] == lifecycle.ROLLED_BACK:
        return why
    if row["chunks_failed"]:
        why.append(f"{row['chunks_failed']} backfill chunks failed (run backfill again)")
    if row.get("last_reconcile_result") in ("mismatch", "error"):
        why.append(f"the last reconcile ({row['last_reconcile_at']:%Y-%m-%d %H:%M}Z) found "
                   f"{'differences' if row['last_reconcile_result'] == 'mismatch' else 'an error'} "
                   "(reconcile --repair)")
    failed_at = row["last_stream_failure"]
    if failed_at and (row.get("last_reconcile_at") is None or failed_at > row["last_reconcile_at"]):
        why.append(f"{row['stream_failures']} stream batches could not write it, the last at "
                   f"{failed_at:%Y-%m-%d %H:%M}Z (reconcile --repair)")
    return why


def _ago(now: dt.datetime, when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else \
        f"{seconds / 3600:.1f}h" if seconds < 172800 else f"{seconds / 86400:.0f}d"


def format_report(rows: list[dict[str, Any]], now: dt.datetime, fleet: list[str]) -> str:
    header = (f"{'ship_id':<24} {'state':<12} {'since':>6} {'narrow rows':>12} {'chunks':>13} {'rejects':>8} "
              f"{'streamed':>8}  last reconcile")
    lines = [header, "-" * len(header)]
    for r in rows:
        total = r.get("backfill_chunks_total") or 0
        chunks = f"{r['chunks_done']}/{total}" + (f" {100 * r['chunks_done'] // total}%" if total else "") + \
            (f" !{r['chunks_failed']}" if r["chunks_failed"] else "")
        rec = "rolled back: not checked" if r["state"] == lifecycle.ROLLED_BACK else \
            "-" if not r.get("last_reconcile_at") else (
            f"{r['last_reconcile_result']} through {r['last_reconcile_through']:%Y-%m-%d %H:%M}Z, "
            f"{_ago(now, r['last_reconcile_at'])} ago")
        switched = f"; switched {_ago(now, r['switched_at'])} ago" if r.get("switched_at") else ""
        lines.append(f"{r['ship_id'][:24]:<24} {r['state']:<12} {_ago(now, r.get('since')):>6} "
                     f"{r['narrow_rows']:>12,} {chunks:>13} {r['rejects']:>8,} "
                     f"{_ago(now, r.get('last_streamed_at')):>8}  {rec}{switched}")
    lines += fleet
    return "\n".join(lines)


def snapshot(cur: cursor, cat: str, ships: list[str] | None) -> tuple[dt.datetime, list[dict[str, Any]],
                                                                     list[dict[str, Any]]]:
    """The server's now, one row per ship (``gather``) and the stream queries (``streams``); bad
    input when ``ships`` names a ship the lifecycle does not know."""
    cur.execute("SELECT now()")
    now = cur.fetchone()[0]
    rows = gather(cur, cat, ships)
    unknown = sorted(set(ships or ()) - {r["ship_id"] for r in rows})
    if unknown:
        raise BadInput(f"--ships: no ship {', '.join(map(repr, unknown[:10]))} in the catalog's lifecycle "
                       f"({cat}.ship_lifecycle: plan or backfill puts ships there)")
    return now, rows, streams(cur, cat)


def no_catalog(name: str, config: Config, began: float) -> Result:
    """A read-only job on a server without widen's catalog (nothing made, nothing to show): exit 1,
    as for any state that needs attention; most often a wrong target.catalog_schema or database."""
    cat = config.target.catalog_schema
    message = f"{schema.NO_CATALOG} (no schema {cat!r} with widen's catalog in {config.target.connection.describe()})"
    return Result(name, EXIT_PROBLEM, {"ships": 0, "catalog": None, "attention": [message],
                                       "seconds": round(time.monotonic() - began, 3)}, f"{name}: {message}")


@job("status", StatusOptions, reads_narrow_table=False, ships_from=None, lock=False)
def run(config: Config, spark: SparkSession | None, options: StatusOptions) -> Result:
    began = time.monotonic()
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        if not schema.open_existing(conn, cat):
            return no_catalog("status", config, began)
        with conn.cursor() as cur:
            now, rows, queries = snapshot(cur, cat, options.ships)
        conn.rollback()
    lag = None
    newest = max((q["newest_created_time"] for q in queries if q["newest_created_time"]), default=None)
    if newest is not None:
        lag = max(0.0, (now - newest).total_seconds())
    states = {s: sum(1 for r in rows if r["state"] == s) for s in lifecycle.STATES}
    needs = {r["ship_id"]: why for r in rows if (why := attention(r))}
    fleet = [f"fleet: {len(rows)} ships: " + ", ".join(f"{n} {s}" for s, n in states.items() if n)]
    problems = [f"{ship}: {'; '.join(why)}" for ship, why in needs.items()]
    if lag is not None:
        fleet.append(f"stream: freshness lag {lag:.1f} s (limit {config.cutover.max_lag_seconds:g} s); " + ", ".join(
            f"{q['query_name']} batch {q['last_batch']} at {q['committed_at']:%H:%M:%S}Z" for q in queries))
        if lag > config.cutover.max_lag_seconds:
            problems.append(f"the stream lags {lag:.0f} s behind (cutover.max_lag_seconds "
                            f"{config.cutover.max_lag_seconds:g}): is it running?")
    else:
        fleet.append("stream: no batch recorded yet")
    text = format_report(rows, now, fleet + [f"ATTENTION {p}" for p in problems])

    def plain(value: Any) -> Any:
        return value.isoformat() if isinstance(value, dt.datetime) else value

    summary = {
        "ships": len(rows), "states": {s: n for s, n in states.items() if n},
        "stream_lag_seconds": None if lag is None else round(lag, 1),
        "streams": [{k: plain(v) for k, v in q.items()} for q in queries],
        "attention": problems, "seconds": round(time.monotonic() - began, 3),
        "ship_status": [{k: plain(v) for k, v in r.items()} for r in rows],
    }
    return Result("status", EXIT_PROBLEM if problems else EXIT_OK, summary, text)
