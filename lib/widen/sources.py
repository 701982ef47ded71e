"""Reads from the narrow source table: chunk planning queries and partitioned JDBC reads.

Values are rendered in the source SQL (``render.rendered_value``). A chunk read is split into
created_time sub-ranges, one JDBC partition each, so every row of one timestamp lands in exactly
one Spark partition and the pivot needs no shuffle.
"""
from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass

from psycopg2 import sql
from pyspark.sql import DataFrame, SparkSession

from widen import render
from widen.config import SourceConfig


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


#: the narrow table's columns and the PostgreSQL types (base type names) each may have
NARROW_COLUMNS = {
    "ship_id": ("text", "varchar", "bpchar", "name"),
    "data_channel_id": ("text", "varchar", "bpchar", "name"),
    "created_time": ("timestamptz", "timestamp"),
    "value_format": ("text", "varchar", "bpchar", "name"),
    "double_v": ("float8", "float4"),
    "long_v": ("int8", "int4", "int2"),
    "str_v": ("text", "varchar", "bpchar", "name"),
    "bool_v": ("bool",),
}
ORDER_COLUMN_TYPES = ("int8", "int4", "int2")


def narrow_columns(cur, schema: str, table: str) -> dict[str, str] | None:
    """column -> base type name of a table or view, or None when there is no such relation."""
    cur.execute(
        "SELECT a.attname, CASE WHEN t.typtype = 'd' THEN b.typname ELSE t.typname END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "LEFT JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type b ON b.oid = t.typbasetype "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        (schema, table))
    rows = cur.fetchall()
    if not rows:
        return None
    return {name: kind for name, kind in rows if name is not None}


def require_table(cfg: SourceConfig) -> None:
    """A clear error (exit 2) before any work when the narrow table is not there, lacks a column
    or has one of the wrong type."""
    from widen import db
    from widen.config import ConfigError

    where = f"{cfg.schema}.{cfg.table}"
    with db.connection(cfg.connection) as conn, conn.cursor() as cur:
        columns = narrow_columns(cur, cfg.schema, cfg.table)
    if columns is None:
        raise ConfigError(f"the narrow table {where} does not exist on {cfg.connection.describe()}: check "
                          "source.schema and source.table (or fill it with the generate job)")
    expected = dict(NARROW_COLUMNS)
    if cfg.order_column:
        expected[cfg.order_column] = ORDER_COLUMN_TYPES
    missing = [name for name in expected if name not in columns]
    if missing:
        raise ConfigError(f"the narrow table {where} has no column {', '.join(missing)} "
                          f"(widen reads {', '.join(expected)})")
    for name, allowed in expected.items():
        if columns[name] not in allowed:
            key = " (source.order_column)" if name == cfg.order_column else ""
            raise ConfigError(f"the narrow table's column {name}{key} is {columns[name]}; widen needs "
                              f"{' or '.join(allowed)}")


def unknown_ships(conn, cfg: SourceConfig, ships: list[str]) -> list[str]:
    """The ships of ``ships`` with no row in the narrow table (an index probe each)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT s FROM unnest(%s::text[]) AS s WHERE NOT EXISTS "
                            "(SELECT 1 FROM {} WHERE ship_id = s)").format(source_table(cfg)), (list(ships),))
        return [r[0] for r in cur.fetchall()]


def chunk_index_warning(conn, cfg: SourceConfig) -> str | None:
    """A warning when no index starts with (ship_id, created_time): then every chunk read scans the table."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT array_agg(a.attname ORDER BY k.i) FROM pg_index x "
            "JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(x.indkey[0:1]) WITH ORDINALITY AS k(attnum, i) "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            "WHERE n.nspname = %s AND c.relname = %s GROUP BY x.indexrelid", (cfg.schema, cfg.table))
        leading = [tuple(r[0]) for r in cur.fetchall()]
    if ("ship_id", "created_time") in leading:
        return None
    return (f"{cfg.schema}.{cfg.table} has no index on (ship_id, created_time): every chunk read will "
            f"scan the whole table. Create one first, e.g. CREATE INDEX CONCURRENTLY ON "
            f"{cfg.schema}.{cfg.table} (ship_id, created_time)")


