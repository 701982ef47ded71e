"""``stream``: keep the wide tables current from the narrow table (first cut, issue 3 in progress).

The narrow-table streaming source feeds the foreachBatch sink: each micro-batch is written in one
transaction with its ``stream_batches`` row, so a restart from the checkpoint changes nothing twice.
``--once`` processes what is there and stops (for schedulers and tests); otherwise it runs every
``stream.trigger_seconds`` until SIGTERM/SIGINT, which stop it between batches.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from widen.config import Config
from widen.jobs import EXIT_OK, Result
from widen.session import get_spark, resolve_connections
from widen.stream_sink import write_batch
from widen.stream_source import NarrowStreamSource, stream_options

JOB = "stream"


def checkpoint_path(config: Config) -> str:
    return config.stream.checkpoint or os.path.join(config.home, "checkpoints", config.stream.query_name)


def run(config: Config, spark=None, once: bool = False, progress_stream=None, **_ignored) -> Result:
    began = time.monotonic()
    config = resolve_connections(config)
    spark = get_spark(config, spark)
    st = config.stream
    out = progress_stream or sys.stderr
    spark.dataSource.register(NarrowStreamSource)
    totals = {"batches": 0, "skipped": 0, "narrow_rows": 0, "wide_rows": 0, "rejected_rows": 0,
              "duplicate_rows": 0}

    def sink(frame, batch_id: int) -> None:
        result = write_batch(config, frame.toArrow(), batch_id, st.query_name)
        totals["batches"] += 1
        totals["skipped"] += int(result.skipped)
        for key in ("narrow_rows", "wide_rows", "rejected_rows", "duplicate_rows"):
            totals[key] += getattr(result, key)
        state = "already in the ledger, skipped" if result.skipped else (
            f"{result.narrow_rows:,} narrow rows -> {result.wide_rows:,} wide rows, {result.ships} ships")
        print(f"[stream] batch {batch_id}: {state}", file=out, flush=True)

    options = stream_options(config.source, buckets=st.buckets, settle_seconds=st.settle_seconds,
                             overlap_seconds=st.overlap_seconds)
    writer = (spark.readStream.format("widen_narrow").options(**options).load()
              .writeStream.foreachBatch(sink).queryName(st.query_name)
              .option("checkpointLocation", checkpoint_path(config)))
    writer = (writer.trigger(availableNow=True) if once
              else writer.trigger(processingTime=f"{st.trigger_seconds} seconds"))
    query = writer.start()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while query.isActive:
        if stop.is_set() and not query.status.get("isTriggerActive"):
            query.stop()                    # between batches: the current one has committed
            break
        query.awaitTermination(0.5)
    if query.exception():
        raise RuntimeError(f"stream query failed: {query.exception()}")
    summary = {**totals, "query_name": st.query_name, "checkpoint": checkpoint_path(config),
               "seconds": round(time.monotonic() - began, 2)}
    return Result(JOB, EXIT_OK, summary)
