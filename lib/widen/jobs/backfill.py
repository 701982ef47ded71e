"""``backfill``: migrate the narrow history into the wide tables, chunk by chunk, exactly once.

A chunk is one ship x one aligned time range. Each chunk is a partitioned JDBC read (values rendered
in SQL), validated, de-duplicated and pivoted per partition, COPYed into UNLOGGED staging tables and
merged in one transaction that also records the chunk in ``backfill_chunks``. Chunks already done
are skipped; a failing chunk is retried with backoff and, if it still fails, reported without
stopping the others. Several chunks (so several ships) run at once.

With a Delta target (``target.kind: delta``) the executors hand the pivoted rows back instead of
COPYing them; the driver MERGEs them into the ship's Delta tables, then records the rejects and the
ledger row in one PostgreSQL transaction (``widen.delta_sink`` says why that is exactly-once).
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
from psycopg2 import sql

from widen import catalog, db, delta_sink, errors, render, sinks, sources, stream_sink
from widen.config import Config
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, exclusive
from widen.jobs import plan as plan_job
from widen.progress import Progress
from widen.session import get_spark, resolve_connections

JOB = "backfill"
log = logging.getLogger(__name__)
MAX_SCHEMA_ROUNDS = 3


class Backfill:
    def __init__(self, config: Config, spark):
        self.config = config
        self.spark = spark
        self.layouts: dict[str, catalog.ShipLayout] = {}
        #: ships that cannot be laid out (e.g. a channel wider than a row may be), and why
        self.problems: dict[str, str] = {}
        self._ship_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.breaker = Breaker(config.backfill.max_connection_failures)

    # -- layouts ---------------------------------------------------------------------------------
    def _ship_lock(self, ship: str) -> threading.Lock:
        with self._locks_lock:
            return self._ship_locks.setdefault(ship, threading.Lock())

    def prepare_layouts(self, src, tgt, ships: list[str]) -> None:
        tgt_cfg = self.config.target
        unplanned = []
        for ship in ships:
            layout = catalog.load_layout(tgt, tgt_cfg.catalog_schema, ship)
            if layout.channels:
                self.layouts[ship] = layout
            else:
                unplanned.append(ship)
        if unplanned:
            stats = plan_job.channel_stats(src, self.config, unplanned)
            src.rollback()
            layouts, self.problems = plan_job.update_layouts(tgt, self.config, stats)
            self.layouts.update(layouts)
        tgt.rollback()
        for ship in ships:
            if ship in self.problems:
                continue
            layout = self.layouts.setdefault(ship, catalog.ShipLayout(ship))
            try:
                if not layout.tables:           # a ship with no valid channel yet: its main table
                    catalog.grow_layout(layout, {}, tgt_cfg, catalog.LazyFleetNamer(tgt, tgt_cfg))
                catalog.record_layout(tgt, tgt_cfg, layout)
                tgt.commit()
            except (ValueError, psycopg2.Error) as err:
                tgt.rollback()
                self.layouts.pop(ship, None)
                self.problems[ship] = errors.describe(err)
                continue
            # Tables made up front, one try each (a chunk waits longer when a reader holds a table).
            # A ship whose tables cannot be made here is not fatal: its chunks retry, then report.
            try:
                if not tgt_cfg.is_delta:       # Delta tables are made by the chunk, under the ship lock
                    catalog.ensure_tables_ddl(tgt, tgt_cfg, layout, f"ship {ship!r}: tables", max_wait=0)
            except (psycopg2.Error, db.LockWaitTimeout):
                tgt.rollback()

    def add_channels(self, chunk: sources.Chunk, channels: list[str]) -> None:
        """Channels the plan had not seen: find their formats in the chunk and give them columns."""
        cfg, tgt_cfg = self.config.source, self.config.target
        query = sql.SQL(
            "SELECT data_channel_id, value_format, count(*), avg(octet_length({v})) FROM {t} "
            "WHERE ship_id = %s AND created_time >= %s AND created_time < %s "
            "AND data_channel_id = ANY(%s) AND {valid} GROUP BY 1, 2").format(
            v=render.rendered_value(), t=sources.source_table(cfg), valid=render.valid_row_predicate())
        found: dict[str, tuple[str, float, int]] = {}
        with db.connection(cfg.connection) as src:
            with src.cursor() as cur:
                cur.execute(query, (chunk.ship_id, chunk.range_start, chunk.range_end, channels))
                for channel, fmt, count, avg in cur.fetchall():
                    if channel not in found or count > found[channel][2]:
                        found[channel] = (fmt, float(avg or 0), count)
        with self._ship_lock(chunk.ship_id), db.connection(tgt_cfg.connection) as tgt:
            layout = catalog.extend_layout(tgt, tgt_cfg, chunk.ship_id,
                                           {c: (f, a) for c, (f, a, _) in found.items()})
            tgt.commit()
            self.layouts[chunk.ship_id] = layout

    # -- one chunk -------------------------------------------------------------------------------
    def run_chunk(self, chunk: sources.Chunk) -> dict:
        tgt_cfg = self.config.target
        if tgt_cfg.is_delta:
            return self.run_delta_chunk(chunk)
        started_at = dt.datetime.now(dt.timezone.utc)
        staging = sinks.Staging.for_key(tgt_cfg.catalog_schema, *chunk.key)
        for _ in range(MAX_SCHEMA_ROUNDS):
            with self._ship_lock(chunk.ship_id):
                layout = copy.deepcopy(self.layouts[chunk.ship_id])
            with db.connection(tgt_cfg.connection) as tgt:
                sinks.create_staging(tgt, staging, layout)
            try:
                t0 = time.monotonic()
                stats = self._write_staging(chunk, staging, layout)
                spark_seconds = time.monotonic() - t0
                unknown = sorted({c for row in stats if row["unknown_channels"]
                                  for c in row["unknown_channels"].split("\x1f")})
                if unknown:
                    self.add_channels(chunk, unknown)
                    continue
                t0 = time.monotonic()
                merged = self._merge(chunk, staging, layout, stats, started_at)
                return {**merged, "spark_seconds": spark_seconds, "merge_seconds": time.monotonic() - t0}
            finally:
                with db.connection(tgt_cfg.connection, autocommit=True) as tgt:
                    sinks.drop_staging(tgt, staging, layout.parts)
        raise RuntimeError(f"chunk {chunk.label()}: new channels kept appearing while it ran")

    def run_delta_chunk(self, chunk: sources.Chunk) -> dict:
        """A chunk into Delta tables: the executors pivot, the driver MERGEs each part table (the
        ship's tables one chunk at a time), then rejects and the ledger row commit together."""
        from pyspark import StorageLevel

        cfg, tgt_cfg = self.config.source, self.config.target
        started_at = dt.datetime.now(dt.timezone.utc)
        target = delta_sink.DeltaTarget(self.spark, tgt_cfg)
        for _ in range(MAX_SCHEMA_ROUNDS):
            with self._ship_lock(chunk.ship_id):
                layout = copy.deepcopy(self.layouts[chunk.ship_id])
            writer = delta_sink.DeltaChunkWriter(layout, chunk.ship_id, cfg.order_column is not None)
            t0 = time.monotonic()
            frame = self._read(chunk, writer.channels)
            # Kept once computed: the stats, each part's MERGE and the rejects all read it.
            output = frame.mapInArrow(writer, writer.schema).persist(StorageLevel.MEMORY_AND_DISK)
            try:
                stats = [row.asDict() for row in output.where("narrow_rows IS NOT NULL")
                         .select(*sinks.STATS_SCHEMA.fieldNames()).collect()]
                unknown = sorted({c for row in stats if row["unknown_channels"]
                                  for c in row["unknown_channels"].split("\x1f")})
                if unknown:
                    self.add_channels(chunk, unknown)
                    continue
                spark_seconds = time.monotonic() - t0
                t0 = time.monotonic()
                # One PostgreSQL transaction holds the ship's write lock (a rollback waits for it)
                # while the Delta tables are made and merged, then records rejects and the chunk.
                with self._ship_lock(chunk.ship_id), db.connection(tgt_cfg.connection) as tgt:
                    with tgt.cursor() as cur:
                        if not catalog.lock_ship_for_write(cur, tgt_cfg.catalog_schema, chunk.ship_id):
                            return {"narrow_rows": 0, "rejected_rows": 0, "duplicate_rows": 0, "wide_rows": 0,
                                    "rolled_back": True, "spark_seconds": spark_seconds, "merge_seconds": 0.0}
                        catalog.lock_layout(cur, chunk.ship_id)
                        target.ensure_tables(layout)
                        delta_sink.merge_chunk(target, layout, writer, output)
                        merged = self._record_delta_chunk(cur, chunk, output, stats, started_at)
                    tgt.commit()
                return {**merged, "spark_seconds": spark_seconds, "merge_seconds": time.monotonic() - t0}
            finally:
                output.unpersist()
        raise RuntimeError(f"chunk {chunk.label()}: new channels kept appearing while it ran")

    def _record_delta_chunk(self, cur, chunk, output, stats, started_at) -> dict:
        tgt_cfg = self.config.target
        totals = {k: sum(row[k] for row in stats)
                  for k in ("narrow_rows", "rejected_rows", "duplicate_rows", "wide_rows")}
        label = chunk_batch_label(chunk)
        cur.execute(sql.SQL("DELETE FROM {} WHERE job = %s AND batch = %s").format(
            sql.Identifier(tgt_cfg.catalog_schema, "rejects")), (JOB, label))
        for rejects in delta_sink.chunk_rejects(output, chunk.ship_id):
            stream_sink.write_rejects(cur, tgt_cfg.catalog_schema, rejects, label, job=JOB)
        catalog.record_chunk(cur, tgt_cfg.catalog_schema, chunk.ship_id, chunk.range_start,
                             chunk.range_end, "done", 1, started_at,
                             narrow_rows=totals["narrow_rows"], wide_rows=totals["wide_rows"],
                             rejected=totals["rejected_rows"], duplicates=totals["duplicate_rows"])
        return totals

    def _write_staging(self, chunk, staging, layout) -> list[dict]:
        cfg, tgt_cfg = self.config.source, self.config.target
        writer = sinks.ChunkWriter(tgt_cfg.connection.psycopg_params(), staging, layout,
                                   chunk.ship_id, cfg.order_column is not None)
        return [row.asDict() for row in self._read(chunk, writer.channels).mapInArrow(
            writer, sinks.STATS_SCHEMA).collect()]

    def _read(self, chunk, channels: list[str]):
        """The chunk's partitioned source read (per-time arrays, channels numbered by ``channels``)."""
        cfg = self.config.source
        with db.connection(cfg.connection) as src:
            frame = sources.read_chunk(self.spark, src, cfg, cfg.connection.jdbc_url(),
                                       cfg.connection.jdbc_properties(), chunk,
                                       partitions_for(chunk, self.config.backfill), channels)
        self.spark.sparkContext.setJobDescription(f"widen backfill {chunk.label()}")
        return frame

    def _merge(self, chunk, staging, layout, stats, started_at) -> dict:
        tgt_cfg = self.config.target
        totals = {k: sum(row[k] for row in stats)
                  for k in ("narrow_rows", "rejected_rows", "duplicate_rows")}
        with db.connection(tgt_cfg.connection) as tgt:
            # New tables and columns in a short DDL transaction of their own: readers never queue
            # behind the merge, and wait at most target.lock_timeout_seconds behind the DDL.
            catalog.ensure_tables_ddl(tgt, tgt_cfg, layout, f"chunk {chunk.label()}")
            with tgt.cursor() as cur:
                if not catalog.lock_ship_for_write(cur, tgt_cfg.catalog_schema, chunk.ship_id):
                    tgt.rollback()
                    return {**totals, "wide_rows": 0, "rolled_back": True}
                wide_rows = sinks.merge_parts(cur, tgt.server_version, tgt_cfg.schema, staging, layout)
                sinks.replace_rejects(cur, tgt_cfg.catalog_schema, staging, JOB, chunk_batch_label(chunk))
                catalog.record_chunk(cur, tgt_cfg.catalog_schema, chunk.ship_id, chunk.range_start,
                                     chunk.range_end, "done", 1, started_at,
                                     narrow_rows=totals["narrow_rows"], wide_rows=wide_rows,
                                     rejected=totals["rejected_rows"],
                                     duplicates=totals["duplicate_rows"])
            # Dropped in the same transaction, so a kill after the commit leaves no staging behind.
            sinks.drop_staging(tgt, staging, layout.parts)
            tgt.commit()
        return {**totals, "wide_rows": wide_rows}

    def run_chunk_with_retries(self, chunk: sources.Chunk, progress: Progress) -> dict:
        bf = self.config.backfill
        last_error = None
        for attempt in range(1, bf.max_attempts + 1):
            if self.breaker.tripped:
                # The servers stopped answering: no new attempt; the rerun does this chunk.
                return {"chunk": chunk, "ok": False, "not_started": attempt == 1, "error": self.breaker.reason}
            started_at = dt.datetime.now(dt.timezone.utc)
            try:
                result = self.run_chunk(chunk)
                self.breaker.success()
                progress.add(chunk.narrow_rows)
                return {"chunk": chunk, "ok": True, **result}
            except Exception as err:  # noqa: BLE001 - every failure is recorded and retried
                last_error = errors.describe(err)
                if self.breaker.failure(err):
                    return {"chunk": chunk, "ok": False, "not_started": False, "error": last_error}
                self._record_failure(chunk, started_at, last_error)
                if attempt < bf.max_attempts:
                    time.sleep(bf.retry_backoff_seconds * 2 ** (attempt - 1))
        progress.add(0, failed=True)
        log.warning("chunk %s failed after %d attempts: %s", chunk.label(), bf.max_attempts, last_error)
        return {"chunk": chunk, "ok": False, "not_started": False, "error": last_error}

    def _record_failure(self, chunk, started_at, error: str) -> None:
        tgt_cfg = self.config.target
        try:
            with db.connection(tgt_cfg.connection) as tgt, tgt.cursor() as cur:
                catalog.record_chunk(cur, tgt_cfg.catalog_schema, chunk.ship_id, chunk.range_start,
                                     chunk.range_end, "failed", 1, started_at, error=error)
                tgt.commit()
        except Exception:  # noqa: BLE001 - the ledger may be what is failing; the summary still says it
            pass

    # -- rows that no chunk reads ------------------------------------------------------------------
    def sweep_unplaceable_rejects(self, src, tgt, ships: list[str] | None) -> int:
        """Rows with a NULL or empty ship_id or a NULL created_time fall in no chunk: copy them to the
        rejects table."""
        cfg, tgt_cfg = self.config.source, self.config.target
        scope = sql.SQL("")
        params: list = []
        if ships:
            scope = sql.SQL(" AND (ship_id IS NULL OR ship_id = '' OR ship_id = ANY(%s))")
            params.append(list(ships))
        query = sql.SQL(
            "SELECT ship_id, data_channel_id, created_time, value_format, double_v, long_v, str_v, "
            "bool_v, {reason} FROM {t} WHERE (ship_id IS NULL OR ship_id = '' OR created_time IS NULL){scope}").format(
            reason=render.reject_reason_sql(), t=sources.source_table(cfg), scope=scope)
        rejects = sql.Identifier(tgt_cfg.catalog_schema, "rejects")
        insert = sql.SQL(
            "INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v, long_v, "
            "str_v, bool_v, reason, job, batch) VALUES %s").format(rejects)
        swept = 0
        with tgt.cursor() as out:
            # Two backfills (of different ships) sweep the same rows: one after the other, each
            # replacing what the other wrote, never both inserting.
            out.execute("SELECT pg_advisory_xact_lock(hashtext('widen.reject_sweep'))")
            delete = sql.SQL("DELETE FROM {} WHERE job = %s AND batch = 'sweep'").format(rejects)
            if ships:
                delete = delete + sql.SQL(" AND (ship_id IS NULL OR ship_id = '' OR ship_id = ANY(%s))")
            out.execute(delete, [JOB, *params])
            # A server-side cursor: however many such rows there are, memory holds one batch.
            with src.cursor(name="widen_sweep") as cur:
                cur.itersize = 10_000
                cur.execute(query, params)
                while rows := cur.fetchmany(10_000):
                    db.execute_values(out, insert, [(*row, JOB, "sweep") for row in rows])
                    swept += len(rows)
        src.rollback()
        tgt.commit()
        return swept


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
        """Count ``err``; True when the breaker is (now) open."""
        with self._lock:
            if not errors.is_connection_failure(err):
                self.in_a_row = 0
                return self.tripped
            self.in_a_row += 1
            if self.in_a_row >= self.limit and self.reason is None:
                self.reason = (f"{self.in_a_row} connection failures in a row, the last: {errors.describe(err)}")
                log.error("stopping: %s; no further chunk is started. Run the backfill again when the server is "
                          "back: finished chunks are kept and skipped.", self.reason)
            return self.tripped


def partitions_for(chunk: sources.Chunk, bf) -> int:
    """Enough read partitions that none holds more than ``max_rows_per_partition`` narrow rows."""
    return max(bf.partitions_per_chunk, math.ceil(chunk.narrow_rows / bf.max_rows_per_partition))


def chunk_batch_label(chunk: sources.Chunk) -> str:
    return f"{chunk.ship_id}|{chunk.range_start.isoformat()}|{chunk.range_end.isoformat()}"


def interleave_by_ship(chunks: list[sources.Chunk]) -> list[sources.Chunk]:
    """Round-robin over ships, so parallel workers keep several ships moving at once."""
    by_ship: dict[str, list[sources.Chunk]] = {}
    for chunk in sorted(chunks):
        by_ship.setdefault(chunk.ship_id, []).append(chunk)
    queues = list(by_ship.values())
    out = []
    while queues:
        for q in list(queues):
            out.append(q.pop(0))
            if not q:
                queues.remove(q)
    return out


@exclusive(JOB)
def run(config: Config, spark=None, ships: list[str] | None = None, start: dt.datetime | None = None,
        end: dt.datetime | None = None, **_ignored) -> Result:
    began = time.monotonic()
    config = resolve_connections(config)
    src_cfg, tgt_cfg, bf = config.source, config.target, config.backfill
    job = Backfill(config, None)
    with db.connection(src_cfg.connection) as src, db.connection(tgt_cfg.connection) as tgt:
        catalog.ensure_catalog(tgt, tgt_cfg.catalog_schema)
        index_warning = sources.chunk_index_warning(src, src_cfg)
        if index_warning:
            log.warning(index_warning)
        chunks = sources.plan_chunks(src, src_cfg, ships, start, end, bf.chunk_hours)
        src.rollback()
        rolled_back = catalog.ships_in_state(tgt, tgt_cfg.catalog_schema, catalog.ROLLED_BACK)
        tgt.rollback()
        skipped_ships = sorted({c.ship_id for c in chunks} & rolled_back)
        chunks = [c for c in chunks if c.ship_id not in rolled_back]
        ship_ids = sorted({c.ship_id for c in chunks})
        job.prepare_layouts(src, tgt, ship_ids)
        done = catalog.done_chunks(tgt, tgt_cfg.catalog_schema, ship_ids)
        tgt.rollback()
        swept = job.sweep_unplaceable_rejects(src, tgt, ships)
    todo = interleave_by_ship([c for c in chunks if c.key not in done and c.ship_id not in job.problems])
    for ship, why in job.problems.items():
        log.warning("ship %r skipped: %s", ship, why)
    for ship in skipped_ships:
        log.warning("ship %r skipped: it is rolled back (resume --ships to migrate it again)", ship)
    skipped = sum(1 for c in chunks if c.key in done)
    results = []
    if todo:
        job.spark = get_spark(config, spark)
        progress = Progress(JOB, len(todo), sum(c.narrow_rows for c in todo), bf.progress_seconds)
        with progress, ThreadPoolExecutor(max_workers=bf.parallel_chunks,
                                          thread_name_prefix="widen-chunk") as pool:
            results = list(pool.map(lambda c: job.run_chunk_with_retries(c, progress), todo))
    ok = [r for r in results if r["ok"] and not r.get("rolled_back")]
    failed = [r for r in results if not r["ok"] and not r["not_started"]]
    not_started = [r for r in results if not r["ok"] and r["not_started"]]
    skipped_ships += sorted({r["chunk"].ship_id for r in results if r.get("rolled_back")})
    seconds = time.monotonic() - began
    narrow = sum(r["narrow_rows"] for r in ok)
    summary = {
        "ships": len(ship_ids), "chunks_total": len(chunks), "chunks_done": len(ok),
        "chunks_skipped": skipped, "chunks_failed": len(failed), "narrow_rows": narrow,
        "wide_rows": sum(r["wide_rows"] for r in ok),
        "rejected_rows": sum(r["rejected_rows"] for r in ok) + swept,
        "duplicate_rows": sum(r["duplicate_rows"] for r in ok),
        "seconds": round(seconds, 2), "rows_per_second": round(narrow / seconds) if seconds else 0,
        "chunk_seconds": {"read_pivot_copy": round(sum(r["spark_seconds"] for r in ok), 2),
                          "merge": round(sum(r["merge_seconds"] for r in ok), 2)},
        "failed": [{"chunk": r["chunk"].label(), "error": r["error"]} for r in failed],
        "ships_not_laid_out": job.problems, "ships_rolled_back": sorted(set(skipped_ships)),
        "chunks_not_started": len(not_started), "stopped": job.breaker.reason,
    }
    lines = [f"FAILED {r['chunk'].label()}: {r['error']}" for r in failed]
    lines += [f"SHIP NOT MIGRATED {ship}: {why}" for ship, why in job.problems.items()]
    if job.breaker.tripped:
        lines.append(f"STOPPED: {job.breaker.reason}; {len(ok)} chunks done, {len(failed)} failed, "
                     f"{len(not_started)} not started. Run the backfill again when the server answers: "
                     "finished chunks are kept and skipped.")
    return Result(JOB, EXIT_PROBLEM if failed or not_started or job.problems else EXIT_OK, summary,
                  "\n".join(lines))
