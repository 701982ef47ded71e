"""The stream's foreachBatch sink: one micro-batch, one transaction, recorded in ``stream_batches``.

A micro-batch is bounded (``stream.max_rows_per_batch``), so it is gathered on the driver as Arrow
and written from there. New ships' tables and new channels' columns are made first, each ship in a
short DDL transaction of its own (``targets.prepare_ship``). Then one transaction writes the
rejects, every ship (de-duplicated and pivoted by the production kernel, merged column-wise by the
target, each ship under a savepoint and its write lock: a rolled-back ship is left alone, a ship
that fails is rolled back alone and recorded in ``stream_failures``) and the ``stream_batches`` row.
With an order column each ship's write also holds its order lock to the commit (Delta's commits
included), so it never falls between a backfill chunk's or a repair's check of its read and merge.
A batch already in the ledger is skipped, so a replayed one changes nothing.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc

from widen import errors
from widen.catalog import ledger, lifecycle, schema, ships
from widen.config import Config
from widen.core import kernels
from widen.core.layout import ShipLayout
from widen.pg import db
from widen.sources import open_source
from widen.targets import WideTarget, open_target, prepare_ship, typed_check_columns
from widen.targets.views import configure as reader_views

if TYPE_CHECKING:
    from psycopg2.extensions import cursor
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
#: what the stream's rows are labelled with in ``rejects.job``
REJECTS_JOB = "stream"


@dataclass
class BatchResult:
    batch_id: int
    skipped: bool
    narrow_rows: int = 0
    wide_rows: int = 0
    ships: int = 0
    rejected_rows: int = 0
    duplicate_rows: int = 0
    newest_created_time: dt.datetime | None = None
    #: ship -> why its rows of this batch were not written (recorded in ``stream_failures``)
    failed: dict = field(default_factory=dict)
    #: rolled-back ship -> narrow rows of this batch left alone
    skipped_ships: dict = field(default_factory=dict)
    #: source.mode cdc: WAL the slot keeps on the source after this batch (bytes)
    retained_wal_bytes: int | None = None

    @property
    def failed_rows(self) -> int:
        return sum(f["rows"] for f in self.failed.values())

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped_ships.values())


class _SinkState:
    """What the sink keeps between micro-batches in the driver: one connection, and the layouts
    of ships already written (a layout only grows, so a batch whose channels all have columns
    needs no catalog work)."""

    def __init__(self):
        self.conn = None
        self.layouts: dict[str, ShipLayout] = {}

    def connection(self, config: Config):
        if self.conn is None or self.conn.closed:
            self.conn = db.connect(config.target.connection)
            schema.migrate(self.conn, config.target.catalog_schema)
        return self.conn

    def reset(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.layouts.clear()


_STATES: dict[tuple, _SinkState] = {}


def _state(config: Config) -> _SinkState:
    key = (config.target.connection.describe(), config.target.catalog_schema, config.target.schema)
    return _STATES.setdefault(key, _SinkState())


def write_batch(config: Config, table: pa.Table, batch_id: int, query_name: str,
                spark: SparkSession | None = None) -> BatchResult:
    """Write one micro-batch (columns of ``values.ROW_COLUMNS``) exactly once.

    A failure (a dropped table under a cached layout, a lost connection) resets the sink's state
    and the batch is tried once more from the start; its transaction never half-commits. ``spark``
    reaches a target that needs it (Delta: the batch id is each table's ``txnVersion``).
    """
    from pyspark.errors import AnalysisException

    state = _state(config)
    target = open_target(config.target, spark)
    reader_views(target, config, open_source(config.source))
    try:
        result = _write_batch(state, config, target, table, batch_id, query_name, trust_cache=True)
    except (psycopg2.Error, KeyError, AnalysisException):
        state.reset()
        result = _write_batch(state, config, target, table, batch_id, query_name)
    if config.source.mode == "cdc":
        result.retained_wal_bytes = slot_retained_wal(config, query_name)
    return result


def slot_retained_wal(config: Config, query_name: str) -> int | None:
    """WAL the query's slot keeps on the source, with a warning above ``stream.slot_wal_warn_bytes``
    (never fails the batch: it is a measurement)."""
    from widen.sources import postgres_cdc

    slot, _ = postgres_cdc.slot_names(config)
    try:
        with db.connection(config.source.connection) as conn:
            retained = postgres_cdc.retained_wal_bytes(conn, slot)
    except (psycopg2.Error, ConnectionError) as err:
        log.warning("could not measure the WAL slot %s keeps: %s", slot, errors.describe(err))
        return None
    if retained is not None and retained > config.stream.slot_wal_warn_bytes:
        log.warning("replication slot %s keeps %s MB of WAL on the source (stream.slot_wal_warn_bytes %s MB): "
                    "the stream is behind or was stopped; a slot left behind fills the source's disk (stream "
                    "--drop-slot removes it; max_slot_wal_keep_size bounds it)", slot, f"{retained >> 20:,}",
                    f"{config.stream.slot_wal_warn_bytes >> 20:,}")
    return retained


def _write_batch(state: _SinkState, config: Config, target: WideTarget, table: pa.Table, batch_id: int,
                 query_name: str, trust_cache: bool = False) -> BatchResult:
    """``trust_cache``: a table or column missing under a layout from the cache (dropped since,
    e.g. the wide schema dropped and made again) is raised, so ``write_batch`` starts over from the
    catalog, instead of being that ship's failure."""
    cat = config.target.catalog_schema
    conn = state.connection(config)
    if ledger.in_ledger(conn, cat, query_name, batch_id):
        return BatchResult(batch_id, skipped=True)          # a replay: checked again under the lock below
    table, recompute = split_changes(table)
    is_reject = pc.is_valid(table.column("reject"))
    valid = table.filter(pc.invert(is_reject))
    fresh = current_rows(config, recompute)
    by_ship = {ship: valid.filter(pc.equal(valid.column("ship_id"), ship))
               for ship in sorted(set(pc.unique(valid.column("ship_id")).to_pylist()) | set(fresh))}
    layouts: dict[str, ShipLayout | None] = {}
    failures: dict[str, BaseException] = {}
    for ship in [s for s in by_ship if s in fresh and not by_ship[s].num_rows and not fresh[s][1].num_rows]:
        if not target.layouts.load(conn, ship).tables:   # deletes of a ship with no wide table: nothing to do
            del by_ship[ship]
    conn.rollback()
    cached = set(state.layouts) if trust_cache else set()
    for ship, rows in by_ship.items():
        channels = batch_channels(rows) + (batch_channels(fresh[ship][1]) if ship in fresh else [])
        def unprepared(err: BaseException, ship: str = ship) -> None:
            conn.rollback()
            failures[ship] = err

        with errors.one_ship(unprepared):
            values = pa.concat_tables([typed_check_columns(rows)]
                                      + ([typed_check_columns(fresh[ship][1])] if ship in fresh else []),
                                      promote_options="default")
            layouts[ship] = prepare_ship(conn, target, ship, channels, state.layouts, values)
    greatest = config.source.order_column is None   # the greatest value wins, also across batches
    try:
        with conn.cursor() as cur:
            ledger.lock_query(cur, query_name)
            if ledger.in_ledger(conn, cat, query_name, batch_id, end_transaction=False):
                conn.rollback()
                return BatchResult(batch_id, skipped=True)
            rejected = ledger.write_rejects(cur, cat, table.filter(is_reject), batch_id, job=REJECTS_JOB)
            result = BatchResult(batch_id, False, narrow_rows=table.num_rows, rejected_rows=rejected)
            written: list[str] = []
            for i, (ship, rows) in enumerate(by_ship.items()):
                # what a failure names: the rows and the timestamps to recompute
                named = pa.concat_tables([rows.select(["created_time"]), fresh[ship][2].select(["created_time"])]) \
                    if ship in fresh else rows
                if ship in failures:
                    result.failed[ship] = record_ship_failure(cur, cat, query_name, batch_id, ship, named,
                                                              failures[ship])
                    continue
                def own_failure(err: BaseException, ship: str = ship) -> bool:
                    # a table or column a cached layout named is gone: the batch fails and its replay
                    # loads the layouts afresh, rather than recording the ship as failed
                    return errors.is_ship_level(err) and not (ship in cached and isinstance(
                        err, (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn)))

                def unwritten(err: BaseException, ship: str = ship, named: pa.Table = named) -> None:
                    cur.execute("ROLLBACK TO SAVEPOINT widen_ship")
                    state.layouts.pop(ship, None)
                    result.failed[ship] = record_ship_failure(cur, cat, query_name, batch_id, ship, named, err)

                cur.execute("SAVEPOINT widen_ship")
                done = False
                with errors.one_ship(unwritten, own_failure):
                    if layouts[ship] is None or not ships.lock_ship_for_write(cur, cat, ship):
                        cur.execute("RELEASE SAVEPOINT widen_ship")
                        state.layouts.pop(ship, None)
                        result.skipped_ships[ship] = rows.num_rows
                        log.info("batch %s: ship %r is rolled back: %s narrow rows skipped (resume it to "
                                 "migrate it again)", batch_id, ship, rows.num_rows)
                        continue
                    if config.source.order_column is not None:
                        # a value replaces: a backfill chunk or repair of the ship that read older
                        # rows merges before this (having checked its read) or after the commit
                        ships.lock_ship_in_order(cur, ship)
                    wide, duplicates = kernels.pivot_rows(rows, layouts[ship], config.source.order_column is not None)
                    if rows.num_rows:
                        target.merge_rows(cur, layouts[ship], wide, greatest,
                                          (delta_stream_app_id(query_name), batch_id), i)
                    if ship in fresh:       # updated or deleted: those timestamps again, from the source
                        times, current, _ = fresh[ship]
                        target.delete_rows(cur, layouts[ship], times, [])
                        if current.num_rows:   # its own staging tables (index past every ship's)
                            again, _ = kernels.pivot_rows(current, layouts[ship], config.source.order_column is not None)
                            target.merge_rows(cur, layouts[ship], again, greatest, None, len(by_ship) + i)
                    cur.execute("RELEASE SAVEPOINT widen_ship")
                    done = True
                if not done:
                    continue
                result.wide_rows += wide.num_rows
                result.duplicate_rows += duplicates
                written.append(ship)
            lifecycle.record_streamed(cur, cat, written, query_name, batch_id)
            result.ships = len(by_ship)
            # new readings only, and none dated in the future (a ship whose clock runs ahead would
            # make the lag negative and hide every other ship's): a deleted future-dated row is no freshness
            times = valid.column("created_time")
            due = times.filter(pc.less_equal(times, pa.scalar(dt.datetime.now(dt.UTC), type=times.type)))
            newest = pc.max(due).as_py() if len(due) else None
            if newest is not None:
                result.newest_created_time = newest if newest.tzinfo else newest.replace(tzinfo=dt.UTC)
            ledger.record_batch(cur, cat, query_name, batch_id, result.narrow_rows, result.wide_rows, result.ships,
                                result.newest_created_time)
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    return result


def split_changes(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A change-capture batch (``postgres_cdc``: a ``change`` column) as (the rows to write: inserts
    and the rejected new rows of updates; the ``recompute`` rows: ship and created_time of updated
    or deleted rows). Any other batch: (itself, no rows)."""
    if "change" not in table.column_names:
        return table, table.slice(0, 0)
    change = table.column("change")
    recompute = pc.fill_null(pc.equal(change, "recompute"), False)
    rejected_update = pc.and_(pc.fill_null(pc.equal(change, "update"), False), pc.is_valid(table.column("reject")))
    rows = table.filter(pc.or_(pc.is_null(change), rejected_update)).drop_columns(["change"])
    return rows, table.filter(recompute).drop_columns(["change"])


def current_rows(config: Config, recompute: pa.Table) -> dict[str, tuple[list, pa.Table, pa.Table]]:
    """Per ship with updated or deleted rows: (their timestamps, the narrow table's valid rows at
    those timestamps now, the recompute rows), read from the source before the batch's
    transaction."""
    if not recompute.num_rows:
        return {}
    source = open_source(config.source)
    out = {}
    with source.connect() as src:
        for ship in sorted(pc.unique(recompute.column("ship_id")).to_pylist()):
            keys = recompute.filter(pc.equal(recompute.column("ship_id"), ship))
            times = sorted(set(keys.column("created_time").to_pylist()))
            out[ship] = (times, source.ship_rows(src, ship, times, []), keys)
    return out


def record_ship_failure(cur: cursor, catalog_schema: str, query_name: str, batch_id: int, ship: str, rows: pa.Table,
                        err: BaseException) -> dict:
    """A ship whose rows of a micro-batch could not be written: why, how many, and the time range
    ``reconcile --repair --ships <ship> --start <first> --end <last>`` brings them in from."""
    first = pc.min(rows.column("created_time")).as_py()
    last = pc.max(rows.column("created_time")).as_py()
    failure = {"rows": rows.num_rows, "first": first, "last": last, "error": errors.describe(err)}
    log.warning("batch %s: ship %r not written (%s narrow rows, %s .. %s): %s; the batch goes on without it "
                "(reconcile --repair brings the rows in)", batch_id, ship, rows.num_rows, first, last,
                failure["error"])
    ledger.record_stream_failure(cur, catalog_schema, query_name, batch_id, ship, rows.num_rows, first, last,
                                 failure["error"])
    return failure


def delta_stream_app_id(query_name: str) -> str:
    """The Delta ``txnAppId`` of a stream query's micro-batches (their ``txnVersion``: the batch id)."""
    return f"widen-stream:{query_name}"


def batch_channels(rows: pa.Table) -> list[str]:
    return pc.unique(rows.column("data_channel_id")).to_pylist()
