"""A Structured Streaming source for the narrow PostgreSQL table (Spark 4 Python data source API).

    spark.dataSource.register(NarrowStreamSource)
    spark.readStream.format("widen_narrow").options(**stream_options(config.source)).load()

Two offset modes:

- ``order_column`` set (a monotonically increasing ingestion id): the exact mode. An offset is the
  greatest id visible *and* the transactions still in flight at that moment
  (``pg_snapshot_xip``): a transaction that took a lower id but commits later is read by the next
  micro-batch through that list, so a row whose transaction stays open is never skipped. (A
  transaction that starts later takes ids above every visible one, so each pending transaction
  carries the offset id below which it has none, and reads stay index range scans.) Such a row may
  be read twice, which the idempotent merge absorbs.
- created_time only: each micro-batch reads up to the newest row older than ``now - settle_seconds``
  and re-reads ``overlap_seconds`` before its start; the idempotent merge makes the overlap
  harmless. A row later than the overlap is left for reconciliation. (Needs an index on
  created_time to stay cheap.)

Each micro-batch is split by ship (a hash of ship_id into ``buckets`` partitions), so all rows of a
ship and timestamp land in one partition. Values are rendered in SQL, exactly as the backfill does;
``reject`` is NULL for a valid row, else the text array of reason and raw row the backfill uses.
Offsets live in Spark's checkpoint; the reader opens its connections lazily in ``read()``.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Iterator

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition

from widen.config import SourceConfig

NAME = "widen_narrow"
SCHEMA = ("ship_id string, data_channel_id string, created_time timestamp, value string, "
          "reject string, order_key long")
EPOCH_TEXT = "1970-01-01T00:00:00+00:00"


def stream_options(cfg: SourceConfig, **extra) -> dict[str, str]:
    """Options for ``readStream.format("widen_narrow")`` from a source config (no password in them)."""
    conn = cfg.connection
    options = {"host": conn.host, "port": str(conn.port), "dbname": conn.database, "user": conn.user,
               "password_env": conn.password_env or "", "password_file": conn.password_file or "",
               "schema": cfg.schema, "table": cfg.table, "order_column": cfg.order_column or ""}
    options.update({k: str(v) for k, v in extra.items()})
    return options


@dataclass
class BucketPartition(InputPartition):
    start: dict
    end: dict
    bucket: int
    buckets: int


class NarrowStreamSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> "NarrowStreamReader":
        return NarrowStreamReader(dict(self.options))


class NarrowStreamReader(DataSourceStreamReader):
    def __init__(self, options: dict[str, str]):
        # Spark lower-cases option keys.
        self.options = options
        self.order_column = options.get("order_column") or None
        self.buckets = int(options.get("buckets", "2"))
        self.settle = float(options.get("settle_seconds", "2"))
        self.overlap = float(options.get("overlap_seconds", "60"))
        self.start_after = options.get("start_after")

    # -- connections ------------------------------------------------------------------------------
    def _connect(self):
        import psycopg2

        opts = self.options
        params = {"host": opts["host"], "port": int(opts["port"]), "dbname": opts["dbname"],
                  "user": opts["user"], "application_name": "widen-stream"}
        if opts.get("password_file"):
            with open(opts["password_file"], encoding="utf-8") as fh:
                params["password"] = fh.read().strip()
        elif opts.get("password_env") and os.environ.get(opts["password_env"]):
            params["password"] = os.environ[opts["password_env"]]
        conn = psycopg2.connect(**params)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        return conn

    def _table(self):
        from psycopg2 import sql

        return sql.Identifier(self.options["schema"], self.options["table"])

    # -- offsets ----------------------------------------------------------------------------------
    def initialOffset(self) -> dict:
        if self.order_column:
            return {"id": int(self.start_after) if self.start_after else -1, "pending": []}
        return {"t": self.start_after or EPOCH_TEXT}

    def latestOffset(self, start: dict, limit=None) -> dict:
        from psycopg2 import sql

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                if self.order_column:
                    return self._latest_id(cur, start)
                # Advance only to the newest settled row, so an idle table gives no new batch.
                cur.execute(sql.SQL("SELECT max(created_time) FROM {} WHERE created_time >= %s AND "
                                    "created_time <= now() - make_interval(secs => %s)").format(
                    self._table()), (start["t"], self.settle))
                newest = cur.fetchone()[0]
                if newest is None:
                    return start
                return {"t": (newest + dt.timedelta(microseconds=1)).isoformat()}
        finally:
            conn.close()

    def _latest_id(self, cur, start: dict) -> dict:
        """The greatest visible id and, from the same snapshot, the transactions still in flight.

        ``pending`` holds [xid, floor] pairs: the transaction has no id at or below ``floor`` (it
        was not yet running when the offset ``floor`` was taken, so every id it took is above it).
        """
        from psycopg2 import sql

        cur.execute(sql.SQL(
            "SELECT coalesce(max({o}), %s), ARRAY(SELECT (x::text::bigint %% 4294967296) "
            "FROM pg_snapshot_xip(pg_current_snapshot()) AS x ORDER BY 1) FROM {t} WHERE {o} > %s").format(
            o=sql.Identifier(self.order_column), t=self._table()), (start["id"], start["id"]))
        latest, running = cur.fetchone()
        floors = {xid: floor for xid, floor in start["pending"]}
        pending = [[int(x), floors.get(int(x), start["id"])] for x in sorted(running)]
        if latest == start["id"] and pending == start["pending"]:
            return start
        return {"id": int(latest), "pending": pending}

    def partitions(self, start: dict, end: dict):
        if start == end:
            return []
        return [BucketPartition(start, end, b, self.buckets) for b in range(self.buckets)]

    # -- data -------------------------------------------------------------------------------------
    def read(self, partition: BucketPartition) -> Iterator:
        import pyarrow as pa
        from psycopg2 import sql

        from widen import render

        reason = render.reject_reason_sql()
        raw = sql.SQL("CASE WHEN {r} IS NOT NULL THEN ARRAY[{r}, data_channel_id, value_format, "
                      "double_v::text, long_v::text, str_v, bool_v::text]::text END").format(r=reason)
        bucket = sql.SQL("(hashtext(coalesce(ship_id, '')) & 2147483647) %% %s = %s")
        if self.order_column:
            order = sql.Identifier(self.order_column)
            # New ids, plus rows of transactions that were in flight at the start offset; the
            # lowest floor bounds the range, so the scan stays on the order column's index.
            pending = partition.start["pending"]
            lowest = min([partition.start["id"], *(floor for _, floor in pending)])
            where = sql.SQL("{o} > %s AND {o} <= %s AND ({o} > %s OR xmin::text::bigint = ANY(%s)) "
                            "AND ").format(o=order) + bucket
            params = [lowest, partition.end["id"], partition.start["id"], [x for x, _ in pending],
                      partition.buckets, partition.bucket]
            order_key = order
        else:
            lo = dt.datetime.fromisoformat(partition.start["t"]) - dt.timedelta(seconds=self.overlap)
            where = sql.SQL("created_time >= %s AND created_time < %s AND ") + bucket
            params = [lo, partition.end["t"], partition.buckets, partition.bucket]
            order_key = sql.SQL("NULL::bigint")
        query = sql.SQL("SELECT ship_id, data_channel_id, created_time, {v}, {raw}, {ok} FROM {t} "
                        "WHERE {w}").format(v=render.rendered_value(), raw=raw, ok=order_key,
                                            t=self._table(), w=where)
        names = ["ship_id", "data_channel_id", "created_time", "value", "reject", "order_key"]
        types = [pa.string(), pa.string(), pa.timestamp("us", tz="UTC"), pa.string(), pa.string(),
                 pa.int64()]
        conn = self._connect()
        conn.autocommit = False
        try:
            with conn.cursor(name="widen_stream_read") as cur:
                cur.itersize = 20_000
                cur.execute(query, params)
                while rows := cur.fetchmany(20_000):
                    columns = list(zip(*rows))
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(col, type=kind) for col, kind in zip(columns, types)], names=names)
        finally:
            conn.close()
