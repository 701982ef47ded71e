"""Wide tables in the target PostgreSQL database (``target.kind: postgres``).

A backfill chunk: the executors (``ChunkWriter`` under ``mapInArrow``) unpack the source query's
per-time arrays, de-duplicate and pivot each partition with the Arrow kernels and COPY the wide rows
into the chunk's UNLOGGED staging tables (one per part) and its rejects into a staging rejects table;
the driver then merges column-wise, in the chunk's catalog transaction with its ledger row, so a
replayed chunk changes nothing. A stream micro-batch or a repair: a few timestamps in one
parameterised upsert, more through COPY into temporary staging and the same MERGE, in the caller's
transaction. MERGE on PostgreSQL 15+, ``INSERT … ON CONFLICT`` on 11–14 (``widen.pg.server``).
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql
from pyspark.sql.types import LongType, StringType, StructField, StructType

from widen.catalog import ledger
from widen.catalog.layouts import lock_layout
from widen.config import TargetConfig
from widen.core import kernels, typed, values
from widen.core.checksum import HASH_MD5, HASH_PG
from widen.core.chunks import Chunk
from widen.core.layout import LayoutRules, ShipLayout
from widen.pg import checksums, db, render
from widen.pg.server import Server
from widen.targets.base import ChunkWrite, WideChecksums, WideTarget, present_columns

if TYPE_CHECKING:
    import datetime as dt

    from psycopg2.extensions import connection, cursor

    from widen.core.layout import ShipLayout
    from widen.core.transforms import NarrowChunk

STATS_SCHEMA = StructType([
    StructField("narrow_rows", LongType()), StructField("rejected_rows", LongType()),
    StructField("duplicate_rows", LongType()), StructField("wide_rows", LongType()),
    StructField("unknown_channels", StringType()), StructField("misfit_channels", StringType()),
    # with an order column: the greatest order key the partition read (the backfill's check of its read)
    StructField("newest_order_key", LongType()),
])


#: wide rows per ship up to which a micro-batch is upserted directly rather than COPYed to staging
DIRECT_ROWS = 500


@dataclass(frozen=True)
class Staging:
    """Names of one unit of work's staging tables (one per part, one for rejects)."""
    schema: str
    prefix: str

    @classmethod
    def for_key(cls, schema: str, *key) -> Staging:
        digest = hashlib.md5("\x1f".join(map(str, key)).encode()).hexdigest()[:20]
        return cls(schema, f"stg_{digest}")

    def wide(self, part: int) -> sql.Composable:
        return sql.Identifier(self.schema, f"{self.prefix}_p{part}")

    def wide_name(self, part: int) -> str:
        return f"{self.prefix}_p{part}"

    @property
    def rejects(self) -> sql.Composable:
        return sql.Identifier(self.schema, f"{self.prefix}_rej")


def create_staging(conn: connection, staging: Staging, layout: ShipLayout) -> None:
    """(Re)create empty UNLOGGED staging tables for every part and for rejects; commits."""
    with conn.cursor() as cur:
        for part in layout.parts:
            cols = [sql.SQL("{} {}").format(sql.Identifier(c.column_name), render.column_type(c.column_type))
                    for c in layout.part_channels(part)]
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.wide(part)))
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (created_time timestamptz{}{})").format(
                staging.wide(part), sql.SQL(", ") if cols else sql.SQL(""), sql.SQL(", ").join(cols)))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.rejects))
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (ship_id text, created_time timestamptz, raw text)")
                    .format(staging.rejects))
    conn.commit()


def drop_staging(conn: connection, staging: Staging, parts: list[int]) -> None:
    with conn.cursor() as cur:
        for part in parts:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.wide(part)))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.rejects))


