"""The narrow PostgreSQL table: every statement widen runs against it.

Chunk planning and partitioned reads by COPY in the Spark tasks (the backfill), channel statistics (plan), the stream's
reads (``widen.sources.postgres_stream``, a Spark data source built on this class's connection),
the narrow side of reconcile's checksums, the rows a repair re-reads, and the raw rows of rejects.
Values are rendered in SQL (``widen.pg.render``): a wide cell is byte for byte what PostgreSQL
prints. Callers pass a connection (``connect()``) or cursor, so they decide the transactions; a
Spark task opens its own.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from widen.config import ConfigError, SourceConfig
from widen.core import kernels, values
from widen.core.checksum import HASH_MD5, HASH_PG, Aggregate
from widen.core.chunks import Chunk, cell_chunk, sub_ranges
from widen.core.layout import NewChannels
from widen.pg import checksums, copy_read, db, render
from widen.pg.server import Server
from widen.sources.base import NarrowTable

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor
    from pyspark.sql import DataFrame, SparkSession

    from widen.core.layout import ShipLayout
    from widen.core.transforms import NarrowChunk

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


def narrow_columns(cur: cursor, schema: str, table: str) -> dict[str, str] | None:
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


#: rows per channel whose formats and sizes the skip-scan survey reads
SURVEY_ROWS_PER_CHANNEL = 16
#: rows the sampling survey reads (a ``TABLESAMPLE SYSTEM`` of about that many)
SURVEY_SAMPLE_ROWS = 200_000


def _stats_of(rows: list) -> dict:
    """One ship's ``channel_stats`` shape from (channel, format, rows, average bytes) rows."""
    channels: dict[str, dict] = {}
    for channel, fmt, count, avg in rows:
        ch = channels.setdefault(channel, {"formats": defaultdict(int), "rows": 0, "bytes": 0.0})
        ch["formats"][fmt] += count
        ch["rows"] += count
        ch["bytes"] += float(avg or 0) * count
    return {"rows": sum(c["rows"] for c in channels.values()), "start": None, "end": None, "channels": channels}


