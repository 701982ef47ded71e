"""The stream's foreachBatch sink: one micro-batch, one transaction, recorded in ``stream_batches``.

A micro-batch is a minute or so of readings, so it is gathered on the driver as Arrow and written
from there: per ship, new tables and columns are added, the rows are de-duplicated and pivoted by
the backfill's kernels and merged column-wise (a few timestamps in one parameterised upsert, more
through COPY into temporary staging and the backfill's MERGE); rejected rows go to ``rejects``; the
batch id goes into
``stream_batches``. All of it in one transaction, so a batch already in the ledger is skipped and a
replayed one changes nothing.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql

from widen import catalog, db, errors, kernels, sinks
from widen.config import Config

JOB = "stream"
log = logging.getLogger(__name__)
#: wide rows per ship up to which a batch is upserted directly rather than COPYed to staging
DIRECT_ROWS = 500


@dataclass
class BatchResult:
    batch_id: int
    skipped: bool
    narrow_rows: int = 0
    wide_rows: int = 0
    ships: int = 0
    rejected_rows: int = 0
    duplicate_rows: int = 0
    newest_created_time: "dt.datetime | None" = None
    #: ship -> why its rows of this batch were not written (recorded in ``stream_failures``)
    failed: dict = field(default_factory=dict)
    #: rolled-back ship -> narrow rows of this batch left alone
    skipped_ships: dict = field(default_factory=dict)

    @property
    def skipped_rows(self) -> int:
        return sum(self.skipped_ships.values())

    @property
    def failed_rows(self) -> int:
        return sum(f["rows"] for f in self.failed.values())


class _SinkState:
    """What the sink keeps between micro-batches in the driver: one connection, and the layouts
    of ships already written (a layout only grows, so a batch whose channels all have columns
    needs no catalog work; a new channel reloads it under the layout lock)."""

    def __init__(self):
        self.conn = None
        self.layouts: dict[str, catalog.ShipLayout] = {}

    def connection(self, config: Config):
        if self.conn is None or self.conn.closed:
            self.conn = db.connect(config.target.connection)
            catalog.ensure_catalog(self.conn, config.target.catalog_schema)
        return self.conn

    def reset(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.layouts.clear()


_STATES: dict[tuple, _SinkState] = {}


def fresh_state() -> _SinkState:
    """A sink state of its own (no cached layouts) for a one-off write such as a repair."""
    return _SinkState()


def _state(config: Config) -> _SinkState:
    key = (config.target.connection.describe(), config.target.catalog_schema, config.target.schema)
    return _STATES.setdefault(key, _SinkState())


def write_batch(config: Config, table: pa.Table, batch_id: int, query_name: str, spark=None) -> BatchResult:
    """Write one micro-batch (columns of ``widen.stream_source.SCHEMA``) exactly once.

    A failure (a dropped table under a cached layout, a lost connection) resets the sink's state
    and the batch is tried once more from the start; its transaction never half-commits. A Delta
    target (``spark`` given) is written by ``widen.delta_sink`` with the batch id as each table's
    ``txnVersion``, then the ledger row commits.
    """
    from pyspark.errors import AnalysisException

    state = _state(config)
    try:
        return _write_batch(state, config, table, batch_id, query_name, spark)
    except (psycopg2.Error, KeyError, AnalysisException):
        state.reset()
        return _write_batch(state, config, table, batch_id, query_name, spark)


def _in_ledger(conn, catalog_schema: str, query_name: str, batch_id: int, commit: bool = True) -> bool:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE query_name = %s AND batch_id = %s").format(
            sql.Identifier(catalog_schema, "stream_batches")), (query_name, batch_id))
        found = cur.fetchone() is not None
    if commit:
        conn.rollback()
    return found


def _write_batch(state: _SinkState, config: Config, table: pa.Table, batch_id: int,
                 query_name: str, spark=None) -> BatchResult:
    cat = config.target.catalog_schema
    conn = state.connection(config)
    if _in_ledger(conn, cat, query_name, batch_id):
        return BatchResult(batch_id, skipped=True)          # a replay: checked again under the lock below
    is_reject = pc.is_valid(table.column("reject"))
    valid = table.filter(pc.invert(is_reject))
    by_ship = {ship: valid.filter(pc.equal(valid.column("ship_id"), ship))
               for ship in sorted(pc.unique(valid.column("ship_id")).to_pylist())}
    # Tables and columns first, each ship in a short DDL transaction of its own, so no reader ever
    # waits behind the batch's transaction; a ship whose DDL fails is recorded below.
    layouts: dict[str, catalog.ShipLayout | None] = {}
    failures: dict[str, BaseException] = {}
    for ship, rows in by_ship.items():
        try:
            layouts[ship] = prepare_ship(conn, spark, config, state, ship, batch_channels(rows))
        except Exception as err:  # noqa: BLE001 - classified: only a ship's own failure is kept
            if not errors.is_ship_level(err):
                raise
            conn.rollback()
            failures[ship] = err
    try:
        with conn.cursor() as cur:
            # One writer per query at a time; the ledger check below then decides.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.stream'), hashtext(%s))", (query_name,))
            if _in_ledger(conn, cat, query_name, batch_id, commit=False):
                conn.rollback()
                return BatchResult(batch_id, skipped=True)
            rejected = write_rejects(cur, cat, table.filter(is_reject), batch_id)
            result = BatchResult(batch_id, False, narrow_rows=table.num_rows, rejected_rows=rejected)
            for i, (ship, rows) in enumerate(by_ship.items()):
                if ship in failures:
                    result.failed[ship] = record_ship_failure(cur, cat, query_name, batch_id, ship, rows,
                                                              failures[ship])
                    continue
                # One ship's failure is rolled back alone and recorded; the others go on.
                cur.execute("SAVEPOINT widen_ship")
                try:
                    if layouts[ship] is None or not catalog.lock_ship_for_write(cur, cat, ship):
                        cur.execute("RELEASE SAVEPOINT widen_ship")
                        state.layouts.pop(ship, None)
                        result.skipped_ships[ship] = rows.num_rows
                        log.info("batch %s: ship %r is rolled back: %s narrow rows skipped (resume it to "
                                 "migrate it again)", batch_id, ship, rows.num_rows)
                        continue
                    if config.target.is_delta:
                        txn = (delta_stream_app_id(query_name), batch_id)
                        wide, duplicates = _merge_ship_delta(spark, config, layouts[ship], rows, txn)
                    else:
                        wide, duplicates = merge_ship_rows(conn, cur, config, layouts[ship], rows, i)
                    cur.execute("RELEASE SAVEPOINT widen_ship")
                except Exception as err:  # noqa: BLE001 - classified: only a ship's own failure is kept
                    if not errors.is_ship_level(err):
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT widen_ship")
                    state.layouts.pop(ship, None)
                    result.failed[ship] = record_ship_failure(cur, cat, query_name, batch_id, ship, rows, err)
                    continue
                result.wide_rows += wide
                result.duplicate_rows += duplicates
            result.ships = len(by_ship)
            if valid.num_rows:
                newest = pc.max(valid.column("created_time")).as_py()
                result.newest_created_time = newest if newest.tzinfo else newest.replace(tzinfo=dt.timezone.utc)
            cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, narrow_rows, wide_rows, ships, "
                                "newest_created_time) VALUES (%s, %s, %s, %s, %s, %s)").format(
                sql.Identifier(cat, "stream_batches")),
                        (query_name, batch_id, result.narrow_rows, result.wide_rows, result.ships,
                         result.newest_created_time))
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    return result


def record_ship_failure(cur, catalog_schema: str, query_name: str, batch_id: int, ship: str, rows: pa.Table,
                        err: BaseException) -> dict:
    """A ship whose rows of a micro-batch could not be written: why, how many, and the time range
    ``reconcile --repair --ships <ship> --start <first> --end <last>`` brings them in from."""
    first = pc.min(rows.column("created_time")).as_py()
    last = pc.max(rows.column("created_time")).as_py()
    failure = {"rows": rows.num_rows, "first": first, "last": last, "error": errors.describe(err)}
    log.warning("batch %s: ship %r not written (%s narrow rows, %s .. %s): %s; the batch goes on without it "
                "(reconcile --repair brings the rows in)", batch_id, ship, rows.num_rows, first, last,
                failure["error"])
    cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, ship_id, narrow_rows, first_created_time, "
                        "last_created_time, error) VALUES (%s, %s, %s, %s, %s, %s, %s)").format(
        sql.Identifier(catalog_schema, "stream_failures")),
        (query_name, batch_id, ship, rows.num_rows, first, last, failure["error"]))
    return failure


def prepare_ship(conn, spark, config: Config, state: _SinkState, ship: str,
                 channels: list[str]) -> catalog.ShipLayout | None:
    """The ship's layout with a column for every channel in ``channels``: catalog rows, tables and
    columns made in a DDL transaction of its own (``db.run_ddl``) when needed. None when the ship
    is rolled back (nothing is made for it)."""
    layout = state.layouts.get(ship)
    if layout is not None and all(c in layout.channels for c in channels):
        return layout
    tgt_cfg = config.target

    def ddl(cur) -> catalog.ShipLayout | None:
        if not catalog.lock_ship_for_write(cur, tgt_cfg.catalog_schema, ship):
            return None
        grown = catalog.extend_layout(conn, tgt_cfg, ship, {c: (None, None) for c in channels})
        if tgt_cfg.is_delta:
            from widen import delta_sink

            delta_sink.DeltaTarget(spark, tgt_cfg).ensure_tables(grown)
        else:
            catalog.ensure_wide_tables(conn, tgt_cfg.schema, grown)
        return grown

    def tables():
        known = catalog.load_layout(conn, tgt_cfg.catalog_schema, ship).tables.values()
        return [(tgt_cfg.schema, t) for t in known]

    layout = db.run_ddl(conn, tgt_cfg, ddl, tables, f"ship {ship!r}: tables and columns")
    if layout is not None:
        state.layouts[ship] = layout
    return layout


def delta_stream_app_id(query_name: str) -> str:
    return f"widen-stream:{query_name}"


def _merge_ship_delta(spark, config: Config, layout: catalog.ShipLayout, rows: pa.Table,
                      txn: tuple[str, int] | None) -> tuple[int, int]:
    from widen import delta_sink

    target = delta_sink.DeltaTarget(spark, config.target)
    wide, duplicates = pivot_rows(rows, layout, config.source.order_column is not None)
    delta_sink.merge_wide(target, layout, wide, greatest=config.source.order_column is None, txn=txn)
    return wide.num_rows, duplicates


def merge_ship_rows_delta(spark, config: Config, layout: catalog.ShipLayout, rows: pa.Table) -> tuple[int, int]:
    """One ship's valid narrow rows merged into its Delta tables (each part its own commit). (Repair.)"""
    return _merge_ship_delta(spark, config, layout, rows, None)


