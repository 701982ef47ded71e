"""``stream``: keep the wide tables current from the narrow table, exactly once.

Each micro-batch is written by the foreachBatch sink in one transaction with its ``stream_batches``
row, so a restart from the checkpoint changes nothing twice. Admission control
(``stream.max_rows_per_batch``) keeps every batch bounded, so a backlog drains in many batches.

The exact mode (an order column) and a Delta source give each narrow row to exactly one batch. The
created_time mode re-reads an overlap on purpose: there the stream gets a watermark on created_time
(the source caps it at the end of the batch that read the row, so a reading from the future cannot
move it) and drops *re-reads* within it (key: ship, channel, created_time and the rendered value);
rows older than the watermark are dropped by Spark, counted (``stream_batches.late_rows``, the log
and the metrics) and left for ``reconcile --repair``. Readings that differ are kept and the sink
applies docs/design.md's duplicate rule (the later batch wins with an order column; the greatest value
without, also against what is already merged).

``--once`` processes what is there (in bounded batches) and stops (for schedulers and tests);
otherwise it runs every ``stream.trigger_seconds`` until SIGTERM/SIGINT, which stop it after the
current batch, and a failed batch restarts the query from its checkpoint, with backoff.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen import errors, metrics as job_metrics
from widen.catalog import ledger, schema
from widen.config import BadInput, Config
from widen.core import values
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, job
from widen.pg import db
from widen.session import get_spark
from widen.sources import open_source
from widen.streaming.metrics import BatchListener, StreamMetrics
from widen.streaming.sink import write_batch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

JOB = "stream"
log = logging.getLogger(__name__)
TOTALS = ("narrow_rows", "wide_rows", "rejected_rows", "duplicate_rows", "failed_rows", "skipped_rows")
COUNTED = ("batches", "skipped", "late_rows", *TOTALS)
#: the created_time mode's watermark column, from the source: created_time, capped at the end of
#: the batch that read the row
EVENT_TIME = values.EVENT_TIME


def checkpoint_path(config: Config) -> str:
    return config.stream.checkpoint or os.path.join(config.home, "checkpoints", config.stream.query_name)


def _batch_ids(spark: SparkSession, checkpoint: str, log: str) -> list[int]:
    """Batch ids in the checkpoint's ``offsets`` or ``commits`` log, on any Hadoop file system
    (a local folder, HDFS, S3, DBFS…)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(checkpoint.rstrip("/") + "/" + log)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return []
    names = [status.getPath().getName() for status in fs.listStatus(path)]
    return sorted(int(name) for name in names if name.isdigit())