def plan_chunks(conn, cfg: SourceConfig, ship_ids: list[str] | None, start: dt.datetime | None,
                end: dt.datetime | None, chunk_hours: float) -> list[Chunk]:
    """Non-empty chunks (ship x aligned time range) with their narrow row counts, in one scan.

    Chunk boundaries are multiples of ``chunk_hours`` since the epoch, clipped to [start, end), so
    the same arguments always give the same chunks and the ledger can skip finished ones.
    """
    width = chunk_hours * 3600.0
    where = [sql.SQL("ship_id IS NOT NULL"), sql.SQL("ship_id <> ''"), sql.SQL("created_time IS NOT NULL")]
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
    if conn.server_version >= 140000:
        # date_bin groups about 2.5x faster than arithmetic on extract(epoch), a numeric since 14.
        bucket = sql.SQL("date_bin(%s * interval '1 second', created_time, timestamptz 'epoch')")
    else:
        bucket = sql.SQL("to_timestamp(floor(extract(epoch FROM created_time) / %s) * {w})").format(
            w=sql.Literal(width))
    query = sql.SQL("SELECT ship_id, {b} AS bucket, count(*) FROM {t} WHERE {w} GROUP BY 1, 2 "
                    "ORDER BY 1, 2").format(b=bucket, t=source_table(cfg), w=sql.SQL(" AND ").join(where))
    chunks = []
    with conn.cursor() as cur:
        cur.execute(query, [width, *params])
        for ship_id, lo, count in cur.fetchall():
            hi = lo + dt.timedelta(seconds=width)
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


def chunk_query(conn, cfg: SourceConfig, ship_id: str, lo: dt.datetime, hi: dt.datetime,
                channels: list[str]) -> str:
    """The JDBC ``dbtable`` subquery for one ship and one created_time range: one row per created_time.

    The database does the cheap half of the pivot (grouping by time, index-ordered) and the rows
    that cross the wire drop from one per reading to one per timestamp, which is what the JDBC
    driver and Spark spend their time on. Columns:

    - ``created_us``: created_time in microseconds since the epoch (a bigint decodes far faster than
      a timestamp; exact on every version, as ``extract`` is numeric from PostgreSQL 14 and, before
      it, a double within 0.3 µs of the value, which the cast rounds to the right microsecond);
    - ``channel_idx`` and ``value``: aligned arrays over the valid rows of that time: the channel's
      position in ``channels`` (joined in SQL, so long names never cross the wire; NULL for a
      channel not in the list) and the value rendered by PostgreSQL;
    - ``unknown``: names of valid channels not in ``channels``;
    - ``order_key``: aligned with ``value`` when an order column is configured;
    - ``rejects``: one text array per rejected row: reason, data_channel_id, value_format, double_v,
      long_v, str_v, bool_v as PostgreSQL prints them (and reads back exactly).

    Rows of one group reach every ``array_agg`` in the same order, so the arrays stay aligned.
    """
    reason = render.reject_reason_sql("t")
    valid = sql.SQL("{} IS NULL").format(reason)
    raw = sql.SQL("ARRAY[{r}, t.data_channel_id, t.value_format, t.double_v::text, t.long_v::text, "
                  "t.str_v, t.bool_v::text]::text").format(r=reason)
    order = ([sql.SQL("array_agg(t.{}) FILTER (WHERE {v}) AS order_key, ").format(
        sql.Identifier(cfg.order_column), v=valid)] if cfg.order_column else [])
    if channels:
        known = sql.SQL("(VALUES {}) AS m(name, idx)").format(sql.SQL(", ").join(
            sql.SQL("({}, {})").format(sql.Literal(name), sql.Literal(i)) for i, name in enumerate(channels)))
    else:
        known = sql.SQL("(SELECT NULL::text AS name, NULL::integer AS idx WHERE false) AS m")
    query = sql.SQL(
        "(SELECT (extract(epoch FROM t.created_time) * 1000000)::bigint AS created_us, "
        "array_agg(m.idx) FILTER (WHERE {v}) AS channel_idx, "
        "array_agg({value}) FILTER (WHERE {v}) AS value, "
        "array_agg(t.data_channel_id) FILTER (WHERE {v} AND m.idx IS NULL) AS unknown, {order}"
        "array_agg({raw}) FILTER (WHERE NOT {v}) AS rejects "
        "FROM {t} AS t LEFT JOIN {known} ON m.name = t.data_channel_id "
        "WHERE t.ship_id = {ship} AND t.created_time >= {lo} AND t.created_time < {hi} "
        "GROUP BY t.created_time) AS narrow_chunk").format(
        v=valid, value=render.rendered_value("t"), order=sql.SQL("").join(order), raw=raw,
        t=source_table(cfg), known=known, ship=sql.Literal(ship_id), lo=sql.Literal(lo),
        hi=sql.Literal(hi))
    return query.as_string(conn)


