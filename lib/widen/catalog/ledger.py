"""The ledgers that make writes exactly-once, and what widen records about its runs.

``backfill_chunks`` and ``stream_batches`` (a row commits in the same transaction as the data it
stands for), ``rejects`` (rows that could not be pivoted, with their raw values), ``stream_failures``
(a ship whose rows of a micro-batch could not be written), ``stream_starts`` (the durable hand-off
point) and ``reconcile_results``.
"""
from __future__ import annotations

import bisect
import datetime as dt
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.core.chunks import extend_coverage, fold_reads
from widen.pg import db, render

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg2.extensions import connection, cursor

    from widen.core.chunks import Chunk

# --- backfill chunks ------------------------------------------------------------------------------
# A row per ship x grid cell (``core.chunks``): status done (the whole cell read), partial (the part
# ``covered_start``..``covered_end`` read; a later run reads the rest) or failed (the last attempt
# failed; what it covered before is kept). Rows made before covered_* existed are whole cells.

_COVERED = ("CASE WHEN status = 'done' THEN coalesce(covered_start, range_start) ELSE covered_start END, "
            "CASE WHEN status = 'done' THEN coalesce(covered_end, range_end) ELSE covered_end END")


def chunk_coverage(conn: connection, catalog_schema: str, ship_ids: list[str]) -> dict[tuple, tuple | None]:
    """(ship, cell start, cell end) -> the range of the cell the ledger holds as read, for every
    cell of ``ship_ids`` it has a row for (None: nothing read)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, range_start, range_end, " + _COVERED + " FROM {} "
                            "WHERE ship_id = ANY(%s)").format(sql.Identifier(catalog_schema, "backfill_chunks")),
                    (ship_ids,))
        return {(s, lo, hi): ((c0, c1) if c0 is not None else None) for s, lo, hi, c0, c1 in cur.fetchall()}


def fold_into_cells(conn: connection, catalog_schema: str, chunks: list[Chunk]) -> int:
    """Rows of the ledger that lie inside a planned cell without being it (an older widen recorded
    a cell cut by --end or --start under the cut range; another ``chunk_hours`` cut other cells)
    become that cell's row, covering what they read, so a run reads only the rest and names the
    same chunks as every later one. Returns the cells folded (committed)."""
    from widen.catalog import ships as ship_states

    table = sql.Identifier(catalog_schema, "backfill_chunks")
    cells: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {}
    for ship, lo, hi in {c.key for c in chunks}:
        cells.setdefault(ship, []).append((lo, hi))
    for spans in cells.values():
        spans.sort()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, range_start, range_end FROM {} WHERE ship_id = ANY(%s)").format(table),
                    (sorted(cells),))
        rows = cur.fetchall()
    conn.rollback()
    strays = set()
    for ship, lo, hi in rows:       # the planned cell holding the row, if one does
        spans = cells[ship]
        i = bisect.bisect_right(spans, (lo, dt.datetime.max.replace(tzinfo=dt.UTC))) - 1
        if i >= 0 and spans[i][0] <= lo and hi <= spans[i][1] and (lo, hi) != spans[i]:
            strays.add((ship, *spans[i]))
    folds = 0
    for ship, cell_lo, cell_hi in sorted(strays):
        with conn.cursor() as cur:
            # the ship's write lock, as every writer of its ledger rows takes it: a rollback waits
            if not ship_states.lock_ship_for_write(cur, catalog_schema, ship):
                conn.rollback()
                continue
            cur.execute(sql.SQL("SELECT range_start, range_end, " + _COVERED + ", narrow_rows, wide_rows, "
                                "rejected_rows, duplicate_rows, attempts, started_at FROM {} WHERE ship_id = %s "
                                "AND range_start >= %s AND range_end <= %s FOR UPDATE").format(table),
                        (ship, cell_lo, cell_hi))
            inside = cur.fetchall()
            folded = fold_reads([((c0, c1), tuple(figures)) for _, _, c0, c1, *figures, _, _ in inside
                                 if c0 is not None])
            if folded is None:      # a hole or a part overlap: the cell is read again as it is
                conn.rollback()
                continue
            (lo, hi), figures = folded
            status = "done" if lo <= cell_lo and hi >= cell_hi else "partial"
            cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s AND range_start >= %s AND range_end <= %s")
                        .format(table), (ship, cell_lo, cell_hi))
            cur.execute(sql.SQL(
                "INSERT INTO {} (ship_id, range_start, range_end, status, narrow_rows, wide_rows, rejected_rows, "
                "duplicate_rows, attempts, started_at, finished_at, covered_start, covered_end) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s)").format(table),
                (ship, cell_lo, cell_hi, status, *figures, sum(r[-2] or 0 for r in inside),
                 min((r[-1] for r in inside if r[-1] is not None), default=None),
                 max(lo, cell_lo), min(hi, cell_hi)))
        conn.commit()
        folds += 1
    return folds


def record_chunk_read(cur: cursor, catalog_schema: str, chunk: Chunk, attempts: int, started_at: dt.datetime,
                      narrow_rows: int, wide_rows: int, rejected: int, duplicates: int) -> str:
    """Record that ``chunk``'s read range is merged (in the merge's transaction, which holds the
    ship's write lock): the cell's covered range grows by it and its figures add up, or, when the
    read holds all the cell had, replace the old ones. Returns the row's status (done, partial)."""
    table = sql.Identifier(catalog_schema, "backfill_chunks")
    ship, cell_lo, cell_hi = chunk.key
    cur.execute(sql.SQL("SELECT " + _COVERED + ", narrow_rows, wide_rows, rejected_rows, duplicate_rows "
                        "FROM {} WHERE ship_id = %s AND range_start = %s AND range_end = %s FOR UPDATE")
                .format(table), chunk.key)
    row = cur.fetchone()
    covered = (row[0], row[1]) if row and row[0] is not None else None
    (lo, hi), adds = extend_coverage(covered, (chunk.range_start, chunk.range_end))
    figures = [narrow_rows, wide_rows, rejected, duplicates]
    if adds and row:
        figures = [new + (old or 0) for new, old in zip(figures, row[2:], strict=True)]
    status = "done" if lo <= cell_lo and hi >= cell_hi else "partial"
    cur.execute(sql.SQL(
        "INSERT INTO {} AS b (ship_id, range_start, range_end, status, narrow_rows, wide_rows, rejected_rows, "
        "duplicate_rows, attempts, started_at, finished_at, error, covered_start, covered_end) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), NULL, %s, %s) "
        "ON CONFLICT (ship_id, range_start, range_end) DO UPDATE SET status = EXCLUDED.status, "
        "narrow_rows = EXCLUDED.narrow_rows, wide_rows = EXCLUDED.wide_rows, rejected_rows = EXCLUDED.rejected_rows, "
        "duplicate_rows = EXCLUDED.duplicate_rows, attempts = b.attempts + EXCLUDED.attempts, "
        "started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, error = NULL, "
        "covered_start = EXCLUDED.covered_start, covered_end = EXCLUDED.covered_end").format(table),
        (ship, cell_lo, cell_hi, status, *figures, attempts, started_at, max(lo, cell_lo), min(hi, cell_hi)))
    return status


