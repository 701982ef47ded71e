"""``backfill``: migrate the narrow history into the wide tables, chunk by chunk, exactly once.

A chunk is one ship x one aligned time range. Each chunk is a partitioned read of the source
(values rendered in SQL), validated, de-duplicated and pivoted per partition, and handed to the
target's ``ChunkWrite`` (a PostgreSQL target COPYs into staging on the executors); then, after a
short DDL transaction for new tables and columns, one catalog transaction holds the ship's write
lock while the target merges, the chunk's rejects are replaced and the chunk is recorded in
``backfill_chunks``. With ``source.order_column`` the merge replaces cells, so it also holds the
ship's order lock, which the stream's writes of the ship wait for, and merges only if no row that
could be later than one of its values came into its range since its read (else it reads it again):
a newer duplicate the stream wrote meanwhile is never undone. A chunk is a ship x a cell of the epoch-aligned grid
whatever --start/--end say (``core.chunks``): a cell they cut is recorded as partial and a later run
reads only its rest. Chunks already done are skipped; a failing chunk is retried with backoff and,
if it still fails, reported without stopping the others; connection failures in a row stop the
run (the breaker). Several chunks (so several ships) run at once.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg2

from widen import errors, metrics
from widen.catalog import ledger, lifecycle, schema, ships as ship_states
from widen.catalog.layouts import LazyFleetNamer, lock_layout
from widen.config import Config, Connection
from widen.core import typed
from widen.core.chunks import Chunk, interleave_by_ship, left_to_read, partitions_for
from widen.core.layout import ShipLayout
from widen.jobs import EXIT_OK, EXIT_PROBLEM, STOPPING, Result, job
from widen.pg import db
from widen.progress import Progress
from widen.session import get_spark
from widen.sources import NarrowTable, open_table
from widen.targets import WideTarget, ensure_tables_ddl, open_target, text_columns
from widen.targets.views import configure as reader_views

if TYPE_CHECKING:
    from collections.abc import Iterable

    from psycopg2.extensions import connection
    from pyspark.sql import SparkSession

JOB = "backfill"
log = logging.getLogger(__name__)
MAX_SCHEMA_ROUNDS = 3
#: with an order column: how often a chunk reads its range again when rows arrived in it between
#: its read and its merge
MAX_REREADS = 3


class RowsKeptArriving(RuntimeError):
    """A chunk's range kept getting rows between its read and its merge (order column mode)."""


@dataclass(frozen=True)
class BackfillOptions:
    ships: list[str] | None = None
    start: dt.datetime | None = None
    #: created_time to stop before (the backfill/stream hand-off in the created_time mode)
    end: dt.datetime | None = None