def require_writable_checkpoint(spark: SparkSession, checkpoint: str) -> None:
    """Bad input (exit 2) when the checkpoint folder cannot be made or written, before anything
    starts: found by creating it and a file in it (permission bits say nothing to root)."""
    from urllib.parse import urlparse

    scheme = urlparse(checkpoint).scheme
    try:
        if scheme in ("", "file"):
            local = urlparse(checkpoint).path if scheme == "file" else checkpoint
            os.makedirs(local, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=local, prefix=".widen-probe-"):
                pass
            return
        jvm = spark.sparkContext._jvm
        path = jvm.org.apache.hadoop.fs.Path(checkpoint)
        path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).mkdirs(path)
    except OSError as err:
        raise BadInput(f"stream.checkpoint: cannot write to {checkpoint!r} ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 - Hadoop's errors arrive through Py4J
        raise BadInput(f"stream.checkpoint: cannot write to {checkpoint!r} ({errors.describe(err)})") from None


def _has_offsets(spark: SparkSession, checkpoint: str) -> bool:
    return bool(_batch_ids(spark, checkpoint, "offsets"))


def dedup_key(config: Config) -> list[str]:
    """What makes two stream rows the same narrow row read twice."""
    same_row = "order_key" if config.source.order_column else "value"
    return ["ship_id", "data_channel_id", "created_time", same_row, "reject"]


@dataclass
class StreamRun:
    """A started stream: the query, its listener and the running totals."""
    spark: object
    query: object
    listener: BatchListener
    metrics: StreamMetrics
    totals: dict
    start_offset: dict | None
    checkpoint: str

    def finish(self) -> dict:
        """After the query has ended: wait for the last reports, detach, return the summary (raise
        when the query failed)."""
        summary, error = self.close()
        if error is not None:
            raise RuntimeError(f"stream query failed: {error}")
        return summary

    def close(self) -> tuple[dict, object]:
        """After the query has ended: wait for the last reports, detach; (summary, the query's
        exception or None)."""
        self.listener.terminated.wait(30)
        self.spark.streams.removeListener(self.listener)
        self.metrics.close()
        return ({**self.totals, "late_rows": self.listener.late_rows,
                 "query_name": self.listener.query_name, "checkpoint": self.checkpoint,
                 "start_offset": self.start_offset, "freshness_lag_seconds": _last_lag(self.listener)},
                self.query.exception())


def start(config: Config, spark: SparkSession, once: bool = False) -> StreamRun:
    """Start the stream query (connections already resolved); ``run`` waits on it."""
    st = config.stream
    checkpoint = checkpoint_path(config)
    require_writable_checkpoint(spark, checkpoint)
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        schema.migrate(conn, cat)
    names = {}
    if config.source.mode == "cdc":
        from widen.sources import postgres_cdc

        _check_slot(config, spark, checkpoint)
        names = dict(zip(("slot", "publication"), postgres_cdc.slot_names(config), strict=True))
    source = open_source(config.source)
    options = source.stream_options(**names, buckets=st.buckets, settle_seconds=st.settle_seconds,
                                    overlap_seconds=st.overlap_seconds, start=st.start,
                                    max_rows_per_batch=st.max_rows_per_batch)
    start_offset = None
    if not _has_offsets(spark, checkpoint):
        # A new query: its first offset is recorded in the catalog before it is logged, and a
        # restart before the first batch commits takes the recorded one: the hand-off point the
        # backfill was told cannot move.
        taken = source.initial_offset(options)
        if taken is not None:
            with db.connection(config.target.connection) as conn:
                start_offset, before = ledger.recorded_start(conn, cat, st.query_name, checkpoint, lambda: taken)
            if before:
                log.info("query %r has not committed a batch yet: it starts where it was first recorded to start",
                         st.query_name)
            options["start_offset"] = json.dumps(start_offset)
            log.info("new query %r starts after %s (stream.start = %s); rows before it are the backfill's",
                     st.query_name, json.dumps(start_offset), st.start)

    totals = {"batches": 0, "skipped": 0, **{key: 0 for key in TOTALS}, "failed_ships": {}, "skipped_ships": {}}
    results: dict = {}

    def sink(frame: DataFrame, batch_id: int) -> None:
        result = write_batch(config, frame.toArrow(), batch_id, st.query_name, spark)
        results[batch_id] = result
        totals["batches"] += 1
        totals["skipped"] += int(result.skipped)
        for key in TOTALS:
            totals[key] += getattr(result, key)
        for ship, failure in result.failed.items():
            totals["failed_ships"].setdefault(ship, []).append({"batch_id": batch_id, **failure})
        for ship, rows in result.skipped_ships.items():
            totals["skipped_ships"][ship] = totals["skipped_ships"].get(ship, 0) + rows

    metrics = StreamMetrics(st.query_name, st.metrics_port, st.metrics_host, st.metrics_textfile,
                            job_metrics.current(JOB))
    def record_late(batch_id: int, late: int) -> None:
        with db.connection(config.target.connection) as conn:
            ledger.record_late_rows(conn, cat, st.query_name, batch_id, late)

    listener = BatchListener(st.query_name, results, metrics, record_late)
    spark.streams.addListener(listener)
    try:
        rows = source.stream(spark, options)
        if not source.exactly_once:
            # The watermark runs on the source's event time: created_time, but a reading from the
            # future (a batch takes those committed since its start) counts as the end of the
            # batch that read it, so it never moves the watermark past the rows still to come.
            rows = (rows.withWatermark(EVENT_TIME, f"{st.watermark_seconds:g} seconds")
                    .dropDuplicatesWithinWatermark(dedup_key(config)).drop(EVENT_TIME))
        writer = (rows.writeStream.foreachBatch(sink).queryName(st.query_name)
                  .option("checkpointLocation", checkpoint))
        writer = (writer.trigger(availableNow=True) if once
                  else writer.trigger(processingTime=f"{st.trigger_seconds:g} seconds"))
        # The de-dup state's partitions (fixed by the checkpoint's first run): a few, not 200,
        # or every micro-batch pays for 200 state-store tasks. The query keeps its own copy of
        # the session's conf, so the session's value is put back at once.
        previous = spark.conf.get("spark.sql.shuffle.partitions")
        spark.conf.set("spark.sql.shuffle.partitions", str(st.state_partitions))
        try:
            query = writer.start()
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", previous)
    except Exception:
        spark.streams.removeListener(listener)
        metrics.close()
        raise
    listener.query_id = str(query.id)
    return StreamRun(spark, query, listener, metrics, totals, start_offset, checkpoint)


@dataclass(frozen=True)
class StreamOptions:
    #: process what is there now (in bounded batches), then stop (schedulers, tests)
    once: bool = False
    #: source.mode cdc: drop widen's replication slot and publication (the WAL they keep), then stop
    drop_slot: bool = False


@job(JOB, StreamOptions, what="query", keys=lambda config, options: [config.stream.query_name], ships_from=None)
def run(config: Config, spark: SparkSession, options: StreamOptions) -> Result:
    """``--once``: what is there now, in bounded batches, then exit. Otherwise until SIGTERM/SIGINT;
    a failed batch restarts the query from its checkpoint (the batch replays, exactly once) with
    backoff, up to ``stream.max_batch_attempts`` failures in a row, then the stream exits 1."""
    began = time.monotonic()
    once = options.once
    st = config.stream
    if options.drop_slot:
        return _drop_slot(config)
    spark = get_spark(config, spark)
    stop = _stop_on_signals()
    totals: dict = {}
    failures_in_a_row = 0
    while True:
        stream = start(config, spark, once)
        try:
            _run_until_stopped(stream.query, stop)
        finally:
            summary, error = stream.close()
        _add(totals, summary)
        if error is None or once or stop.is_set():
            if error is not None:
                raise RuntimeError(f"stream query failed: {error}")
            break
        failures_in_a_row = 1 if summary["batches"] else failures_in_a_row + 1
        if failures_in_a_row >= st.max_batch_attempts:
            raise RuntimeError(f"stream query failed {failures_in_a_row} times in a row, the last: {error}")
        wait = st.retry_backoff_seconds * 2 ** (failures_in_a_row - 1)
        log.warning("the stream failed (%s); restarting from its checkpoint in %g s (%d of %d attempts)",
                    errors.describe(error) if isinstance(error, BaseException) else error, wait,
                    failures_in_a_row, st.max_batch_attempts)
        if stop.wait(wait):
            break
    failed = totals.get("failed_ships") or {}
    report = "\n".join(f"SHIP NOT WRITTEN {ship!r}: {sum(f['rows'] for f in fs)} narrow rows from "
                       f"{min(f['first'] for f in fs)} to {max(f['last'] for f in fs)}: {fs[-1]['error']} "
                       "(reconcile --repair brings them in)" for ship, fs in failed.items())
    return Result(JOB, EXIT_PROBLEM if failed else EXIT_OK,
                  {**totals, "seconds": round(time.monotonic() - began, 2)}, report)


def _check_slot(config: Config, spark: SparkSession, checkpoint: str) -> None:
    """source.mode cdc, before every start: the source's checks, and a checkpoint whose slot is gone
    or invalidated refused with when its changes stopped (what reconcile --repair must cover)."""
    from widen.sources import postgres_cdc

    st = config.stream
    slot, publication = postgres_cdc.slot_names(config)
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT max(committed_at) FROM {} WHERE query_name = %s").format(
            sql.Identifier(config.target.catalog_schema, "stream_batches")), (st.query_name,))
        last = cur.fetchone()[0]
    since = (f"changes committed after its last batch ({last.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z) never reached "
             "the wide tables"
             if last else "no batch of it was written")
    with db.connection(config.source.connection) as conn:
        try:
            found = postgres_cdc.preflight(conn, config.source, slot, publication)
        except BadInput as err:
            if postgres_cdc.INVALIDATED in str(err):
                raise BadInput(f"{err}; {since}") from None
            raise
    if found["slot"] is None and _has_offsets(spark, checkpoint):
        raise BadInput(f"stream.checkpoint {checkpoint} reads replication slot {slot}, which is gone (dropped?): "
                       f"{since}. Start the stream under a new stream.query_name (a new slot, ledger and checkpoint) "
                       "and run reconcile --repair over the time the application changed rows since")