def record_chunk(cur: cursor, catalog_schema: str, ship_id: str, start: dt.datetime, end: dt.datetime,
                 status: str, attempts: int, started_at: dt.datetime, narrow_rows: int | None = None,
                 wide_rows: int | None = None, rejected: int | None = None,
                 duplicates: int | None = None, error: str | None = None) -> None:
    cur.execute(sql.SQL(
        "INSERT INTO {}.backfill_chunks AS b (ship_id, range_start, range_end, status, narrow_rows, "
        "wide_rows, attempts, started_at, finished_at, rejected_rows, duplicate_rows, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s) "
        "ON CONFLICT (ship_id, range_start, range_end) DO UPDATE SET status = EXCLUDED.status, "
        "narrow_rows = coalesce(EXCLUDED.narrow_rows, b.narrow_rows), "
        "wide_rows = coalesce(EXCLUDED.wide_rows, b.wide_rows), "
        "attempts = b.attempts + EXCLUDED.attempts, started_at = EXCLUDED.started_at, "
        "finished_at = EXCLUDED.finished_at, rejected_rows = coalesce(EXCLUDED.rejected_rows, b.rejected_rows), "
        "duplicate_rows = coalesce(EXCLUDED.duplicate_rows, b.duplicate_rows), error = EXCLUDED.error")
        .format(sql.Identifier(catalog_schema)),
        (ship_id, start, end, status, narrow_rows, wide_rows, attempts, started_at, rejected,
         duplicates, error))


