"""``reconcile``: prove narrow == wide per ship × time bucket; pinpoint and (``--repair``) fix.

1. Spark runs the bucket checksums (``core.checksum``) of many ships in parallel, each task asking
   the source and, where the target computes there (``checksums_in_tasks``), the target; only
   aggregates come back. (Otherwise the driver computes the target's side per ship.)
2. A differing bucket is bisected down to timestamps and their cells are compared one by one:
   missing (in the source, not the wide table), extra (in the wide table only) or different.
3. ``--repair`` re-merges each ship's differing timestamps and ranges from the source, piece by
   piece (each piece's wide rows deleted first, so a cell the source no longer has goes), then
   checks those buckets again. With an order column a piece is written under the ship's order lock
   (the stream's writes of the ship wait) from rows read again under it.

Every bucket's figures go to ``reconcile_results`` (status match / mismatch / repaired); rejected
rows are reported per ship and are not mismatches. Exit 1 while any mismatch is left. A rolled-back
ship (``rollback``; its wide tables are gone on purpose) is reported as such and neither checked,
repaired nor recorded, whether it was named by ``--ships`` or not: it never turns a run red.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from widen import errors, metrics
from widen.catalog import ledger, lifecycle, schema, ships as ship_states
from widen.catalog.layouts import load_layout
from widen.config import Config
from widen.core import kernels
from widen.core.checksum import Aggregate, CellDiff, Drill
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, job
from widen.pg import checksums, db
from widen.session import get_spark
from widen.sources import NarrowTable, open_table
from widen.streaming.sink import batch_channels
from widen.targets import WideTarget, open_target, prepare_ship
from widen.targets.views import configure as reader_views

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import pyarrow as pa
    from psycopg2.extensions import connection, cursor
    from pyspark.sql import SparkSession

    from widen.core.kernels import Pivoted
    from widen.core.layout import ShipLayout
    from widen.sources.base import NarrowTable
    from widen.targets.base import WideTarget

JOB = "reconcile"
#: with an order column: how often a repair piece reads its rows again when they changed between
#: its read and its write
MAX_REREADS = 3
log = logging.getLogger(__name__)
UTC = dt.UTC
EARLIEST = dt.datetime(1, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class ReconcileOptions:
    ships: list[str] | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    #: re-merge what differs from the source, then check again
    repair: bool = False


@dataclass
class ShipReport:
    ship_id: str
    buckets: int = 0
    mismatched: list = field(default_factory=list)      # [(bucket_start, source Aggregate, target Aggregate)]
    diffs: list = field(default_factory=list)           # CellDiff, capped
    totals: dict = field(default_factory=lambda: {"missing": 0, "extra": 0, "different": 0})
    drill: Drill = field(default_factory=Drill)
    rejects: dict = field(default_factory=dict)
    repaired: bool = False
    found_buckets: int = 0                               # mismatching before any repair
    fixed: list = field(default_factory=list)            # buckets a repair made match
    error: str | None = None                             # the ship could not be checked (or repaired)
    rolled_back: bool = False                            # rolled back while the run checked it


@dataclass(frozen=True)
class BucketRow:
    """What a bucket task found for one ship: a bucket's two aggregates (``target`` None while the
    target's side is still to be computed on the driver), or that the ship has rejected rows,
    or that it could not be checked."""
    ship_id: str
    bucket: dt.datetime | None = None
    source: Aggregate | None = None
    target: Aggregate | None = None
    rejected: int = 0
    error: str | None = None

    @property
    def matches(self) -> bool:
        return self.source == self.target


class Sides:
    """The two sides of the checksums for one ship at a time, in sessions prepared for them."""

    def __init__(self, source: NarrowTable, src_cur: cursor, wide: Pivoted, hashes: checksums.Hashes):
        self.source, self.src_cur, self.wide, self.hashes = source, src_cur, wide, hashes

    def range_aggregates(self, layout: ShipLayout, ship: str, lo: dt.datetime, hi: dt.datetime) -> tuple[Aggregate, Aggregate]:
        """Exact (source, target) aggregate of one ship's range."""
        return (self.source.range_aggregate(self.src_cur, ship, lo, hi, self.hashes),
                self.wide.groups(layout, ship, lo, hi, "range").get(0, Aggregate()))

    def time_aggregates(self, layout: ShipLayout, ship: str, lo: dt.datetime, hi: dt.datetime) -> tuple[dict, dict]:
        """(source, target) created_time -> Aggregate, exact, for a small range."""
        return (self.source.aggregates(self.src_cur, ship, lo, hi, "time", self.hashes),
                self.wide.groups(layout, ship, lo, hi, "time"))

    def bucket_rows(self, layout: ShipLayout, ship: str, source: dict, target: dict, lo: dt.datetime, hi: dt.datetime,
                    width: float) -> Iterator[BucketRow]:
        """A ``BucketRow`` per bucket of either side; a bucket the fast form finds different is
        checked again exactly (the fast form counts every duplicate)."""
        for bucket in sorted(set(source) | set(target)):
            s, t = source.get(bucket, Aggregate()), target.get(bucket, Aggregate())
            if s != t:
                s, t = self.range_aggregates(layout, ship, max(bucket, lo),
                                             min(bucket + dt.timedelta(seconds=width), hi))
            yield BucketRow(ship, bucket, s, t)

    def drill(self, layout: ShipLayout, ship: str, lo: dt.datetime, hi: dt.datetime, leaf_times: int, found: Drill) -> None:
        """Bisect [lo, hi) to the timestamps whose aggregates differ.

        A range one side has nothing of is recorded whole (every cell of it is missing or extra);
        a range of at most ``leaf_times`` timestamps is compared timestamp by timestamp.
        """
        source, target = self.range_aggregates(layout, ship, lo, hi)
        if source == target:
            return
        if source.times == 0 or target.times == 0:
            found.ranges.append((lo, hi, source, target))
            return
        if max(source.times, target.times) <= leaf_times or hi - lo <= dt.timedelta(microseconds=2):
            src_t, tgt_t = self.time_aggregates(layout, ship, lo, hi)
            found.times.extend(t for t in sorted(set(src_t) | set(tgt_t)) if src_t.get(t) != tgt_t.get(t))
            return
        mid = lo + (hi - lo) / 2
        self.drill(layout, ship, lo, mid, leaf_times, found)
        self.drill(layout, ship, mid, hi, leaf_times, found)

    def cell_differences(self, layout: ShipLayout, ship: str, times: list[dt.datetime]) -> list[CellDiff]:
        """The exact cells that differ at the given timestamps."""
        out: list[CellDiff] = []
        for at in times:
            has_source, source = self.source.cells_at(self.src_cur, ship, at)
            has_row, target = self.wide.row(layout, at) if layout is not None and layout.tables else (False, {})
            for ch in sorted(set(source) | set(target)):
                if ch not in target:
                    out.append(CellDiff(at, ch, "missing", source[ch], None))
                elif ch not in source:
                    out.append(CellDiff(at, ch, "extra", None, target[ch]))
                elif source[ch] != target[ch]:
                    out.append(CellDiff(at, ch, "different", source[ch], target[ch]))
            if not source and not target and has_source != has_row:
                # A timestamp whose readings are all NULL still has its (empty) wide row.
                out.append(CellDiff(at, None, "missing" if has_source else "extra"))
        return out


