"""A Structured Streaming source for the narrow PostgreSQL table (Spark 4 Python data source API).

    spark.dataSource.register(NarrowStreamSource)
    spark.readStream.format("widen_narrow").options(**stream_options(config.source)).load()

(``widen.sources.postgres.PostgresSource.stream`` does this.)

Two offset modes:

- ``order_column`` set (a monotonically increasing ingestion id): the exact mode. An offset is the
  greatest id visible *and* the transactions running at that moment (the snapshot's in-progress
  list plus pg_locks: the list alone misses a transaction whose xid is above every completed
  one). Each pending transaction carries the offset id below which it has none (it was not
  running when that offset was taken), so reads stay index range scans from the lowest floor. The
  offset also records what a snapshot taken then saw of the rows from that floor to its id
  (``_with_snapshot``: the snapshot's xmin and the xmins at or after it of those rows). A batch
  reads the rows up to its end's id that its start's snapshot did not see and its end's did: a
  transaction that took a lower id but commits later is read by the batch after its commit, so a
  row whose transaction stays open is never skipped, and every row is read by exactly one batch
  (no re-reads, no de-duplication, no watermark: a backlog in any order drains whole). By the
  rows' own xmins, not the pending xids: a row written in a released savepoint carries the
  savepoint's xid, which neither the in-progress list nor pg_locks holds. A writer that holds an id
  but no xid yet (an INSERT between its nextval and its first row, ids taken ahead) holds a lock on
  the table or the sequence: no offset is taken while one exists (``_latest_id``). A new query
  started at ``latest`` also records the hand-off time ``t``: its first
  batch takes the rows present at the hand-off (ids up to the start) dated from ``t`` on, which a
  backfill ``--end t`` leaves out (a ship whose clock runs ahead, a row dated 2099); later offsets
  carry no ``t``, so each of those rows is read once, by that batch.
- created_time only: each micro-batch reads up to the newest row older than ``now - settle_seconds``
  and re-reads ``overlap_seconds`` before its start; the idempotent merge makes the overlap
  harmless. A row later than the overlap is left for reconciliation. (Needs an index on
  created_time to stay cheap.)

  Rows dated ahead (a ship whose clock runs ahead, a row dated 2099, one inside the settle window)
  do not wait for their time. An offset also records its snapshot (``_snapshot``): ``from`` (the
  server's ``now - settle_seconds``), the snapshot's xmin, and the xmins at or after it of the
  rows it sees dated from ``from`` on. A batch also reads the rows dated from its end and its end
  offset's ``from`` on that its start offset's snapshot did not see (``_unseen``: a second index
  range scan on created_time); older ones are the next batches' range. A row committed after the
  start offset was taken is either visible when the batch reads (after its end offset was taken)
  or unseen by the end offset's snapshot, so this batch or the next takes it. Row xmins, not the
  in-progress list: a row written in a savepoint has its subtransaction's xid, which no snapshot
  lists (nor ``pg_locks`` once the savepoint is released). With nothing settled since the start,
  ``latestOffset`` still moves on when such rows came in; under Trigger.AvailableNow every batch
  ends at the snapshot taken when the run started, so a run ends. An offset without a snapshot (a
  new query's first, or one an older widen wrote into a checkpoint) saw nothing: its batch takes
  every row dated ahead. A new query started at ``latest`` marks its first offset (``handoff``):
  its first batch always runs, so it takes the rows present then dated ahead (a backfill
  ``--end t`` leaves them out). A row read early is read again once its time has come
  (de-duplicated within the watermark, else merged again: harmless). Rows carry
  ``values.EVENT_TIME``, the job's watermark time: created_time, but no later than the last instant
  of the batch's range, so a reading from the future never moves the watermark past rows the next
  batches re-read (nor does a backlog drained in bounded batches become late).

Each micro-batch is split by ship (a hash of ship_id into ``buckets`` partitions), so all rows of a
ship and timestamp land in one partition. Values are rendered in SQL, exactly as the backfill does;
``reject`` is NULL for a valid row, else the text array of reason and raw row the backfill uses.
Offsets live in Spark's checkpoint; the reader opens its connections lazily in ``read()``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from widen.config import Connection, SourceConfig
from widen.core import values
from widen.sources.base import without_handoff_time

if TYPE_CHECKING:
    from psycopg2.extensions import cursor
    from psycopg2.sql import Composable
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)
NAME = "widen_narrow"
#: how long an offset look waits for writers that hold ids of the order column but no xid yet
UNSETTLED_WAIT_SECONDS = 2.0
SCHEMA = values.ROW_SPARK_SCHEMA
#: the created_time mode's rows also carry the time its watermark runs on
TIME_SCHEMA = f"{SCHEMA}, {values.EVENT_TIME} timestamp"
EPOCH_TEXT = "1970-01-01T00:00:00+00:00"


def stream_options(cfg: SourceConfig, **extra) -> dict[str, str]:
    """Options for ``readStream.format("widen_narrow")`` from a source config: the connection's
    settings (never its password: the reader reads it from the variable or file, as every session
    does) and the table."""
    conn = dataclasses.asdict(cfg.connection)
    options = {"connection": json.dumps(conn), "schema": cfg.schema, "table": cfg.table,
               "order_column": cfg.order_column or ""}
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
        return SCHEMA if self.options.get("order_column") else TIME_SCHEMA

    def streamReader(self, schema: StructType) -> NarrowStreamReader:
        return NarrowStreamReader(dict(self.options))


class NarrowStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets, admission control (``max_rows_per_batch``: a backlog drains in bounded batches) and
    Trigger.AvailableNow (``--once``: everything there at the start, in such batches, then stop)."""

    def __init__(self, options: dict[str, str]):
        # Spark lower-cases option keys.
        self.options = options
        self.order_column = options.get("order_column") or None
        self.buckets = int(options.get("buckets", "2"))
        self.settle = float(options.get("settle_seconds", "2"))
        self.overlap = float(options.get("overlap_seconds", "60"))
        self.start = options.get("start") or "earliest"
        self.start_wait = float(options.get("start_wait_seconds", "60"))
        self.max_rows = int(options.get("max_rows_per_batch", "0")) or None
        #: the type of the narrow table's double_v (float8 or float4), for the rendering
        self.double_type = options.get("double_type") or "float8"
        #: with Trigger.AvailableNow: the offset no batch goes beyond (set when the query starts)
        self.target: dict | None = None

    # -- connections ------------------------------------------------------------------------------
    def _connect(self):
        from widen.pg import db

        params = Connection(**json.loads(self.options["connection"])).psycopg_params()
        return db.open_session({**params, "application_name": "widen-stream"}, autocommit=True)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[cursor]:
        """A cursor of a new autocommit session, closed with it."""
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def _table(self):
        from psycopg2 import sql

        return sql.Identifier(self.options["schema"], self.options["table"])

    # -- offsets ----------------------------------------------------------------------------------
    def initialOffset(self) -> dict:
        """Where a new query starts (kept in the checkpoint from then on).

        ``earliest``: the first row. ``latest``: the live tail, for the hand-off with the backfill
        (docs/operating.md, "Hand-off"): in the exact mode the greatest id once every transaction in flight at
        that moment has ended, so their rows are the backfill's, not lost between the two, and the
        hand-off time ``t`` (the first batch also reads the rows up to that id dated from ``t`` on);
        in the created_time mode ``now - settle_seconds``. Or an explicit id / ISO timestamp.
        """
        if self.options.get("start_offset"):
            return json.loads(self.options["start_offset"])      # taken by the job (stream.initial_offset)
        start = self.start.strip().lower()
        if self.order_column:
            if start == "earliest":
                return {"id": -1, "pending": []}
            if start == "latest":
                return self._latest_settled()
            try:
                return {"id": int(start), "pending": []}
            except ValueError:
                raise ValueError(f"stream.start: expected earliest, latest or an id of "
                                 f"{self.order_column}, got {self.start!r}") from None
        if start == "earliest":
            return {"t": EPOCH_TEXT}
        if start == "latest":
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT now() - %s * interval '1 second'", (self.settle,))
                    return {"t": cur.fetchone()[0].isoformat(), "handoff": True}
            finally:
                conn.close()
        try:
            moment = dt.datetime.fromisoformat(self.start)
        except ValueError:
            raise ValueError(f"stream.start: expected earliest, latest or an ISO timestamp, "
                             f"got {self.start!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return {"t": moment.isoformat()}

    def _latest_settled(self) -> dict:
        """The live tail's first offset in the exact mode.

        Look once (greatest id M1, transactions running); wait until those transactions end (the
        backfill, which runs after this, reads their rows); look again. Transactions running at
        the second look that were not running at the first began after it, so every id they take
        is above M1: they become ``pending`` with that floor, as in ``latestOffset``.
        """
        import time

        deadline = time.monotonic() + self.start_wait

        def look(start: dict) -> dict:       # writers holding ids without an xid: waited for too
            while True:
                try:
                    return self._look(start)
                except UnsettledWriter as err:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"stream.start latest: {err}; retry when they end, or start "
                                           "from an explicit id") from None

        first = look({"id": -1, "pending": []})
        running = [xid for xid, _ in first["pending"]]
        while True:
            second = look({"id": first["id"], "pending": []})
            still = sorted(set(running) & {xid for xid, _ in second["pending"]})
            if not still:
                return {**self._with_snapshot(second), "t": self._now()}
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"stream.start latest: transactions {', '.join(map(str, still))} are still open "
                    f"after {self.start_wait:g} s; their rows could fall between the backfill and the "
                    "stream. Retry when they end, or start from an explicit id.")
            time.sleep(0.2)

    def _now(self) -> str:
        with self._cursor() as cur:
            cur.execute("SELECT now()")
            return cur.fetchone()[0].isoformat()

    def _with_snapshot(self, offset: dict, cur: cursor | None = None) -> dict:
        """``offset`` (exact mode) with what a snapshot taken now sees of its rows, for the batch
        starting there to tell the rows committed since (``_unseen_ids``): ``xmin``, the snapshot's
        (every transaction it does not see is at or after it), and ``seen``, the xmins at or after
        that of the rows above the offset's lowest floor (``_lowest``) up to its id. Transaction ids
        modulo 2^32.

        By the rows' own xmins, not the in-progress list: a row written in a released savepoint
        of a transaction still open has its subtransaction's xid, which neither the snapshot's
        list nor pg_locks holds. Taken after the offset's look (a later snapshot sees at least as
        much; every row it sees at or below the id is the batch ending here's)."""
        from psycopg2 import sql

        if cur is None:
            with self._cursor() as own:
                return self._with_snapshot(offset, own)
        rows = sql.SQL("n.{o} > %s AND n.{o} <= %s").format(o=sql.Identifier(self.order_column))
        cur.execute(self._seen_statement(cur, rows), (_lowest(offset), offset["id"]))
        floor, seen = cur.fetchone()
        return {**offset, "snapshot": {"xmin": int(floor), "seen": [int(x) for x in seen]}}

    def _seen_statement(self, cur: cursor, rows: Composable, since: Composable | None = None) -> Composable:
        """One statement, so one snapshot: its xmin (modulo 2^32) and the distinct xmins at or after
        it of the rows ``rows`` picks (table alias ``n``), in order; first ``since``, evaluated in
        the same snapshot (``rows`` may name it ``s.since``), when given."""
        from psycopg2 import sql

        from widen.pg.server import Server

        return sql.SQL(
            "WITH s AS (SELECT {since}{xmin} %% 4294967296 AS floor) "
            "SELECT s.*, ARRAY(SELECT DISTINCT n.xmin::text::bigint FROM {t} n WHERE {rows} AND {after} ORDER BY 1) "
            "FROM s").format(
            since=sql.SQL("{} AS since, ").format(since) if since is not None else sql.SQL(""),
            xmin=Server.of(cur.connection).snapshot_xmin(), t=self._table(), rows=rows,
            after=_xid_at_or_after("n.xmin", "s.floor"))

    def _look(self, start: dict) -> dict:
        with self._cursor() as cur:
            return self._latest_id(cur, start)

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        """Everything committed now is what this run reads (in bounded batches); nothing newer."""
        from psycopg2 import sql

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                if self.order_column:
                    cur.execute(sql.SQL("SELECT max({}) FROM {}").format(
                        sql.Identifier(self.order_column), self._table()))
                    self.target = {"id": cur.fetchone()[0]}
                else:
                    # every batch of the run ends at this snapshot: rows committed later dated
                    # ahead are the next run's
                    snapshot = self._snapshot(cur)
                    self.target = {"t": snapshot["from"], "snapshot": snapshot}
        finally:
            conn.close()

    def latestOffset(self, start: dict, limit: ReadLimit | None = None) -> dict:
        """Where the next micro-batch ends: everything visible and settled, capped by the
        AvailableNow target, and by ``ReadMaxRows``: an index probe finds the offset about that
        many rows on (a backlog of hours becomes many bounded batches, never one huge one)."""
        from psycopg2 import sql

        max_rows = getattr(limit, "max_rows", None)
        if self.order_column and "t" in start:
            # the first batch after the hand-off: it also holds the rows present then dated from
            # ``t`` on, so it ends at an offset without ``t`` even when no new row came
            return without_handoff_time(self.latestOffset(without_handoff_time(start), limit))
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                if self.order_column:
                    try:
                        latest = self._latest_id(cur, start)
                    except UnsettledWriter as err:
                        log.warning("%s; the offset stays where it is until the next trigger", err)
                        return start
                    bound = latest["id"]
                    if self.target is not None:     # an empty table at the run's start: nothing past the start
                        bound = min(bound, max(self.target["id"], start["id"]) if self.target["id"] is not None
                                    else start["id"])
                    if max_rows and bound > start["id"]:
                        cur.execute(sql.SQL("SELECT max(o) FROM (SELECT {o} AS o FROM {t} WHERE {o} > %s AND {o} <= %s "
                                            "ORDER BY {o} LIMIT %s) first_rows").format(
                            o=sql.Identifier(self.order_column), t=self._table()), (start["id"], bound, max_rows))
                        bound = cur.fetchone()[0] or bound
                    # Transactions in flight now may still add rows at or below the bound: they stay
                    # pending (read when they commit), as with an unbounded offset.
                    offset = {"id": int(bound), "pending": latest["pending"], "look": latest.get("look", latest["id"])}
                    if offset["id"] == start["id"] and _none_finished(start, offset):
                        # Nothing to read: rows at or below the id can come only from the start's
                        # pending transactions with a floor below it. The others (and ones begun
                        # since, not running at the start's look: a later offset gives them that
                        # floor) take ids above it. Else with live writers the pending list changed
                        # at every look, and `stream --once`, its ids capped, never ended.
                        return start
                    return self._with_snapshot(offset, cur)
                return self._latest_time(cur, start, max_rows)
        finally:
            conn.close()

    def _latest_time(self, cur: cursor, start: dict, max_rows: int | None) -> dict:
        """The created_time mode's next offset: the newest settled row's time and the snapshot.

        It advances to the newest settled row (so an idle table gives no new batch), or, with
        nothing settled since the start, to the same time with a new snapshot when rows dated
        ahead were committed since the start's snapshot (the batch takes them). The first batch
        after the hand-off (``handoff``) always runs: it takes the rows present then dated ahead.
        """
        from psycopg2 import sql

        snapshot = self.target["snapshot"] if self.target else self._snapshot(cur)
        cap = sql.SQL(" AND created_time <= %s") if self.target else sql.SQL("")
        cur.execute(sql.SQL("SELECT max(created_time) FROM {} WHERE created_time >= %s AND "
                            "created_time <= now() - %s * interval '1 second'{}").format(
            self._table(), cap), (start["t"], self.settle, *([self.target["t"]] if self.target else [])))
        newest = cur.fetchone()[0]
        if newest is None:
            if "handoff" not in start and (start.get("snapshot") == snapshot
                                           or not self._written_ahead(cur, start, snapshot)):
                return start
            return {"t": start["t"], "snapshot": snapshot}
        end = newest + dt.timedelta(microseconds=1)
        if max_rows:
            end = self._time_bound(cur, start, end, max_rows)
        return {"t": end.isoformat(), "snapshot": snapshot}

    def _snapshot(self, cur: cursor) -> dict:
        """What an offset records of the server's transactions, for the batch starting there to tell
        the rows committed since (``_unseen``), in one statement (one snapshot): ``from``, the time
        ``now - settle_seconds`` (a batch ending there looks for rows dated ahead from it on: older
        ones are the next batches' range); ``xmin``, the snapshot's (every transaction it does not
        see is at or after it); ``seen``, the xmins at or after that of the rows it sees dated from
        ``from`` on. Transaction ids modulo 2^32: a row's xmin has 32 bits.

        Not the snapshot's xmax and in-progress list: a row written in a savepoint has its
        subtransaction's xid, which no snapshot lists, nor ``pg_locks`` once the savepoint is
        released, and which is below xmax once a later transaction has ended.
        """
        from psycopg2 import sql

        cur.execute(self._seen_statement(cur, sql.SQL("n.created_time >= s.since"),
                                         since=sql.SQL("now() - %s * interval '1 second'")), (self.settle,))
        since, floor, seen = cur.fetchone()
        return {"from": since.isoformat(), "xmin": int(floor), "seen": [int(x) for x in seen]}

    def _written_ahead(self, cur: cursor, start: dict, snapshot: dict) -> bool:
        """Whether a batch from ``start`` to an offset with ``snapshot`` (and the start's time)
        would take rows dated ahead: committed since the start's snapshot, dated from the new
        one's ``from`` on."""
        from psycopg2 import sql

        unseen, params = _unseen(start)
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE created_time >= %s AND {})").format(
            self._table(), unseen), [max(_time(start["t"]), _time(snapshot["from"])), *params])
        return bool(cur.fetchone()[0])

    def _time_bound(self, cur: cursor, start: dict, end: dt.datetime, max_rows: int) -> dt.datetime:
        """The created_time before which about ``max_rows`` rows lie (exclusive): the time of the
        row that many on, or the next instant when one instant alone holds more."""
        from psycopg2 import sql

        cur.execute(sql.SQL("SELECT created_time FROM {} WHERE created_time >= %s AND created_time < %s "
                            "ORDER BY created_time OFFSET %s LIMIT 1").format(self._table()),
                    (start["t"], end, max_rows))
        row = cur.fetchone()
        if row is None:
            return end
        cut = row[0]
        if _utc(cut) <= _time(start["t"]):
            cur.execute(sql.SQL("SELECT min(created_time) FROM {} WHERE created_time > %s AND created_time < %s")
                        .format(self._table()), (start["t"], end))
            cut = cur.fetchone()[0] or end
        return cut

    def _latest_id(self, cur: cursor, start: dict) -> dict:
        """The greatest visible id and, from the same snapshot, the transactions still in flight.

        ``pending`` holds [xid, floor] pairs: the transaction has no id at or below ``floor`` (it
        was not yet running when the offset ``floor`` was taken, so every id it took is above it).

        A writer may hold an id before it has an xid: an INSERT evaluates its ``nextval`` default
        before its first row takes the xid, and an application may take ids with ``nextval`` and
        insert them later. Such a transaction is in neither list, and an offset taken then would
        pass its row. Each holds a RowExclusiveLock on the table (an INSERT, from its parse on) or
        on the order column's sequence (``nextval``): while one without an xid exists, the look is
        taken again (up to ``UNSETTLED_WAIT_SECONDS``); after that ``UnsettledWriter``: the offset
        does not move (``latestOffset`` tries again at the next trigger). The table's lock counts
        only while its statement runs: a session idle in its transaction after a DELETE or UPDATE
        that matched nothing (or a LOCK TABLE) holds it too, but can no longer write a row without
        first taking an xid; the sequence's lock counts always (ids taken ahead, inserted later).
        """
        import time

        from psycopg2 import sql

        from widen.pg.server import Server

        # One read of pg_locks (a CTE used twice is evaluated once), after the snapshot was taken:
        # running transactions (the snapshot's in-progress list misses those with an xid at or
        # above its xmax; every transaction holds the lock on its own xid), and writers without an
        # xid yet.
        statement = sql.SQL(
            "WITH l AS (SELECT * FROM pg_locks WHERE granted), "
            "xids AS (SELECT virtualtransaction, transactionid::text::bigint AS x FROM l "
            "WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock') "
            "SELECT coalesce(max({o}), %(start)s), ARRAY(SELECT x FROM ("
            "SELECT x::text::bigint %% 4294967296 AS x FROM {xip} AS x UNION SELECT x FROM xids) r ORDER BY 1), "
            "ARRAY(SELECT DISTINCT pid FROM l WHERE locktype = 'relation' AND mode = 'RowExclusiveLock' "
            "AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND virtualtransaction NOT IN (SELECT virtualtransaction FROM xids) "
            "AND (relation = pg_get_serial_sequence(%(table)s, %(column)s)::regclass "
            "OR relation = %(table)s::regclass AND pid IN (SELECT pid FROM pg_stat_activity WHERE state = 'active'))) "
            "FROM {t} WHERE {o} > %(start)s").format(
            o=sql.Identifier(self.order_column), t=self._table(), xip=Server.of(cur.connection).snapshot_xip())
        params = {"start": start["id"], "table": self._table().as_string(cur), "column": self.order_column}
        deadline = time.monotonic() + UNSETTLED_WAIT_SECONDS
        while True:
            cur.execute(statement, params)
            latest, running, unsettled = cur.fetchone()
            if not unsettled:
                break
            if time.monotonic() > deadline:
                raise UnsettledWriter(unsettled, self.order_column)
            time.sleep(0.01)
        # A transaction not running at the start's look took every id after it: above the greatest
        # id visible then (``look``: a bounded offset's id is below it, an older widen's offsets
        # have only their id). So during a drain in bounded batches the live writers' floors stay
        # at the head, and an offset's range of rows to tell seen from unseen stays empty.
        floors = {xid: floor for xid, floor in start["pending"]}
        pending = [[int(x), floors.get(int(x), start.get("look", start["id"]))] for x in sorted(running)]
        if latest == start["id"] and pending == start["pending"]:
            return start
        return {"id": int(latest), "pending": pending, "look": int(latest)}

    def partitions(self, start: dict, end: dict) -> list[BucketPartition]:
        if start == end:
            return []
        return [BucketPartition(start, end, b, self.buckets) for b in range(self.buckets)]

    # -- data -------------------------------------------------------------------------------------
    def read(self, partition: BucketPartition) -> Iterator:  # type: ignore[override] # Spark hands back ours
        import pyarrow as pa
        import pyarrow.compute as pc
        from psycopg2 import sql

        from widen.pg import render
        from widen.pg.server import Server

        raw = sql.SQL("CASE WHEN {r} IS NOT NULL THEN {a} END").format(r=render.reject_reason(), a=render.raw_reject())
        bucket = sql.SQL("(hashtext(coalesce(ship_id, '')) & 2147483647) %% %s = %s")
        if self.order_column:
            order = sql.Identifier(self.order_column)
            # Each row is read by exactly one batch: the first whose end offset's snapshot saw it.
            # So: the rows up to the end's id that the start's snapshot did not see and the end's
            # did (``_unseen_ids``); rows at or below the start's lowest floor were all visible
            # when it was taken, so the range starts there and the scan stays on the order
            # column's index. No re-read of an inserted row, so the stream needs no de-duplication
            # (and no watermark); a row UPDATEd above the lowest floor is read again (new xmin).
            unseen_at_start, start_params = _unseen_ids(partition.start, order)
            unseen_at_end, end_params = _unseen_ids(partition.end, order)
            where = sql.SQL("{o} > %s AND {o} <= %s AND {a} AND NOT {b} AND ").format(
                o=order, a=unseen_at_start, b=unseen_at_end) + bucket
            params = [_lowest(partition.start), partition.end["id"], *start_params, *end_params,
                      partition.buckets, partition.bucket]
            if "t" in partition.start:
                # the first batch after the hand-off: also the rows present then (ids up to the
                # start that its snapshot saw) dated from the hand-off time on
                where = sql.SQL("(({w}) OR ({o} <= %s AND created_time >= %s AND NOT {a} AND ").format(
                    w=where, o=order, a=unseen_at_start) + bucket + sql.SQL("))")
                params += [partition.start["id"], partition.start["t"], *start_params,
                           partition.buckets, partition.bucket]
            wheres = [where]
            order_key = order
            event_cap = None
        else:
            # The created_time range [start - overlap, end), and the rows dated ahead (from the end
            # and the end offset's now - settle_seconds on: earlier ones are the next batches'
            # range) committed since the start offset's snapshot, which would else wait for their
            # time. Two index range scans on created_time; a row is in at most one of them.
            end = _time(partition.end["t"])
            lo = _time(partition.start["t"]) - dt.timedelta(seconds=self.overlap)
            unseen, seen_params = _unseen(partition.start)
            # (an end offset an older widen wrote has no snapshot: every row dated from its end on)
            ahead = max(end, _time(partition.end["snapshot"]["from"])) if "snapshot" in partition.end else end
            wheres = [sql.SQL("created_time >= %s AND created_time < %s AND ") + bucket,
                      sql.SQL("created_time >= %s AND {} AND ").format(unseen) + bucket]
            params = [lo, end, partition.buckets, partition.bucket,
                      ahead, *seen_params, partition.buckets, partition.bucket]
            order_key = sql.SQL("NULL::bigint")
            # The watermark's time: created_time, but a row dated ahead counts as the batch's last
            # instant, so it never moves the watermark past rows the next batches still re-read.
            event_cap = pa.scalar(end - dt.timedelta(microseconds=1), type=pa.timestamp("us", tz="UTC"))
        from widen.core.kernels import ROW_SCHEMA

        names, types = ROW_SCHEMA.names, ROW_SCHEMA.types
        created = names.index("created_time")
        conn = self._connect()
        try:
            value = render.rendered_value(None, Server.of(conn), self.double_type)
            query = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT ship_id, data_channel_id, created_time, {v}, {raw}, {ok}, value_format FROM {t} "
                        "WHERE {w}").format(v=value, raw=raw, ok=order_key, t=self._table(), w=where)
                for where in wheres)
            conn.autocommit = False
            with conn.cursor(name="widen_stream_read") as cur:
                cur.itersize = 20_000
                cur.execute(query, params)
                while rows := cur.fetchmany(20_000):
                    columns = [pa.array(col, type=kind) for col, kind in zip(zip(*rows), types)]
                    if event_cap is None:
                        yield pa.RecordBatch.from_arrays(columns, names=names)
                    else:             # (min_element_wise has no kernel for zoned timestamps)
                        times = columns[created]
                        yield pa.RecordBatch.from_arrays(
                            [*columns, pc.if_else(pc.less(times, event_cap), times, event_cap)],
                            names=[*names, values.EVENT_TIME])
        finally:
            conn.close()