# --- stream batches -------------------------------------------------------------------------------

def lock_query(cur: cursor, query_name: str) -> None:
    """One writer per stream query at a time, to the end of the transaction."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.stream'), hashtext(%s))", (query_name,))


def in_ledger(conn: connection, catalog_schema: str, query_name: str, batch_id: int, end_transaction: bool = True) -> bool:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE query_name = %s AND batch_id = %s").format(
            sql.Identifier(catalog_schema, "stream_batches")), (query_name, batch_id))
        found = cur.fetchone() is not None
    if end_transaction:
        conn.rollback()
    return found


def record_batch(cur: cursor, catalog_schema: str, query_name: str, batch_id: int, narrow_rows: int, wide_rows: int,
                 ships: int, newest_created_time: dt.datetime | None) -> None:
    cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, narrow_rows, wide_rows, ships, newest_created_time) "
                        "VALUES (%s, %s, %s, %s, %s, %s)").format(sql.Identifier(catalog_schema, "stream_batches")),
                (query_name, batch_id, narrow_rows, wide_rows, ships, newest_created_time))


def record_late_rows(conn: connection, catalog_schema: str, query_name: str, batch_id: int, late: int) -> None:
    """Rows Spark dropped behind the watermark in a batch (known only after the batch committed)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET late_rows = %s WHERE query_name = %s AND batch_id = %s")
                    .format(sql.Identifier(catalog_schema, "stream_batches")), (late, query_name, batch_id))
    conn.commit()


def record_stream_failure(cur: cursor, catalog_schema: str, query_name: str, batch_id: int, ship: str, rows: int,
                          first: dt.datetime | None, last: dt.datetime | None, error: str) -> None:
    cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, ship_id, narrow_rows, first_created_time, "
                        "last_created_time, error) VALUES (%s, %s, %s, %s, %s, %s, %s)").format(
        sql.Identifier(catalog_schema, "stream_failures")), (query_name, batch_id, ship, rows, first, last, error))


def recorded_start(conn: connection, catalog_schema: str, query_name: str, checkpoint: str, take: Callable[[],
                   dict]) -> tuple[dict, bool]:
    """The stream query's first offset: the one recorded for (query name, checkpoint), else
    ``take()`` recorded now (whoever records first wins). (offset, whether it was recorded before)."""
    table = sql.Identifier(catalog_schema, "stream_starts")
    key = (query_name, checkpoint)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT start_offset FROM {} WHERE query_name = %s AND checkpoint = %s").format(table), key)
        row = cur.fetchone()
        before = row is not None
        if row is None:
            cur.execute(sql.SQL("INSERT INTO {} (query_name, checkpoint, start_offset) VALUES (%s, %s, %s) "
                                "ON CONFLICT DO NOTHING").format(table), (*key, json.dumps(take())))
            cur.execute(sql.SQL("SELECT start_offset FROM {} WHERE query_name = %s AND checkpoint = %s")
                        .format(table), key)
            row = cur.fetchone()
    conn.commit()
    return json.loads(row[0]), before


# --- rejects --------------------------------------------------------------------------------------

def _insert_rejects(catalog_schema: str, rows: sql.Composable, job: str, batch: str) -> sql.Composable:
    """INSERT into ``rejects`` from ``rows`` (ship_id, created_time, raw: a raw-reject text array)."""
    a = render.raw_reject_columns(sql.SQL("r.raw::text[]"))
    return sql.SQL(
        "INSERT INTO {t} (ship_id, created_time, reason, data_channel_id, value_format, double_v, long_v, str_v, "
        "bool_v, job, batch) SELECT r.ship_id, r.created_time::timestamptz, {reason}, {ch}, {fmt}, {d}, {l}, {s}, "
        "{b}, {job}, {batch} FROM {rows} r").format(
        t=sql.Identifier(catalog_schema, "rejects"), reason=a["reason"], ch=a["data_channel_id"],
        fmt=a["value_format"], d=a["double_v"], l=a["long_v"], s=a["str_v"], b=a["bool_v"],
        job=sql.Literal(job), batch=sql.Literal(batch), rows=rows)