class BucketTask:
    """The per-partition function: ship ids in, ``BucketRow``s out.

    Holds both databases' connection parameters (resolved on the driver); its repr never shows them.
    A ship that fails is reported as such (an ``error`` row) and the task goes on with the next.
    """

    def __init__(self, config: Config, source: NarrowTable, target: WideTarget | None, src_params: dict,
                 tgt_params: dict, lo: dt.datetime, hi: dt.datetime, width_seconds: float, hashes: checksums.Hashes):
        self.config, self.source, self.target = config, source, target
        self._src, self._tgt = src_params, tgt_params
        self.lo, self.hi, self.width, self.hashes = lo, hi, width_seconds, hashes

    def __repr__(self) -> str:
        return "BucketTask()"

    def __call__(self, ships: Iterable[str]) -> Iterator[BucketRow]:
        src = db.open_session(self._src, autocommit=True)
        tgt = db.open_session(self._tgt, autocommit=True)
        try:
            with src.cursor() as sc, tgt.cursor() as tc:
                checksums.prepare_session(sc)
                checksums.prepare_session(tc)
                sides = Sides(self.source, sc, self.target.checksums(tc, self.hashes.flavour) if self.target else None,
                              self.hashes)
                for ship in ships:
                    rows: list[BucketRow] = []
                    with errors.one_ship(lambda err, s=ship, r=rows: r.append(BucketRow(s, error=errors.describe(err)))):
                        rows = list(self._ship(sides, tgt, ship))
                    yield from rows
        finally:
            src.close()
            tgt.close()

    def _ship(self, sides: Sides, tgt: connection, ship: str):
        rejected: dict = {}
        source = self.source.bucket_aggregates(sides.src_cur, ship, self.lo, self.hi, self.width, self.hashes,
                                               rejected)
        if self.lo == EARLIEST and self.hi == LATEST:
            rejected[None] = self.source.rows_without_time(sides.src_cur, ship)
        if any(rejected.values()):
            yield BucketRow(ship, rejected=sum(rejected.values()))
        if sides.wide is None:
            for bucket, s in sorted(source.items()):
                yield BucketRow(ship, bucket, s)
            return
        layout = load_layout(tgt, self.config.target.catalog_schema, ship)
        target = sides.wide.groups(layout, ship, self.lo, self.hi, "bucket", self.width)
        yield from sides.bucket_rows(layout, ship, source, target, self.lo, self.hi, self.width)


