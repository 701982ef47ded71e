"""What the stream did, batch by batch: a log line, Prometheus metrics and the late-row count.

A ``StreamingQueryListener`` hears Spark's progress report of every micro-batch of our query and
joins it with what the sink wrote (``BatchResult``s, shared in this driver process):

    [stream] batch 12: 8,000 narrow -> 40 wide rows, 3 ships, 0.42 s, 0 late, lag 2.1 s

Rows Spark dropped behind the watermark are handed to the job's ``on_late`` (which records them in
``stream_batches.late_rows``; reconcile repairs them) and logged as a warning. Metrics go to an HTTP
endpoint (``stream.metrics_port``) and/or a textfile for node_exporter's textfile collector
(``stream.metrics_textfile``), and with the job's own (``widen.metrics``: ``metrics.pushgateway``,
``metrics.textfile_dir``), or nowhere.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile
from pyspark.sql.streaming import StreamingQueryListener

if TYPE_CHECKING:
    from pyspark.sql.streaming.listener import StreamingQueryProgress

    from widen.metrics import JobMetrics

log = logging.getLogger(__name__)


class StreamMetrics:
    """The Prometheus side: one registry per query, labelled by query name."""

    COUNTERS = {"batches": "micro-batches written", "narrow_rows": "narrow rows read",
                "wide_rows": "wide rows merged", "late_rows": "rows dropped behind the watermark",
                "rejected_rows": "rows sent to the rejects table",
                "duplicate_rows": "duplicate readings resolved",
                "skipped_rows": "rows of rolled-back ships left alone",
                "failed_rows": "rows of ships that could not be written (stream_failures)"}

    def __init__(self, query_name: str, port: int = 0, host: str = "127.0.0.1",
                 textfile: str | None = None, job: JobMetrics | None = None):
        self.registry = CollectorRegistry()
        self.textfile = textfile
        self.job = job                      # the stream job's metrics: ours are pushed / written with them
        label = ["query_name"]
        self.counters = {key: Counter(f"widen_stream_{key}", help_text, label, registry=self.registry)
                         .labels(query_name) for key, help_text in self.COUNTERS.items()}
        gauge = lambda name, help_text: Gauge(name, help_text, label, registry=self.registry).labels(query_name)  # noqa: E731
        self.ships = gauge("widen_stream_batch_ships", "ships in the last micro-batch")
        self.duration = gauge("widen_stream_batch_duration_seconds", "duration of the last micro-batch")
        self.lag = gauge("widen_stream_freshness_lag_seconds",
                         "now minus the newest created_time merged, at the end of the last micro-batch")
        self.last_batch = gauge("widen_stream_last_batch_id", "id of the last micro-batch")
        self.last_batch_time = gauge("widen_stream_last_batch_timestamp_seconds",
                                     "when the last micro-batch ended (Unix time)")
        self.retained_wal = gauge("widen_stream_slot_retained_wal_bytes",
                                  "WAL the replication slot keeps on the source (source.mode cdc)")
        self.server = None
        if port:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        if job is not None:
            job.attach(self.registry)

    def observe(self, report: dict) -> None:
        for key in self.COUNTERS:
            if key == "batches":
                self.counters[key].inc()
            else:
                self.counters[key].inc(report.get(key) or 0)
        self.ships.set(report.get("ships") or 0)
        self.duration.set(report["seconds"])
        if report.get("lag_seconds") is not None:
            self.lag.set(report["lag_seconds"])
        self.last_batch.set(report["batch_id"])
        self.last_batch_time.set_to_current_time()
        if report.get("retained_wal_bytes") is not None:
            self.retained_wal.set(report["retained_wal_bytes"])
        if self.textfile:
            write_to_textfile(self.textfile, self.registry)
        if self.job is not None:
            self.job.poke()                 # pushed from the job's own thread, not Spark's listener's

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class BatchListener(StreamingQueryListener):
    """Reports every micro-batch of one query (by name); other queries in the session are ignored."""

    def __init__(self, query_name: str, results: dict, metrics: StreamMetrics,
                 on_late: Callable[[int, int], None] = lambda batch_id, late: None):
        super().__init__()
        self.query_name = query_name
        self.on_late = on_late
        self.results = results              # batch_id -> BatchResult, filled by the sink
        self.metrics = metrics
        self.newest: dt.datetime | None = None
        self.late_rows = 0
        self.terminated = threading.Event()
        self.query_id = None                # set once the query has started
        self._reported = threading.Condition()
        self.last_reported = -1
        self.reports: list[dict] = []

    def onQueryStarted(self, event: Any) -> None:
        pass

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        if self.query_id is None or str(event.id) == self.query_id:
            self.terminated.set()

    def onQueryProgress(self, event: Any) -> None:
        progress = event.progress
        if progress.name != self.query_name:
            return
        try:
            self._report(progress)
        except Exception as err:            # a listener must never take the query down
            log.warning("could not report batch %s: %s", progress.batchId, err)
        with self._reported:
            self.last_reported = max(self.last_reported, progress.batchId)
            self._reported.notify_all()

    def wait_for(self, batch_id: int, timeout: float = 30) -> bool:
        """Block until the report of ``batch_id`` (listener events arrive asynchronously)."""
        with self._reported:
            return self._reported.wait_for(lambda: self.last_reported >= batch_id, timeout)

    def _report(self, progress: StreamingQueryProgress) -> None:
        batch_id = progress.batchId
        result = self.results.pop(batch_id, None)
        late = sum(op.numRowsDroppedByWatermark for op in progress.stateOperators)
        now = dt.datetime.now(dt.UTC)
        if result is not None and result.newest_created_time is not None:
            self.newest = max(self.newest or result.newest_created_time, result.newest_created_time)
        report = {"batch_id": batch_id, "seconds": progress.durationMs.get("triggerExecution", 0) / 1000,
                  "late_rows": late, "lag_seconds": (now - self.newest).total_seconds() if self.newest else None,
                  **({"narrow_rows": result.narrow_rows, "wide_rows": result.wide_rows,
                      "ships": result.ships, "rejected_rows": result.rejected_rows,
                      "duplicate_rows": result.duplicate_rows, "skipped": result.skipped,
                      "skipped_rows": result.skipped_rows, "failed_rows": result.failed_rows,
                      "retained_wal_bytes": result.retained_wal_bytes}
                     if result is not None else {})}
        self.reports.append(report)
        self.metrics.observe(report)
        if late:
            self.late_rows += late
            self.on_late(batch_id, late)
            log.warning("batch %s: %s rows were older than the watermark (%s) and were not merged; they "
                        "are counted in stream_batches.late_rows; run reconcile --repair to bring them in",
                        batch_id, f"{late:,}", progress.eventTime.get("watermark"))
        if result is None or (not result.narrow_rows and not result.skipped):
            return                          # the empty batch Spark runs when the watermark moves
        state = "already in the ledger, skipped" if result.skipped else (
            f"{result.narrow_rows:,} narrow -> {result.wide_rows:,} wide rows, {result.ships} ships")
        lag = f"{report['lag_seconds']:.1f} s" if report["lag_seconds"] is not None else "n/a"
        log.info("batch %s: %s, %.2f s, %s late, lag %s", batch_id, state, report["seconds"], f"{late:,}", lag)