def _time(text: str) -> dt.datetime:
    """An offset's time, zoned: a ``timestamp`` (without time zone) created_time gives naive
    times, read as UTC (every session runs with TimeZone UTC), so they compare with ``now()``'s."""
    return _utc(dt.datetime.fromisoformat(text))


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _xid_at_or_after(xid: str, floor: str) -> Composable:
    """``xid`` (a column, as xid) follows or equals ``floor`` (a bigint expression modulo 2^32) in
    PostgreSQL's circular order of 32-bit transaction ids: unfrozen xids lie within 2^31 of each
    other; a reserved one (below 3: 9.3 writes 2 into a frozen row) never follows. From 9.4 a
    frozen row keeps its raw xmin, which may be from 2^31 or more transactions ago and look recent:
    such a row within an offset's range counts as seen (``seen`` holds its xmin; it was), at the
    price of a longer list."""
    from psycopg2 import sql

    return sql.SQL("({x}::text::bigint >= 3 AND (({x}::text::bigint - {f}) & 4294967295) < 2147483648)").format(
        x=sql.SQL(xid), f=sql.SQL(floor))


def _none_finished(start: dict, end: dict) -> bool:
    """Whether every transaction pending at ``start`` that may hold an id at or below its id (its
    floor is below it) is still pending at ``end``."""
    return {xid for xid, floor in start["pending"] if floor < start["id"]} <= {xid for xid, _ in end["pending"]}


