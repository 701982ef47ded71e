"""Writes into PostgreSQL: COPY into UNLOGGED staging, then one transaction that MERGEs.

The Spark side (``ChunkWriter``, run by ``mapInArrow`` on the executors) unpacks the per-time
arrays of the source query, de-duplicates and pivots each partition with the Arrow kernels and COPYs
the wide rows into the chunk's staging table of each part, and rejected rows into a staging rejects
table. The driver side (``merge_parts``, ``replace_rejects``, called by the backfill job) then, in one
transaction with the ledger row, merges column-wise and replaces the chunk's rejects: a replayed
chunk changes nothing.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql
from pyspark.sql.types import LongType, StringType, StructField, StructType

from widen import db, kernels
from widen.catalog import ShipLayout

STATS_SCHEMA = StructType([
    StructField("narrow_rows", LongType()), StructField("rejected_rows", LongType()),
    StructField("duplicate_rows", LongType()), StructField("wide_rows", LongType()),
    StructField("unknown_channels", StringType()),
])


@dataclass(frozen=True)
class Staging:
    """Names of one unit of work's staging tables (one per part, one for rejects)."""
    schema: str
    prefix: str

    @classmethod
    def for_key(cls, schema: str, *key) -> "Staging":
        digest = hashlib.md5("\x1f".join(map(str, key)).encode()).hexdigest()[:20]
        return cls(schema, f"stg_{digest}")

    def wide(self, part: int) -> sql.Composable:
        return sql.Identifier(self.schema, f"{self.prefix}_p{part}")

    def wide_name(self, part: int) -> str:
        return f"{self.prefix}_p{part}"

    @property
    def rejects(self) -> sql.Composable:
        return sql.Identifier(self.schema, f"{self.prefix}_rej")


def create_staging(conn, staging: Staging, layout: ShipLayout) -> None:
    """(Re)create empty UNLOGGED staging tables for every part and for rejects; commits."""
    with conn.cursor() as cur:
        for part in layout.parts:
            cols = [sql.SQL("{} text").format(sql.Identifier(c.column_name))
                    for c in layout.part_channels(part)]
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.wide(part)))
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (created_time timestamptz{}{})").format(
                staging.wide(part), sql.SQL(", ") if cols else sql.SQL(""), sql.SQL(", ").join(cols)))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.rejects))
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (ship_id text, created_time timestamptz, raw text)")
                    .format(staging.rejects))
    conn.commit()


def drop_staging(conn, staging: Staging, parts: list[int]) -> None:
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
        for part in self.parts:
            first = len(self.channel_index)
            for c in layout.part_channels(part):
                self.channel_index[c.data_channel_id] = len(self.channel_index)
            self.part_slices[part] = (first, len(self.channel_index))

    def __repr__(self) -> str:
        return f"ChunkWriter(ship_id={self.ship_id!r}, staging={self.staging.prefix!r})"

    @property
    def channels(self) -> list[str]:
        """Known channels in column order: the source query numbers them by this list."""
        return list(self.channel_index)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = list(batches)
        if not batches:
            yield self._stats(0, 0, 0, 0, [])
            return
        table = pa.Table.from_batches(batches)
        del batches
        unknown = table.column("unknown").combine_chunks().flatten()
        rejects = self._reject_rows(table)
        coded = self._valid_rows(table)
        narrow_rows = coded.num_rows + rejects.num_rows
        if len(unknown):
            # Nothing is written: the driver adds the columns and runs the chunk again.
            yield self._stats(narrow_rows, rejects.num_rows, 0, 0, sorted(set(unknown.to_pylist())))
            return
        wide, duplicates = kernels.dedup_and_pivot(coded, len(self.channel_index), self.has_order_key)
        yield from self._write(wide, rejects)
        yield self._stats(narrow_rows, rejects.num_rows, duplicates, wide.num_rows, [])

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

    def _valid_rows(self, table: pa.Table) -> pa.Table:
        """One row per valid reading: the time of its group, its column number, its value."""
        values = table.column("value").combine_chunks()
        times = pc.cast(table.column("created_us").combine_chunks(), pa.timestamp("us", tz="UTC"))
        parents = pc.list_parent_indices(values)
        columns = {"created_time": times.take(parents),
                   "channel": table.column("channel_idx").combine_chunks().flatten(),
                   "value": values.flatten()}
        if self.has_order_key:
            columns["order_key"] = table.column("order_key").combine_chunks().flatten()
        return pa.table(columns)

    def _reject_rows(self, table: pa.Table) -> pa.Table:
        raw = table.column("rejects").combine_chunks()
        times = pc.cast(table.column("created_us").combine_chunks(), pa.timestamp("us", tz="UTC"))
        return pa.table({"created_time": times.take(pc.list_parent_indices(raw)), "raw": raw.flatten()})

    def _reject_columns(self, rejects: pa.Table) -> list[pa.Array]:
        n = rejects.num_rows
        return [pa.array([self.ship_id] * n, pa.string()),
                kernels.timestamp_text(rejects.column("created_time").combine_chunks()),
                rejects.column("raw").combine_chunks()]

    @staticmethod
    def _stats(narrow: int, rejected: int, duplicates: int, wide: int,
               unknown: list[str]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict({
            "narrow_rows": pa.array([narrow], pa.int64()), "rejected_rows": pa.array([rejected], pa.int64()),
            "duplicate_rows": pa.array([duplicates], pa.int64()), "wide_rows": pa.array([wide], pa.int64()),
            "unknown_channels": pa.array(["\x1f".join(unknown) if unknown else None], pa.string())})


def copy_into(cur, table: sql.Composable, columns: list[pa.Array]) -> None:
    data = kernels.copy_text(columns)
    if len(data):
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(table).as_string(cur),
                        io.BytesIO(data), size=1 << 20)


