"""Wide tables as Delta Lake tables (``target.kind: delta``): create, evolve, MERGE, delete, drop.

Each ship's part table is a Delta table of its own: ``<target.delta_root>/<dir>`` (``dir`` is the
table name when it is a plain file name, else its safe characters + ``_`` + 8 hex digits of its md5),
or ``<target.delta_database>.<name>`` in the metastore (where names are lower-case letters, digits
and ``_`` only: same rule with that alphabet). The catalog keeps the table's own name. The tables use
column mapping by name, so every channel's column keeps the catalog's column name whatever its
characters. Delta column names are unique regardless of case: the layout puts two channels that
differ only by case in different part tables (``core.layout.LayoutRules(fold_case=True)``).

The catalog, the ledgers and the rejects stay in the target PostgreSQL database. A Delta commit
cannot join that database's transaction, so exactly-once rests on:

- stream micro-batches: every table's MERGE carries ``txnAppId = widen-stream:<query>`` and
  ``txnVersion = <batch id>``; Delta skips a version a table already has, so a batch replayed after a
  crash re-merges only the tables it had not reached; the ledger row is written after them all;
- backfill chunks and repairs: the column-wise MERGE is idempotent (the same rows merged twice give
  the same table), and the ledger row marks a chunk done only after all its tables committed.

A MERGE's condition carries the batch's time range, so Delta's file statistics keep it away from
other time ranges (and from conflicts with a writer working on them, e.g. the stream at the tail
while the backfill fills the history).
"""
from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from widen.catalog import ledger
from widen.config import TargetConfig
from widen.core import kernels, naming, typed
from widen.core.checksum import HASH_MD5, UNIT_SEPARATOR, Aggregate, from_micros
from widen.core.chunks import Chunk
from widen.core.layout import ChannelColumn, LayoutRules, ShipLayout
from widen.targets.base import ChunkWrite, WideChecksums, WideTarget, present_columns
from widen.targets.postgres import STATS_SCHEMA, ChunkWriter

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable, Iterator
    from typing import Any

    from delta.tables import DeltaTable
    from psycopg2.extensions import connection, cursor
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from widen.core.layout import ShipLayout
    from widen.core.transforms import NarrowChunk

_TXN_CONFS = ("spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion")
#: the txn session confs are session-wide: one idempotent MERGE at a time in this process
_TXN_LOCK = threading.Lock()
#: concurrent commits to one table (a stream and a backfill both adding a ship's table or column)
#: are retried this many times
COMMIT_ATTEMPTS = 4
R = TypeVar("R")
TABLE_PROPERTIES = {"delta.columnMapping.mode": "name", "delta.minReaderVersion": "2",
                    "delta.minWriterVersion": "5"}


def quoted(name: str) -> str:
    """A Spark SQL identifier part in backticks (a name with dots, spaces or backticks stays one)."""
    return "`" + name.replace("`", "``") + "`"


def table_dir(name: str, lower: bool = False) -> str:
    """The directory (or with ``lower`` the metastore table name) of a wide table
    (``naming.delta_dir_name``)."""
    return naming.delta_dir_name(name, lower)


#: error conditions of a table another writer made first (a path's Delta table, a metastore table)
ALREADY_EXISTS = frozenset({"DELTA_TABLE_ALREADY_EXISTS", "TABLE_OR_VIEW_ALREADY_EXISTS"})
#: how a create that lost the race to another writer fails, besides a commit conflict
LOST_CREATE = ALREADY_EXISTS | {"DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"}
#: how long a create that lost waits for the winner's table to read as one
CREATE_RACE_SECONDS = 10.0


def _is_conflict(err: Exception) -> bool:
    """Whether another writer committed to the same table first: one of delta-spark's typed commit
    conflicts, or the table made by someone else meanwhile (by its error condition, not its text)."""
    from delta import exceptions
    from pyspark.errors import PySparkException

    if isinstance(err, tuple(getattr(exceptions, name) for name in exceptions.__all__)):
        return True
    return isinstance(err, PySparkException) and err.getCondition() in ALREADY_EXISTS