class ChunkWriter:
    """The per-partition function given to ``mapInArrow``: narrow Arrow batches in, one stats row out.

    Holds the target's connection parameters (password included, resolved on the driver so a
    cluster's executors need no secret of their own); its repr never shows them.
    """

    def __init__(self, conn_params: dict, staging: Staging, layout: ShipLayout, ship_id: str,
                 has_order_key: bool):
        self._conn_params = conn_params
        self.staging = staging
        self.ship_id = ship_id
        self.has_order_key = has_order_key
        self.parts = layout.parts
        # Column order inside each staging table = layout.part_channels(part).
        self.channel_index: dict[str, int] = {}
        self.part_slices: dict[int, tuple[int, int]] = {}
        self.column_types: list[str] = []
        for part in self.parts:
            first = len(self.channel_index)
            for c in layout.part_channels(part):
                self.channel_index[c.data_channel_id] = len(self.channel_index)
                self.column_types.append(c.column_type)
            self.part_slices[part] = (first, len(self.channel_index))

    def __repr__(self) -> str:
        return f"ChunkWriter(ship_id={self.ship_id!r}, staging={self.staging.prefix!r})"

    @property
    def channels(self) -> list[str]:
        """Known channels in column order: the source query numbers them by this list."""
        return list(self.channel_index)

    @property
    def formats(self) -> dict[str, str]:
        """channel -> the one value format its typed column takes: the source query marks a reading
        of another format (``values.OTHER_FORMAT``)."""
        return typed.required_formats({c: self.column_types[i] for c, i in self.channel_index.items()})

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Narrow rows (``kernels.chunk_columns``, from ``ChunkReader``) in, this partition's stats out."""
        received = list(batches)
        if not received:
            yield self._stats(0, 0, 0, 0, [])
            return
        table = pa.Table.from_batches(received)
        del received
        codes = table.column("channel")
        narrow_rows = table.num_rows
        newest = pc.max(table.column("order_key")).as_py() if self.has_order_key else None
        if pc.any(pc.less(codes, 0)).as_py():
            coded, rejects, unknown = self._split(table, codes)
        else:                               # nearly always: every row valid, every channel known
            coded, rejects, unknown = table, table.slice(0, 0), []
        if unknown:
            # Nothing is written: the driver adds the columns and runs the chunk again.
            yield self._stats(narrow_rows, rejects.num_rows, 0, 0, unknown)
            return
        other = self._other_formats(codes) if coded.num_rows + rejects.num_rows < narrow_rows else []
        if other:
            # A format the layout did not record for a typed channel (the survey read only some of its
            # rows): as for a misfit, nothing is written; the columns turn text, the chunk runs again.
            yield self._stats(narrow_rows, rejects.num_rows, 0, 0, [], other)
            return
        coded = pa.table({"created_time": pc.cast(coded.column("created_us"), pa.timestamp("us", tz="UTC")),
                          "channel": coded.column("channel"), "value": coded.column("value"),
                          **({"order_key": coded.column("order_key")} if self.has_order_key else {})})
        wide, duplicates = kernels.dedup_and_pivot(coded, len(self.channel_index), self.has_order_key)
        misfit = typed.misfits([(channel, self.column_types[i], wide.columns[i])
                                for channel, i in self.channel_index.items() if self.column_types[i] != typed.TEXT])
        if misfit:
            # Nothing is written: the driver turns the columns to text and runs the chunk again.
            yield self._stats(narrow_rows, rejects.num_rows, 0, 0, [], misfit)
            return
        rejects = pa.table({"created_time": pc.cast(rejects.column("created_us"), pa.timestamp("us", tz="UTC")),
                            "raw": rejects.column("value")})
        yield from self._write(wide, rejects)
        yield self._stats(narrow_rows, rejects.num_rows, duplicates, wide.num_rows, [], newest=newest)

    @staticmethod
    def _split(table: pa.Table, codes: pa.ChunkedArray) -> tuple[pa.Table, pa.Table, list[str]]:
        """The valid rows of known channels, the rejected rows, and the unknown channels' names."""
        unknown = table.filter(pc.equal(codes, values.UNKNOWN_CHANNEL)).column("value")
        return (table.filter(pc.greater_equal(codes, 0)), table.filter(pc.equal(codes, values.REJECTED_ROW)),
                sorted(set(unknown.to_pylist())))

    def _other_formats(self, codes: pa.ChunkedArray) -> list[str]:
        """The typed channels with a reading of a format their column was not chosen for."""
        marked = codes.filter(pc.less_equal(codes, values.OTHER_FORMAT))
        channels = self.channels
        return sorted(channels[values.OTHER_FORMAT - code] for code in pc.unique(marked).to_pylist())

    def _write(self, wide: kernels.Pivoted, rejects: pa.Table) -> list[pa.RecordBatch]:
        """COPY the partition's wide rows and rejects into the chunk's staging tables."""
        conn = db.open_session(self._conn_params)
        try:
            with conn.cursor() as cur:
                times = kernels.timestamp_text(wide.times)
                for part in self.parts:
                    lo, hi = self.part_slices[part]
                    if wide.num_rows:
                        copy_into(cur, self.staging.wide(part), [times, *wide.columns[lo:hi]])
                if rejects.num_rows:
                    copy_into(cur, self.staging.rejects, self._reject_columns(rejects))
            conn.commit()
        finally:
            conn.close()
        return []

    def _reject_columns(self, rejects: pa.Table) -> list[pa.Array]:
        n = rejects.num_rows
        return [pa.array([self.ship_id] * n, pa.string()),
                kernels.timestamp_text(rejects.column("created_time").combine_chunks()),
                rejects.column("raw").combine_chunks()]

    @staticmethod
    def _stats(narrow: int, rejected: int, duplicates: int, wide: int,
               unknown: list[str], misfit: list[str] | None = None, newest: int | None = None) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({
            "narrow_rows": pa.array([narrow], pa.int64()), "rejected_rows": pa.array([rejected], pa.int64()),
            "duplicate_rows": pa.array([duplicates], pa.int64()), "wide_rows": pa.array([wide], pa.int64()),
            "unknown_channels": pa.array(["\x1f".join(unknown) if unknown else None], pa.string()),
            "misfit_channels": pa.array(["\x1f".join(misfit) if misfit else None], pa.string()),
            "newest_order_key": pa.array([newest], pa.int64())})