def delete_rejects_in_range(cur: cursor, catalog_schema: str, job: str, ship_id: str, lo: dt.datetime,
                            hi: dt.datetime) -> None:
    """A job's rejects of one ship's created_time range, whatever unit recorded them (a cell read
    in parts has its rejects under each part's label)."""
    cur.execute(sql.SQL("DELETE FROM {} WHERE job = %s AND ship_id = %s AND created_time >= %s AND created_time < %s")
                .format(sql.Identifier(catalog_schema, "rejects")), (job, ship_id, lo, hi))


def delete_rejects(cur: cursor, catalog_schema: str, job: str, batch: str) -> None:
    cur.execute(sql.SQL("DELETE FROM {} WHERE job = %s AND batch = %s").format(
        sql.Identifier(catalog_schema, "rejects")), (job, batch))


def replace_rejects(cur: cursor, catalog_schema: str, staged: sql.Composable, job: str, batch: str) -> int:
    """Swap the unit's rejects for the staged ones (a table of ship_id, created_time, raw)."""
    delete_rejects(cur, catalog_schema, job, batch)
    cur.execute(_insert_rejects(catalog_schema, sql.SQL("(SELECT ship_id, created_time, raw FROM {})").format(staged),
                                job, batch))
    return cur.rowcount


def write_rejects(cur: cursor, catalog_schema: str, rejects: pa.Table, batch: int | str, job: str) -> int:
    """Rejected rows (an Arrow table of ship_id, created_time, reject: the raw-reject array)."""
    if not rejects.num_rows:
        return 0
    rows = list(zip(rejects.column("ship_id").to_pylist(), rejects.column("created_time").to_pylist(),
                    rejects.column("reject").to_pylist()))
    rows_sql = sql.SQL("(SELECT * FROM (VALUES %s) AS v(ship_id, created_time, raw))")
    db.execute_values(cur, _insert_rejects(catalog_schema, rows_sql, job, str(batch)), rows)
    return len(rows)


def replace_swept_rejects(cur: cursor, catalog_schema: str, rows: Iterable[tuple], ships: list[str] | None, job: str) -> int:
    """Replace the rejects of rows that belong to no chunk (``batch = 'sweep'``) with ``rows``
    (full narrow rows + reason). Two runs sweep one after the other (a lock to the end of the
    transaction), each replacing what the other wrote, never both inserting."""
    table = sql.Identifier(catalog_schema, "rejects")
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.reject_sweep'))")
    delete = sql.SQL("DELETE FROM {} WHERE job = %s AND batch = 'sweep'").format(table)
    params: list = [job]
    if ships:
        delete += sql.SQL(" AND (ship_id IS NULL OR ship_id = '' OR ship_id = ANY(%s))")
        params.append(list(ships))
    cur.execute(delete, params)
    insert = sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v, long_v, "
                     "str_v, bool_v, reason, job, batch) VALUES %s").format(table)
    swept = 0
    page: list[tuple] = []
    for row in rows:
        page.append((*row, job, "sweep"))
        if len(page) == 10_000:
            db.execute_values(cur, insert, page)
            swept += len(page)
            page = []
    if page:
        db.execute_values(cur, insert, page)
        swept += len(page)
    return swept


# --- reconcile ------------------------------------------------------------------------------------

def record_reconcile_results(cur: cursor, catalog_schema: str, rows: list[tuple]) -> None:
    """(run_id, ship, bucket_start, bucket_end, source/target times, cells, checksums, status) rows."""
    if rows:
        db.execute_values(cur, sql.SQL(
            "INSERT INTO {} (run_id, ship_id, bucket_start, bucket_end, source_times, target_times, "
            "source_cells, target_cells, source_checksum, target_checksum, status) VALUES %s").format(
            sql.Identifier(catalog_schema, "reconcile_results")), rows)

