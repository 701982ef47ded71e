"""The stream's foreachBatch sink: one micro-batch, one transaction, recorded in ``stream_batches``.

A micro-batch is a minute or so of readings, so it is gathered on the driver as Arrow and written
from there: per ship, new tables and columns are added, the rows are de-duplicated and pivoted by
the backfill's kernels, COPYed into temporary (unlogged, dropped at commit) staging tables and merged
column-wise with the backfill's statement; rejected rows go to ``rejects``; the batch id goes into
``stream_batches``. All of it in one transaction, so a batch already in the ledger is skipped and a
replayed one changes nothing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql
from psycopg2.extras import execute_values

from widen import catalog, db, kernels, sinks
from widen.config import Config

JOB = "stream"


@dataclass
class BatchResult:
    batch_id: int
    skipped: bool
    narrow_rows: int = 0
    wide_rows: int = 0
    ships: int = 0
    rejected_rows: int = 0
    duplicate_rows: int = 0
    newest_created_time: "dt.datetime | None" = None


def write_batch(config: Config, table: pa.Table, batch_id: int, query_name: str) -> BatchResult:
    """Write one micro-batch (columns of ``widen.stream_source.SCHEMA``) exactly once."""
    tgt_cfg = config.target
    cat = tgt_cfg.catalog_schema
    with db.connection(tgt_cfg.connection) as conn, conn.cursor() as cur:
        catalog.ensure_catalog(conn, cat)
        # One writer per query at a time; the ledger check below then decides.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.stream'), hashtext(%s))", (query_name,))
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE query_name = %s AND batch_id = %s").format(
            sql.Identifier(cat, "stream_batches")), (query_name, batch_id))
        if cur.fetchone():
            conn.rollback()
            return BatchResult(batch_id, skipped=True)
        is_reject = pc.is_valid(table.column("reject"))
        rejected = _write_rejects(cur, cat, table.filter(is_reject), batch_id)
        valid = table.filter(pc.invert(is_reject))
        result = BatchResult(batch_id, False, narrow_rows=table.num_rows, rejected_rows=rejected)
        ships = pc.unique(valid.column("ship_id")).to_pylist()
        for ship in sorted(ships):
            rows = valid.filter(pc.equal(valid.column("ship_id"), ship))
            wide, duplicates = _merge_ship(conn, cur, config, ship, rows)
            result.wide_rows += wide
            result.duplicate_rows += duplicates
        result.ships = len(ships)
        if valid.num_rows:
            newest = pc.max(valid.column("created_time")).as_py()
            result.newest_created_time = newest if newest.tzinfo else newest.replace(tzinfo=dt.timezone.utc)
        cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, narrow_rows, wide_rows, ships, "
                            "newest_created_time) VALUES (%s, %s, %s, %s, %s, %s)").format(
            sql.Identifier(cat, "stream_batches")),
                    (query_name, batch_id, result.narrow_rows, result.wide_rows, result.ships,
                     result.newest_created_time))
        conn.commit()
        return result


def _merge_ship(conn, cur, config: Config, ship: str, rows: pa.Table) -> tuple[int, int]:
    tgt_cfg = config.target
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.layout'), hashtext(%s))", (ship,))
    layout = catalog.load_layout(conn, tgt_cfg.catalog_schema, ship)
    channels = pc.unique(rows.column("data_channel_id")).to_pylist()
    catalog.assign_channels(layout, {c: (None, None) for c in channels if c not in layout.channels},
                            tgt_cfg.wide_table_template, tgt_cfg.max_columns_per_table,
                            tgt_cfg.max_row_bytes)
    catalog.save_layout(conn, tgt_cfg.catalog_schema, tgt_cfg.schema, layout)
    catalog.ensure_wide_tables(conn, tgt_cfg.schema, layout)
    order = [c.data_channel_id for part in layout.parts for c in layout.part_channels(part)]
    index = {channel: i for i, channel in enumerate(order)}
    codes = pc.index_in(rows.column("data_channel_id"), value_set=pa.array(order, pa.string()))
    coded = pa.table({"created_time": pc.cast(rows.column("created_time"), pa.timestamp("us", tz="UTC")),
                      "channel": codes, "value": rows.column("value"),
                      **({"order_key": rows.column("order_key")}
                         if config.source.order_column else {})})
    wide, duplicates = kernels.dedup_and_pivot(coded, len(index), config.source.order_column is not None)
    times = kernels.timestamp_text(wide.times)
    first = 0
    for part in layout.parts:
        members = layout.part_channels(part)
        staging = sql.Identifier(f"widen_stream_p{part}")
        cols = [sql.SQL("{} text").format(sql.Identifier(c.column_name)) for c in members]
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (created_time timestamptz{}{}) ON COMMIT DROP").format(
            staging, sql.SQL(", ") if cols else sql.SQL(""), sql.SQL(", ").join(cols)))
        sinks.copy_into(cur, staging, [times, *wide.columns[first:first + len(members)]])
        first += len(members)
        cur.execute(sinks.merge_statement(conn.server_version,
                                          sql.Identifier(tgt_cfg.schema, layout.tables[part]), staging,
                                          [c.column_name for c in members],
                                          # without an order column the greatest value wins, also
                                          # against what earlier batches merged
                                          greatest=config.source.order_column is None))
        cur.execute(sql.SQL("DROP TABLE {}").format(staging))
    return wide.num_rows, duplicates


def _write_rejects(cur, catalog_schema: str, rejects: pa.Table, batch_id: int) -> int:
    """Rejected rows with their raw values (the text array the source query built)."""
    if not rejects.num_rows:
        return 0
    rows = list(zip(rejects.column("ship_id").to_pylist(), rejects.column("created_time").to_pylist(),
                    rejects.column("reject").to_pylist()))
    execute_values(cur, sql.SQL(
        "INSERT INTO {r} (ship_id, data_channel_id, created_time, reason, value_format, double_v, long_v, "
        "str_v, bool_v, job, batch) SELECT v.ship_id, a[2], v.created_time::timestamptz, a[1], a[3], "
        "a[4]::double precision, a[5]::bigint, a[6], a[7]::boolean, {job}, {batch} "
        "FROM (VALUES %s) AS v(ship_id, created_time, raw) CROSS JOIN LATERAL (SELECT v.raw::text[] AS a) r"
    ).format(r=sql.Identifier(catalog_schema, "rejects"), job=sql.Literal(JOB),
             batch=sql.Literal(str(batch_id))).as_string(cur), rows)
    return len(rows)