def copy_into(cur: cursor, table: sql.Composable, columns: list[pa.Array]) -> None:
    data = kernels.copy_text(columns)
    if len(data):
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(table).as_string(cur),
                        io.BytesIO(data), size=1 << 20)


def merge_statement(server_version: int, target: sql.Composable, staging: sql.Composable,
                    columns: list[str], greatest: bool = False, types: dict[str, str] | None = None) -> sql.Composable:
    """Column-wise upsert: a NULL in the batch never overwrites a value already there.

    By default a value in the batch replaces the one in the table (with an order column the later
    batch holds the later rows). With ``greatest`` a cell keeps the greater of the two by byte
    order: docs/design.md's duplicate rule without an order column, applied across every writer
    (backfill chunks, micro-batches, repairs). MERGE on PostgreSQL 15+,
    ``INSERT … ON CONFLICT`` on 11–14. ``types``: column -> its type where not text (typed columns
    compare by the text the source printed: byte order for ``greatest``, and -0 differs from 0).
    """
    server = Server(server_version)
    cols = [sql.Identifier(c) for c in columns]
    all_cols = sql.SQL(", ").join([sql.Identifier("created_time"), *cols])
    if server.merge:
        if not cols:
            return sql.SQL(
                "MERGE INTO {t} AS w USING {s} AS s ON w.created_time = s.created_time "
                "WHEN NOT MATCHED THEN INSERT (created_time) VALUES (s.created_time)").format(
                t=target, s=staging)
        rules = [_cell_rule(c, (types or {}).get(name, typed.TEXT), greatest, server, sql.Identifier("s"))
                 for name, c in zip(columns, cols)]
        sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(c, combine) for c, (combine, _) in zip(cols, rules))
        changed = sql.SQL(" OR ").join(sql.SQL("({})").format(wins) for _, wins in rules)
        values = sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in [sql.Identifier("created_time"), *cols])
        return sql.SQL(
            "MERGE INTO {t} AS w USING {s} AS s ON w.created_time = s.created_time "
            "WHEN MATCHED AND ({changed}) THEN UPDATE SET {sets} "
            "WHEN NOT MATCHED THEN INSERT ({all_cols}) VALUES ({values})").format(
            t=target, s=staging, changed=changed, sets=sets, all_cols=all_cols, values=values)
    return upsert_statement(target, columns, staging, greatest, types, server)


def _cell_rule(c: sql.Identifier, column_type: str, greatest: bool, server: Server,
               new_alias: sql.Composable) -> tuple[sql.Composable, sql.Composable]:
    """(how a cell's new value and old one (``w``) combine, when the new one changes the cell)."""
    new, old = sql.SQL("{}.{}").format(new_alias, c), sql.SQL("w.{}").format(c)
    new_text, old_text = render.typed_text(new, column_type, server), render.typed_text(old, column_type, server)
    if greatest:
        bigger = sql.SQL('{n} IS NOT NULL AND (w.{c} IS NULL OR {nt} COLLATE "C" > {ot} COLLATE "C")').format(
            n=new, c=c, nt=new_text, ot=old_text)
        if column_type == typed.TEXT:
            return sql.SQL('GREATEST({n} COLLATE "C", w.{c} COLLATE "C")').format(n=new, c=c), bigger
        return sql.SQL("CASE WHEN {b} THEN {n} ELSE w.{c} END").format(b=bigger, n=new, c=c), bigger
    # a double compares by its text: -0 = 0 and NaN = NaN as numbers, not as cells
    changes = (sql.SQL("{n} IS NOT NULL AND {nt} IS DISTINCT FROM {ot}") if column_type == typed.DOUBLE
               else sql.SQL("{n} IS NOT NULL AND {n} IS DISTINCT FROM w.{c}"))
    return (sql.SQL("COALESCE({n}, {o})").format(n=new, o=old),
            changes.format(n=new, c=c, nt=new_text, ot=old_text))