def read_chunk(spark: SparkSession, conn, cfg: SourceConfig, jdbc_url: str, jdbc_props: dict,
               chunk: Chunk, partitions: int, channels: list[str]) -> DataFrame:
    """A partitioned JDBC read of one chunk: one Spark partition per created_time sub-range.

    Each sub-range is its own single-partition JDBC read whose range sits inside the SQL (so the
    index on created_time is used); their union keeps one partition each, with no shuffle.
    """
    props = dict(jdbc_props)
    props["fetchsize"] = str(cfg.fetch_size)
    frames = [spark.read.jdbc(jdbc_url, chunk_query(conn, cfg, chunk.ship_id, lo, hi, channels), properties=props)
              for lo, hi in sub_ranges(chunk.range_start, chunk.range_end, partitions)]
    return functools.reduce(DataFrame.union, frames)


#: the columns of narrow rows as the stream and repair hand them on (``stream_source.SCHEMA``)
ROW_NAMES = ["ship_id", "data_channel_id", "created_time", "value", "reject", "order_key"]


def _row_types():
    import pyarrow as pa

    return [pa.string(), pa.string(), pa.timestamp("us", tz="UTC"), pa.string(), pa.string(), pa.int64()]


def range_pieces(conn, cfg: SourceConfig, ship_id: str, lo: dt.datetime, hi: dt.datetime,
                 rows_per_piece: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """[lo, hi) cut at created_time boundaries so that each piece holds about ``rows_per_piece``
    of the ship's narrow rows (index probes; a single instant with more rows stays whole)."""
    bounds = [lo]
    with conn.cursor() as cur:
        while True:
            cur.execute(sql.SQL("SELECT created_time FROM {} WHERE ship_id = %s AND created_time >= %s AND "
                                "created_time < %s ORDER BY created_time OFFSET %s LIMIT 1").format(
                source_table(cfg)), (ship_id, bounds[-1], hi, rows_per_piece))
            row = cur.fetchone()
            if row is None:
                break
            cut = row[0]
            if cut <= bounds[-1]:
                cur.execute(sql.SQL("SELECT min(created_time) FROM {} WHERE ship_id = %s AND created_time > %s "
                                    "AND created_time < %s").format(source_table(cfg)), (ship_id, bounds[-1], hi))
                cut = cur.fetchone()[0]
                if cut is None:
                    break
            bounds.append(cut)
    conn.rollback()
    return list(zip(bounds, bounds[1:] + [hi]))


def ship_rows(conn, cfg: SourceConfig, ship_id: str, times: list[dt.datetime],
              ranges: list[tuple[dt.datetime, dt.datetime]]):
    """The ship's valid narrow rows at ``times`` and in ``ranges`` ([lo, hi)), values rendered in
    SQL, as an Arrow table of ``ROW_NAMES`` (read with a server-side cursor)."""
    import pyarrow as pa

    where = sql.SQL("(created_time = ANY(%(times)s) OR {})").format(
        sql.SQL(" OR ").join([sql.SQL("(created_time >= {} AND created_time < {})").format(
            sql.Placeholder(f"lo{i}"), sql.Placeholder(f"hi{i}")) for i in range(len(ranges))] or [sql.SQL("false")]))
    params = {"ship": ship_id, "times": list(times), **{f"lo{i}": lo for i, (lo, _) in enumerate(ranges)},
              **{f"hi{i}": hi for i, (_, hi) in enumerate(ranges)}}
    order = sql.Identifier(cfg.order_column) if cfg.order_column else sql.SQL("NULL::bigint")
    query = sql.SQL("SELECT ship_id, data_channel_id, created_time, {v}, NULL::text, {o} FROM {t} "
                    "WHERE ship_id = %(ship)s AND {valid} AND {w}").format(
        v=render.rendered_value(), o=order, t=source_table(cfg), valid=render.valid_row_predicate(), w=where)
    types = _row_types()
    batches = []
    with conn.cursor(name="widen_ship_rows") as cur:
        cur.itersize = 20_000
        cur.execute(query, params)
        while rows := cur.fetchmany(20_000):
            batches.append(pa.RecordBatch.from_arrays(
                [pa.array(col, type=kind) for col, kind in zip(zip(*rows), types)], names=ROW_NAMES))
    conn.rollback()
    schema = pa.schema(list(zip(ROW_NAMES, types)))
    return pa.Table.from_batches(batches, schema)