def merge_ship_rows(conn, cur, config: Config, layout: catalog.ShipLayout, rows: pa.Table,
                    index: int = 0) -> tuple[int, int]:
    """Merge one ship's valid narrow rows (``SCHEMA`` columns) into its tables inside the caller's
    transaction: duplicates resolved, pivoted, written column-wise. Every channel of ``rows`` must
    have its column already (``prepare_ship``); no DDL runs here."""
    tgt_cfg = config.target
    wide, duplicates = pivot_rows(rows, layout, config.source.order_column is not None)
    times = kernels.timestamp_text(wide.times)
    greatest = config.source.order_column is None   # the greatest value wins, also across batches
    for part in layout.parts:
        present = [(c.column_name, col) for c, col in present_columns(layout, wide, part)]
        target = sql.Identifier(tgt_cfg.schema, layout.tables[part])
        names = [name for name, _ in present]
        if wide.num_rows <= DIRECT_ROWS:
            # A few timestamps: one parameterised upsert beats staging + COPY + merge (measured:
            # 100 ships x 200 channels a batch, 2.6 s -> see BENCHMARKS.md).
            values = list(zip(times.to_pylist(), *(col.to_pylist() for _, col in present)))
            db.execute_values(cur, sinks.upsert_statement(target, names, None, greatest), values,
                              page_size=len(values))
            continue
        # Named per ship and part and dropped at commit: no DROP round trip per ship.
        staging = sql.Identifier(f"widen_stream_{index}_p{part}")
        cols = [sql.SQL("{} text").format(sql.Identifier(name)) for name in names]
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (created_time timestamptz{}{}) ON COMMIT DROP").format(
            staging, sql.SQL(", ") if cols else sql.SQL(""), sql.SQL(", ").join(cols)))
        sinks.copy_into(cur, staging, [times, *(col for _, col in present)])
        cur.execute(sinks.merge_statement(conn.server_version, target, staging, names, greatest=greatest))
    return wide.num_rows, duplicates


