"""Reads from the narrow source table: chunk planning queries and partitioned JDBC reads.

Values are rendered in the source SQL (``render.rendered_value``). A chunk read is split into
created_time sub-ranges, one JDBC partition each, so every row of one timestamp lands in exactly
one Spark partition and the pivot needs no shuffle.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from psycopg2 import sql
from pyspark.sql import DataFrame, SparkSession

from widen import render
from widen.config import SourceConfig

RAW_COLUMNS = ("value_format", "double_v", "long_v", "str_v", "bool_v")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True, order=True)
class Chunk:
    ship_id: str
    range_start: dt.datetime
    range_end: dt.datetime
    narrow_rows: int = 0

    @property
    def key(self) -> tuple[str, dt.datetime, dt.datetime]:
        return (self.ship_id, self.range_start, self.range_end)

    def label(self) -> str:
        return f"{self.ship_id} [{self.range_start.isoformat()}, {self.range_end.isoformat()})"


def source_table(cfg: SourceConfig) -> sql.Composable:
    return sql.Identifier(cfg.schema, cfg.table)


def plan_chunks(conn, cfg: SourceConfig, ship_ids: list[str] | None, start: dt.datetime | None,
                end: dt.datetime | None, chunk_hours: float) -> list[Chunk]:
    """Non-empty chunks (ship x aligned time range) with their narrow row counts, in one scan.

    Chunk boundaries are multiples of ``chunk_hours`` since the epoch, clipped to [start, end), so
    the same arguments always give the same chunks and the ledger can skip finished ones.
    """
    width = chunk_hours * 3600.0
    where = [sql.SQL("ship_id IS NOT NULL"), sql.SQL("created_time IS NOT NULL")]
    params: list = []
    if ship_ids:
        where.append(sql.SQL("ship_id = ANY(%s)"))
        params.append(list(ship_ids))
    if start:
        where.append(sql.SQL("created_time >= %s"))
        params.append(start)
    if end:
        where.append(sql.SQL("created_time < %s"))
        params.append(end)
    query = sql.SQL(
        "SELECT ship_id, floor(extract(epoch FROM created_time) / %s)::bigint AS bucket, count(*) "
        "FROM {t} WHERE {w} GROUP BY 1, 2 ORDER BY 1, 2").format(
        t=source_table(cfg), w=sql.SQL(" AND ").join(where))
    chunks = []
    with conn.cursor() as cur:
        cur.execute(query, [width, *params])
        for ship_id, bucket, count in cur.fetchall():
            lo = EPOCH + dt.timedelta(seconds=bucket * width)
            hi = EPOCH + dt.timedelta(seconds=(bucket + 1) * width)
            chunks.append(Chunk(ship_id, max(lo, start) if start else lo,
                                min(hi, end) if end else hi, count))
    return chunks


def sub_ranges(start: dt.datetime, end: dt.datetime, parts: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """Split [start, end) into ``parts`` contiguous ranges on whole-second boundaries."""
    total = (end - start).total_seconds()
    parts = max(1, min(parts, math.ceil(total)))
    step = total / parts
    bounds = [start] + [start + dt.timedelta(seconds=math.floor(step * i)) for i in range(1, parts)] + [end]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def chunk_query(conn, cfg: SourceConfig, ship_id: str) -> str:
    """The JDBC ``dbtable`` subquery for one ship: rendered value, reject reason, raw rejected values.

    Raw columns are only carried for rejected rows, so valid rows cost three columns on the wire.
    """
    reason = render.reject_reason_sql()
    raw = [sql.SQL("CASE WHEN {r} IS NOT NULL THEN {c} END AS {a}").format(
        r=reason, c=sql.Identifier(c), a=sql.Identifier(f"raw_{c}")) for c in RAW_COLUMNS]
    order = ([sql.SQL("{} AS order_key").format(sql.Identifier(cfg.order_column))]
             if cfg.order_column else [])
    query = sql.SQL(
        "(SELECT created_time, data_channel_id, {value} AS value, {order}{reason} AS reject_reason, "
        "{raw} FROM {t} WHERE ship_id = {ship}) AS narrow_chunk").format(
        value=render.rendered_value(), order=sql.SQL("").join(o + sql.SQL(", ") for o in order),
        reason=reason, raw=sql.SQL(", ").join(raw), t=source_table(cfg), ship=sql.Literal(ship_id))
    return query.as_string(conn)


def time_predicates(conn, ranges: list[tuple[dt.datetime, dt.datetime]]) -> list[str]:
    return [sql.SQL("created_time >= {} AND created_time < {}").format(
        sql.Literal(lo), sql.Literal(hi)).as_string(conn) for lo, hi in ranges]


def read_chunk(spark: SparkSession, conn, cfg: SourceConfig, jdbc_url: str, jdbc_props: dict,
               chunk: Chunk, partitions: int) -> DataFrame:
    """A partitioned JDBC read of one chunk: one Spark partition per created_time sub-range."""
    props = dict(jdbc_props)
    props["fetchsize"] = str(cfg.fetch_size)
    predicates = time_predicates(conn, sub_ranges(chunk.range_start, chunk.range_end, partitions))
    return spark.read.jdbc(jdbc_url, chunk_query(conn, cfg, chunk.ship_id), predicates=predicates,
                           properties=props)