def retry_conflicts(action: Callable[[], R], what: str) -> R:
    """Run ``action`` again when another writer committed to the same table first."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - anything but a conflict is raised at once
            if attempt == COMMIT_ATTEMPTS or not _is_conflict(err):
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError(what)


class DeltaTarget(WideTarget):
    """The Delta wide tables of one configuration, reached through one Spark session."""

    kind = "delta"
    checksum_hashes = (HASH_MD5,)       # Spark has md5, not PostgreSQL's hashtextextended
    checksums_in_tasks = False          # Spark aggregates the Delta side on the driver
    needs_spark = True

    def __init__(self, spark: SparkSession, target: TargetConfig):
        self.spark = spark
        self.target = self.cfg = target

    @property
    def rules(self) -> LayoutRules:
        """No row-width limit (Parquet); column names unique regardless of case; two table names
        collide when their directories (or metastore names) do."""
        key = naming.delta_dir_name if self.target.delta_root else functools.partial(naming.delta_dir_name, lower=True)
        return LayoutRules(self.target.wide_table_template, self.target.max_columns_per_table, float("inf"),
                           fold_case=True, storage_key=key, typed=self.target.typed)

    @property
    def location(self) -> str:
        return self.target.delta_root or self.target.delta_database or ""

    # -- where a table lives ---------------------------------------------------------------------
    def path(self, table_name: str) -> str | None:
        if not self.target.delta_root:
            return None
        return self.target.delta_root.rstrip("/") + "/" + table_dir(table_name)

    def qualified(self, table_name: str) -> str:
        """The table as Spark SQL names it: ``delta.`<path>``` or ```db`.`name```."""
        path = self.path(table_name)
        if path is not None:
            return f"delta.{quoted(path)}"
        return f"{quoted(self.target.delta_database)}.{quoted(table_dir(table_name, lower=True))}"

    def exists(self, table_name: str) -> bool:
        from delta.tables import DeltaTable

        path = self.path(table_name)
        if path is not None:
            return DeltaTable.isDeltaTable(self.spark, path)
        return self.spark.catalog.tableExists(self.qualified(table_name))

    def table(self, table_name: str) -> DeltaTable:
        from delta.tables import DeltaTable

        path = self.path(table_name)
        return (DeltaTable.forPath(self.spark, path) if path is not None
                else DeltaTable.forName(self.spark, self.qualified(table_name)))

    def read(self, table_name: str) -> DataFrame:
        path = self.path(table_name)
        if path is not None:
            return self.spark.read.format("delta").load(path)
        return self.spark.read.table(self.qualified(table_name))

    # -- DDL ---------------------------------------------------------------------------------------
    def ensure_tables(self, conn: connection, layout: ShipLayout) -> int:
        """Create missing part tables and add missing columns (with comments naming ship and
        channel, as ``COMMENT ON`` does in PostgreSQL). Returns the number of Delta commits made."""
        commits, made = 0, set()
        for part in layout.parts:
            name = layout.tables[part]
            members = layout.part_channels(part)
            if not self.exists(name) and self._create(layout.ship_id, part, name, members):
                commits += 1
                made.add(name)
                first = layout.tables[layout.parts[0]]
                if part != layout.parts[0] and first not in made and self.exists(first):
                    # every part has a row for every time the first part has (rows written before it)
                    times = self.read(first).select("created_time")
                    lo, hi = _time_range(times)
                    if lo is not None:
                        self.merge(name, times, [], False, lo, hi)
                        commits += 1
                continue
            have = set(self.read(name).columns)
            missing = [c for c in members if c.column_name not in have]
            if missing:
                retry_conflicts(lambda n=name, m=missing: self._add_columns(n, m), f"add columns to {name}")
                commits += 1
        return commits

    def _create(self, ship: str, part: int, name: str, members: list[ChannelColumn]) -> bool:
        """Create a part table; False when another writer (a stream, a backfill) made it meanwhile,
        perhaps with fewer columns: the caller then adds what its layout has and the table lacks.

        Not ``createIfNotExists``: it succeeds without a word on a table made meanwhile with other
        columns. A create that lost the race fails in one of several ways (a commit conflict, the
        table or a non-empty location already there): whichever, a table there now was made by
        the other writer; with none there the error is real."""
        from delta.tables import DeltaTable

        builder = DeltaTable.create(self.spark)
        path = self.path(name)
        builder = builder.location(path) if path is not None else builder.tableName(self.qualified(name))
        builder = builder.comment(f"widen: ship_id={ship} part={part}")
        builder = builder.addColumn("created_time", "TIMESTAMP", nullable=False)
        for c in members:
            builder = builder.addColumn(c.column_name, typed.SPARK_TYPES[c.column_type].upper(),
                                        comment=f"data_channel_id={c.data_channel_id}")
        for key, value in TABLE_PROPERTIES.items():
            builder = builder.property(key, value)
        try:
            builder.execute()
        except Exception as err:  # noqa: BLE001 - told apart by what is there now
            if self._made_meanwhile(name, err):
                return False
            raise
        return True

    def _made_meanwhile(self, name: str, err: Exception) -> bool:
        """Whether a failed create of ``name`` lost the race to another writer: the table is there.
        After a conflict the winner's commit may be written before its table reads as one (seen:
        ~0.5 s in one process), so such errors wait for it a while (inside the ship's DDL
        transaction: at most ``CREATE_RACE_SECONDS`` more for a rollback waiting on the ship)."""
        from pyspark.errors import PySparkException

        lost = _is_conflict(err) or (isinstance(err, PySparkException) and err.getCondition() in LOST_CREATE)
        deadline = time.monotonic() + (CREATE_RACE_SECONDS if lost else 0)
        while True:
            try:            # a read brings this process's cached log up to date (``exists`` may not)
                return self.read(name).schema is not None
            except PySparkException:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def _add_columns(self, name: str, members: list[ChannelColumn]) -> None:
        """Schema evolution by an empty append with ``mergeSchema``: no SQL text holds a name."""
        from pyspark.sql.types import StructField, StructType, TimestampType, _parse_datatype_string

        schema = StructType([StructField("created_time", TimestampType(), False)] + [
            StructField(c.column_name, _parse_datatype_string(typed.SPARK_TYPES[c.column_type]), True,
                        {"comment": f"data_channel_id={c.data_channel_id}"})
            for c in members])
        writer = self.spark.createDataFrame([], schema).write.format("delta").mode("append") \
            .option("mergeSchema", "true")
        path = self.path(name)
        if path is not None:
            writer.save(path)
        else:
            writer.saveAsTable(self.qualified(name))

    def text_columns(self, conn: connection, layout: ShipLayout, kinds: dict[str, str]) -> None:
        """Rewrite each part table that has one of the columns with them as the source's text (one
        overwrite commit per table, schema replaced; the rows and the other columns unchanged)."""
        from pyspark.sql import functions as F

        for part in layout.parts:
            changed = {c.column_name: c for c in layout.part_channels(part) if c.data_channel_id in kinds}
            if not changed or not self.exists(layout.tables[part]):
                continue
            name = layout.tables[part]
            frame = self.read(name)
            frame = frame.select(*[
                source_text(F.col(quoted(col)), kinds[changed[col].data_channel_id]).alias(
                    col, metadata={"comment": f"data_channel_id={changed[col].data_channel_id}"})
                if col in changed else F.col(quoted(col)) for col in frame.columns])
            writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
            path = self.path(name)
            retry_conflicts(lambda w=writer, p=path, n=name: w.save(p) if p is not None else w.saveAsTable(
                self.qualified(n)), f"columns of {name} to text")

    def drop(self, layout: ShipLayout) -> list[str]:
        """Drop the ship's part tables (their directories, under a root). Returns what was dropped."""
        dropped = []
        for part in layout.parts:
            name = layout.tables[part]
            path = self.path(name)
            if path is None:
                self.spark.sql(f"DROP TABLE IF EXISTS {self.qualified(name)}")
                dropped.append(self.qualified(name))
                continue
            jvm = self.spark.sparkContext._jvm
            hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
            fs = hadoop_path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
            if fs.exists(hadoop_path):
                fs.delete(hadoop_path, True)
                dropped.append(path)
        return dropped

    # -- DML ---------------------------------------------------------------------------------------
    def merge(self, table_name: str, source: DataFrame, columns: list[tuple[str, str]], greatest: bool,
              lo: dt.datetime, hi: dt.datetime, txn: tuple[str, int] | None = None,
              types: dict[str, str] | None = None) -> None:
        """Column-wise MERGE of ``source`` (``created_time`` and internal column names) into a table.

        ``columns`` pairs each source column with its target column. A NULL never overwrites a
        value; a value replaces the old one, or with ``greatest`` the greater by byte order stays
        (Spark compares strings by their UTF-8 bytes, like ``COLLATE "C"``). Only rows in
        [``lo``, ``hi``] are looked at. With ``txn`` = (app id, version) the commit is skipped when
        the table already has that version of that app id. ``types``: target column -> its type
        where not text (``core.typed``): the source's text is cast to it, and cells compare by the
        text the source printed (-0 is not 0; ``greatest`` by byte order, as for text).
        """
        from pyspark.sql import functions as F

        types = types or {}
        if types:
            source = source.select("created_time", *[
                F.col(quoted(src)).cast(typed.SPARK_TYPES[types[dst]]).alias(src) if dst in types else F.col(quoted(src))
                for src, dst in columns])

        def new(src: str):
            return F.col(f"s.{quoted(src)}")

        def old(dst: str):
            return F.col(f"w.{quoted(dst)}")

        condition = ((F.col("w.created_time") == F.col("s.created_time"))
                     & F.col("w.created_time").between(F.lit(lo), F.lit(hi)))
        if greatest:
            sets, changes = {}, []
            for src, dst in columns:
                if dst not in types:
                    sets[quoted(dst)] = F.greatest(new(src), old(dst))
                    changes.append(new(src).isNotNull() & (old(dst).isNull() | (new(src) > old(dst))))
                    continue
                bigger = new(src).isNotNull() & (old(dst).isNull() | (
                    source_text(new(src), types[dst]) > source_text(old(dst), types[dst])))
                sets[quoted(dst)] = F.when(bigger, new(src)).otherwise(old(dst))
                changes.append(bigger)
        else:
            sets = {quoted(dst): F.coalesce(new(src), old(dst)) for src, dst in columns}
            # Spark's own text of a double is exact (-0.0 and 0.0 differ), not the source's
            changes = [new(src).isNotNull() & ~(new(src).cast("string") if dst in types else new(src)).eqNullSafe(
                old(dst).cast("string") if dst in types else old(dst)) for src, dst in columns]
        inserts = {"created_time": F.col("s.created_time"), **{quoted(dst): new(src) for src, dst in columns}}

        def run():
            builder = self.table(table_name).alias("w").merge(source.alias("s"), condition)
            if changes:
                changed = changes[0]
                for c in changes[1:]:
                    changed = changed | c
                builder = builder.whenMatchedUpdate(condition=changed, set=sets)
            builder.whenNotMatchedInsert(values=inserts).execute()

        if txn is None:
            retry_conflicts(run, f"merge into {table_name}")
            return
        with _TXN_LOCK:
            conf = self.spark.conf
            conf.set(_TXN_CONFS[0], txn[0])
            conf.set(_TXN_CONFS[1], str(txn[1]))
            try:
                retry_conflicts(run, f"merge into {table_name}")
            finally:
                for key in _TXN_CONFS:
                    conf.unset(key)

    def delete(self, table_name: str, condition: Column | str) -> None:
        retry_conflicts(lambda: self.table(table_name).delete(condition), f"delete from {table_name}")


    # -- the WideTarget interface -------------------------------------------------------------------
    def chunk_write(self, chunk: Chunk, layout: ShipLayout, has_order_key: bool) -> ChunkWrite:
        return DeltaChunkWrite(self, chunk, layout, has_order_key)

    def merge_rows(self, cur: cursor, layout: ShipLayout, wide: kernels.Pivoted, greatest: bool,
                   txn: tuple[str, int] | None = None, index: int = 0) -> None:
        """Each part its own Delta commit (``cur``'s transaction cannot include them); ``txn`` makes
        a replayed micro-batch commit nothing in a table that has its version."""
        merge_wide(self, layout, wide, greatest, txn)

    def delete_rows(self, cur: cursor, layout: ShipLayout, times: list, ranges: list) -> None:
        from functools import reduce

        from pyspark.sql import functions as F

        when = F.col("created_time")
        condition = reduce(lambda a, b: a | b, [(when >= F.lit(lo)) & (when < F.lit(hi)) for lo, hi in ranges],
                           when.isin(list(times)) if times else F.lit(False))
        for part in layout.parts:
            if self.exists(layout.tables[part]):
                self.delete(layout.tables[part], condition)

    def rollback_actions(self, layout: ShipLayout, start: dt.datetime | None = None, end: dt.datetime | None = None) -> list:
        from pyspark.sql import functions as F

        if start is None and end is None:
            names = ", ".join(self.qualified(t) for t in layout.tables.values())
            return [_Action(f"drop Delta tables {names}", lambda cur: len(self.drop(layout)))]
        when = F.col("created_time")
        condition = F.lit(True)
        if start is not None:
            condition = condition & (when >= F.lit(start))
        if end is not None:
            condition = condition & (when < F.lit(end))
        return [_Action(f"delete rows in [{start or '-infinity'}, {end or 'infinity'}) from {self.qualified(t)}",
                        lambda cur, t=t: (self.delete(t, condition) if self.exists(t) else None) or 0)
                for t in layout.tables.values()]

    def checksums(self, cur: cursor | None, hashes: str) -> WideChecksums:
        assert hashes == HASH_MD5, hashes
        return DeltaChecksums(self)