def batch_channels(rows: pa.Table) -> list[str]:
    return pc.unique(rows.column("data_channel_id")).to_pylist()


def pivot_rows(rows: pa.Table, layout: catalog.ShipLayout, has_order_key: bool) -> tuple[kernels.Pivoted, int]:
    """One ship's valid narrow rows (``SCHEMA`` columns) de-duplicated and pivoted: a column per
    channel of the layout, part by part in ``part_channels`` order; and the duplicate count."""
    order = [c.data_channel_id for part in layout.parts for c in layout.part_channels(part)]
    codes = pc.index_in(rows.column("data_channel_id"), value_set=pa.array(order, pa.string()))
    coded = pa.table({"created_time": pc.cast(rows.column("created_time"), pa.timestamp("us", tz="UTC")),
                      "channel": codes, "value": rows.column("value"),
                      **({"order_key": rows.column("order_key")} if has_order_key else {})})
    return kernels.dedup_and_pivot(coded, len(order), has_order_key)


def present_columns(layout: catalog.ShipLayout, wide: kernels.Pivoted,
                    part: int) -> list[tuple[catalog.ChannelColumn, pa.Array]]:
    """The part's channels that have a value in ``wide`` (an all-NULL column would change nothing)."""
    first = sum(len(layout.part_channels(p)) for p in layout.parts if p < part)
    members = layout.part_channels(part)
    columns = wide.columns[first:first + len(members)]
    return [(c, col) for c, col in zip(members, columns) if col.null_count < wide.num_rows]


def write_rejects(cur, catalog_schema: str, rejects: pa.Table, batch_id: int | str, job: str = JOB) -> int:
    """Rejected rows with their raw values (the text array the source query built)."""
    if not rejects.num_rows:
        return 0
    rows = list(zip(rejects.column("ship_id").to_pylist(), rejects.column("created_time").to_pylist(),
                    rejects.column("reject").to_pylist()))
    db.execute_values(cur, sql.SQL(
        "INSERT INTO {r} (ship_id, data_channel_id, created_time, reason, value_format, double_v, long_v, "
        "str_v, bool_v, job, batch) SELECT v.ship_id, a[2], v.created_time::timestamptz, a[1], a[3], "
        "a[4]::double precision, a[5]::bigint, a[6], a[7]::boolean, {job}, {batch} "
        "FROM (VALUES %s) AS v(ship_id, created_time, raw) CROSS JOIN LATERAL (SELECT v.raw::text[] AS a) r"
    ).format(r=sql.Identifier(catalog_schema, "rejects"), job=sql.Literal(job),
             batch=sql.Literal(str(batch_id))), rows)
    return len(rows)
