"""``reconcile``: prove narrow == wide per ship × time bucket; pinpoint and (``--repair``) fix.

1. Spark runs the bucket checksums (``widen.reconcile``) of many ships in parallel, each task
   querying both databases; only aggregates come back. (A Delta target's side is aggregated by
   Spark on the driver, per ship, and joined to the tasks' source buckets.)
2. A differing bucket is bisected down to timestamps and their cells are compared one by one:
   missing (in the source, not the wide table), extra (in the wide table only) or different.
3. ``--repair`` re-merges each ship's differing timestamps and ranges from the source in one
   target transaction (rows there deleted first, so a cell the source no longer has goes), then
   checks those buckets again.

Every bucket's figures go to ``reconcile_results`` (status match / mismatch / repaired); rejected
rows are reported per ship and are not mismatches. Exit 1 while any mismatch is left.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
from psycopg2 import sql

from widen import catalog, db, errors, reconcile, render, sources, stream_sink
from widen.config import Config
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, exclusive
from widen.jobs.plan import reject_counts
from widen.session import get_spark, resolve_connections

JOB = "reconcile"
log = logging.getLogger(__name__)
UTC = dt.timezone.utc
EARLIEST = dt.datetime(1, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(9999, 12, 31, tzinfo=UTC)


@dataclass
class ShipReport:
    ship_id: str
    buckets: int = 0
    mismatched: list = field(default_factory=list)      # [(bucket_start, source Aggregate, target Aggregate)]
    diffs: list = field(default_factory=list)           # CellDiff, capped
    totals: dict = field(default_factory=lambda: {"missing": 0, "extra": 0, "different": 0})
    drill: reconcile.Drill = field(default_factory=reconcile.Drill)
    rejects: dict = field(default_factory=dict)
    repaired: bool = False
    found_buckets: int = 0                               # mismatching before any repair
    fixed: list = field(default_factory=list)            # buckets a repair made match
    error: str | None = None                             # the ship could not be checked (or repaired)


@dataclass(frozen=True)
class BucketRow:
    """What a bucket task found for one ship: a bucket's two aggregates (``target`` None while a
    Delta target's side is still to be computed on the driver), or that the ship has rejected rows,
    or that it could not be checked."""
    ship_id: str
    bucket: dt.datetime | None = None
    source: reconcile.Aggregate | None = None
    target: reconcile.Aggregate | None = None
    rejected: int = 0
    error: str | None = None

    @property
    def matches(self) -> bool:
        return self.source == self.target


class BucketTask:
    """The per-partition function: ship ids in, ``BucketRow``s out.

    Holds both databases' connection parameters (resolved on the driver); its repr never shows them.
    A ship that fails is reported as such (an ``error`` row) and the task goes on with the next.
    """

    def __init__(self, config: Config, src_params: dict, tgt_params: dict, lo, hi, width_seconds: float):
        self.config = config
        self._src, self._tgt = src_params, tgt_params
        self.lo, self.hi, self.width = lo, hi, width_seconds

    def __repr__(self) -> str:
        return "BucketTask()"

    def __call__(self, ships):
        src = db.open_session(self._src, autocommit=True)
        tgt = db.open_session(self._tgt, autocommit=True)
        try:
            with src.cursor() as sc, tgt.cursor() as tc:
                reconcile.prepare_session(sc)
                reconcile.prepare_session(tc)
                for ship in ships:
                    try:
                        yield from list(self._ship(src, sc, tgt, tc, ship))
                    except Exception as err:  # noqa: BLE001 - one ship's failure, reported by ship
                        if not errors.is_ship_level(err):
                            raise
                        yield BucketRow(ship, error=errors.describe(err))
        finally:
            src.close()
            tgt.close()

    def _ship(self, src, sc, tgt, tc, ship: str):
        cfg = self.config
        rejected: dict = {}
        if cfg.target.is_delta:
            # Spark reads the Delta side on the driver (``with_delta_targets``): the source only.
            source = reconcile.source_buckets(sc, cfg, ship, self.lo, self.hi, self.width, rejected)
            target = layout = None
        else:
            layout = catalog.load_layout(tgt, cfg.target.catalog_schema, ship)
            source, target = reconcile.bucket_aggregates(sc, reconcile.PostgresWide(tc, cfg), cfg, layout, ship,
                                                         self.lo, self.hi, self.width, rejected)
        if self.lo == EARLIEST and self.hi == LATEST:
            # Rows with no created_time belong to no bucket; an index probe counts them.
            sc.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time IS NULL").format(
                sql.Identifier(cfg.source.schema, cfg.source.table)), (ship,))
            rejected[None] = sc.fetchone()[0]
        if any(rejected.values()):
            yield BucketRow(ship, rejected=sum(rejected.values()))
        if target is None:
            for bucket, s in sorted(source.items()):
                yield BucketRow(ship, bucket, s)
            return
        yield from bucket_rows(sc, reconcile.PostgresWide(tc, cfg), cfg, layout, ship, source, target,
                               self.lo, self.hi, self.width)


def bucket_rows(sc, wide, config: Config, layout, ship: str, source: dict, target: dict, lo, hi,
                width: float):
    """A ``BucketRow`` per bucket of either side; a bucket the fast form finds different is checked
    again exactly (the fast form counts every duplicate)."""
    for bucket in sorted(set(source) | set(target)):
        s, t = source.get(bucket, reconcile.Aggregate()), target.get(bucket, reconcile.Aggregate())
        if s != t:
            s, t = reconcile.range_aggregates(sc, wide, config, layout, ship, max(bucket, lo),
                                              min(bucket + dt.timedelta(seconds=width), hi))
        yield BucketRow(ship, bucket, s, t)


def with_delta_targets(config: Config, spark, rows: list[BucketRow], ship_ids: list[str], lo, hi,
                       width: float) -> list[BucketRow]:
    """Bucket rows with the Delta side filled in: per ship, Spark aggregates its Delta tables."""
    sources: dict[str, dict] = {}
    out = [r for r in rows if r.bucket is None]
    for row in (r for r in rows if r.bucket is not None):
        sources.setdefault(row.ship_id, {})[row.bucket] = row.source
    failed = {r.ship_id for r in rows if r.error}
    with _sessions(config, spark) as (tgt, src_cur, wide):
        for ship in ship_ids:
            if ship in failed:
                continue
            try:
                layout = catalog.load_layout(tgt, config.target.catalog_schema, ship)
                target = wide.groups(layout, ship, lo, hi, "bucket", width)
                out.extend(list(bucket_rows(src_cur, wide, config, layout, ship, sources.get(ship, {}), target,
                                            lo, hi, width)))
            except Exception as err:  # noqa: BLE001 - one ship's failure, reported by ship
                if not errors.is_ship_level(err):
                    raise
                out.append(BucketRow(ship, error=errors.describe(err)))
    return out


def list_ships(config: Config, ships: list[str] | None) -> list[str]:
    """Ships with valid narrow rows or wide tables (a skip scan over the (ship_id, …) index)."""
    if ships:
        return sorted(ships)
    found: set[str] = set()
    with db.connection(config.source.connection) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(
            "WITH RECURSIVE s AS (SELECT min(ship_id) AS id FROM {t} UNION ALL "
            "SELECT (SELECT min(ship_id) FROM {t} WHERE ship_id > s.id) FROM s WHERE s.id IS NOT NULL) "
            "SELECT id FROM s WHERE id IS NOT NULL AND id <> ''").format(t=sql.Identifier(config.source.schema,
                                                                              config.source.table)))
        found.update(r[0] for r in cur.fetchall())
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        catalog.ensure_catalog(conn, config.target.catalog_schema)
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(
            sql.Identifier(config.target.catalog_schema, "wide_tables")))
        found.update(r[0] for r in cur.fetchall())
    return sorted(found)


def repair_pieces(config: Config, ship: str, found: reconcile.Drill) -> list[tuple[list, list]]:
    """The repair's work as (timestamps, ranges) pieces of at most about
    ``reconcile.repair_rows_per_piece`` narrow rows each: differing timestamps in groups, whole
    missing/extra ranges cut at created_time boundaries."""
    budget = config.reconcile.repair_rows_per_piece
    with db.connection(config.target.connection) as conn:
        per_time = max(1, len(catalog.load_layout(conn, config.target.catalog_schema, ship).channels))
    group = max(1, budget // per_time)
    times = sorted(found.times)
    pieces: list[tuple[list, list]] = [(times[i:i + group], []) for i in range(0, len(times), group)]
    with db.connection(config.source.connection) as src:
        for lo, hi, _, _ in found.ranges:
            pieces += [([], [piece]) for piece in sources.range_pieces(src, config.source, ship, lo, hi, budget)]
    return pieces


def repair_ship(config: Config, report: ShipReport, spark=None) -> None:
    """Re-merge the ship's differing timestamps and ranges from the source, piece by piece: each
    piece's wide rows are deleted (so a cell the source no longer has goes) and the source's rows
    merged back, in one target transaction per piece (a PostgreSQL target), so memory and locks
    stay bounded however large the ranges are. Running it again finishes an interrupted repair."""
    ship, tgt_cfg = report.ship_id, config.target
    for times, ranges in repair_pieces(config, ship, report.drill):
        with db.connection(config.source.connection) as src:
            rows = sources.ship_rows(src, config.source, ship, times, ranges)
        with db.connection(tgt_cfg.connection) as conn:
            layout = stream_sink.prepare_ship(conn, spark, config, stream_sink.fresh_state(), ship,
                                              stream_sink.batch_channels(rows))
            if layout is None:
                log.warning("%s is rolled back: not repaired", ship)
                return
            if tgt_cfg.is_delta:
                _repair_delta(config, spark, layout, times, ranges, rows)
                continue
            with conn.cursor() as cur:
                if not catalog.lock_ship_for_write(cur, tgt_cfg.catalog_schema, ship):
                    log.warning("%s is rolled back: not repaired", ship)
                    return
                where, params = _piece_condition(times, ranges)
                for part in layout.parts:
                    cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
                        sql.Identifier(tgt_cfg.schema, layout.tables[part]), where), params)
                if rows.num_rows:
                    stream_sink.merge_ship_rows(conn, cur, config, layout, rows)
            conn.commit()
    report.repaired = True


def _piece_condition(times: list, ranges: list) -> tuple[sql.Composable, dict]:
    where = sql.SQL("(created_time = ANY(%(times)s) OR {})").format(
        sql.SQL(" OR ").join([sql.SQL("(created_time >= {} AND created_time < {})").format(
            sql.Placeholder(f"lo{i}"), sql.Placeholder(f"hi{i}")) for i in range(len(ranges))] or [sql.SQL("false")]))
    params = {"times": list(times), **{f"lo{i}": lo for i, (lo, _) in enumerate(ranges)},
              **{f"hi{i}": hi for i, (_, hi) in enumerate(ranges)}}
    return where, params


def _repair_delta(config: Config, spark, layout, times: list, ranges: list, rows: pa.Table) -> None:
    """The Delta form of a repair piece: the differing rows deleted from every part table, then the
    source's rows merged back (one Delta commit per table and step, not one transaction: a repair
    cut short is finished by running it again)."""
    from functools import reduce

    from pyspark.sql import functions as F

    from widen.delta_sink import DeltaTarget

    target = DeltaTarget(spark, config.target)
    when = F.col("created_time")
    condition = reduce(lambda a, b: a | b, [(when >= F.lit(lo)) & (when < F.lit(hi)) for lo, hi in ranges],
                       when.isin(list(times)) if times else F.lit(False))
    for part in layout.parts:
        if target.exists(layout.tables[part]):
            target.delete(layout.tables[part], condition)
    if rows.num_rows:
        stream_sink.merge_ship_rows_delta(spark, config, layout, rows)


@exclusive(JOB)
def run(config: Config, spark=None, ships: list[str] | None = None, start=None, end=None,
        repair: bool = False, **_ignored) -> Result:
    began = time.monotonic()
    config = resolve_connections(config)
    rc = config.reconcile
    lo, hi = start or EARLIEST, end or LATEST
    width = rc.bucket_hours * 3600.0
    ship_ids = list_ships(config, ships)
    spark = get_spark(config, spark)
    task = BucketTask(config, config.source.connection.psycopg_params(),
                      config.target.connection.psycopg_params(), lo, hi, width)
    log.info("%d ships, %g h buckets", len(ship_ids), rc.bucket_hours)
    rows = (spark.sparkContext.parallelize(ship_ids, max(1, min(len(ship_ids), rc.parallel_ships)))
            .mapPartitions(task).collect()) if ship_ids else []
    if config.target.is_delta:
        rows = with_delta_targets(config, spark, rows, ship_ids, lo, hi, width)
    reports = {s: ShipReport(s) for s in ship_ids}
    for row in rows:
        report = reports[row.ship_id]
        if row.error:
            report.error = row.error
            log.warning("ship %r could not be checked: %s", row.ship_id, row.error)
    ships_with_rejects = [r.ship_id for r in rows if r.rejected]
    rows = [r for r in rows if r.bucket is not None and not reports[r.ship_id].error]
    for row in rows:
        report = reports[row.ship_id]
        report.buckets += 1
        if not row.matches:
            report.mismatched.append((row.bucket, row.source, row.target))
    # Rejected rows by reason: only for ships the bucket pass found some in (a scan), plus the rows
    # of no ship (an index probe).
    with db.connection(config.source.connection) as src:
        rejects = reject_counts(src, config, ships_with_rejects) if ships_with_rejects else {}
        no_ship = _rejects_without_ship(src, config) if not ships else {}
    for ship, report in reports.items():
        report.rejects = dict(rejects.get(ship, {}))
    _drill_down(config, spark, reports, lo, hi, width)
    if repair:
        for report in reports.values():
            if report.mismatched and not report.error:
                with _ship_errors(report):
                    repair_ship(config, report, spark)
                    log.info("%s: repaired %d timestamps and %d ranges", report.ship_id, len(report.drill.times),
                             len(report.drill.ranges))
        _recheck(config, spark, reports, lo, hi, width)
    run_id = dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    _record(config, run_id, rows, reports, width, hi)
    left = {s: len(r.mismatched) for s, r in reports.items() if r.mismatched}
    failed = {s: r.error for s, r in reports.items() if r.error}
    text = format_report(reports, rc.max_reported_cells)
    if no_ship:
        text += f"\n(no ship_id): {sum(no_ship.values()):,} rejected rows"
    summary = {
        "run_id": run_id, "ships": len(ship_ids), "buckets": len(rows),
        "found_mismatched_buckets": sum(r.found_buckets for r in reports.values()),
        "mismatched_buckets": sum(left.values()), "ships_mismatched": sorted(left),
        "cells_missing": sum(r.totals["missing"] for r in reports.values()),
        "cells_extra": sum(r.totals["extra"] for r in reports.values()),
        "cells_different": sum(r.totals["different"] for r in reports.values()),
        "repaired_ships": sorted(s for s, r in reports.items() if r.repaired),
        "rejected_rows": sum(sum(r.rejects.values()) for r in reports.values()) + sum(no_ship.values()),
        "cells": [{"ship_id": s, "created_time": d.created_time.isoformat(), "data_channel_id": d.data_channel_id,
                   "kind": d.kind, "source": d.source_value, "wide": d.target_value}
                  for s, r in sorted(reports.items()) for d in r.diffs],
        "failed": failed, "seconds": round(time.monotonic() - began, 2)}
    return Result(JOB, EXIT_PROBLEM if left or failed else EXIT_OK, summary, text)


def _rejects_without_ship(src, config: Config) -> dict:
    """Rows with a NULL ship_id, by reason (an index probe; reported apart from every ship)."""
    with src.cursor() as cur:
        cur.execute(sql.SQL("SELECT {r}, count(*) FROM {t} WHERE ship_id IS NULL OR ship_id = '' GROUP BY 1").format(
            r=render.reject_reason_sql(), t=sql.Identifier(config.source.schema, config.source.table)))
        return {reason: n for reason, n in cur.fetchall()}


@contextlib.contextmanager
def _ship_errors(report: ShipReport):
    """Record a ship-level failure on the ship's report (the other ships go on)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - classified below
        if not errors.is_ship_level(err):
            raise
        report.error = errors.describe(err)
        log.warning("ship %r: %s", report.ship_id, report.error)