class _Action:
    """A rollback step on Delta tables, shown as it runs."""

    def __init__(self, description: str, action: Callable[[], Any]):
        self.description, self.action = description, action

    def text(self, cur: cursor) -> str:
        return self.description

    def __call__(self, cur: cursor) -> int:
        return self.action(cur) or 0


# --- backfill: the executor side ----------------------------------------------------------------

#: wide rows per Arrow batch a Delta chunk writer yields
WIDE_BATCH_ROWS = 50_000


class DeltaChunkWriter(ChunkWriter):
    """``ChunkWriter`` for a Delta target: instead of COPYing, it yields the partition's wide rows
    (``created_time`` and ``c0``, ``c1`` … in ``channels`` order), its rejects (``reject_raw`` set)
    and its stats row (``narrow_rows`` set) as rows of one schema, for the driver to MERGE and record.
    """

    def __init__(self, layout: ShipLayout, ship_id: str, has_order_key: bool):
        from pyspark.sql.types import StringType

        super().__init__({}, None, layout, ship_id, has_order_key)
        fields = [pa.field(f.name, pa.string() if isinstance(f.dataType, StringType) else pa.int64())
                  for f in STATS_SCHEMA.fields]
        fields += [pa.field("created_time", pa.timestamp("us", tz="UTC")), pa.field("reject_raw", pa.string())]
        fields += [pa.field(name, pa.string()) for name in self.internal_names]
        self.arrow_schema = pa.schema(fields)

    def __repr__(self) -> str:
        return f"DeltaChunkWriter(ship_id={self.ship_id!r})"

    @property
    def internal_names(self) -> list[str]:
        return [f"c{i}" for i in range(len(self.channel_index))]

    @property
    def schema(self) -> StructType:
        from pyspark.sql.types import StringType, StructField, StructType, TimestampType

        return StructType(list(STATS_SCHEMA.fields) + [StructField("created_time", TimestampType()),
                                                       StructField("reject_raw", StringType())]
                          + [StructField(name, StringType()) for name in self.internal_names])

    def _batch(self, rows: int, columns: dict) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays(
            [columns[f.name] if f.name in columns else pa.nulls(rows, f.type) for f in self.arrow_schema],
            schema=self.arrow_schema)

    def _write(self, wide: kernels.Pivoted, rejects: pa.Table) -> list[pa.RecordBatch]:
        out = []
        for first in range(0, wide.num_rows, WIDE_BATCH_ROWS):
            n = min(WIDE_BATCH_ROWS, wide.num_rows - first)
            columns = {"created_time": wide.times.slice(first, n)}
            columns.update({name: col.slice(first, n) for name, col in zip(self.internal_names, wide.columns)})
            out.append(self._batch(n, columns))
        if rejects.num_rows:
            out.append(self._batch(rejects.num_rows, {
                "created_time": rejects.column("created_time").combine_chunks(),
                "reject_raw": rejects.column("raw").combine_chunks()}))
        return out

    def _stats(self, narrow: int, rejected: int, duplicates: int, wide: int, unknown: list[str],
               misfit: list[str] | None = None, newest: int | None = None) -> pa.RecordBatch:
        stats = ChunkWriter._stats(narrow, rejected, duplicates, wide, unknown, misfit, newest)
        return self._batch(1, {name: stats.column(name) for name in stats.schema.names})