class Backfill:
    def __init__(self, config: Config, spark: SparkSession, source: NarrowTable, target: WideTarget):
        self.config, self.spark, self.source, self.target = config, spark, source, target
        self.layouts: dict[str, ShipLayout] = {}
        #: ships that cannot be laid out (e.g. a channel wider than a row may be), and why
        self.problems: dict[str, str] = {}
        self._ship_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.breaker = Breaker(config.backfill.max_connection_failures)

    # -- layouts ---------------------------------------------------------------------------------
    def _ship_lock(self, ship: str) -> threading.Lock:
        with self._locks_lock:
            return self._ship_locks.setdefault(ship, threading.Lock())

    def prepare_layouts(self, src: connection, tgt: connection, ships: list[str]) -> None:
        """Every ship's recorded layout; ships without one are planned (channel statistics, table
        names unique across the fleet); a ship that cannot be laid out is a problem, not a stop."""
        cat = self.config.target.catalog_schema
        layouts = self.target.layouts
        unplanned = []
        for ship in ships:
            layout = layouts.load(tgt, ship)
            if layout.channels:
                self.layouts[ship] = layout
            else:
                unplanned.append(ship)
        if unplanned:
            # No full scan before the first chunk: a skip scan or a sample; channels it misses
            # get their columns when a chunk meets them (``add_channels``)
            began = time.monotonic()
            stats, how = self.source.survey(src, unplanned)
            src.rollback()
            log.info("channels of %d ship(s) without a layout found by %s in %.1f s", len(unplanned), how,
                     time.monotonic() - began)
            planned, self.problems = layouts.plan(tgt, {s: self.source.new_channels(v) for s, v in stats.items()})
            self.layouts.update(planned)
        tgt.rollback()
        for ship in ships:
            if ship in self.problems:
                continue
            layout = self.layouts.setdefault(ship, ShipLayout(ship))
            try:
                if not layout.tables:           # a ship with no valid channel yet: its main table
                    self.target.rules.grow(layout, {}, LazyFleetNamer(tgt, cat, self.target.rules))
                layouts.record(tgt, layout)
                tgt.commit()
            except (ValueError, psycopg2.Error) as err:
                tgt.rollback()
                self.layouts.pop(ship, None)
                self.problems[ship] = errors.describe(err)

    def add_channels(self, chunk: Chunk, channels: list[str]) -> None:
        """Channels the plan had not seen: find their formats in the chunk and give them columns."""
        with self.source.connect() as src:
            found = self.source.channel_formats(src, chunk, channels)
        with self._ship_lock(chunk.ship_id), db.connection(self.config.target.connection) as tgt:
            layout = self.target.layouts.extend(tgt, chunk.ship_id, found)
            tgt.commit()
            self.layouts[chunk.ship_id] = layout

    def text_columns(self, chunk: Chunk, channels: list[str]) -> None:
        """Typed columns that met a value they cannot hold exactly: text from now on."""
        with self._ship_lock(chunk.ship_id), db.connection(self.config.target.connection) as tgt:
            layout = text_columns(tgt, self.target, chunk.ship_id, channels)
            if layout is not None:
                self.layouts[chunk.ship_id] = layout

    # -- one chunk -------------------------------------------------------------------------------
    def run_chunk(self, chunk: Chunk) -> dict:
        cfg, tgt_cfg, bf = self.config.source, self.config.target, self.config.backfill
        started_at = dt.datetime.now(dt.UTC)
        in_order = cfg.order_column is not None
        schema_rounds = rereads = 0
        while schema_rounds < MAX_SCHEMA_ROUNDS:
            with self._ship_lock(chunk.ship_id):
                layout = copy.deepcopy(self.layouts[chunk.ship_id])
            write = self.target.chunk_write(chunk, layout, in_order)
            try:
                t0 = time.monotonic()
                # typed columns: the reader marks a reading of a format the layout did not record
                formats = typed.required_formats({c: ch.column_type for c, ch in layout.channels.items()})
                narrow = self.source.read_chunk(self.spark, chunk, partitions_for(
                    chunk, bf.partitions_per_chunk, bf.max_rows_per_partition), write.channels, formats)
                self.spark.sparkContext.setJobDescription(f"widen backfill {chunk.label()}")
                stats = write.run(narrow)
                spark_seconds = time.monotonic() - t0
                unknown = sorted({c for row in stats if row["unknown_channels"]
                                  for c in row["unknown_channels"].split("\x1f")})
                if unknown:
                    self.add_channels(chunk, unknown)
                    schema_rounds += 1
                    continue
                misfit = sorted({c for row in stats if row.get("misfit_channels")
                                 for c in row["misfit_channels"].split("\x1f")})
                if misfit:
                    self.text_columns(chunk, misfit)
                    schema_rounds += 1
                    continue
                totals = {k: sum(row[k] for row in stats)
                          for k in ("narrow_rows", "rejected_rows", "duplicate_rows", "wide_rows")}
                newest = max((row["newest_order_key"] for row in stats if row.get("newest_order_key") is not None),
                             default=None)
                t0 = time.monotonic()
                with self._ship_lock(chunk.ship_id), db.connection(tgt_cfg.connection) as tgt:
                    # New tables and columns in a short DDL transaction of their own: readers never
                    # queue behind the merge, and wait at most target.lock_timeout_seconds behind it.
                    if not ensure_tables_ddl(tgt, self.target, layout, f"chunk {chunk.label()}"):
                        return {**totals, "wide_rows": 0, "rolled_back": True, "spark_seconds": spark_seconds,
                                "merge_seconds": 0.0}
                    with tgt.cursor() as cur:
                        if not ship_states.lock_ship_for_write(cur, tgt_cfg.catalog_schema, chunk.ship_id):
                            tgt.rollback()
                            return {**totals, "wide_rows": 0, "rolled_back": True, "spark_seconds": spark_seconds,
                                    "merge_seconds": 0.0}
                        if in_order:
                            # the stream's writes of the ship wait from here to the commit; one that
                            # came before wrote rows the source had by then, which this check sees
                            ship_states.lock_ship_in_order(cur, chunk.ship_id)
                            if self.changed_since_read(chunk, totals["narrow_rows"], newest, rereads):
                                tgt.rollback()
                                rereads += 1
                                continue
                        lock_layout(cur, chunk.ship_id)
                        merged = write.merge(cur)
                        if merged is not None:
                            totals["wide_rows"] = merged
                        # the range's rejects, also those an earlier run's part of the cell recorded
                        ledger.delete_rejects_in_range(cur, tgt_cfg.catalog_schema, JOB, chunk.ship_id,
                                                       chunk.range_start, chunk.range_end)
                        write.rejects(cur, tgt_cfg.catalog_schema, JOB, chunk.batch_label())
                        ledger.record_chunk_read(cur, tgt_cfg.catalog_schema, chunk, 1, started_at,
                                                 totals["narrow_rows"], totals["wide_rows"],
                                                 totals["rejected_rows"], totals["duplicate_rows"])
                        # In the same transaction, so a kill after the commit leaves nothing behind.
                        write.close(cur)
                    tgt.commit()
                return {**totals, "spark_seconds": spark_seconds, "merge_seconds": time.monotonic() - t0}
            finally:
                write.close()
        raise RuntimeError(f"chunk {chunk.label()}: new channels kept appearing while it ran")

    def changed_since_read(self, chunk: Chunk, read: int, newest: int | None, rereads: int) -> bool:
        """With an order column, under the ship's order lock before the merge: whether rows came
        into the chunk's range since its read (``read`` rows, order keys up to ``newest``) that
        may be later than a value it is about to merge (the stream may have written them already:
        merging would undo them), so the chunk reads its range again. Rows of keys the chunk did
        not read (a live writer's new readings) do not count: the chunk writes none of their cells.
        Raises when it read again ``MAX_REREADS`` times already: the chunk is retried later or
        reported, never merged over newer values.

        Cost: one range count on the index; only when it differs, a look at the rows above
        ``newest``. When they are all the rows that came (the counts agree) and none repeats a key
        of an older row, nothing is read again."""
        with self.source.connect() as src:
            now = self.source.rows_in_range(src, chunk.ship_id, chunk.range_start, chunk.range_end)
            if now == read:
                return False
            if newest is not None:
                above, repeated = self.source.rows_after(src, chunk.ship_id, chunk.range_start, chunk.range_end,
                                                         newest)
                if now - above == read and not repeated:
                    return False
        if rereads >= MAX_REREADS:
            raise RowsKeptArriving(
                f"chunk {chunk.label()}: rows kept arriving in its range while it ran ({rereads + 1} reads, the last took "
                f"{read:,} rows, the source has {now:,}): not merged, so no newer value is replaced by an older one")
        log.info("chunk %s: %+d rows in its range since its read (%s, source.order_column): read again",
                 chunk.label(), now - read, f"{read:,} read")
        return True

    def run_chunk_with_retries(self, chunk: Chunk, progress: Progress) -> dict:
        bf = self.config.backfill
        last_error = None
        for attempt in range(1, bf.max_attempts + 1):
            if self.breaker.tripped:
                # The servers stopped answering: no new attempt; the rerun does this chunk.
                return {"chunk": chunk, "ok": False, "not_started": attempt == 1, "error": self.breaker.reason}
            if STOPPING.is_set():       # SIGTERM/SIGINT: the rerun does this chunk
                return {"chunk": chunk, "ok": False, "not_started": attempt == 1, "error": "interrupted"}
            started_at = dt.datetime.now(dt.UTC)
            try:
                result = self.run_chunk(chunk)
                self.breaker.success()
                progress.add(chunk.narrow_rows)
                return {"chunk": chunk, "ok": True, **result}
            except Exception as err:  # noqa: BLE001 - every failure is recorded and retried
                last_error = errors.describe(err)
                if STOPPING.is_set():   # the stop cancelled its Spark job: no failure, no retry
                    return {"chunk": chunk, "ok": False, "not_started": False, "error": "interrupted"}
                if self.breaker.failure(err):
                    return {"chunk": chunk, "ok": False, "not_started": False, "error": last_error}
                self._record_failure(chunk, started_at, last_error)
                if attempt < bf.max_attempts:
                    time.sleep(bf.retry_backoff_seconds * 2 ** (attempt - 1))
        progress.add(0, failed=True)
        log.warning("chunk %s failed after %d attempts: %s", chunk.label(), bf.max_attempts, last_error)
        return {"chunk": chunk, "ok": False, "not_started": False, "error": last_error}

    def _record_failure(self, chunk: Chunk, started_at: dt.datetime, error: str) -> None:
        tgt_cfg = self.config.target
        try:
            with db.connection(tgt_cfg.connection) as tgt, tgt.cursor() as cur:
                ledger.record_chunk(cur, tgt_cfg.catalog_schema, *chunk.key, "failed", 1, started_at,
                                    error=error)        # by its cell, the ledger's name
                tgt.commit()
        except Exception:  # noqa: BLE001 - the ledger may be what is failing; the summary still says it
            pass

    # -- rows that no chunk reads ------------------------------------------------------------------
    def sweep_unplaceable_rejects(self, src: connection, tgt: connection, ships: list[str] | None) -> int:
        """Rows with a NULL or empty ship_id or a NULL created_time fall in no chunk: copy them to
        the rejects table (a run at a time; memory holds one batch however many there are)."""
        with tgt.cursor() as cur:
            swept = ledger.replace_swept_rejects(cur, self.config.target.catalog_schema,
                                                 self.source.unplaceable_rows(src, ships), ships, JOB)
        src.rollback()
        tgt.commit()
        return swept