def _ship_errors(report: ShipReport):
    """Record a ship-level failure on the ship's report (the other ships go on)."""
    def record(err: BaseException) -> None:
        report.error = errors.describe(err)
        log.warning("ship %r: %s", report.ship_id, report.error)

    return errors.one_ship(record)


@contextlib.contextmanager
def _sessions(config: Config, source: NarrowTable, target: WideTarget, hashes: checksums.Hashes):
    """(target connection, both sides), in sessions prepared for the checksum queries."""
    with source.connect(autocommit=True) as src, \
            db.connection(config.target.connection, autocommit=True) as tgt, \
            src.cursor() as sc, tgt.cursor() as tc:
        checksums.prepare_session(sc)
        checksums.prepare_session(tc)
        yield tgt, Sides(source, sc, target.checksums(tc, hashes.flavour), hashes)


def with_target_side(config: Config, source: NarrowTable, target: WideTarget, hashes: checksums.Hashes,
                     rows: list[BucketRow], ship_ids: list[str], lo: dt.datetime, hi: dt.datetime,
                     width: float) -> list[BucketRow]:
    """Bucket rows with the target's side filled in on the driver, ship by ship."""
    sources: dict[str, dict] = {}
    out = [r for r in rows if r.bucket is None]
    for row in (r for r in rows if r.bucket is not None):
        sources.setdefault(row.ship_id, {})[row.bucket] = row.source
    failed = {r.ship_id for r in rows if r.error}
    with _sessions(config, source, target, hashes) as (tgt, sides):
        for ship in ship_ids:
            if ship in failed:
                continue
            with errors.one_ship(lambda err, s=ship: out.append(BucketRow(s, error=errors.describe(err)))):
                layout = load_layout(tgt, config.target.catalog_schema, ship)
                wide = sides.wide.groups(layout, ship, lo, hi, "bucket", width)
                out.extend(list(sides.bucket_rows(layout, ship, sources.get(ship, {}), wide, lo, hi, width)))
    return out


def list_ships(config: Config, source: NarrowTable, ships: list[str] | None) -> tuple[list[str], list[str]]:
    """(ships to check, rolled-back ships left out): the given ships, else those with narrow rows
    or wide tables."""
    from widen.catalog.layouts import laid_out_ships

    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        rolled_back = ship_states.ships_in_state(conn, cat, ship_states.ROLLED_BACK)
        found = set(ships) if ships else laid_out_ships(conn, cat)
    if not ships:
        with source.connect() as conn:
            found |= set(source.list_ships(conn))
    return sorted(found - rolled_back), sorted(found & rolled_back)