@contextlib.contextmanager
def _sessions(config: Config, spark):
    """(target connection, source cursor, wide side), prepared for the checksum queries."""
    with db.connection(config.source.connection, autocommit=True) as src, \
            db.connection(config.target.connection, autocommit=True) as tgt, \
            src.cursor() as sc, tgt.cursor() as tc:
        reconcile.prepare_session(sc)
        reconcile.prepare_session(tc)
        yield tgt, sc, (reconcile.DeltaWide(spark, config) if config.target.is_delta
                        else reconcile.PostgresWide(tc, config))


def _drill_down(config: Config, spark, reports: dict, lo, hi, width: float) -> None:
    rc = config.reconcile
    with _sessions(config, spark) as (tgt, sc, wide):
        for report in reports.values():
            if not report.mismatched or report.error:
                continue
            with _ship_errors(report):
                _drill_ship(config, tgt, sc, wide, report, lo, hi, width)


def _drill_ship(config: Config, tgt, sc, wide, report: ShipReport, lo, hi, width: float) -> None:
    rc = config.reconcile
    layout = catalog.load_layout(tgt, config.target.catalog_schema, report.ship_id)
    found = reconcile.Drill()
    for bucket, _, _ in report.mismatched:
        reconcile.drill(sc, wide, config, layout, report.ship_id, max(bucket, lo),
                        min(bucket + dt.timedelta(seconds=width), hi), rc.leaf_times, found)
    report.drill = found
    report.found_buckets = len(report.mismatched)
    diffs = reconcile.cell_differences(sc, wide, config, layout, report.ship_id, found.times)
    for d in diffs:
        report.totals[d.kind] += 1
    for range_lo, range_hi, s, t in found.ranges:
        kind = "missing" if t.times == 0 else "extra"
        report.totals[kind] += max(s.cells, t.cells)
        diffs.append(reconcile.CellDiff(range_lo, None, f"{kind} range to {range_hi.isoformat()}: "
                                        f"{max(s.times, t.times)} timestamps, {max(s.cells, t.cells)} cells"))
    report.diffs = diffs[: rc.max_reported_cells]