def _drop_slot(config: Config) -> Result:
    from widen.sources import postgres_cdc

    if config.source.mode != "cdc":
        raise BadInput("stream --drop-slot: source.mode is not cdc, so widen has no replication slot here")
    slot, publication = postgres_cdc.slot_names(config)
    with db.connection(config.source.connection) as conn:
        dropped = postgres_cdc.drop_slot(conn, config.source, slot, publication)
    report = f"dropped {' and '.join(dropped)}" if dropped else f"no slot {slot} or publication {publication} to drop"
    log.info("%s; this query cannot go on without its slot: start the stream under a new stream.query_name "
             "(and reconcile --repair the time since its last batch)", report)
    return Result(JOB, EXIT_OK, {"dropped": dropped, "slot": slot, "publication": publication}, report)


def _add(totals: dict, summary: dict) -> None:
    for key, value in summary.items():
        if key in ("failed_ships", "skipped_ships"):
            for ship, items in value.items():
                if key == "failed_ships":
                    totals.setdefault(key, {}).setdefault(ship, []).extend(items)
                else:
                    totals.setdefault(key, {})[ship] = totals.get(key, {}).get(ship, 0) + items
        else:
            totals[key] = totals.get(key, 0) + value if key in COUNTED else value


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM/SIGINT set (in the main thread; elsewhere nothing installs handlers). Setting
    it twice is one stop: a supervisor's SIGTERM can reach the driver from its process group and
    again from ``spark-submit.sh``, which hands its own on."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop


def _run_until_stopped(query: StreamingQuery, stop: threading.Event) -> None:
    """Until the query ends (``--once``, a failure) or ``stop`` is set, which stops it between batches."""
    told = False
    while query.isActive:
        if stop.is_set() and not told:
            log.info("stopping after the current batch (SIGTERM/SIGINT)")
            told = True
        if stop.is_set() and not query.status.get("isTriggerActive"):
            query.stop()                    # between batches: the current one has committed
            break
        query.awaitTermination(0.5)


def _last_lag(listener: BatchListener) -> float | None:
    if listener.newest is None:
        return None
    return round((dt.datetime.now(dt.UTC) - listener.newest).total_seconds(), 2)