def repair_pieces(config: Config, source: NarrowTable, ship: str, found: Drill) -> list[tuple[list, list]]:
    """The repair's work as (timestamps, ranges) pieces of at most about
    ``reconcile.repair_rows_per_piece`` narrow rows each: differing timestamps in groups, whole
    missing/extra ranges cut at created_time boundaries."""
    budget = config.reconcile.repair_rows_per_piece
    with db.connection(config.target.connection) as conn:
        per_time = max(1, len(load_layout(conn, config.target.catalog_schema, ship).channels))
    group = max(1, budget // per_time)
    times = sorted(found.times)
    pieces: list[tuple[list, list]] = [(times[i:i + group], []) for i in range(0, len(times), group)]
    with source.connect() as src:
        for lo, hi, _, _ in found.ranges:
            pieces += [([], [piece]) for piece in source.range_pieces(src, ship, lo, hi, budget)]
    return pieces


def repair_ship(config: Config, source: NarrowTable, target: WideTarget, report: ShipReport) -> None:
    """Re-merge the ship's differing timestamps and ranges from the source, piece by piece: each
    piece's wide rows are deleted (so a cell the source no longer has goes) and the source's rows
    merged back, in one catalog transaction per piece under the ship's write lock (a target whose
    writes cannot join it commits them first; running the repair again finishes a cut-short one).
    With an order column the values replace, so the transaction also holds the ship's order lock,
    and the rows merged are read again under it: a newer duplicate the stream wrote between the
    first read and the lock is in them (a piece whose rows changed is prepared again with them)."""
    ship, cat = report.ship_id, config.target.catalog_schema
    in_order = config.source.order_column is not None
    for times, ranges in repair_pieces(config, source, ship, report.drill):
        with source.connect() as src:
            rows = source.ship_rows(src, ship, times, ranges)
        with db.connection(config.target.connection) as conn:
            for _ in range(MAX_REREADS + 1):
                layout = prepare_ship(conn, target, ship, batch_channels(rows), rows=rows)
                with conn.cursor() as cur:
                    if layout is None or not ship_states.lock_ship_for_write(cur, cat, ship):
                        log.warning("%s was rolled back while it was checked: not repaired", ship)
                        report.rolled_back = True
                        return
                    if in_order:
                        # values replace: the stream's writes of the ship wait from here to the
                        # commit, and the rows are read again under the lock (a piece is small)
                        ship_states.lock_ship_in_order(cur, ship)
                        with source.connect() as src:
                            now = source.ship_rows(src, ship, times, ranges)
                        if not same_rows(now, rows):
                            conn.rollback()
                            rows = now
                            continue
                    target.delete_rows(cur, layout, times, ranges)
                    if rows.num_rows:
                        wide, _ = kernels.pivot_rows(rows, layout, in_order)
                        target.merge_rows(cur, layout, wide, greatest=not in_order)
                conn.commit()
                break
            else:
                raise RuntimeError(f"{ship}: its source rows kept changing while a piece was repaired "
                                   f"({MAX_REREADS + 2} reads): not repaired, run reconcile --repair again")
    report.repaired = True


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Whether two reads of the same narrow rows (``source.ship_rows``, in no order) found the same."""
    if a.num_rows != b.num_rows:
        return False
    keys = [(name, "ascending") for name in ("created_time", "data_channel_id", "order_key", "value")]
    return a.sort_by(keys).equals(b.sort_by(keys))


@job(JOB, ReconcileOptions)
def run(config: Config, spark: SparkSession, options: ReconcileOptions) -> Result:
    began, started_at = time.monotonic(), dt.datetime.now(UTC)
    rc = config.reconcile
    lo, hi = options.start or EARLIEST, options.end or LATEST
    width = rc.bucket_hours * 3600.0
    source = open_table(config.source, JOB)
    with db.connection(config.target.connection) as conn:
        schema.migrate(conn, config.target.catalog_schema)
    ship_ids, rolled_back = list_ships(config, source, options.ships)
    for ship in rolled_back:
        log.info("ship %r is rolled back: not checked (resume --ships to migrate it again)", ship)
    spark = get_spark(config, spark)
    target = open_target(config.target, spark)
    reader_views(target, config, source)
    source_hashes = source.checksum_hashes()
    hashes = checksums.Hashes(next(h for h in target.checksum_hashes if h in source_hashes))
    task = BucketTask(config, source, target if target.checksums_in_tasks else None,
                      config.source.connection.psycopg_params(), config.target.connection.psycopg_params(),
                      lo, hi, width, hashes)
    log.info("%d ships, %g h buckets", len(ship_ids), rc.bucket_hours)
    rows = (spark.sparkContext.parallelize(ship_ids, max(1, min(len(ship_ids), rc.parallel_ships)))
            .mapPartitions(task).collect()) if ship_ids else []
    if not target.checksums_in_tasks:
        rows = with_target_side(config, source, target, hashes, rows, ship_ids, lo, hi, width)
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
    with source.connect() as src:
        rejects = source.reject_counts(src, ships_with_rejects) if ships_with_rejects else {}
        no_ship = source.rejects_without_ship(src) if not options.ships else {}
    for ship, report in reports.items():
        report.rejects = dict(rejects.get(ship, {}))
    _drill_down(config, source, target, hashes, reports, lo, hi, width)
    if options.repair:
        for report in reports.values():
            if report.mismatched and not report.error:
                with _ship_errors(report):
                    repair_ship(config, source, target, report)
                if report.repaired:
                    log.info("%s: repaired %d timestamps and %d ranges", report.ship_id, len(report.drill.times),
                             len(report.drill.ranges))
        # a ship rolled back between the check and its repair: its tables are gone on purpose
        rolled_back = sorted({*rolled_back, *(s for s, r in reports.items() if r.rolled_back)})
        reports = {s: r for s, r in reports.items() if not r.rolled_back}
        rows = [r for r in rows if r.ship_id in reports]
        _recheck(config, source, target, hashes, reports, lo, hi, width)
    run_id = dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    _record(config, run_id, rows, reports, width, (lo, min(hi, started_at)))
    _measure(reports, rolled_back)
    left = {s: len(r.mismatched) for s, r in reports.items() if r.mismatched}
    failed = {s: r.error for s, r in reports.items() if r.error}
    text = "\n".join([*(f"{s}: rolled back: not checked (resume --ships to migrate it again)" for s in rolled_back),
                      *filter(None, [format_report(reports, rc.max_reported_cells)])])
    if no_ship:
        text += f"\n(no ship_id): {sum(no_ship.values()):,} rejected rows"
    summary = {
        "run_id": run_id, "ships": len(reports), "ships_rolled_back": rolled_back, "buckets": len(rows),
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


def _drill_down(config: Config, source: NarrowTable, target: WideTarget, hashes: checksums.Hashes, reports: dict,
                lo: dt.datetime, hi: dt.datetime, width: float) -> None:
    with _sessions(config, source, target, hashes) as (tgt, sides):
        for report in reports.values():
            if not report.mismatched or report.error:
                continue
            with _ship_errors(report):
                _drill_ship(config, tgt, sides, report, lo, hi, width)


def _drill_ship(config: Config, tgt: connection, sides: Sides, report: ShipReport, lo: dt.datetime, hi: dt.datetime,
                width: float) -> None:
    rc = config.reconcile
    layout = load_layout(tgt, config.target.catalog_schema, report.ship_id)
    found = Drill()
    for bucket, _, _ in report.mismatched:
        sides.drill(layout, report.ship_id, max(bucket, lo), min(bucket + dt.timedelta(seconds=width), hi),
                    rc.leaf_times, found)
    report.drill = found
    report.found_buckets = len(report.mismatched)
    diffs = sides.cell_differences(layout, report.ship_id, found.times)
    for d in diffs:
        report.totals[d.kind] += 1
    for range_lo, range_hi, s, t in found.ranges:
        kind = "missing" if t.times == 0 else "extra"
        report.totals[kind] += max(s.cells, t.cells)
        diffs.append(CellDiff(range_lo, None, f"{kind} range to {range_hi.isoformat()}: "
                                              f"{max(s.times, t.times)} timestamps, {max(s.cells, t.cells)} cells"))
    report.diffs = diffs[: rc.max_reported_cells]


def _recheck(config: Config, source: NarrowTable, target: WideTarget, hashes: checksums.Hashes, reports: dict,
             lo: dt.datetime, hi: dt.datetime, width: float) -> None:
    with _sessions(config, source, target, hashes) as (tgt, sides):
        for report in reports.values():
            if not report.repaired or report.error:
                continue
            layout = load_layout(tgt, config.target.catalog_schema, report.ship_id)
            still = []
            for bucket, _, _ in report.mismatched:
                s, t = sides.range_aggregates(layout, report.ship_id, max(bucket, lo),
                                              min(bucket + dt.timedelta(seconds=width), hi))
                if s != t:
                    still.append((bucket, s, t))
            report.fixed = [b for b, _, _ in report.mismatched if b not in {x[0] for x in still}]
            report.mismatched = still


def _record(config: Config, run_id: str, rows: list[BucketRow], reports: dict, width: float,
            checked: tuple[dt.datetime, dt.datetime]) -> None:
    """The buckets' results and, in the same transaction, each ship's lifecycle: verified through
    the run's start (or --end) when nothing is left different, else no longer verified."""
    lo, hi = checked
    fixed = {(s, b) for s, r in reports.items() for b in r.fixed}
    left = {(s, b) for s, r in reports.items() for b, _, _ in r.mismatched}
    values = []
    for r in rows:
        key = (r.ship_id, r.bucket)
        status = "mismatch" if key in left else "repaired" if key in fixed else "match"
        values.append((run_id, r.ship_id, r.bucket, min(r.bucket + dt.timedelta(seconds=width), hi),
                       r.source.times, r.target.times, r.source.cells, r.target.cells, r.source.checksum,
                       r.target.checksum, status))
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        ledger.record_reconcile_results(cur, cat, values)
        for ship, report in sorted(reports.items()):
            result = "error" if report.error else "mismatch" if report.mismatched else \
                "repaired" if report.fixed else "clean"
            since = None if lo == EARLIEST else lo      # None: from the ship's first row
            clean = {"verified_at": lifecycle.NOW, "verified_from": since, "verified_through": hi} \
                if result in ("clean", "repaired") else {} if report.error else \
                {"verified_at": None, "verified_from": None, "verified_through": None}
            lifecycle.record(cur, cat, ship, JOB, {"run_id": run_id, "result": result, "buckets": report.buckets,
                                                   "mismatched_buckets": len(report.mismatched),
                                                   "through": hi},
                             last_reconcile_at=lifecycle.NOW, last_reconcile_from=since,
                             last_reconcile_through=hi, last_reconcile_result=result, **clean)
        conn.commit()


def _measure(reports: dict[str, ShipReport], rolled_back: Iterable[str] = ()) -> None:
    """The run's figures per ship as Prometheus metrics (``widen.metrics``); a rolled-back ship
    has ``ship_rolled_back`` 1, nothing left and nothing unchecked (alerts leave it alone, also
    when an older selection's group still says otherwise)."""
    m = metrics.current(JOB)
    checked = m.counter("buckets_checked", "ship x time buckets compared", ["ship"])
    found = m.counter("buckets_mismatched", "buckets that differed when compared (before any repair)", ["ship"])
    repaired = m.counter("buckets_repaired", "buckets --repair made match", ["ship"])
    left = m.gauge("buckets_left", "buckets still different at the end of the run", ["ship"])
    cells = m.counter("cells", "cells found missing (source only), extra (wide only) or different", ["ship", "kind"])
    unchecked = m.gauge("ship_unchecked", "1 when the ship could not be checked (the log says why)", ["ship"])
    rejected = m.gauge("rejected_rows", "the ship's narrow rows that are rejects, by reason", ["ship", "reason"])
    rolled = m.gauge("ship_rolled_back", "1 when the ship is rolled back, so not checked", ["ship"])
    for ship in rolled_back:
        rolled.labels(ship).set(1)
        left.labels(ship).set(0)
        unchecked.labels(ship).set(0)
    for ship, r in reports.items():
        checked.labels(ship).inc(r.buckets)
        found.labels(ship).inc(r.found_buckets)
        repaired.labels(ship).inc(len(r.fixed))
        left.labels(ship).set(len(r.mismatched))
        for kind, count in r.totals.items():
            cells.labels(ship, kind).inc(count)
        unchecked.labels(ship).set(1 if r.error else 0)
        rolled.labels(ship).set(0)
        for reason, count in r.rejects.items():
            rejected.labels(ship, reason).set(count)


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