def upsert_statement(target: sql.Composable, columns: list[str], staging: sql.Composable | None = None,
                     greatest: bool = False, types: dict[str, str] | None = None,
                     server: Server = render.NEWEST) -> sql.Composable:
    """The ``INSERT … ON CONFLICT`` form of ``merge_statement`` (same column-wise rule).

    From ``staging``, or with ``staging=None`` from ``VALUES %s`` for ``execute_values`` (the
    stream's small per-ship batches: one statement instead of staging, COPY and merge).
    """
    cols = [sql.Identifier(c) for c in columns]
    all_cols = sql.SQL(", ").join([sql.Identifier("created_time"), *cols])
    rows = (sql.SQL("VALUES %s") if staging is None
            else sql.SQL("SELECT {} FROM {}").format(all_cols, staging))
    if not cols:
        return sql.SQL("INSERT INTO {t} (created_time) {rows} ON CONFLICT (created_time) DO NOTHING").format(
            t=target, rows=rows)
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(c, _cell_rule(c, (types or {}).get(name, typed.TEXT), greatest, server,
                                                sql.SQL("EXCLUDED"))[0]) for name, c in zip(columns, cols))
    return sql.SQL(
        "INSERT INTO {t} AS w ({all_cols}) {rows} ON CONFLICT (created_time) DO UPDATE SET {sets}").format(
        t=target, all_cols=all_cols, rows=rows, sets=sets)


def merge_parts(cur: cursor, server_version: int, target_schema: str, staging: Staging,
                layout: ShipLayout, greatest: bool) -> int:
    """MERGE every part's staging table into its wide table; returns the rows merged into part 1.

    ``greatest`` (no order column): a cell keeps the greater value, as the stream's and repair's
    merges do, so a value the stream wrote from a row this chunk did not read stays (docs/design.md,
    "One rule for every writer"). It costs only where the chunk meets rows already there: a MERGE
    or ``ON CONFLICT`` evaluates the rule for matched rows alone."""
    merged = 0
    for part in layout.parts:
        members = layout.part_channels(part)
        cur.execute(merge_statement(server_version, sql.Identifier(target_schema, layout.tables[part]),
                                    staging.wide(part), [c.column_name for c in members], greatest,
                                    column_types(members)))
        if part == layout.parts[0]:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(staging.wide(part)))
            merged = cur.fetchone()[0]
    return merged


def autovacuum_analyzes(cur: cursor, table: sql.Composable) -> bool:
    """Whether autovacuum will analyze ``table`` soon: on for the server (with the counts it
    needs) and the table, and more rows changed since its last ANALYZE than its threshold (a new
    table always; a big table that got a few new columns, not)."""
    def option(name: str) -> sql.Composable:
        return sql.SQL("(SELECT option_value FROM pg_options_to_table(c.reloptions) WHERE option_name = {})").format(
            sql.Literal(name))

    cur.execute(sql.SQL(
        "SELECT current_setting('autovacuum')::boolean AND current_setting('track_counts')::boolean "
        "AND coalesce({enabled}::boolean, true) "
        "AND coalesce(s.n_mod_since_analyze, 0) > coalesce({threshold}, current_setting('autovacuum_analyze_threshold'))"
        "::float8 + coalesce({scale}, current_setting('autovacuum_analyze_scale_factor'))::float8 "
        "* greatest(c.reltuples, 0) "
        "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = {t}::regclass").format(
        enabled=option("autovacuum_enabled"), threshold=option("autovacuum_analyze_threshold"),
        scale=option("autovacuum_analyze_scale_factor"), t=sql.Literal(table.as_string(cur))))
    row = cur.fetchone()
    return bool(row and row[0])


def column_types(members: list) -> dict[str, str]:
    """column -> type of the channels (``ChannelColumn``) whose column is not text."""
    return {c.column_name: c.column_type for c in members if c.column_type != typed.TEXT}