class BackfillMetrics:
    """The backfill's Prometheus figures (``widen.metrics``), per ship where it makes sense."""

    ROWS = {"narrow_rows": "narrow rows read", "wide_rows": "wide rows merged",
            "rejected_rows": "rows sent to the rejects table", "duplicate_rows": "duplicate readings resolved"}

    def __init__(self, m: metrics.JobMetrics, planned: dict[str, list[Chunk]], done: set):
        self.m = m
        chunks_planned = m.gauge("chunks_planned", "chunks of the run's range", ["ship"])
        self.chunks_done = m.gauge("chunks_done", "chunks of the run's range the ledger holds as done "
                                                  "(done before the run or by it)", ["ship"])
        self.chunks_failed = m.counter("chunks_failed", "chunks that failed every attempt in this run", ["ship"])
        self.rows = {key: m.counter(key, help_text + " by the run's chunks", ["ship"])
                     for key, help_text in self.ROWS.items()}
        self.rate = m.gauge("rows_per_second", "narrow rows per second since the run started")
        self.eta = m.gauge("eta_seconds", "seconds left at the run's rate so far (NaN until it is known)")
        self.ratio = m.gauge("progress_ratio", "narrow rows of the run's chunks done, 0 to 1")
        self.last_progress = m.gauge("last_progress_timestamp_seconds",
                                     "when the run last finished a chunk, or started (Unix time)")
        for ship, chunks in planned.items():
            chunks_planned.labels(ship).set(len(chunks))
            self.chunks_done.labels(ship).set(sum(1 for c in chunks if c.key in done))
            for counter in (self.chunks_failed, *self.rows.values()):
                counter.labels(ship)            # zero from the start, so rate() and alerts see it
        self.ratio.set(0 if any(c.key not in done for cs in planned.values() for c in cs) else 1)
        self.eta.set(float("nan"))
        self.last_progress.set_to_current_time()

    def chunk(self, chunk: Chunk, result: dict, progress: Progress) -> None:
        if result["ok"] and not result.get("rolled_back"):
            self.chunks_done.labels(chunk.ship_id).inc()
            for key, counter in self.rows.items():
                counter.labels(chunk.ship_id).inc(result[key])
        elif not result["ok"] and not result["not_started"]:
            self.chunks_failed.labels(chunk.ship_id).inc()
        rate, eta, done, _ = progress.figures()
        self.rate.set(rate)
        self.eta.set(float("nan") if eta is None else eta)
        self.ratio.set(done)
        self.last_progress.set_to_current_time()


