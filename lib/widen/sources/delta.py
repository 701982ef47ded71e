"""A Delta table of narrow rows (the PostgreSQL table's columns) as the stream's source.

Delta's own offsets (table versions) give each row to exactly one micro-batch. Values are rendered
as PostgreSQL would (``values.float8_text`` for doubles, tested against the server); rejected rows
carry the same raw-reject text array as the PostgreSQL source (``values.RAW_REJECT_FIELDS``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from widen.config import SourceConfig
from widen.core import transforms, values
from widen.sources.base import NarrowSource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class DeltaSource(NarrowSource):
    kind = "delta"

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg

    @property
    def exactly_once(self) -> bool:
        return True

    def stream(self, spark: SparkSession, options: dict[str, str]) -> DataFrame:
        """``readStream`` on the table. ``start``: earliest, latest, a table version or an ISO
        timestamp (Delta's startingVersion / startingTimestamp)."""
        from pyspark.sql import functions as F

        cfg = self.cfg
        reader = spark.readStream.format("delta")
        start = options.get("start", "earliest").strip()
        if start.lower() == "latest":
            reader = reader.option("startingVersion", "latest")
        elif start.isdigit():
            reader = reader.option("startingVersion", start)
        elif start.lower() != "earliest":
            reader = reader.option("startingTimestamp", start)
        df = reader.load(cfg.delta_path) if cfg.delta_path else reader.table(str(cfg.delta_table))
        fmt = F.col("value_format")
        # A plain Python UDF: the Arrow-optimised kind hung in its worker handshake here (Spark 4.2.0).
        float8 = F.udf(values.float8_text, "string", useArrow=False)
        value = (F.when(fmt == "Decimal", float8(F.col("double_v")))
                 .when(fmt == "Integer", F.col("long_v").cast("string"))
                 .when(fmt == "String", F.col("str_v"))
                 .when(fmt == "Boolean", F.col("bool_v").cast("string")))
        reason = transforms.reject_reason()
        printed = {"reason": reason, "data_channel_id": F.col("data_channel_id"), "value_format": fmt,
                   "double_v": F.col("double_v").cast("string"), "long_v": F.col("long_v").cast("string"),
                   "str_v": F.col("str_v"), "bool_v": F.col("bool_v").cast("string")}
        raw = [printed[name] for name in values.RAW_REJECT_FIELDS]
        # A PostgreSQL text[] literal: every element quoted, backslash and quote escaped, NULL bare.
        quoted = F.transform(F.array(*raw), lambda x: F.when(x.isNull(), F.lit("NULL")).otherwise(
            F.concat(F.lit('"'), F.replace(F.replace(x, F.lit("\\"), F.lit("\\\\")), F.lit('"'), F.lit('\\"')),
                     F.lit('"'))))
        array_text = F.concat(F.lit("{"), F.array_join(quoted, ","), F.lit("}"))
        order_key = (F.col(cfg.order_column).cast("long") if cfg.order_column else F.lit(None).cast("long"))
        return df.select("ship_id", "data_channel_id", F.col("created_time").cast("timestamp"),
                         value.alias("value"), F.when(reason.isNotNull(), array_text).alias("reject"),
                         order_key.alias("order_key"), fmt.alias("value_format"))