def ensure_wide_tables(conn: connection, target_schema: str, layout: ShipLayout) -> int:
    """Create missing wide tables and columns, with COMMENTs naming ship and channel.

    Runs inside the caller's transaction. Only missing objects are touched, so a chunk that brings
    no new channel takes no exclusive lock. Returns the number of DDL statements run.
    """
    statements = 0
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema)))
        for part in layout.parts:
            table = layout.tables[part]
            ident = sql.Identifier(target_schema, table)
            cur.execute("SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                        "c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
                        (target_schema, table))
            existing = {r[0] for r in cur.fetchall()}
            if not existing:
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (created_time timestamptz PRIMARY KEY)")
                            .format(ident))
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(ident),
                            (f"widen: ship_id={layout.ship_id} part={part}",))
                statements += 2
                first = layout.parts[0]
                if part != first:
                    # every part has a row for every time the first part has (a part made mid-way:
                    # the rows written before it)
                    cur.execute("SELECT to_regclass(%s)", (sql.Identifier(target_schema, layout.tables[first])
                                                            .as_string(cur),))
                    if cur.fetchone()[0] is not None:
                        cur.execute(sql.SQL("INSERT INTO {} (created_time) SELECT created_time FROM {} "
                                            "ON CONFLICT DO NOTHING").format(
                            ident, sql.Identifier(target_schema, layout.tables[first])))
                        statements += 1
            for channel in layout.part_channels(part):
                if channel.column_name in existing:
                    continue
                col = sql.Identifier(channel.column_name)
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    ident, col, render.column_type(channel.column_type)))
                cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(ident, col),
                            (f"data_channel_id={channel.data_channel_id}",))
                statements += 2
    return statements




def wide_per_time(target_schema: str, layout: ShipLayout, hashes: checksums.Hashes,
                  server: Server = render.NEWEST) -> tuple[sql.Composable, dict]:
    """(created_time, cells, s) of one ship's wide rows in [%(lo)s, %(hi)s), all parts together.

    Channel names go as parameters (``%(c0)s`` …): a literal ``%`` in a name would otherwise be
    read as a placeholder."""
    per_part = []
    names: dict[str, str] = {}
    for part in layout.parts:
        members = layout.part_channels(part)
        cells = sql.SQL(" + ").join(
            sql.SQL("({} IS NOT NULL)::int").format(sql.Identifier(c.column_name)) for c in members) \
            if members else sql.SQL("0")
        terms = []
        for c in members:
            key = f"c{len(names)}"
            names[key] = c.data_channel_id
            text = sql.SQL("{ch}::text || {us} || {col}").format(
                ch=sql.Placeholder(key), us=checksums.US,
                col=render.typed_text(sql.Identifier(c.column_name), c.column_type, server))
            terms.append(sql.SQL("coalesce({h}, 0)").format(h=hashes.cell(text)))
        sums = sql.SQL(" + ").join(terms) if terms else sql.SQL("0")
        per_part.append(sql.SQL(
            "SELECT created_time, {cells} AS cells, {sums} AS s, 1 AS valid_rows, 0 AS rejected FROM {t} "
            "WHERE created_time >= %(lo)s AND created_time < %(hi)s").format(
            cells=cells, sums=sums, t=sql.Identifier(target_schema, layout.tables[part])))
    if len(per_part) == 1:
        return per_part[0], names
    return sql.SQL("SELECT created_time, sum(cells) AS cells, sum(s) AS s, 1 AS valid_rows, 0 AS rejected "
                   "FROM ({}) parts GROUP BY created_time").format(sql.SQL(" UNION ALL ").join(per_part)), names


class PostgresChecksums(WideChecksums):
    """The wide side in a PostgreSQL target: the aggregates computed by its server."""

    def __init__(self, cur: cursor, target_schema: str, hashes: checksums.Hashes):
        self.cur, self.schema, self.hashes = cur, target_schema, hashes

    def groups(self, layout: ShipLayout, ship: str, lo: dt.datetime, hi: dt.datetime, grouping: str,
               width: float | None = None) -> dict:
        """group -> Aggregate; ``grouping`` is ``bucket`` (of ``width`` seconds), ``range`` (key 0)
        or ``time`` (key created_time)."""
        if layout is None or not layout.tables:
            return {}
        group = {"bucket": Server.of(self.cur.connection).bucket_start(sql.Placeholder("width")),
                 "range": sql.SQL("0"), "time": sql.SQL("created_time")}[grouping]
        per_time, names = wide_per_time(self.schema, layout, self.hashes, Server.of(self.cur.connection))
        params = {"ship": ship, "lo": lo, "hi": hi, "width": width, **names}
        return checksums.aggregates(self.cur, per_time, group, params, hashes=self.hashes)

    def row(self, layout: ShipLayout, created_time: dt.datetime) -> tuple[bool, dict]:
        """(whether a wide row exists at created_time, its non-NULL cells by channel)."""
        cur, target = self.cur, {}
        has_row = False
        for part in layout.parts:
            members = layout.part_channels(part)
            if not members:
                continue
            cur.execute(sql.SQL("SELECT {} FROM {} WHERE created_time = %s").format(
                sql.SQL(", ").join(sql.Identifier(c.column_name) for c in members),
                sql.Identifier(self.schema, layout.tables[part])), (created_time,))
            found = cur.fetchone()
            if found is None:
                continue
            has_row = True
            target.update({c.data_channel_id: typed.text_of(c.column_type, v) for c, v in zip(members, found)
                           if v is not None})
        if not has_row:
            cur.execute(sql.SQL("SELECT 1 FROM {} WHERE created_time = %s").format(
                sql.Identifier(self.schema, layout.tables[1])), (created_time,))
            has_row = cur.fetchone() is not None
        return has_row, target