class Breaker:
    """Counts connection failures in a row across the chunk workers; once ``limit`` is reached
    the backfill stops scheduling chunks (an outage would otherwise cost every chunk its retries)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_a_row = 0
        self.reason: str | None = None
        self._lock = threading.Lock()

    @property
    def tripped(self) -> bool:
        return self.reason is not None

    def success(self) -> None:
        with self._lock:
            self.in_a_row = 0

    def failure(self, err: BaseException) -> bool:
        """Count ``err``; True when the breaker is (now) open: after ``limit`` connection failures
        in a row, or at once for a full disk (no retry makes room; every chunk would fail alike)."""
        with self._lock:
            if self.reason is None and errors.is_out_of_space(err):
                self.reason = f"out of disk space: {errors.describe(err)}"
                log.error("stopping: %s; no further chunk is started. Make room (or a bigger temp_file_limit), "
                          "then run the backfill again: finished chunks are kept and skipped.", self.reason)
                return True
            if not errors.is_connection_failure(err):
                self.in_a_row = 0
                return self.tripped
            self.in_a_row += 1
            if self.in_a_row >= self.limit and self.reason is None:
                self.reason = (f"{self.in_a_row} connection failures in a row, the last: {errors.describe(err)}")
                log.error("stopping: %s; no further chunk is started. Run the backfill again when the server is "
                          "back: finished chunks are kept and skipped.", self.reason)
            return self.tripped


def chunks_total(ship: str, chunks: list[Chunk], in_ledger: Iterable[tuple]) -> int:
    """The ship's cells: those the run planned and those the ledger already has (a run over part
    of the history, or the hand-off's cut cell, never makes the total smaller than what is done)."""
    return len({c.key for c in chunks} | {key for key in in_ledger if key[0] == ship})


