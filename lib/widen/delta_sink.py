"""Wide tables as Delta Lake tables (``target.kind: delta``): create, evolve, MERGE, delete, drop.

Each ship's part table is a Delta table of its own: ``<target.delta_root>/<dir>`` (``dir`` is the
table name when it is a plain file name, else its safe characters + ``_`` + 8 hex digits of its md5),
or ``<target.delta_database>.<name>`` in the metastore (where names are lower-case letters, digits
and ``_`` only: same rule with that alphabet). The catalog keeps the table's own name. The tables use
column mapping by name, so every channel's column keeps the catalog's column name whatever its
characters. Delta column names are unique regardless of case: the layout puts two channels that
differ only by case in different part tables (``catalog.assign_channels(fold_case=True)``).

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

import threading
import time

import pyarrow as pa
import pyarrow.compute as pc

from widen import catalog, kernels, naming
from widen.config import TargetConfig
from widen.sinks import STATS_SCHEMA, ChunkWriter
from widen.stream_sink import present_columns

_TXN_CONFS = ("spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion")
#: the txn session confs are session-wide: one idempotent MERGE at a time in this process
_TXN_LOCK = threading.Lock()
#: concurrent commits to one table (a stream and a backfill both adding a ship's table or column)
#: are retried this many times
COMMIT_ATTEMPTS = 4
TABLE_PROPERTIES = {"delta.columnMapping.mode": "name", "delta.minReaderVersion": "2",
                    "delta.minWriterVersion": "5"}


def quoted(name: str) -> str:
    """A Spark SQL identifier part in backticks (a name with dots, spaces or backticks stays one)."""
    return "`" + name.replace("`", "``") + "`"


def table_dir(name: str, lower: bool = False) -> str:
    """The directory (or with ``lower`` the metastore table name) of a wide table
    (``naming.delta_dir_name``)."""
    return naming.delta_dir_name(name, lower)


def _is_conflict(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}"
    return any(word in text for word in ("Concurrent", "ProtocolChanged", "MetadataChanged",
                                         "DELTA_TABLE_ALREADY_EXISTS", "already exists"))


def retry_conflicts(action, what: str):
    """Run ``action`` again when another writer committed to the same table first."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - Delta's conflicts arrive as Py4J/captured errors
            if attempt == COMMIT_ATTEMPTS or not _is_conflict(err):
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError(what)