def _recheck(config: Config, spark, reports: dict, lo, hi, width: float) -> None:
    with _sessions(config, spark) as (tgt, sc, wide):
        for report in reports.values():
            if not report.repaired or report.error:
                continue
            layout = catalog.load_layout(tgt, config.target.catalog_schema, report.ship_id)
            still = []
            for bucket, _, _ in report.mismatched:
                s, t = reconcile.range_aggregates(sc, wide, config, layout, report.ship_id, max(bucket, lo),
                                                  min(bucket + dt.timedelta(seconds=width), hi))
                if s != t:
                    still.append((bucket, s, t))
            report.fixed = [b for b, _, _ in report.mismatched if b not in {x[0] for x in still}]
            report.mismatched = still


def _record(config: Config, run_id: str, rows: list[BucketRow], reports: dict, width: float, hi) -> None:
    fixed = {(s, b) for s, r in reports.items() for b in r.fixed}
    left = {(s, b) for s, r in reports.items() for b, _, _ in r.mismatched}
    values = []
    for r in rows:
        key = (r.ship_id, r.bucket)
        status = "mismatch" if key in left else "repaired" if key in fixed else "match"
        values.append((run_id, r.ship_id, r.bucket, min(r.bucket + dt.timedelta(seconds=width), hi),
                       r.source.times, r.target.times, r.source.cells, r.target.cells, r.source.checksum,
                       r.target.checksum, status))
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        catalog.ensure_catalog(conn, config.target.catalog_schema)
        if values:
            db.execute_values(cur, sql.SQL(
                "INSERT INTO {} (run_id, ship_id, bucket_start, bucket_end, source_times, target_times, "
                "source_cells, target_cells, source_checksum, target_checksum, status) VALUES %s").format(
                sql.Identifier(config.target.catalog_schema, "reconcile_results")), values)
        conn.commit()