def record_started(conn_cfg: Connection, catalog_schema: str, planned: dict[str, list[Chunk]],
                   done: set, in_ledger: set) -> None:
    """Ships with chunks left to do have a backfill started (a ship once backfilled stays so: a
    rerun only adds the history that arrived since)."""
    with db.connection(conn_cfg) as tgt, tgt.cursor() as cur:
        for ship, chunks in sorted(planned.items()):
            left = sum(1 for c in chunks if c.key not in done)
            if left:
                lifecycle.record(cur, catalog_schema, ship, JOB, {"chunks": len(chunks), "chunks_left": left},
                                 backfill_started_at=lifecycle.NOW,
                                 backfill_chunks_total=chunks_total(ship, chunks, in_ledger))
        tgt.commit()


def record_backfilled(conn_cfg: Connection, catalog_schema: str, planned: dict[str, list[Chunk]],
                      through: dt.datetime) -> None:
    """A ship the ledger holds every planned chunk of as read (as far as the run's range goes; read
    in the transaction that records it) is backfilled through ``through``: every row committed
    before the run planned its chunks (or, with --end, before the earlier of that and --end)."""
    with db.connection(conn_cfg) as tgt:
        coverage = ledger.chunk_coverage(tgt, catalog_schema, sorted(planned))
        with tgt.cursor() as cur:
            for ship, chunks in sorted(planned.items()):
                if chunks and all(left_to_read(c, coverage.get(c.key)) is None for c in chunks):
                    lifecycle.record(cur, catalog_schema, ship, JOB, {"chunks": len(chunks), "through": through},
                                     backfill_chunks_total=chunks_total(ship, chunks, coverage),
                                     backfilled_at=lifecycle.NOW, backfilled_through=through)
        tgt.commit()


def start_session(config: Config) -> Future:
    """A session of its own (spark-submit), started in a thread: it takes seconds, during which
    the layouts are found. pyspark is imported here first: two threads importing it at once can
    deadlock."""
    import pyspark.sql  # noqa: F401

    starting = ThreadPoolExecutor(1, thread_name_prefix="widen-spark-start")
    try:
        return starting.submit(get_spark, config, job=JOB)
    finally:
        starting.shutdown(wait=False)