class PostgresChunkWrite(ChunkWrite):
    """A chunk through UNLOGGED staging tables in the catalog schema (named by the chunk's key)."""

    def __init__(self, target: PostgresTarget, chunk: Chunk, layout: ShipLayout, has_order_key: bool):
        self.target, self.chunk, self.layout = target, chunk, layout
        self.staging = Staging.for_key(target.cfg.catalog_schema, *chunk.key)
        self.writer = ChunkWriter(target.cfg.connection.psycopg_params(), self.staging, layout, chunk.ship_id,
                                  has_order_key)
        self.channels = self.writer.channels

    def run(self, narrow: NarrowChunk) -> list[dict]:
        with db.connection(self.target.cfg.connection) as conn:
            create_staging(conn, self.staging, self.layout)
        return [row.asDict() for row in narrow.map(self.writer, STATS_SCHEMA).collect()]

    def merge(self, cur: cursor) -> int:
        # the ship's layout now (the caller holds its layout lock): another chunk of the ship may
        # have turned a column to text or made a part table while this one ran
        now = self.target.layouts.load(cur.connection, self.layout.ship_id)
        layout = self._staging_as(cur, now)
        merged = merge_parts(cur, cur.connection.server_version, self.target.cfg.schema, self.staging, layout,
                             greatest=not self.writer.has_order_key)
        # a part table made meanwhile: it gets this chunk's times
        first = self.layout.parts[0]
        for part in sorted(set(now.parts) - set(self.layout.parts)):
            table = sql.Identifier(self.target.cfg.schema, now.tables[part])
            cur.execute("SELECT to_regclass(%s)", (table.as_string(cur),))
            if cur.fetchone()[0] is None:      # not made yet: it is filled from the first part when it is
                continue
            cur.execute(sql.SQL("INSERT INTO {} (created_time) SELECT created_time FROM {} "
                                "ON CONFLICT DO NOTHING").format(table, self.staging.wide(first)))
        return merged

    def _staging_as(self, cur: cursor, now: ShipLayout) -> ShipLayout:
        """This chunk's layout with the columns turned text since it was copied turned text in its
        staging tables too (by the value's source text, as the wide column was): merged into the
        text column, a value keeps its text (a double's cast would print 17 digits before 12)."""
        import copy

        turned = {ch: c for ch, c in self.layout.channels.items()
                  if c.column_type != typed.TEXT and ch in now.channels and now.channels[ch].column_type == typed.TEXT}
        if not turned:
            return self.layout
        server = Server.of(cur.connection)
        layout = copy.deepcopy(self.layout)
        for part in layout.parts:
            changes = [sql.SQL("ALTER COLUMN {c} TYPE text USING {t}").format(
                c=sql.Identifier(c.column_name), t=render.typed_text(sql.Identifier(c.column_name), c.column_type, server))
                for c in layout.part_channels(part) if c.data_channel_id in turned]
            if changes:
                cur.execute(sql.SQL("ALTER TABLE {} {}").format(self.staging.wide(part), sql.SQL(", ").join(changes)))
        for ch in turned:
            layout.channels[ch].column_type = typed.TEXT
        return layout

    def rejects(self, cur: cursor, catalog_schema: str, job: str, label: str) -> None:
        ledger.replace_rejects(cur, catalog_schema, self.staging.rejects, job, label)

    def close(self, cur: cursor | None = None) -> None:
        """Dropped in ``cur``'s transaction (the chunk's: a kill after its commit leaves no staging
        behind), else in a session of its own."""
        if cur is not None:
            drop_staging(cur.connection, self.staging, self.layout.parts)
            return
        with db.connection(self.target.cfg.connection, autocommit=True) as conn:
            drop_staging(conn, self.staging, self.layout.parts)


class _Statement:
    """A rollback step: one statement, shown as it runs."""

    def __init__(self, statement: sql.Composable, params: tuple = ()):
        self.statement, self.params = statement, params

    def text(self, cur: cursor) -> str:
        return cur.mogrify(self.statement, self.params).decode()

    def __call__(self, cur: cursor) -> int:
        cur.execute(self.statement, self.params)
        return max(cur.rowcount, 0)