def format_report(reports: dict, cap: int) -> str:
    lines = []
    for ship in sorted(reports):
        r = reports[ship]
        rejects = sum(r.rejects.values())
        reject_text = f"; {rejects:,} rejected rows ({', '.join(f'{k}: {v}' for k, v in sorted(r.rejects.items()))})" \
            if rejects else ""
        t = r.totals
        found = f"{t['missing']} cells missing, {t['extra']} extra, {t['different']} different"
        if r.error:
            lines.append(f"{ship}: NOT CHECKED: {r.error}")
            continue
        if not r.found_buckets:
            lines.append(f"{ship}: matches ({r.buckets} buckets){reject_text}")
            continue
        if not r.mismatched:
            lines.append(f"{ship}: REPAIRED {r.found_buckets} of {r.buckets} buckets ({found}); now matches"
                         f"{reject_text}")
        else:
            lines.append(f"{ship}: MISMATCH in {len(r.mismatched)} of {r.buckets} buckets: {found}{reject_text}")
        for d in r.diffs[:cap]:
            value = {"missing": f"source {d.source_value!r}", "extra": f"wide {d.target_value!r}",
                     "different": f"source {d.source_value!r} != wide {d.target_value!r}"}.get(d.kind, "")
            lines.append(f"  {d.created_time.isoformat()} {d.data_channel_id or '(row)'}: {d.kind} {value}".rstrip())
    return "\n".join(lines)