# --- the driver side: one ship's rows, a stream batch, a chunk's output ---------------------------

def merge_wide(target: DeltaTarget, layout: ShipLayout, wide: kernels.Pivoted, greatest: bool,
               txn: tuple[str, int] | None = None) -> None:
    """MERGE pivoted rows (built on the driver: a micro-batch, a repair) into every part table."""
    if not wide.num_rows:
        return
    lo, hi = pc.min(wide.times).as_py(), pc.max(wide.times).as_py()
    for part in layout.parts:
        present = present_columns(layout, wide, part)
        names = [f"c{i}" for i in range(len(present))]
        table = pa.table({"created_time": pc.cast(wide.times, pa.timestamp("us", tz="UTC")),
                          **{name: col for name, (_, col) in zip(names, present)}})
        frame = target.spark.createDataFrame(table)
        target.merge(layout.tables[part], frame, [(name, c.column_name) for name, (c, _) in zip(names, present)],
                     greatest, lo, hi, txn, column_types([c for c, _ in present]))


def merge_chunk(target: DeltaTarget, layout: ShipLayout, writer: DeltaChunkWriter, output: DataFrame,
                now: ShipLayout | None = None) -> None:
    """MERGE a backfill chunk's wide rows (the persisted output of ``DeltaChunkWriter``) part by part.

    ``now``: the ship's layout as recorded now, when another chunk of the ship may have changed it
    while this one ran: a column turned text since gets the source text (the output's values)
    uncast, not a double's cast back to text."""
    from pyspark.sql import functions as F

    wide = output.where(F.col("narrow_rows").isNull() & F.col("reject_raw").isNull())
    lo, hi = wide.agg(F.min("created_time"), F.max("created_time")).first()
    if lo is None:
        return
    index = 0
    for part in layout.parts:
        members = layout.part_channels(part)
        columns = [(writer.internal_names[index + i], c.column_name) for i, c in enumerate(members)]
        index += len(members)
        types = column_types([now.channels.get(c.data_channel_id, c) for c in members] if now else members)
        # no order column: the greater value stays, as in the stream's and repair's merges
        target.merge(layout.tables[part], wide.select("created_time", *(src for src, _ in columns)),
                     columns, not writer.has_order_key, lo, hi, types=types)