class DeltaTarget:
    """The Delta wide tables of one configuration, reached through one Spark session."""

    def __init__(self, spark, target: TargetConfig):
        self.spark = spark
        self.target = target

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

    def table(self, table_name: str):
        from delta.tables import DeltaTable

        path = self.path(table_name)
        return (DeltaTable.forPath(self.spark, path) if path is not None
                else DeltaTable.forName(self.spark, self.qualified(table_name)))

    def read(self, table_name: str):
        path = self.path(table_name)
        if path is not None:
            return self.spark.read.format("delta").load(path)
        return self.spark.read.table(self.qualified(table_name))

    # -- DDL ---------------------------------------------------------------------------------------
    def ensure_tables(self, layout: catalog.ShipLayout) -> int:
        """Create missing part tables and add missing columns (with comments naming ship and
        channel, as ``COMMENT ON`` does in PostgreSQL). Returns the number of Delta commits made."""
        commits = 0
        for part in layout.parts:
            name = layout.tables[part]
            members = layout.part_channels(part)
            if not self.exists(name):
                retry_conflicts(lambda: self._create(layout.ship_id, part, name, members), f"create {name}")
                commits += 1
                continue
            have = set(self.read(name).columns)
            missing = [c for c in members if c.column_name not in have]
            if missing:
                retry_conflicts(lambda: self._add_columns(name, missing), f"add columns to {name}")
                commits += 1
        return commits

    def _create(self, ship: str, part: int, name: str, members: list[catalog.ChannelColumn]) -> None:
        from delta.tables import DeltaTable

        builder = DeltaTable.createIfNotExists(self.spark)
        path = self.path(name)
        builder = builder.location(path) if path is not None else builder.tableName(self.qualified(name))
        builder = builder.comment(f"widen: ship_id={ship} part={part}")
        builder = builder.addColumn("created_time", "TIMESTAMP", nullable=False)
        for c in members:
            builder = builder.addColumn(c.column_name, "STRING", comment=f"data_channel_id={c.data_channel_id}")
        for key, value in TABLE_PROPERTIES.items():
            builder = builder.property(key, value)
        builder.execute()

    def _add_columns(self, name: str, members: list[catalog.ChannelColumn]) -> None:
        """Schema evolution by an empty append with ``mergeSchema``: no SQL text holds a name."""
        from pyspark.sql.types import StringType, StructField, StructType, TimestampType

        schema = StructType([StructField("created_time", TimestampType(), False)] + [
            StructField(c.column_name, StringType(), True, {"comment": f"data_channel_id={c.data_channel_id}"})
            for c in members])
        writer = self.spark.createDataFrame([], schema).write.format("delta").mode("append") \
            .option("mergeSchema", "true")
        path = self.path(name)
        if path is not None:
            writer.save(path)
        else:
            writer.saveAsTable(self.qualified(name))

    def drop(self, layout: catalog.ShipLayout) -> list[str]:
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
    def merge(self, table_name: str, source, columns: list[tuple[str, str]], greatest: bool,
              lo, hi, txn: tuple[str, int] | None = None) -> None:
        """Column-wise MERGE of ``source`` (``created_time`` and internal column names) into a table.

        ``columns`` pairs each source column with its target column. A NULL never overwrites a
        value; a value replaces the old one, or with ``greatest`` the greater by byte order stays
        (Spark compares strings by their UTF-8 bytes, like ``COLLATE "C"``). Only rows in
        [``lo``, ``hi``] are looked at. With ``txn`` = (app id, version) the commit is skipped when
        the table already has that version of that app id.
        """
        from pyspark.sql import functions as F

        def new(src: str):
            return F.col(f"s.{quoted(src)}")

        def old(dst: str):
            return F.col(f"w.{quoted(dst)}")

        condition = ((F.col("w.created_time") == F.col("s.created_time"))
                     & F.col("w.created_time").between(F.lit(lo), F.lit(hi)))
        if greatest:
            sets = {quoted(dst): F.greatest(new(src), old(dst)) for src, dst in columns}
            changes = [new(src).isNotNull() & (old(dst).isNull() | (new(src) > old(dst))) for src, dst in columns]
        else:
            sets = {quoted(dst): F.coalesce(new(src), old(dst)) for src, dst in columns}
            changes = [new(src).isNotNull() & ~new(src).eqNullSafe(old(dst)) for src, dst in columns]
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

    def delete(self, table_name: str, condition) -> None:
        retry_conflicts(lambda: self.table(table_name).delete(condition), f"delete from {table_name}")


# --- backfill: the executor side ----------------------------------------------------------------

#: wide rows per Arrow batch a Delta chunk writer yields
WIDE_BATCH_ROWS = 50_000


class DeltaChunkWriter(ChunkWriter):
    """``ChunkWriter`` for a Delta target: instead of COPYing, it yields the partition's wide rows
    (``created_time`` and ``c0``, ``c1`` … in ``channels`` order), its rejects (``reject_raw`` set)
    and its stats row (``narrow_rows`` set) as rows of one schema, for the driver to MERGE and record.
    """

    def __init__(self, layout: catalog.ShipLayout, ship_id: str, has_order_key: bool):
        super().__init__({}, None, layout, ship_id, has_order_key)
        fields = [pa.field(f.name, pa.int64() if f.name != "unknown_channels" else pa.string())
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
    def schema(self):
        from pyspark.sql.types import StructField, StructType, StringType, TimestampType

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

    def _stats(self, narrow: int, rejected: int, duplicates: int, wide: int, unknown: list[str]) -> pa.RecordBatch:
        stats = ChunkWriter._stats(narrow, rejected, duplicates, wide, unknown)
        return self._batch(1, {name: stats.column(name) for name in stats.schema.names})


# --- the driver side: one ship's rows, a stream batch, a chunk's output ---------------------------

def merge_wide(target: DeltaTarget, layout: catalog.ShipLayout, wide: kernels.Pivoted, greatest: bool,
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
                     greatest, lo, hi, txn)


def merge_chunk(target: DeltaTarget, layout: catalog.ShipLayout, writer: DeltaChunkWriter, output) -> None:
    """MERGE a backfill chunk's wide rows (the persisted output of ``DeltaChunkWriter``) part by part."""
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
        target.merge(layout.tables[part], wide.select("created_time", *(src for src, _ in columns)),
                     columns, False, lo, hi)


def chunk_rejects(output, ship_id: str, rows_per_batch: int = 10_000):
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