# --- driver side ------------------------------------------------------------------------------

def merge_statement(server_version: int, target: sql.Composable, staging: sql.Composable,
                    columns: list[str], greatest: bool = False) -> sql.Composable:
    """Column-wise upsert: a NULL in the batch never overwrites a value already there.

    By default a value in the batch replaces the one in the table (the backfill's chunk holds every
    reading of its range; with an order column the later batch holds the later rows). With
    ``greatest`` a cell keeps the greater of the two by byte order: DESIGN.md's duplicate rule
    without an order column, applied across micro-batches. MERGE on PostgreSQL 15+,
    ``INSERT … ON CONFLICT`` on 11–14.
    """
    cols = [sql.Identifier(c) for c in columns]
    all_cols = sql.SQL(", ").join([sql.Identifier("created_time"), *cols])
    combine = _combine(greatest)
    wins = ('{new}.{c} IS NOT NULL AND (w.{c} IS NULL OR {new}.{c} COLLATE "C" > w.{c} COLLATE "C")' if greatest
            else "{new}.{c} IS NOT NULL AND {new}.{c} IS DISTINCT FROM w.{c}")
    if server_version >= 150000:
        if not cols:
            return sql.SQL(
                "MERGE INTO {t} AS w USING {s} AS s ON w.created_time = s.created_time "
                "WHEN NOT MATCHED THEN INSERT (created_time) VALUES (s.created_time)").format(
                t=target, s=staging)
        sets = sql.SQL(", ").join(sql.SQL("{c} = " + combine).format(c=c, new=sql.SQL("s")) for c in cols)
        changed = sql.SQL(" OR ").join(sql.SQL("(" + wins + ")").format(c=c, new=sql.SQL("s")) for c in cols)
        values = sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in [sql.Identifier("created_time"), *cols])
        return sql.SQL(
            "MERGE INTO {t} AS w USING {s} AS s ON w.created_time = s.created_time "
            "WHEN MATCHED AND ({changed}) THEN UPDATE SET {sets} "
            "WHEN NOT MATCHED THEN INSERT ({all_cols}) VALUES ({values})").format(
            t=target, s=staging, changed=changed, sets=sets, all_cols=all_cols, values=values)
    return upsert_statement(target, columns, staging, greatest)


def _combine(greatest: bool) -> str:
    """How a cell's new value ({new}.{c}) and old one (w.{c}) combine."""
    return 'GREATEST({new}.{c} COLLATE "C", w.{c} COLLATE "C")' if greatest else "COALESCE({new}.{c}, w.{c})"


def upsert_statement(target: sql.Composable, columns: list[str], staging: sql.Composable | None = None,
                     greatest: bool = False) -> sql.Composable:
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
    sets = sql.SQL(", ").join(sql.SQL("{c} = " + _combine(greatest)).format(c=c, new=sql.SQL("EXCLUDED")) for c in cols)
    return sql.SQL(
        "INSERT INTO {t} AS w ({all_cols}) {rows} ON CONFLICT (created_time) DO UPDATE SET {sets}").format(
        t=target, all_cols=all_cols, rows=rows, sets=sets)


def merge_parts(cur, server_version: int, target_schema: str, staging: Staging,
                layout: ShipLayout) -> int:
    """MERGE every part's staging table into its wide table; returns the rows merged into part 1."""
    merged = 0
    for part in layout.parts:
        columns = [c.column_name for c in layout.part_channels(part)]
        cur.execute(merge_statement(server_version, sql.Identifier(target_schema, layout.tables[part]),
                                    staging.wide(part), columns))
        if part == layout.parts[0]:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(staging.wide(part)))
            merged = cur.fetchone()[0]
    return merged


def replace_rejects(cur, catalog_schema: str, staging: Staging, job: str, batch: str) -> int:
    """Swap the unit's rejects for the staged ones; ``raw`` is the text array the source SQL built."""
    rejects = sql.Identifier(catalog_schema, "rejects")
    cur.execute(sql.SQL("DELETE FROM {} WHERE job = %s AND batch = %s").format(rejects), (job, batch))
    cur.execute(sql.SQL(
        "INSERT INTO {r} (ship_id, data_channel_id, created_time, reason, value_format, double_v, long_v, "
        "str_v, bool_v, job, batch) SELECT ship_id, a[2], created_time, a[1], a[3], "
        "a[4]::double precision, a[5]::bigint, a[6], a[7]::boolean, %s, %s "
        "FROM (SELECT *, raw::text[] AS a FROM {s}) staged").format(r=rejects, s=staging.rejects),
        (job, batch))
    return cur.rowcount