def _time_range(frame: DataFrame) -> tuple:
    from pyspark.sql import functions as F

    lo, hi = frame.agg(F.min("created_time"), F.max("created_time")).first()
    return lo, hi


def column_types(members: list[ChannelColumn]) -> dict[str, str]:
    """column -> type of the channels whose column is not text."""
    return {c.column_name: c.column_type for c in members if c.column_type != typed.TEXT}


def source_text(col: Column, column_type: str) -> Column:
    """A typed Delta column's value as the source printed it (PostgreSQL 12's text of a double, by
    ``values.float8_text`` in a vectorised UDF: Spark has no exact equivalent)."""
    from pyspark.sql import functions as F

    if column_type == typed.DOUBLE:
        # pandas gives a NULL as NaN too: the NULLs are put back outside the UDF
        return F.when(col.isNotNull(), _float8_text_udf()(col))
    return col.cast("string")


@functools.cache
def _float8_text_udf() -> Callable:
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    def float8_text(values: Any) -> Any:
        from widen.core.values import float8_text as text

        return pd.Series([text(float(v)) for v in values], dtype=object)

    # real types (not this module's postponed strings): Spark reads them to pick a Series UDF
    float8_text.__annotations__ = {"values": pd.Series, "return": pd.Series}
    return pandas_udf(float8_text, "string")


