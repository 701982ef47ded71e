"""Pure DataFrame -> DataFrame transforms: validation, de-duplication, pivot.

No connections, no config files, no session of their own. ``dedup`` and ``pivot`` run the Arrow
kernels production runs (``kernels.dedup``, ``kernels.pivot_named``) per partition; they need every
row of one created_time in one partition. The backfill's reads are split by created_time ranges so
that holds by construction (``time_partitioned=True``); otherwise the frame is first repartitioned
by created_time. ``reject_reason`` is the Spark form of the reject rule (the Delta source's).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
from pyspark.sql import Column, DataFrame, functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from widen.core import kernels, values

if TYPE_CHECKING:
    from pyspark.sql.types import DataType


def reject_reason() -> Column:
    """The Spark twin of ``pg.render.reject_reason``: NULL for a valid row, else why it is rejected."""
    ship, channel = F.col("ship_id"), F.col("data_channel_id")
    time, fmt = F.col("created_time"), F.col("value_format")
    return (F.when(ship.isNull(), F.lit(values.REASON_NULL_SHIP))
            .when(ship == "", F.lit(values.REASON_EMPTY_SHIP))
            .when(channel.isNull(), F.lit(values.REASON_NULL_CHANNEL))
            .when(channel == "", F.lit(values.REASON_EMPTY_CHANNEL))
            .when(time.isNull(), F.lit(values.REASON_NULL_TIME))
            .when(fmt.isNull(), F.lit(values.REASON_NULL_FORMAT))
            .when(~fmt.isin(*values.VALUE_FORMATS), F.lit(values.REASON_UNKNOWN_FORMAT)))


def with_reject_reason(df: DataFrame) -> DataFrame:
    return df.withColumn("reject_reason", reject_reason())


def valid_rows(df: DataFrame) -> DataFrame:
    return df.where(F.col("reject_reason").isNull()).drop("reject_reason")


def rejected_rows(df: DataFrame) -> DataFrame:
    return df.where(F.col("reject_reason").isNotNull())


def _time_partitioned(df: DataFrame, time_partitioned: bool) -> DataFrame:
    return df if time_partitioned else df.repartition("created_time")


def dedup(order_column: str | None = None,
          time_partitioned: bool = False) -> Callable[[DataFrame], DataFrame]:
    """Keep one row per (created_time, data_channel_id) by docs/design.md's duplicate rule."""
    def apply(df: DataFrame) -> DataFrame:
        narrow = df.select("created_time", "data_channel_id", "value",
                           *([F.col(order_column).alias("order_key")] if order_column else []))
        has_key = order_column is not None
        input_schema = _input_schema(narrow)

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            table = kernels.collect(batches, input_schema)
            deduped, _ = kernels.dedup(table, has_key)
            yield from deduped.to_batches()

        schema = StructType([StructField("created_time", TimestampType()),
                             StructField("data_channel_id", StringType()),
                             StructField("value", StringType())])
        return _time_partitioned(narrow, time_partitioned).mapInArrow(run, schema)
    return apply


def pivot(columns: dict[str, str], order_column: str | None = None,
          time_partitioned: bool = False) -> Callable[[DataFrame], DataFrame]:
    """One row per created_time, one string column per channel (``columns`` maps channel -> column),
    duplicates resolved by docs/design.md's rule first (``kernels.pivot_named``). A channel missing from
    ``columns`` raises, naming it. Needs ``spark.sql.caseSensitive=true`` when two columns differ
    only by case.
    """
    order = list(columns)
    names = list(columns.values())

    def apply(df: DataFrame) -> DataFrame:
        narrow = df.select("created_time", "data_channel_id", "value",
                           *([F.col(order_column).alias("order_key")] if order_column else []))
        input_schema = _input_schema(narrow)

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            table = kernels.collect(batches, input_schema)
            wide, _ = kernels.pivot_named(table, order, order_column is not None)
            if wide.unknown_channels:
                raise ValueError(f"pivot: no column for channel(s) {wide.unknown_channels}")
            if wide.num_rows:
                yield pa.RecordBatch.from_arrays([wide.times, *wide.columns],
                                                 names=["created_time", *names])

        schema = StructType([StructField("created_time", TimestampType())] +
                            [StructField(name, StringType()) for name in names])
        return _time_partitioned(narrow, time_partitioned).mapInArrow(run, schema)
    return apply


def _input_schema(df: DataFrame) -> pa.Schema:
    kinds = {"created_time": pa.timestamp("us", tz="UTC"), "data_channel_id": pa.string(),
             "value": pa.string()}
    return pa.schema([(f.name, kinds.get(f.name, pa.int64()) if f.name != "order_key"
                       else _arrow_type(f.dataType)) for f in df.schema.fields])


def _arrow_type(spark_type: DataType) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(spark_type)


class NarrowChunk:
    """A backfill chunk's narrow rows for Spark: a frame of sub-range numbers (one per partition)
    and the function that reads a partition's sub-ranges (``widen.sources.postgres.ChunkReader``:
    Arrow batches of ``kernels.chunk_columns``). ``map(fn, schema)`` runs ``fn`` over the rows in the
    task that read them, so they reach the writer without passing through the JVM."""

    def __init__(self, numbers: DataFrame, reader: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]):
        self.numbers = numbers
        self.reader = reader

    def map(self, fn: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
            schema: StructType) -> DataFrame:
        """``fn`` (narrow batches in, batches of ``schema`` out) over every sub-range."""
        reader = self.reader

        def read_then(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return fn(reader(batches))

        return self.numbers.mapInArrow(read_then, schema)