class PostgresSource(NarrowTable):
    """The narrow table ``source.schema.source.table`` of ``source``'s connection."""

    kind = "postgres"

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg
        self._double_type: str | None = None     # of double_v (float8 or float4), looked up once

    @property
    def table(self) -> sql.Composable:
        return sql.Identifier(self.cfg.schema, self.cfg.table)

    @property
    def exactly_once(self) -> bool:
        return self.cfg.order_column is not None or self.cfg.mode == "cdc"

    def connect(self, autocommit: bool = False) -> contextlib.AbstractContextManager:
        return db.connection(self.cfg.connection, autocommit)

    # -- what is there ---------------------------------------------------------------------------
    def require(self) -> None:
        """A clear error (exit 2) before any work when the narrow table is not there, lacks a column
        or has one of the wrong type."""
        cfg = self.cfg
        where = f"{cfg.schema}.{cfg.table}"
        with self.connect() as conn, conn.cursor() as cur:
            Server.of(conn).require_source(f"the source server {cfg.connection.describe()}")
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
        self._double_type = columns["double_v"]

    def rendered_value(self, conn: connection, alias: str | None = None,
                       otherwise: sql.Composable | None = None) -> sql.Composable:
        """The value as a wide cell holds it, in SQL for this server and this table's double_v type
        (``widen.pg.render``: the same text from 9.3 to 18); ``otherwise`` for another format."""
        if self._double_type is None:
            with conn.cursor() as cur:
                columns = narrow_columns(cur, self.cfg.schema, self.cfg.table) or {}
            self._double_type = columns.get("double_v", "float8")
        return render.rendered_value(alias, Server.of(conn), self._double_type, otherwise=otherwise)

    def pivot_select(self, conn: connection, ship: str, columns: list[tuple[str, str]],
                     relation: tuple[str, str] | None = None) -> sql.Composable:
        """An exact pivot of the ship's narrow rows, for a reader view: created_time (timestamptz)
        and one text column per (column, channel) of ``columns``, by the rendering and duplicate
        rules of the wide tables, whatever the reading session's settings. ``relation`` is the
        narrow table as the view's database sees it (default: this table)."""
        with conn.cursor() as cur:
            types = narrow_columns(cur, *(relation or (self.cfg.schema, self.cfg.table))) or {}
        table = sql.Identifier(*relation) if relation else self.table
        value = render.rendered_value(None, Server.of(conn), types.get("double_v", "float8"), any_session=True)
        time = sql.SQL("created_time AT TIME ZONE 'UTC'" if types.get("created_time") == "timestamp" else "created_time")
        where = sql.SQL("ship_id = {} AND {}").format(sql.Literal(ship), render.valid_row())
        if self.cfg.order_column:
            rows = sql.SQL("SELECT DISTINCT ON (created_time, data_channel_id) created_time, data_channel_id AS ch, "
                           "{v} AS v FROM {t} WHERE {w} ORDER BY created_time, data_channel_id, {o} DESC").format(
                v=value, t=table, w=where, o=sql.Identifier(self.cfg.order_column))
        else:
            rows = sql.SQL("SELECT created_time, data_channel_id AS ch, ({v}) COLLATE \"C\" AS v FROM {t} WHERE {w}"
                           ).format(v=value, t=table, w=where)
        cells = [sql.SQL("(max(v) FILTER (WHERE ch = {ch})) COLLATE \"default\" AS {c}").format(
            ch=sql.Literal(channel), c=sql.Identifier(column)) for column, channel in columns]
        return sql.SQL("SELECT {time} AS created_time{sep}{cells} FROM ({rows}) n GROUP BY n.created_time").format(
            time=time, sep=sql.SQL(", ") if cells else sql.SQL(""), cells=sql.SQL(", ").join(cells), rows=rows)

    def unknown_ships(self, conn: connection, ships: list[str]) -> list[str]:
        """The ships of ``ships`` with no row in the narrow table (an index probe each)."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT s FROM unnest(%s::text[]) AS s WHERE NOT EXISTS "
                                "(SELECT 1 FROM {} WHERE ship_id = s)").format(self.table), (list(ships),))
            return [r[0] for r in cur.fetchall()]

    def list_ships(self, conn: connection) -> list[str]:
        """Every ship id (a skip scan over the (ship_id, …) index), the empty one left out."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "WITH RECURSIVE s AS (SELECT min(ship_id) AS id FROM {t} UNION ALL "
                "SELECT (SELECT min(ship_id) FROM {t} WHERE ship_id > s.id) FROM s WHERE s.id IS NOT NULL) "
                "SELECT id FROM s WHERE id IS NOT NULL AND id <> ''").format(t=self.table))
            return [r[0] for r in cur.fetchall()]

    def index_warning(self, conn: connection) -> str | None:
        """A warning when no index starts with (ship_id, created_time): every chunk read scans the table."""
        cfg = self.cfg
        with conn.cursor() as cur:
            cur.execute(
                "SELECT a0.attname, a1.attname FROM pg_index x "
                "JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_attribute a0 ON a0.attrelid = c.oid AND a0.attnum = x.indkey[0] "
                "LEFT JOIN pg_attribute a1 ON a1.attrelid = c.oid AND a1.attnum = x.indkey[1] "
                "WHERE n.nspname = %s AND c.relname = %s", (cfg.schema, cfg.table))
            leading = [tuple(r) for r in cur.fetchall()]
        if ("ship_id", "created_time") in leading:
            return None
        return (f"{cfg.schema}.{cfg.table} has no index on (ship_id, created_time): every chunk read will "
                f"scan the whole table. Create one first, e.g. CREATE INDEX CONCURRENTLY ON "
                f"{cfg.schema}.{cfg.table} (ship_id, created_time)")

    # -- plan --------------------------------------------------------------------------------------
    def _valid_rows_of(self, ship_ids: list[str] | None) -> tuple[sql.Composable, list]:
        filters = [render.valid_row()]
        params: list = []
        if ship_ids:
            filters.append(sql.SQL("ship_id = ANY(%s)"))
            params.append(list(ship_ids))
        return sql.SQL(" AND ").join(filters), params

    def channel_stats(self, conn: connection, ship_ids: list[str] | None) -> dict[str, dict]:
        """Per ship: channel -> {format: rows}, row counts, span, average rendered value length."""
        where, params = self._valid_rows_of(ship_ids)
        query = sql.SQL(
            "SELECT ship_id, data_channel_id, value_format, count(*), min(created_time), max(created_time), "
            "avg(octet_length({value})) FROM {t} WHERE {w} GROUP BY 1, 2, 3").format(
            value=self.rendered_value(conn), t=self.table, w=where)
        ships: dict[str, dict] = {}
        with conn.cursor() as cur:
            cur.execute(Server.of(conn).no_jit())  # JIT makes wide GROUP BYs slower (docs/design.md, "Engineering rules")
            cur.execute(query, params)
            for ship, channel, fmt, rows, lo, hi, avg in cur.fetchall():
                s = ships.setdefault(ship, {"rows": 0, "start": lo, "end": hi, "channels": {}})
                s["rows"] += rows
                s["start"], s["end"] = min(s["start"], lo), max(s["end"], hi)
                ch = s["channels"].setdefault(channel, {"formats": defaultdict(int), "rows": 0, "bytes": 0.0})
                ch["formats"][fmt] += rows
                ch["rows"] += rows
                ch["bytes"] += float(avg or 0) * rows
        return ships

    def ship_spans(self, conn: connection, ship_ids: list[str] | None) -> dict[str, tuple[int, dt.datetime, dt.datetime]]:
        """Per ship: (its rows, its first and last created_time), from the (ship_id, created_time)
        index alone where the table is vacuumed (an index-only scan)."""
        where = [sql.SQL("ship_id IS NOT NULL"), sql.SQL("ship_id <> ''")]
        params: list = []
        if ship_ids:
            where.append(sql.SQL("ship_id = ANY(%s)"))
            params.append(list(ship_ids))
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT ship_id, count(*), min(created_time), max(created_time) FROM {} "
                                "WHERE {} GROUP BY 1").format(self.table, sql.SQL(" AND ").join(where)), params)
            return {ship: (rows, lo, hi) for ship, rows, lo, hi in cur.fetchall()}

    def channel_index(self, conn: connection) -> str | None:
        """The name of an index that leads with (ship_id, data_channel_id): with one, a ship's
        channels are found by a skip scan (one index probe per channel) instead of a scan."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT i.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid "
                "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a0 ON a0.attrelid = c.oid AND a0.attnum = x.indkey[0] "
                "JOIN pg_attribute a1 ON a1.attrelid = c.oid AND a1.attnum = x.indkey[1] "
                "WHERE n.nspname = %s AND c.relname = %s AND a0.attname = 'ship_id' "
                "AND a1.attname = 'data_channel_id' AND x.indpred IS NULL ORDER BY 1 LIMIT 1",
                (self.cfg.schema, self.cfg.table))
            row = cur.fetchone()
        return row[0] if row else None

    def survey(self, conn: connection, ship_ids: list[str]) -> tuple[dict[str, dict], str]:
        """``channel_stats`` of the ships from what is cheap, with how it was found:

        - ``skip scan``: with an index leading with (ship_id, data_channel_id) every channel of
          every ship, one index probe each, and the format and size of its first
          ``SURVEY_ROWS_PER_CHANNEL`` valid rows;
        - ``sample``: else (9.5+) the channels, formats and sizes in a ``TABLESAMPLE SYSTEM`` of
          about ``SURVEY_SAMPLE_ROWS`` rows;
        - ``scan``: else the full ``channel_stats``.

        Row counts and spans are left out (``plan_chunks`` has them). A channel not found here is
        found by the first chunk that meets it and gets its column then, by the same rule; a
        format not seen here turns a typed column to text when it comes (``core.typed``)."""
        if not ship_ids:
            return {}, "skip scan"
        if self.channel_index(conn):
            return self._skip_scan(conn, ship_ids), "skip scan"
        if not Server.of(conn).tablesample:
            return self.channel_stats(conn, ship_ids), "scan"
        return self._sample(conn, ship_ids), "sample"

    def _skip_scan(self, conn: connection, ship_ids: list[str]) -> dict[str, dict]:
        query = sql.SQL(
            "WITH RECURSIVE c AS ("
            "(SELECT data_channel_id AS ch FROM {t} WHERE ship_id = %(s)s AND data_channel_id IS NOT NULL "
            "ORDER BY data_channel_id LIMIT 1) UNION ALL "
            "SELECT (SELECT data_channel_id FROM {t} WHERE ship_id = %(s)s AND data_channel_id > c.ch "
            "ORDER BY data_channel_id LIMIT 1) FROM c WHERE c.ch IS NOT NULL) "
            "SELECT c.ch, r.value_format, count(*), avg(octet_length(r.v)) FROM c CROSS JOIN LATERAL "
            "(SELECT value_format, {v} AS v FROM {t} WHERE ship_id = %(s)s AND data_channel_id = c.ch AND {valid} "
            "LIMIT {n}) r WHERE c.ch IS NOT NULL GROUP BY 1, 2").format(
            t=self.table, v=self.rendered_value(conn), valid=render.valid_row(),
            n=sql.Literal(SURVEY_ROWS_PER_CHANNEL))
        ships: dict[str, dict] = {}
        with conn.cursor() as cur:
            for ship in ship_ids:
                cur.execute(query, {"s": ship})
                ships[ship] = _stats_of(cur.fetchall())
        return ships

    def _sample(self, conn: connection, ship_ids: list[str]) -> dict[str, dict]:
        with conn.cursor() as cur:
            # a table never analyzed has no row estimate (-1 or 0): guess ~50 rows a page
            cur.execute("SELECT reltuples, pg_relation_size(oid) / 8192 * 50 FROM pg_class WHERE oid = %s::regclass",
                        (self.table.as_string(cur),))
            tuples, guess = cur.fetchone()
            estimate = max(float(tuples) if tuples and tuples > 0 else float(guess), 1.0)
            percent = min(100.0, max(0.01, 100.0 * SURVEY_SAMPLE_ROWS / estimate))
            where, params = self._valid_rows_of(ship_ids)
            cur.execute(sql.SQL(
                "SELECT ship_id, data_channel_id, value_format, count(*), avg(octet_length({v})) "
                "FROM {t} TABLESAMPLE SYSTEM ({p}) REPEATABLE (7) WHERE {w} GROUP BY 1, 2, 3").format(
                v=self.rendered_value(conn), t=self.table, p=sql.Literal(percent), w=where), params)
            found: dict[str, list] = defaultdict(list)
            for ship, *row in cur.fetchall():
                found[ship].append(row)
        return {ship: _stats_of(found.get(ship, [])) for ship in ship_ids}

    @staticmethod
    def new_channels(stats: dict) -> NewChannels:
        """channel -> (its most common format, average rendered bytes, formats seen) from one ship's
        ``channel_stats``."""
        out = {}
        for channel, ch in stats["channels"].items():
            fmt = max(ch["formats"].items(), key=lambda kv: (kv[1], kv[0]))[0]
            out[channel] = (fmt, ch["bytes"] / ch["rows"] if ch["rows"] else None, len(ch["formats"]))
        return out

    def reject_counts(self, conn: connection, ship_ids: list[str] | None) -> dict[str | None, dict[str, int]]:
        params: list = []
        filters = [sql.SQL("{} IS NOT NULL").format(render.reject_reason())]
        if ship_ids:
            filters.append(sql.SQL("(ship_id IS NULL OR ship_id = ANY(%s))"))
            params.append(list(ship_ids))
        query = sql.SQL("SELECT ship_id, {r}, count(*) FROM {t} WHERE {w} GROUP BY 1, 2").format(
            r=render.reject_reason(), t=self.table, w=sql.SQL(" AND ").join(filters))
        out: dict[str | None, dict[str, int]] = defaultdict(dict)
        with conn.cursor() as cur:
            cur.execute(query, params)
            for ship, reason, count in cur.fetchall():
                out[ship][reason] = count
        return out

    def duplicate_counts(self, conn: connection, ship_ids: list[str] | None) -> dict[str, tuple[int, int]]:
        """Per ship: (keys with more than one row, rows beyond the first)."""
        where, params = self._valid_rows_of(ship_ids)
        query = sql.SQL(
            "SELECT ship_id, count(*), sum(n - 1) FROM (SELECT ship_id, data_channel_id, created_time, "
            "count(*) AS n FROM {t} WHERE {w} GROUP BY 1, 2, 3 HAVING count(*) > 1) d GROUP BY 1").format(
            t=self.table, w=where)
        with conn.cursor() as cur:
            cur.execute(query, params)
            return {ship: (int(keys), int(extra)) for ship, keys, extra in cur.fetchall()}

    # -- backfill ----------------------------------------------------------------------------------
    def plan_chunks(self, conn: connection, ship_ids: list[str] | None, start: dt.datetime | None,
                    end: dt.datetime | None, chunk_hours: float) -> list[Chunk]:
        """Non-empty chunks (ship x aligned time range) with their narrow row counts, in one scan.

        Chunks are the cells of ``chunk_hours`` since the epoch (the ledger's names), each read
        within [start, end), so any arguments name the same chunks and the ledger can skip finished
        ones and complete cut ones.
        """
        width = chunk_hours * 3600.0
        where = [sql.SQL("ship_id IS NOT NULL"), sql.SQL("ship_id <> ''"), sql.SQL("created_time IS NOT NULL")]
        params: dict = {"width": width}
        if ship_ids:
            where.append(sql.SQL("ship_id = ANY(%(ships)s)"))
            params["ships"] = list(ship_ids)
        if start:
            where.append(sql.SQL("created_time >= %(start)s"))
            params["start"] = start
        if end:
            where.append(sql.SQL("created_time < %(end)s"))
            params["end"] = end
        bucket = Server.of(conn).bucket_start(sql.Placeholder("width"))
        query = sql.SQL("SELECT ship_id, {b} AS bucket, count(*) FROM {t} WHERE {w} GROUP BY 1, 2 "
                        "ORDER BY 1, 2").format(b=bucket, t=self.table, w=sql.SQL(" AND ").join(where))
        with conn.cursor() as cur:
            cur.execute(query, params)
            return [cell_chunk(ship_id, lo, width, start, end, count) for ship_id, lo, count in cur.fetchall()]

    def chunk_select(self, conn: connection, ship_id: str, lo: dt.datetime, hi: dt.datetime, channels: list[str],
                     formats: dict[str, str] | None = None) -> str:
        """The SELECT a backfill task reads for one ship and one created_time range: one row per narrow
        row, in ``kernels.chunk_columns`` order.

        - ``created_us``: created_time in microseconds after ``lo`` (the reader adds ``lo``). A
          double's epoch of a sub-range-sized interval is exact to the microsecond (below 2^53 µs,
          285 years) and far cheaper than ``extract``'s numeric on PostgreSQL 14 and later;
        - ``channel``: the channel's position in ``channels`` (joined in SQL, so long names never cross
          the wire), ``values.UNKNOWN_CHANNEL`` for a valid channel not in the list,
          ``values.REJECTED_ROW`` for a row that breaks a rule, ``values.OTHER_FORMAT`` minus the
          position for a valid row of a channel in ``formats`` (channel -> the one format its typed
          column takes) in another format;
        - ``value``: the value rendered by PostgreSQL; the channel's name for an unknown channel; the
          raw-reject text (``values.RAW_REJECT_FIELDS``) for a rejected row;
        - ``order_key`` when an order column is configured.

        No aggregate and no sort: rows leave in index order as the scan finds them, on every server
        from 9.3 (the grouping happens in the Arrow pivot, which is faster than the database's).

        The reject rule is evaluated in full only for rows of no listed channel. A listed channel's
        name is neither NULL nor empty, and the WHERE clause holds the ship (never empty: such rows
        belong to no chunk) and created_time, so such a row is valid exactly when its format is one
        of ``values.VALUE_FORMATS``: the rendering's CASE decides that, saving a third of the
        server's time per row."""
        if not ship_id:
            raise ValueError("a chunk of the empty ship_id: its rows are rejects and belong to no chunk")
        valid = render.valid_row("t")
        listed = [(i, name) for i, name in enumerate(channels) if name]   # an empty name is a reject's
        formats = {c: f for c, f in (formats or {}).items() if c in channels and c}
        if listed:
            known = sql.SQL("(VALUES {}) AS m(name, idx, fmt)").format(sql.SQL(", ").join(
                sql.SQL("({}, {}, {}::text)").format(sql.Literal(name), sql.Literal(i), sql.Literal(formats.get(name)))
                for i, name in listed))
        else:
            known = sql.SQL("(SELECT NULL::text AS name, NULL::integer AS idx, NULL::text AS fmt WHERE false) AS m")
        position = sql.SQL("m.idx")
        if formats:         # typed columns: a reading of another format is told apart (no cost otherwise)
            position = sql.SQL("CASE WHEN m.fmt IS NULL OR t.value_format = m.fmt THEN m.idx ELSE {} - m.idx END"
                               ).format(sql.Literal(values.OTHER_FORMAT))
        code = sql.SQL("WHEN t.value_format IN ({f}) THEN {p}").format(
            f=sql.SQL(", ").join(sql.Literal(f) for f in values.VALUE_FORMATS), p=position)
        order = sql.SQL(", t.{}").format(sql.Identifier(self.cfg.order_column)) if self.cfg.order_column else sql.SQL("")
        raw = render.raw_reject("t")
        return sql.SQL(
            "SELECT (date_part('epoch', t.created_time - {lo}) * 1000000)::bigint, "
            "CASE WHEN m.idx IS NULL THEN CASE WHEN {v} THEN {unknown} ELSE {rejected} END "
            "{code} ELSE {rejected} END, "
            "CASE WHEN m.idx IS NULL THEN CASE WHEN {v} THEN t.data_channel_id ELSE {raw} END "
            "ELSE {value} END{order} "
            "FROM {t} AS t LEFT JOIN {known} ON m.name = t.data_channel_id "
            "WHERE t.ship_id = {ship} AND t.created_time >= {lo} AND t.created_time < {hi}").format(
            v=valid, unknown=sql.Literal(values.UNKNOWN_CHANNEL), rejected=sql.Literal(values.REJECTED_ROW),
            code=code, raw=raw, value=self.rendered_value(conn, "t", otherwise=raw), order=order,
            t=self.table, known=known, ship=sql.Literal(ship_id), lo=sql.Literal(lo), hi=sql.Literal(hi)
        ).as_string(conn)

    def read_chunk(self, spark: SparkSession, chunk: Chunk, partitions: int, channels: list[str],
                   formats: dict[str, str] | None = None) -> NarrowChunk:
        """One chunk as Spark partitions, one per created_time sub-range, each read by the Python
        worker that handles it (``ChunkReader``): the index range scan sits inside each SELECT.
        ``formats``: channel -> the one value format its typed column takes (``chunk_select``)."""
        with self.connect() as conn:
            queries = [(self.chunk_select(conn, chunk.ship_id, lo, hi, channels, formats), kernels.epoch_us(lo))
                       for lo, hi in sub_ranges(chunk.range_start, chunk.range_end, partitions)]
        from widen.core.transforms import NarrowChunk  # pyspark: not imported by the jobs that need no Spark

        reader = ChunkReader(self.cfg.connection.psycopg_params(), queries, self.cfg.order_column is not None,
                             self.cfg.connection.socket_timeout_seconds)
        return NarrowChunk(spark.range(0, len(queries), 1, len(queries)), reader)

    def rows_in_range(self, conn: connection, ship_id: str, lo: dt.datetime, hi: dt.datetime) -> int:
        """The ship's narrow rows in [lo, hi) now, rejects and duplicates included: every row a
        chunk's read of that range takes (``chunk_select``). One range count on the
        (ship_id, created_time) index (index-only where the visibility map allows)."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s "
                                "AND created_time < %s").format(self.table), (ship_id, lo, hi))
            count = cur.fetchone()[0]
        conn.rollback()
        return count

    def rows_after(self, conn: connection, ship_id: str, lo: dt.datetime, hi: dt.datetime,
                   after: int) -> tuple[int, bool]:
        """The ship's rows in [lo, hi) whose order column is above ``after`` (rows a read whose
        greatest order key was ``after`` cannot have taken), and whether one of them repeats the
        channel and created_time of a row at or below it (a newer duplicate). With an index on the
        order column (the exact stream's offsets want one) it reads just those rows."""
        order = sql.Identifier(self.cfg.order_column)
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "SELECT count(*), coalesce(bool_or(EXISTS (SELECT 1 FROM {t} o WHERE o.ship_id = n.ship_id "
                "AND o.created_time = n.created_time AND o.data_channel_id = n.data_channel_id AND o.{o} <= %(after)s)), "
                "false) FROM {t} n WHERE n.ship_id = %(ship)s AND n.created_time >= %(lo)s AND n.created_time < %(hi)s "
                "AND n.{o} > %(after)s").format(t=self.table, o=order),
                {"ship": ship_id, "lo": lo, "hi": hi, "after": after})
            count, duplicates = cur.fetchone()
        conn.rollback()
        return count, duplicates

    def channel_formats(self, conn: connection, chunk: Chunk, channels: list[str]) -> NewChannels:
        """Channels a chunk met that its layout lacked: each one's most common format, average bytes
        and the number of formats the chunk has for it."""
        query = sql.SQL(
            "SELECT data_channel_id, value_format, count(*), avg(octet_length({v})) FROM {t} "
            "WHERE ship_id = %s AND created_time >= %s AND created_time < %s "
            "AND data_channel_id = ANY(%s) AND {valid} GROUP BY 1, 2").format(
            v=self.rendered_value(conn), t=self.table, valid=render.valid_row())
        found: dict[str, tuple[str, float, int]] = {}
        formats: dict[str, int] = defaultdict(int)
        with conn.cursor() as cur:
            cur.execute(query, (chunk.ship_id, chunk.range_start, chunk.range_end, channels))
            for channel, fmt, count, avg in cur.fetchall():
                formats[channel] += 1
                if channel not in found or count > found[channel][2]:
                    found[channel] = (fmt, float(avg or 0), count)
        return {c: (f, a, formats[c]) for c, (f, a, _) in found.items()}

    def unplaceable_rows(self, conn: connection, ship_ids: list[str] | None) -> Iterator[tuple]:
        """Rows with a NULL or empty ship_id or a NULL created_time (they belong to no chunk), with
        their reject reason, a server-side cursor's batch at a time."""
        scope = sql.SQL("")
        params: list = []
        if ship_ids:
            scope = sql.SQL(" AND (ship_id IS NULL OR ship_id = '' OR ship_id = ANY(%s))")
            params.append(list(ship_ids))
        query = sql.SQL(
            "SELECT ship_id, data_channel_id, created_time, value_format, double_v, long_v, str_v, "
            "bool_v, {reason} FROM {t} WHERE (ship_id IS NULL OR ship_id = '' OR created_time IS NULL){scope}").format(
            reason=render.reject_reason(), t=self.table, scope=scope)
        with conn.cursor(name="widen_sweep") as cur:
            cur.itersize = 10_000
            cur.execute(query, params)
            while rows := cur.fetchmany(10_000):
                yield from rows

    # -- reconcile: the narrow side of the checksums -----------------------------------------------
    def _cells(self, conn: connection, exact: bool) -> sql.Composable:
        """(created_time, ch, v, ok) of one ship's rows in [%(lo)s, %(hi)s): with ``exact`` valid rows
        only, one per (created_time, channel) by the duplicate rule; without, every row, ``ok``
        telling the valid ones."""
        in_range = sql.SQL("ship_id = %(ship)s AND created_time >= %(lo)s AND created_time < %(hi)s")
        where = sql.SQL("{} AND {}").format(in_range, render.valid_row())
        value = self.rendered_value(conn)
        if not exact:
            return sql.SQL("SELECT created_time, data_channel_id AS ch, {v} AS v, {ok} AS ok FROM {t} WHERE {w}").format(
                v=value, ok=render.valid_row(), t=self.table, w=in_range)
        if self.cfg.order_column:
            return sql.SQL("SELECT DISTINCT ON (created_time, data_channel_id) created_time, data_channel_id AS ch, "
                           "{v} AS v, true AS ok FROM {t} WHERE {w} ORDER BY created_time, data_channel_id, {o} DESC"
                           ).format(v=value, t=self.table, w=where, o=sql.Identifier(self.cfg.order_column))
        return sql.SQL("SELECT created_time, data_channel_id AS ch, max(({v}) COLLATE \"C\") AS v, true AS ok "
                       "FROM {t} WHERE {w} GROUP BY 1, 2").format(v=value, t=self.table, w=where)

    def _per_time(self, conn: connection, exact: bool, hashes: checksums.Hashes) -> sql.Composable:
        return sql.SQL(
            "SELECT created_time, count(CASE WHEN ok THEN v END) AS cells, "
            "coalesce(sum(CASE WHEN ok THEN {cell} END), 0) AS s, "
            "count(CASE WHEN ok THEN 1 END) AS valid_rows, count(CASE WHEN NOT ok THEN 1 END) AS rejected "
            "FROM ({c}) cells GROUP BY created_time").format(
            cell=hashes.cell(sql.SQL("ch || {us} || v").format(us=checksums.US)), c=self._cells(conn, exact))

    def bucket_aggregates(self, cur: cursor, ship: str, lo: dt.datetime, hi: dt.datetime, width_seconds: float,
                          hashes: checksums.Hashes,
                          rejected: dict | None = None) -> dict:
        """bucket start -> Aggregate in the fast form (duplicates not grouped; a differing bucket is
        checked again exactly); rejected rows per bucket into ``rejected``."""
        params = {"ship": ship, "lo": lo, "hi": hi, "width": width_seconds}
        return checksums.aggregates(cur, self._per_time(cur.connection, False, hashes),
                                    Server.of(cur.connection).bucket_start(sql.Placeholder("width")),
                                    params, rejected, hashes)

    def aggregates(self, cur: cursor, ship: str, lo: dt.datetime, hi: dt.datetime, grouping: str,
                   hashes: checksums.Hashes) -> dict:
        """Exact aggregates of [lo, hi): ``range`` (key 0) or per ``time`` (key created_time)."""
        group = {"range": sql.SQL("0"), "time": sql.SQL("created_time")}[grouping]
        return checksums.aggregates(cur, self._per_time(cur.connection, True, hashes), group, {"ship": ship, "lo": lo, "hi": hi},
                                    hashes=hashes)

    def checksum_hashes(self) -> tuple[str, ...]:
        """The hash flavours this server computes (``core.checksum``), fastest first: PostgreSQL's
        ``hashtextextended`` from 11, ``md5`` on every version."""
        with self.connect() as conn:
            return (HASH_PG, HASH_MD5) if Server.of(conn).hashtextextended else (HASH_MD5,)

    def range_aggregate(self, cur: cursor, ship: str, lo: dt.datetime, hi: dt.datetime, hashes: checksums.Hashes) -> Aggregate:
        return self.aggregates(cur, ship, lo, hi, "range", hashes).get(0, Aggregate())

    def cells_at(self, cur: cursor, ship: str, created_time: dt.datetime) -> tuple[bool, dict[str, str]]:
        """(whether the ship has a valid row at created_time, its non-NULL cells by channel, after
        the duplicate rule)."""
        cur.execute(self._cells(cur.connection, True),
                    {"ship": ship, "lo": created_time, "hi": created_time + dt.timedelta(microseconds=1)})
        rows = cur.fetchall()
        return bool(rows), {ch: v for _, ch, v, _ in rows if v is not None}

    def rows_without_time(self, cur: cursor, ship: str) -> int:
        """Rows of the ship with no created_time (they belong to no bucket; an index probe)."""
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time IS NULL").format(self.table),
                    (ship,))
        return cur.fetchone()[0]

    def rejects_without_ship(self, conn: connection) -> dict[str, int]:
        """Rows with a NULL or empty ship_id, by reason (reported apart from every ship)."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT {r}, count(*) FROM {t} WHERE ship_id IS NULL OR ship_id = '' GROUP BY 1").format(
                r=render.reject_reason(), t=self.table))
            return {reason: n for reason, n in cur.fetchall()}

    # -- repair --------------------------------------------------------------------------------------
    def range_pieces(self, conn: connection, ship_id: str, lo: dt.datetime, hi: dt.datetime,
                     rows_per_piece: int) -> list[tuple[dt.datetime, dt.datetime]]:
        """[lo, hi) cut at created_time boundaries so that each piece holds about ``rows_per_piece``
        of the ship's narrow rows (index probes; a single instant with more rows stays whole)."""
        bounds = [lo]
        with conn.cursor() as cur:
            while True:
                cur.execute(sql.SQL("SELECT created_time FROM {} WHERE ship_id = %s AND created_time >= %s AND "
                                    "created_time < %s ORDER BY created_time OFFSET %s LIMIT 1").format(self.table),
                            (ship_id, bounds[-1], hi, rows_per_piece))
                row = cur.fetchone()
                if row is None:
                    break
                cut = row[0]
                if cut <= bounds[-1]:
                    cur.execute(sql.SQL("SELECT min(created_time) FROM {} WHERE ship_id = %s AND created_time > %s "
                                        "AND created_time < %s").format(self.table), (ship_id, bounds[-1], hi))
                    cut = cur.fetchone()[0]
                    if cut is None:
                        break
                bounds.append(cut)
        conn.rollback()
        return list(zip(bounds, bounds[1:] + [hi]))

    def ship_rows(self, conn: connection, ship_id: str, times: list[dt.datetime],
                  ranges: list[tuple[dt.datetime, dt.datetime]]) -> pa.Table:
        """The ship's valid narrow rows at ``times`` and in ``ranges`` ([lo, hi)), values rendered in
        SQL, as an Arrow table of ``values.ROW_COLUMNS`` (read with a server-side cursor)."""
        where = sql.SQL("(created_time = ANY(%(times)s) OR {})").format(
            sql.SQL(" OR ").join([sql.SQL("(created_time >= {} AND created_time < {})").format(
                sql.Placeholder(f"lo{i}"), sql.Placeholder(f"hi{i}")) for i in range(len(ranges))] or [sql.SQL("false")]))
        params = {"ship": ship_id, "times": list(times), **{f"lo{i}": lo for i, (lo, _) in enumerate(ranges)},
                  **{f"hi{i}": hi for i, (_, hi) in enumerate(ranges)}}
        order = sql.Identifier(self.cfg.order_column) if self.cfg.order_column else sql.SQL("NULL::bigint")
        query = sql.SQL("SELECT ship_id, data_channel_id, created_time, {v}, NULL::text, {o}, value_format FROM {t} "
                        "WHERE ship_id = %(ship)s AND {valid} AND {w}").format(
            v=self.rendered_value(conn), o=order, t=self.table, valid=render.valid_row(), w=where)
        batches = []
        with conn.cursor(name="widen_ship_rows") as cur:
            cur.itersize = 20_000
            cur.execute(query, params)
            while rows := cur.fetchmany(20_000):
                batches.append(pa.RecordBatch.from_arrays(
                    [pa.array(col, type=f.type) for col, f in zip(zip(*rows), kernels.ROW_SCHEMA)],
                    schema=kernels.ROW_SCHEMA))
        conn.rollback()
        return pa.Table.from_batches(batches, kernels.ROW_SCHEMA)

    # -- the stream ----------------------------------------------------------------------------------
    def stream_options(self, **extra) -> dict[str, str]:
        from widen.sources import postgres_stream

        if self.cfg.mode == "cdc":       # the same options; extra holds the slot and publication
            return postgres_stream.stream_options(self.cfg, **extra)
        if self._double_type is None:
            with self.connect() as conn:
                self.rendered_value(conn)             # looks the type of double_v up
        return postgres_stream.stream_options(self.cfg, double_type=self._double_type, **extra)

    def initial_offset(self, options: dict[str, str]) -> dict:
        from widen.sources import postgres_cdc, postgres_stream

        if self.cfg.mode == "cdc":       # the slot (and publication) made here, after the checks
            with self.connect() as conn:
                return postgres_cdc.ensure_slot(conn, self.cfg, options["slot"], options["publication"])
        return postgres_stream.initial_offset(options)

    def stream(self, spark: SparkSession, options: dict[str, str]) -> DataFrame:
        from widen.sources import postgres_cdc, postgres_stream

        kind = postgres_cdc.CdcStreamSource if self.cfg.mode == "cdc" else postgres_stream.NarrowStreamSource
        spark.dataSource.register(kind)
        return spark.readStream.format(kind.name()).options(**options).load()

    # -- a cross-check for the demo (source and target in one database) -----------------------------
    def pivot_differences(self, conn: connection, target_schema: str, layout: ShipLayout) -> int:
        """Cells that differ between the wide tables and a SQL pivot of the narrow rows (both ways)."""
        diffs = 0
        with conn.cursor() as cur:
            cur.execute(Server.of(conn).no_jit())
            for part in layout.parts:
                members = layout.part_channels(part)
                cols = sql.SQL(", ").join(render.typed_text(sql.Identifier(c.column_name), c.column_type, Server.of(conn))
                                          for c in members)
                pivots = sql.SQL(", ").join(
                    sql.SQL("max(CASE WHEN data_channel_id = {ch} THEN {v} END COLLATE \"C\")").format(
                        v=self.rendered_value(conn), ch=sql.Literal(c.data_channel_id)) for c in members)
                wide = sql.SQL("SELECT created_time, {c} FROM {t}").format(
                    c=cols, t=sql.Identifier(target_schema, layout.tables[part]))
                narrow = sql.SQL("SELECT created_time, {p} FROM {t} WHERE ship_id = {s} AND {valid} "
                                 "GROUP BY created_time").format(
                    p=pivots, t=self.table, s=sql.Literal(layout.ship_id), valid=render.valid_row())
                cur.execute(sql.SQL("SELECT (SELECT count(*) FROM ({w} EXCEPT {n}) a) + "
                                    "(SELECT count(*) FROM ({n} EXCEPT {w}) b)").format(w=wide, n=narrow))
                diffs += cur.fetchone()[0]
        return diffs