def chunk_rejects(output: DataFrame, ship_id: str, rows_per_batch: int = 10_000) -> Iterator[pa.Table]:
    """The chunk's rejected rows as Arrow tables (``ship_id``, ``created_time``, ``reject``), a
    batch at a time: memory holds one batch however many rows a bad source has."""
    from pyspark.sql import functions as F

    rows = output.where(F.col("reject_raw").isNotNull()).select("created_time", "reject_raw").toLocalIterator()
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == rows_per_batch:
            yield _rejects_table(ship_id, batch)
            batch = []
    if batch:
        yield _rejects_table(ship_id, batch)


def _rejects_table(ship_id: str, rows: list) -> pa.Table:
    return pa.table({"ship_id": pa.array([ship_id] * len(rows), pa.string()),
                     "created_time": pa.array([r[0] for r in rows], pa.timestamp("us", tz="UTC")),
                     "reject": pa.array([r[1] for r in rows], pa.string())})


class DeltaChunkWrite(ChunkWrite):
    """A chunk into Delta tables: the executors pivot and hand the rows back (``DeltaChunkWriter``),
    kept once computed; the driver MERGEs each part table, then the rejects, in the chunk's
    catalog transaction (which commits after the Delta commits: a rerun merges the same rows again,
    which changes nothing)."""

    def __init__(self, target: DeltaTarget, chunk: Chunk, layout: ShipLayout, has_order_key: bool):
        self.target, self.chunk, self.layout = target, chunk, layout
        self.writer = DeltaChunkWriter(layout, chunk.ship_id, has_order_key)
        self.channels = self.writer.channels
        self.output = None

    def run(self, narrow: NarrowChunk) -> list[dict]:
        from pyspark import StorageLevel

        # Kept once computed: the stats, each part's MERGE and the rejects all read it.
        self.output = narrow.map(self.writer, self.writer.schema).persist(StorageLevel.MEMORY_AND_DISK)
        return [row.asDict() for row in self.output.where("narrow_rows IS NOT NULL")
                .select(*STATS_SCHEMA.fieldNames()).collect()]

    def merge(self, cur: cursor) -> int | None:
        # the caller holds the ship's layout lock: the layout now, as another chunk may have left it
        merge_chunk(self.target, self.layout, self.writer, self.output,
                    self.target.layouts.load(cur.connection, self.layout.ship_id))
        return None                       # the executors counted the wide rows

    def rejects(self, cur: cursor, catalog_schema: str, job: str, label: str) -> None:
        ledger.delete_rejects(cur, catalog_schema, job, label)
        for rejects in chunk_rejects(self.output, self.chunk.ship_id):
            ledger.write_rejects(cur, catalog_schema, rejects, label, job=job)

    def close(self, cur: cursor | None = None) -> None:
        if self.output is not None:
            self.output.unpersist()