class ShipEnds:
    """Which ship a finished chunk completes: its last chunk of this run, all of them written."""

    def __init__(self, todo: list[Chunk]):
        self._left: dict[str, int] = defaultdict(int)
        for chunk in todo:
            self._left[chunk.ship_id] += 1
        self._spoiled: set[str] = set()
        self._lock = threading.Lock()
        self.tables = 0                     # wide tables analyzed

    def finished(self, chunk: Chunk, result: dict) -> bool:
        """True once for a ship whose chunks of this run all succeeded, with the last of them."""
        with self._lock:
            if not result["ok"] or result.get("rolled_back"):
                self._spoiled.add(chunk.ship_id)
            self._left[chunk.ship_id] -= 1
            return self._left[chunk.ship_id] == 0 and chunk.ship_id not in self._spoiled

    def count(self, tables: int) -> None:
        with self._lock:
            self.tables += tables


def analyze_ships(conn_cfg: Connection, target: WideTarget, ships: list[str], columns: str = "all") -> int:
    """The planner's statistics of the wide tables of ``ships`` (every chunk of theirs this run
    wrote succeeded), so analysts' first queries are planned on real figures; tables analyzed. A
    failure is a warning: autovacuum analyzes them later."""
    if not ships:
        return 0
    began, done = time.monotonic(), 0
    try:
        with db.connection(conn_cfg) as conn:
            for ship in ships:
                done += target.analyze(conn, target.layouts.load(conn, ship), columns)
    except psycopg2.Error as err:
        log.warning("the wide tables could not all be analyzed (%s): autovacuum will", errors.describe(err))
    if done:
        log.info("analyzed %d wide tables of %d ships in %.1f s", done, len(ships), time.monotonic() - began)
    return done