class PostgresTarget(WideTarget):
    kind = "postgres"
    checksum_hashes = (HASH_PG, HASH_MD5)
    checksums_in_tasks = True

    def __init__(self, cfg: TargetConfig):
        self.cfg = cfg

    @property
    def rules(self) -> LayoutRules:
        return LayoutRules(self.cfg.wide_table_template, self.cfg.max_columns_per_table, self.cfg.max_row_bytes,
                           typed=self.cfg.typed)

    @property
    def location(self) -> str:
        return self.cfg.schema

    def ensure_tables(self, conn: connection, layout: ShipLayout) -> int:
        if self.views:      # the view's lock order: the ship's layout lock before any table lock
            with conn.cursor() as cur:
                lock_layout(cur, layout.ship_id)
        made = ensure_wide_tables(conn, self.cfg.schema, layout)
        return made + (self.views.refresh(conn, layout) if self.views else 0)

    def ddl_tables(self, layout: ShipLayout) -> list[tuple[str, str]]:
        return [(self.cfg.schema, t) for t in layout.tables.values()]

    def analyze(self, conn: connection, layout: ShipLayout, columns: str = "all") -> int:
        """``ANALYZE`` each table (readers and writers go on: it only waits for a VACUUM or DDL,
        at most ``target.lock_timeout_seconds``; a table it cannot get is left to autovacuum).

        ``columns`` ``created_time``: that column only (20 ms, against 1.3 s for 150 text columns),
        where autovacuum will analyze the table soon (``autovacuum_analyzes``): PostgreSQL keeps a
        table's change count after an ANALYZE of some columns, so autovacuum computes the channels'
        statistics then."""
        done = 0
        for table in layout.tables.values():
            name = sql.Identifier(self.cfg.schema, table)
            with conn.cursor() as cur:
                db.set_lock_timeout(cur, self.cfg.lock_timeout_seconds)
                some = columns == "created_time" and autovacuum_analyzes(cur, name)
                try:
                    cur.execute(sql.SQL("ANALYZE {} (created_time)" if some else "ANALYZE {}").format(name))
                except psycopg2.errors.LockNotAvailable:
                    conn.rollback()
                    continue
            conn.commit()
            done += 1
        return done

    def text_columns(self, conn: connection, layout: ShipLayout, kinds: dict[str, str]) -> None:
        """``ALTER COLUMN … TYPE text USING`` the value's source text. A reader view on the wide
        tables depends on the columns: in the same transaction it reads NULL for them while they
        change, then the text columns (its column types stay text throughout)."""
        import copy

        from widen.catalog.views import WIDE

        server = Server.of(conn)
        with conn.cursor() as cur:
            view = self.views.relation(cur, layout.ship_id) if self.views else None
        on_wide = view is not None and view[2] == WIDE
        if on_wide:
            hidden = copy.deepcopy(layout)
            for channel in kinds:
                del hidden.channels[channel]
            self.views.redefine(conn, hidden)
        with conn.cursor() as cur:
            db.set_lock_timeout(cur, self.cfg.lock_timeout_seconds)
            for part in layout.parts:
                changes = [sql.SQL("ALTER COLUMN {c} TYPE text USING {t}").format(
                    c=sql.Identifier(c.column_name),
                    t=render.typed_text(sql.Identifier(c.column_name), kinds[c.data_channel_id], server))
                    for c in layout.part_channels(part) if c.data_channel_id in kinds]
                if changes:
                    cur.execute(sql.SQL("ALTER TABLE {} {}").format(
                        sql.Identifier(self.cfg.schema, layout.tables[part]), sql.SQL(", ").join(changes)))
        if on_wide:
            done = copy.deepcopy(layout)
            for channel in kinds:
                done.channels[channel].column_type = typed.TEXT
            self.views.redefine(conn, done)

    def chunk_write(self, chunk: Chunk, layout: ShipLayout, has_order_key: bool) -> ChunkWrite:
        return PostgresChunkWrite(self, chunk, layout, has_order_key)

    def merge_rows(self, cur: cursor, layout: ShipLayout, wide: kernels.Pivoted, greatest: bool,
                   txn: tuple[str, int] | None = None, index: int = 0) -> None:
        """In ``cur``'s transaction (with the stream's ledger row: ``txn`` is not needed)."""
        times = kernels.timestamp_text(wide.times)
        server = Server.of(cur.connection)
        for part in layout.parts:
            present = [(c.column_name, col) for c, col in present_columns(layout, wide, part)]
            target = sql.Identifier(self.cfg.schema, layout.tables[part])
            names = [name for name, _ in present]
            types = column_types([c for c, _ in present_columns(layout, wide, part)])
            # typed cells arrive as text: the VALUES row casts them
            values_template = "(" + ", ".join(["%s"] + [f"%s::{types.get(n, 'text')}" for n in names]) + ")"
            if wide.num_rows <= DIRECT_ROWS:
                # A few timestamps: one parameterised upsert beats staging + COPY + merge (measured:
                # 100 ships x 200 channels a batch, 2.6 s -> see BENCHMARKS.md).
                rows = list(zip(times.to_pylist(), *(col.to_pylist() for _, col in present)))
                db.execute_values(cur, upsert_statement(target, names, None, greatest, types, server), rows,
                                  template=values_template, page_size=len(rows))
                continue
            # Named per ship and part and dropped at commit: no DROP round trip per ship.
            staging = sql.Identifier(f"widen_stream_{index}_p{part}")
            cols = [sql.SQL("{} {}").format(sql.Identifier(name), render.column_type(types.get(name, typed.TEXT)))
                    for name in names]
            cur.execute(sql.SQL("CREATE TEMP TABLE {} (created_time timestamptz{}{}) ON COMMIT DROP").format(
                staging, sql.SQL(", ") if cols else sql.SQL(""), sql.SQL(", ").join(cols)))
            copy_into(cur, staging, [times, *(col for _, col in present)])
            cur.execute(merge_statement(cur.connection.server_version, target, staging, names, greatest, types))

    def delete_rows(self, cur: cursor, layout: ShipLayout, times: list, ranges: list) -> None:
        where = sql.SQL("(created_time = ANY(%(times)s) OR {})").format(
            sql.SQL(" OR ").join([sql.SQL("(created_time >= {} AND created_time < {})").format(
                sql.Placeholder(f"lo{i}"), sql.Placeholder(f"hi{i}")) for i in range(len(ranges))] or [sql.SQL("false")]))
        params = {"times": list(times), **{f"lo{i}": lo for i, (lo, _) in enumerate(ranges)},
                  **{f"hi{i}": hi for i, (_, hi) in enumerate(ranges)}}
        for part in layout.parts:
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
                sql.Identifier(self.cfg.schema, layout.tables[part]), where), params)

    def reader_select(self, layout: ShipLayout, columns: list[tuple[str, str]]) -> sql.Composable:
        """The ship's wide rows as a reader view shows them: created_time and the (column, channel)
        pairs of ``columns`` in that order, from every part table (each has a row for every
        time the first part has since it was made; a channel no table holds is NULL)."""
        first = layout.parts[0]
        alias = {part: f"p{part}" for part in layout.parts}
        cells, used = [], {first}
        for column, channel in columns:
            placed = layout.channels.get(channel)
            if placed is None:
                cells.append(sql.SQL("NULL::text AS {}").format(sql.Identifier(column)))
                continue
            used.add(placed.part)
            # text, as the narrow pivot it replaces (and in any reader's session): a column turned to
            # text later changes no view column's type
            cells.append(sql.SQL("{} AS {}").format(render.typed_text(
                sql.Identifier(alias[placed.part], placed.column_name), placed.column_type, render.OLDEST_PRINTER),
                sql.Identifier(column)))
        joins = [sql.SQL("LEFT JOIN {t} {a} ON {a}.created_time = {a1}.created_time").format(
            t=sql.Identifier(self.cfg.schema, layout.tables[part]), a=sql.Identifier(alias[part]),
            a1=sql.Identifier(alias[first])) for part in sorted(used - {first})]
        return sql.SQL("SELECT {a1}.created_time{sep}{cells} FROM {t1} {a1} {joins}").format(
            a1=sql.Identifier(alias[first]), sep=sql.SQL(", ") if cells else sql.SQL(""),
            cells=sql.SQL(", ").join(cells), t1=sql.Identifier(self.cfg.schema, layout.tables[first]),
            joins=sql.SQL(" ").join(joins))

    def rollback_actions(self, layout: ShipLayout, start: dt.datetime | None = None, end: dt.datetime | None = None) -> list:
        tables = [sql.Identifier(self.cfg.schema, layout.tables[part]) for part in layout.parts]
        if start is None and end is None:
            return [_Statement(sql.SQL("DROP TABLE IF EXISTS {}").format(t)) for t in tables]
        return [_Statement(sql.SQL("DELETE FROM {} WHERE created_time >= %s AND created_time < %s").format(t),
                           (start or "-infinity", end or "infinity")) for t in tables]

    def checksums(self, cur: cursor | None, hashes: str) -> WideChecksums:
        return PostgresChecksums(cur, self.cfg.schema, checksums.Hashes(hashes))