class DeltaChecksums(WideChecksums):
    """The wide side in Delta tables: the same aggregates computed by Spark (``HASH_MD5``).

    ``created_time::text`` is rebuilt as PostgreSQL prints a UTC timestamptz
    (``2026-01-01 00:00:00.5+00``: fraction without trailing zeros, none when whole)."""

    def __init__(self, target: DeltaTarget):
        self.spark, self.target = target.spark, target

    @staticmethod
    def _cell(text: Column) -> Column:
        from pyspark.sql import functions as F

        return F.conv(F.substring(F.md5(text), 1, 12), 16, 10).cast("bigint")

    @staticmethod
    def _time_text(col: Column) -> Column:
        from pyspark.sql import functions as F

        micros = F.pmod(F.unix_micros(col), F.lit(1_000_000))
        fraction = F.when(micros == 0, F.lit("")).otherwise(
            F.concat(F.lit("."), F.regexp_replace(F.lpad(micros.cast("string"), 6, "0"), "0+$", "")))
        return F.concat(F.date_format(col, "yyyy-MM-dd HH:mm:ss"), fraction, F.lit("+00"))

    def per_time(self, layout: ShipLayout, lo: dt.datetime, hi: dt.datetime) -> DataFrame:
        """(created_time, cells, s) of the ship's wide rows in [lo, hi), parts added up."""
        from functools import reduce

        from pyspark.sql import functions as F

        frames = []
        for part in layout.parts:
            members = layout.part_channels(part)
            frame = self.target.read(layout.tables[part]).where(
                (F.col("created_time") >= F.lit(lo)) & (F.col("created_time") < F.lit(hi)))
            cols = [F.col(quoted(c.column_name)) for c in members]
            cells = reduce(lambda a, b: a + b, [c.isNotNull().cast("bigint") for c in cols], F.lit(0).cast("bigint"))
            sums = reduce(lambda a, b: a + b, [
                F.coalesce(self._cell(F.concat(F.lit(c.data_channel_id + UNIT_SEPARATOR),
                                               source_text(col, c.column_type) if c.column_type != typed.TEXT else col)),
                           F.lit(0).cast("bigint"))
                for c, col in zip(members, cols)], F.lit(0).cast("bigint"))
            frames.append(frame.select("created_time", cells.alias("cells"), sums.alias("s")))
        united = reduce(lambda a, b: a.unionByName(b), frames)
        if len(frames) > 1:
            united = united.groupBy("created_time").agg(F.sum("cells").alias("cells"), F.sum("s").alias("s"))
        return united

    def groups(self, layout: ShipLayout, ship: str, lo: dt.datetime, hi: dt.datetime, grouping: str,
               width: float | None = None) -> dict:
        from pyspark.sql import functions as F

        if layout is None or not layout.tables or not all(self.target.exists(t) for t in layout.tables.values()):
            return {}
        per_time = self.per_time(layout, lo, hi)
        micros = F.unix_micros("created_time")
        if grouping == "bucket":
            step = int(round(width * 1_000_000))
            key = micros - F.pmod(micros, F.lit(step))       # integer arithmetic: exact at the edges
        else:
            key = micros if grouping == "time" else F.lit(0)
        mix = F.conv(F.substring(F.md5(F.concat(self._time_text(F.col("created_time")), F.lit(":"),
                                                F.col("s").cast("string"))), 1, 16), 16, 10).cast("decimal(20,0)")
        rows = (per_time.select(key.cast("bigint").alias("grp"), "cells", mix.alias("mix"))
                .groupBy("grp").agg(F.count(F.lit(1)), F.sum("cells"), F.sum("mix")).collect())
        out = {}
        for grp, times, cells, checksum in rows:
            group = 0 if grouping == "range" else from_micros(grp)
            out[group] = Aggregate.of((times, cells, checksum))
        return out

    def row(self, layout: ShipLayout, created_time: dt.datetime) -> tuple[bool, dict]:
        from pyspark.sql import functions as F

        target, has_row = {}, False
        for part in layout.parts:
            members = layout.part_channels(part)
            found = (self.target.read(layout.tables[part]).where(F.col("created_time") == F.lit(created_time))
                     .select(F.lit(1), *[F.col(quoted(c.column_name)) for c in members]).collect())
            if not found:
                continue
            has_row = True
            target.update({c.data_channel_id: typed.text_of(c.column_type, v) for c, v in zip(members, found[0][1:])
                           if v is not None})
        return has_row, target