def _lowest(offset: dict) -> int:
    """The exact mode's lowest id a transaction in flight at ``offset`` may hold: the least of its
    id and its pending transactions' floors. Every row at or below it was visible then."""
    return min([offset["id"], *(floor for _, floor in offset["pending"])])


def _unseen_ids(offset: dict, order: Composable) -> tuple[Composable, list]:
    """The exact mode's condition for the rows ``offset``'s snapshot (``_with_snapshot``) did not
    see, with its parameters: an id above the offset's, or one above its lowest (``_lowest``)
    with an xmin at or after the snapshot's that is not one of the xmins it saw. An offset without
    a snapshot (``earliest``, an explicit id, one an older widen wrote) tells them by its pending
    transactions' xids."""
    from psycopg2 import sql

    snapshot = offset.get("snapshot")
    if snapshot is None:
        return (sql.SQL("({o} > %s OR xmin::text::bigint = ANY(%s))").format(o=order),
                [offset["id"], [x for x, _ in offset["pending"]]])
    unseen, params = _unseen(offset)
    return (sql.SQL("({o} > %s OR {o} > %s AND {unseen})").format(o=order, unseen=unseen),
            [offset["id"], _lowest(offset), *params])


def _unseen(offset: dict) -> tuple[Composable, list]:
    """A condition for the rows the offset's ``snapshot`` (``_snapshot``) did not see, with its
    parameters: xmin at or after the snapshot's xmin and not one of the xmins it saw. A superset
    (a row it saw dated before its ``now - settle_seconds`` counts as unseen): a row read early is
    read again and merged again, harmlessly. An offset without a snapshot (the hand-off's,
    ``earliest``, a timestamp, or one an older widen wrote) saw none: every row counts."""
    from psycopg2 import sql

    snapshot = offset.get("snapshot")
    if snapshot is None:
        return sql.SQL("true"), []
    return (_xid_at_or_after("xmin", "%s") + sql.SQL(" AND NOT (xmin::text::bigint = ANY(%s))"),
            [snapshot["xmin"], snapshot["seen"]])


class UnsettledWriter(RuntimeError):
    """Transactions hold ids of the order column they may still write, without an xid yet."""

    def __init__(self, pids: list[int], column: str | None):
        super().__init__(f"transactions (pid {', '.join(map(str, sorted(pids)))}) hold ids of {column} without "
                         f"having written them for over {UNSETTLED_WAIT_SECONDS:g} s: an offset now could pass "
                         "their rows")
        self.pids = pids


def initial_offset(options: dict[str, str]) -> dict:
    """The offset a new query starts from, computed here so the job can log it (and pass it on)."""
    return NarrowStreamReader({k.lower(): v for k, v in options.items()}).initialOffset()
