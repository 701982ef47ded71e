"""The ledgers that make writes exactly-once, and what widen records about its runs.

``backfill_chunks`` and ``stream_batches`` (a row commits in the same transaction as the data it
stands for), ``rejects`` (rows that could not be pivoted, with their raw values), ``stream_failures``
(a ship whose rows of a micro-batch could not be written), ``stream_starts`` (the durable hand-off
point) and ``reconcile_results``.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.pg import db, render

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg2.extensions import connection, cursor

# --- backfill chunks ------------------------------------------------------------------------------

def done_chunks(conn: connection, catalog_schema: str, ship_ids: list[str]) -> set[tuple[str, dt.datetime, dt.datetime]]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, range_start, range_end FROM {}.backfill_chunks "
                            "WHERE status = 'done' AND ship_id = ANY(%s)")
                    .format(sql.Identifier(catalog_schema)), (ship_ids,))
        return {(r[0], r[1], r[2]) for r in cur.fetchall()}


def record_chunk(cur: cursor, catalog_schema: str, ship_id: str, start: dt.datetime, end: dt.datetime,
                 status: str, attempts: int, started_at: dt.datetime, narrow_rows: int | None = None,
                 wide_rows: int | None = None, rejected: int | None = None,
                 duplicates: int | None = None, error: str | None = None) -> None:
    cur.execute(sql.SQL(
        "INSERT INTO {}.backfill_chunks AS b (ship_id, range_start, range_end, status, narrow_rows, "
        "wide_rows, attempts, started_at, finished_at, rejected_rows, duplicate_rows, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s) "
        "ON CONFLICT (ship_id, range_start, range_end) DO UPDATE SET status = EXCLUDED.status, "
        "narrow_rows = EXCLUDED.narrow_rows, wide_rows = EXCLUDED.wide_rows, "
        "attempts = b.attempts + EXCLUDED.attempts, started_at = EXCLUDED.started_at, "
        "finished_at = EXCLUDED.finished_at, rejected_rows = EXCLUDED.rejected_rows, "
        "duplicate_rows = EXCLUDED.duplicate_rows, error = EXCLUDED.error")
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