@job(JOB, BackfillOptions)
def run(config: Config, spark: SparkSession, options: BackfillOptions) -> Result:
    began = time.monotonic()
    tgt_cfg, bf = config.target, config.backfill
    ships, start, end = options.ships, options.start, options.end
    session = None
    source = open_table(config.source, JOB)
    target = open_target(tgt_cfg, spark)
    reader_views(target, config, source)
    work = Backfill(config, None, source, target)
    with source.connect() as src, db.connection(tgt_cfg.connection) as tgt:
        schema.migrate(tgt, tgt_cfg.catalog_schema)
        index_warning = source.index_warning(src)
        if index_warning:
            log.warning(index_warning)
        with tgt.cursor() as cur:
            cur.execute("SELECT now()")
            through = cur.fetchone()[0] if end is None else min(end, cur.fetchone()[0])
        tgt.rollback()
        chunks = source.plan_chunks(src, ships, start, end, bf.chunk_hours)
        src.rollback()
        rolled_back = ship_states.ships_in_state(tgt, tgt_cfg.catalog_schema, ship_states.ROLLED_BACK)
        tgt.rollback()
        skipped_ships = sorted({c.ship_id for c in chunks} & rolled_back)
        chunks = [c for c in chunks if c.ship_id not in rolled_back]
        ship_ids = sorted({c.ship_id for c in chunks})
        if folded := ledger.fold_into_cells(tgt, tgt_cfg.catalog_schema, chunks):
            log.info("%s ledger cell(s) recorded in parts (an older widen, or another chunk_hours) are one row "
                     "each now", folded)
        coverage = ledger.chunk_coverage(tgt, tgt_cfg.catalog_schema, ship_ids)
        tgt.rollback()
        # each cell's part of the run's range that the ledger does not hold yet
        left = {c.key: rest for c in chunks if (rest := left_to_read(c, coverage.get(c.key))) is not None}
        done = {c.key for c in chunks if c.key not in left}
        if spark is None and left:
            session = start_session(config)
        work.prepare_layouts(src, tgt, ship_ids)
        swept = work.sweep_unplaceable_rejects(src, tgt, ships)
    todo = interleave_by_ship([left[c.key] for c in chunks if c.key in left and c.ship_id not in work.problems])
    for ship, why in work.problems.items():
        log.warning("ship %r skipped: %s", ship, why)
    for ship in skipped_ships:
        log.warning("ship %r skipped: it is rolled back (resume --ships to migrate it again)", ship)
    skipped = sum(1 for c in chunks if c.key in done)
    planned = {ship: [c for c in chunks if c.ship_id == ship] for ship in ship_ids if ship not in work.problems}
    record_started(tgt_cfg.connection, tgt_cfg.catalog_schema, planned, done, set(coverage))
    results = []
    measured = BackfillMetrics(metrics.current(JOB), planned, done)
    before_chunks = None
    ship_ends = ShipEnds(todo)
    if todo:
        work.spark = session.result() if session else get_spark(config, spark)
        work.target = open_target(tgt_cfg, work.spark)
        work.target.views = target.views
        progress = Progress(JOB, len(todo), sum(c.narrow_rows for c in todo), bf.progress_seconds)
        before_chunks = time.monotonic() - began
        log.info("first chunk starts %.1f s after the start (chunks planned, layouts found, Spark ready)",
                 before_chunks)

        def one(chunk: Chunk) -> dict:
            result = work.run_chunk_with_retries(chunk, progress)
            measured.chunk(chunk, result, progress)
            if ship_ends.finished(chunk, result):
                # while the other chunks go on: the statistics are ready when the last chunk is
                try:
                    ship_ends.count(analyze_ships(tgt_cfg.connection, work.target, [chunk.ship_id], bf.analyze))
                except Exception as err:  # noqa: BLE001 - statistics never fail a backfill
                    log.warning("ship %r: its wide tables could not be analyzed (%s): autovacuum will",
                                chunk.ship_id, errors.describe(err))
            return result

        with progress, ThreadPoolExecutor(max_workers=bf.parallel_chunks,
                                          thread_name_prefix="widen-chunk") as pool:
            results = list(pool.map(one, todo))
    ok = [r for r in results if r["ok"] and not r.get("rolled_back")]
    failed = [r for r in results if not r["ok"] and not r["not_started"]]
    not_started = [r for r in results if not r["ok"] and r["not_started"]]
    skipped_ships += sorted({r["chunk"].ship_id for r in results if r.get("rolled_back")})
    if start is None and not work.breaker.tripped:               # the ships' whole history
        try:
            record_backfilled(tgt_cfg.connection, tgt_cfg.catalog_schema, planned, through)
        except Exception as err:
            if not errors.is_connection_failure(err):
                raise
            log.warning("the lifecycle could not be recorded (%s): the next backfill records it",
                        errors.describe(err))
    analyzed = ship_ends.tables
    seconds = time.monotonic() - began
    narrow = sum(r["narrow_rows"] for r in ok)
    summary = {
        "ships": len(ship_ids), "chunks_total": len(chunks), "chunks_done": len(ok),
        "chunks_skipped": skipped, "chunks_failed": len(failed), "narrow_rows": narrow,
        "wide_rows": sum(r["wide_rows"] for r in ok),
        "rejected_rows": sum(r["rejected_rows"] for r in ok) + swept,
        "duplicate_rows": sum(r["duplicate_rows"] for r in ok),
        "seconds": round(seconds, 2), "rows_per_second": round(narrow / seconds) if seconds else 0,
        "seconds_before_first_chunk": None if before_chunks is None else round(before_chunks, 2),
        "chunk_seconds": {"read_pivot_copy": round(sum(r["spark_seconds"] for r in ok), 2),
                          "merge": round(sum(r["merge_seconds"] for r in ok), 2)},
        "failed": [{"chunk": r["chunk"].label(), "error": r["error"]} for r in failed],
        "ships_not_laid_out": work.problems, "ships_rolled_back": sorted(set(skipped_ships)),
        "chunks_not_started": len(not_started), "stopped": work.breaker.reason, "tables_analyzed": analyzed,
    }
    lines = [f"FAILED {r['chunk'].label()}: {r['error']}" for r in failed]
    lines += [f"SHIP NOT MIGRATED {ship}: {why}" for ship, why in work.problems.items()]
    if work.breaker.tripped:
        lines.append(f"STOPPED: {work.breaker.reason}; {len(ok)} chunks done, {len(failed)} failed, "
                     f"{len(not_started)} not started. Run the backfill again when the server answers: "
                     "finished chunks are kept and skipped.")
    return Result(JOB, EXIT_PROBLEM if failed or not_started or work.problems else EXIT_OK, summary,
                  "\n".join(lines))