class ChunkReader:
    """The read half of a backfill task, run in the Python worker: sub-range numbers in, the narrow
    rows of those sub-ranges out as Arrow batches of ``kernels.chunk_columns`` (``copy_read``).

    Holds the source's connection parameters (password included, resolved on the driver so a
    cluster's executors need no secret of their own); its repr never shows them."""

    def __init__(self, conn_params: dict, queries: list[tuple[str, int]], has_order_key: bool,
                 socket_timeout: float):
        self._conn_params = conn_params
        self.queries = queries
        self.columns = kernels.chunk_columns(has_order_key)
        self.socket_timeout = socket_timeout

    def __repr__(self) -> str:
        return f"ChunkReader({len(self.queries)} sub-ranges)"

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        numbers = [n for batch in batches for n in batch.column(0).to_pylist()]
        if not numbers:
            return
        conn = db.open_session(self._conn_params)
        try:
            with conn.cursor() as cur:
                # (the session sends UTF-8, which Arrow reads: ``db.session_params``) one sort-free
                # scan needs no parallel workers on a busy source
                if conn.server_version >= 90600:
                    cur.execute("SET max_parallel_workers_per_gather = 0")
                for n in numbers:
                    query, lo_us = self.queries[n]
                    rows = copy_read.copy_csv(cur, query, self.columns, self.socket_timeout)
                    after = rows.column("created_us")
                    yield from rows.set_column(0, "created_us", pc.add(after, pa.scalar(lo_us, pa.int64()))).to_batches()
            conn.rollback()
        finally:
            conn.close()
