"""Cut-over with a live stream and a writer: reader views, gates, the switch and the way back.

plan makes a reader view per ship (an exact pivot of the narrow rows); the stream starts at the
tail while a writer inserts readings stamped now(); the backfill takes the history. status says
where each ship is; ``cutover --dry-run`` lists the gates. A tampered wide cell makes the reconcile
gate refuse its ship while the other is switched; after ``reconcile --repair`` it is switched too,
while a reader holds the view in an open transaction and another keeps querying it (neither is
blocked for longer than the lock timeout). The views return what the narrow pivot returned before
the switch, row by row, and keep returning new rows; a new channel appears as a new last column;
``--undo`` and ``rollback`` switch back; a stopped stream fails the lag gate. Every comparison is
with an SQL pivot written here (``oracle``), never with widen's own.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import replace

import oracle
import psycopg2
from psycopg2 import sql

from widen.jobs import backfill, cutover, plan, reconcile, rollback, status, stream

NAME = "cutover"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
SHIP_A, SHIP_B = "ship A", "船 'b' 100%"
NEW_CHANNEL = "new/chan 'x' 50%"


def view_of(cur, ship: str) -> tuple[sql.Identifier, str, list[str]]:
    return oracle.reader_view(cur, CAT, ship)


def oracle_pivot(cur, ship: str, columns: list[str]) -> sql.Composable:
    """The test's own pivot of the ship's narrow rows (last ingest_id wins), with the view's columns
    (which channel each column shows: the catalog's record, kept through a rollback)."""
    cur.execute(sql.SQL("SELECT column_name, data_channel_id FROM {} WHERE ship_id = %s").format(
        sql.Identifier(CAT, "reader_view_columns")), (ship,))
    channel = dict(cur.fetchall())
    cells = [sql.SQL("max(CASE WHEN data_channel_id = {} THEN {} END) AS {}").format(
        sql.Literal(channel[c]), oracle.RENDER, sql.Identifier(c)) for c in columns[1:]]
    return sql.SQL("SELECT created_time, {} FROM {} WHERE ship_id = {} AND {} GROUP BY created_time").format(
        sql.SQL(", ").join(cells), oracle.narrow_rows(SRC, "ingest_id"), sql.Literal(ship), oracle.VALID)


def differing_rows(cur, ship: str, before: dt.datetime) -> int:
    """Rows of the view and of the oracle pivot before ``before`` that the other lacks."""
    view, _, columns = view_of(cur, ship)
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    mine = sql.SQL("SELECT {} FROM {} WHERE created_time < {}").format(cols, view, sql.Literal(before))
    theirs = sql.SQL("SELECT {} FROM ({}) o WHERE created_time < {}").format(
        cols, oracle_pivot(cur, ship, columns), sql.Literal(before))
    cur.execute(sql.SQL("SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b}) x) + (SELECT count(*) FROM ({b} EXCEPT ALL "
                        "{a}) y)").format(a=mine, b=theirs))
    return cur.fetchone()[0]


def rows_before(cur, ship: str, before: dt.datetime) -> list[tuple]:
    view, _, _ = view_of(cur, ship)
    # a literal, not a parameter: the view's name holds a '%'
    cur.execute(sql.SQL("SELECT * FROM {} WHERE created_time < {} ORDER BY created_time").format(
        view, sql.Literal(before)))
    return cur.fetchall()


class Writer(threading.Thread):
    """Inserts one reading per channel per ship every 0.2 s, stamped now(), until stopped."""

    def __init__(self, pg_server: dict, channels: list[str]):
        super().__init__(daemon=True)
        self.pg_server, self.channels, self.stop = pg_server, channels, threading.Event()
        self.n = 0

    def run(self) -> None:
        conn = psycopg2.connect(host=self.pg_server["host"], port=self.pg_server["port"],
                                user=self.pg_server["user"], dbname=self.pg_server["database"])
        conn.autocommit = True
        try:
            while not self.stop.is_set():
                self.n += 1
                with conn.cursor() as cur:
                    for ship in (SHIP_A, SHIP_B):
                        for i, channel in enumerate(list(self.channels)):
                            cur.execute(sql.SQL(
                                "INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v, "
                                "str_v) VALUES (%s, %s, now(), %s, %s, %s)").format(
                                sql.Identifier(SRC, "tbl_data_timeseries")),
                                (ship, channel, "Decimal" if i % 2 == 0 else "String", self.n / 3,
                                 f"w{self.n}"))
                time.sleep(0.2)
        finally:
            conn.close()


def wait_until_streamed(run, pg, moment: dt.datetime, deadline: float = 60) -> None:
    """The stream has written rows newer than ``moment`` (deadline-bounded)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        # not processAllAvailable(): with a writer inserting all the time it may never return
        assert run.query.isActive, run.query.exception()
        with pg.cursor() as cur:
            cur.execute(sql.SQL("SELECT max(newest_created_time) FROM {}").format(
                sql.Identifier(CAT, "stream_batches")))
            newest = cur.fetchone()[0]
        if newest is not None and newest > moment:
            return
        time.sleep(0.2)
    raise AssertionError(f"the stream wrote nothing after {moment} in {deadline} s")


def test_cutover_journey(fresh_fleet, make_config, spark, pg, pg_server, tmp_path):
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)
    fresh_fleet(NAME, ship_list=[SHIP_A, SHIP_B], channels=6, hours=1.5, start=start, cadence_seconds=60,
                ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id", target__lock_timeout_seconds=0.5,
                         cutover__max_lag_seconds=30, cutover__max_verify_age_seconds=0)
    config = replace(config, stream=replace(config.stream, query_name=NAME, checkpoint=str(tmp_path / "cp"),
                                            start="latest", trigger_seconds=0.2, settle_seconds=0.5))
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT data_channel_id FROM {} ORDER BY 1 LIMIT 3").format(
            sql.Identifier(SRC, "tbl_data_timeseries")))
        channels = [r[0] for r in cur.fetchall()]

    # plan: every ship has a view, an exact pivot of its narrow rows
    assert plan.run(config, spark).exit_code == 0
    with pg.cursor() as cur:
        for ship in (SHIP_A, SHIP_B):
            _, reads, columns = view_of(cur, ship)
            assert reads == "narrow" and columns[0] == "created_time" and len(columns) == 7
            assert differing_rows(cur, ship, dt.datetime.now(dt.UTC)) == 0

    run = stream.start(config, spark)
    writer = Writer(pg_server, channels)
    try:
        writer.start()
        wait_until_streamed(run, pg, dt.datetime.now(dt.UTC))
        assert backfill.run(config, spark).exit_code == 0     # after the stream's hand-off
        wait_until_streamed(run, pg, dt.datetime.now(dt.UTC))
        result = status.run(config)
        states = {r["ship_id"]: r["state"] for r in result.summary["ship_status"]}
        assert states == {SHIP_A: "live", SHIP_B: "live"}, result.report

        # dry run: the gates, with figures; the stale verification is what cutover would fix
        dry = cutover.run(config, spark, ships=[SHIP_A, SHIP_B], dry_run=True)
        assert dry.exit_code == 0, dry.report
        assert dry.summary["would_switch"] == sorted([SHIP_A, SHIP_B]) and dry.summary["switched"] == []
        for gates in dry.summary["gates"].values():
            assert [(g["gate"], g["ok"], g["stale"]) for g in gates] == [
                ("backfilled", True, False), ("stream lag", True, False), ("reconciled", False, True)]
        assert "the stream's hand-off" in dry.report

        # a tampered wide cell: ship B is refused by the reconcile gate, ship A is switched
        with pg.cursor() as cur:
            cur.execute(sql.SQL("SELECT table_name, column_name FROM {} WHERE ship_id = %s LIMIT 1").format(
                sql.Identifier(CAT, "channel_columns")), (SHIP_B,))
            table, column = cur.fetchone()
            cur.execute(sql.SQL("UPDATE {t} SET {c} = 'tampered' WHERE created_time = (SELECT min(created_time) "
                                "FROM {t})").format(t=sql.Identifier(TGT, table), c=sql.Identifier(column)))
            before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
            seen = {ship: rows_before(cur, ship, before) for ship in (SHIP_A, SHIP_B)}
            for ship in (SHIP_A, SHIP_B):
                assert differing_rows(cur, ship, before) == 0     # the narrow view is exact, now too
        first = cutover.run(config, spark, ships=[SHIP_A, SHIP_B])
        assert first.exit_code == 1, first.report
        assert first.summary["switched"] == [SHIP_A] and list(first.summary["refused"]) == [SHIP_B]
        assert "reconciled: the last reconcile" in first.summary["refused"][SHIP_B][0]
        with pg.cursor() as cur:
            assert view_of(cur, SHIP_A)[1] == "wide" and view_of(cur, SHIP_B)[1] == "narrow"

        # repaired, then switched while one reader holds the view open and another keeps reading
        settled = wait_streamed_time(pg) - dt.timedelta(seconds=config.stream.settle_seconds)
        assert reconcile.run(config, spark, ships=[SHIP_B], repair=True, end=settled).exit_code == 0
        held = replace(config, cutover=replace(config.cutover, max_verify_age_seconds=3600))
        latencies = switch_under_readers(held, spark, pg_server, pg)
        assert max(latencies) < 0.5 + 0.5, latencies      # lock timeout per try + slack
        wait_until_streamed(run, pg, dt.datetime.now(dt.UTC))
        with pg.cursor() as cur:
            for ship in (SHIP_A, SHIP_B):
                assert view_of(cur, ship)[1] == "wide"
                assert rows_before(cur, ship, before) == seen[ship], ship      # row by row, as before
            switched_at = dt.datetime.now(dt.UTC)

        # new rows keep coming through the views; a new channel appears as the last column
        writer.channels.append(NEW_CHANNEL)
        time.sleep(1.0)
        wait_until_streamed(run, pg, dt.datetime.now(dt.UTC))
        with pg.cursor() as cur:
            for ship in (SHIP_A, SHIP_B):
                view, _, columns = view_of(cur, ship)
                assert columns[-1] == NEW_CHANNEL and len(columns) == 8, columns
                cur.execute(sql.SQL("SELECT count(*), count({}) FROM {} WHERE created_time > {}").format(
                    sql.Identifier(NEW_CHANNEL), view, sql.Literal(switched_at)))
                newer, with_new = cur.fetchone()
                assert newer > 0 and with_new > 0
            newest = wait_streamed_time(pg)
            for ship in (SHIP_A, SHIP_B):
                assert differing_rows(cur, ship, newest) == 0, ship

        # the way back: --undo, then the same rows from the narrow view
        undo = cutover.run(config, spark, ships=[SHIP_A, SHIP_B], undo=True)
        assert undo.exit_code == 0 and undo.summary["switched"] == sorted([SHIP_A, SHIP_B]), undo.report
        with pg.cursor() as cur:
            for ship in (SHIP_A, SHIP_B):
                assert view_of(cur, ship)[1] == "narrow"
                assert same_rows(rows_before(cur, ship, before), seen[ship])
                assert differing_rows(cur, ship, dt.datetime.now(dt.UTC)) == 0
        result = status.run(config)
        assert {r["state"] for r in result.summary["ship_status"]} == {"verified"}, result.report

        # rows the stream could not write after the last clean reconcile make its proof stale
        with pg.cursor() as cur:
            cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, ship_id, narrow_rows, failed_at) "
                                "VALUES (%s, 0, %s, 1, now())").format(sql.Identifier(CAT, "stream_failures")),
                        (NAME, SHIP_B))
        dry = cutover.run(config, spark, ships=[SHIP_B], dry_run=True)
        gate = {g["gate"]: g for g in dry.summary["gates"][SHIP_B]}["reconciled"]
        assert gate["stale"] and "could not write" in gate["detail"], dry.report

        # a switched ship rolled back: its view goes back to the narrow table with its tables
        assert cutover.run(held, spark, ships=[SHIP_A]).exit_code == 0
        assert rollback.run(config, spark, ships=[SHIP_A]).exit_code == 0
        with pg.cursor() as cur:
            assert view_of(cur, SHIP_A)[1] == "narrow"
            assert differing_rows(cur, SHIP_A, dt.datetime.now(dt.UTC)) == 0
    finally:
        writer.stop.set()
        writer.join(10)
        run.query.stop()
    run.finish()

    # a stopped stream fails the lag gate
    time.sleep(1.5)
    stale = replace(held, cutover=replace(held.cutover, max_lag_seconds=1))
    refused = cutover.run(stale, spark, ships=[SHIP_B])
    assert refused.exit_code == 1 and "stream lag" in refused.summary["refused"][SHIP_B][0], refused.report
    with pg.cursor() as cur:
        assert view_of(cur, SHIP_B)[1] == "narrow"


def same_rows(now: list[tuple], before: list[tuple]) -> bool:
    """The rows seen before, row by row; columns added since (at the end) are NULL in them."""
    width = len(before[0])
    return len(now) == len(before) and all(a[:width] == b and not any(a[width:]) for a, b in zip(now, before))


def wait_streamed_time(pg) -> dt.datetime:
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT max(newest_created_time) FROM {}").format(sql.Identifier(CAT, "stream_batches")))
        return cur.fetchone()[0]


def switch_under_readers(config, spark, pg_server: dict, pg) -> list[float]:
    """Cut ship B over while reader 1 holds its view in an open transaction for 3 s and reader 2
    queries it every 50 ms; returns reader 2's latencies. The switch lands after reader 1 ends."""
    def connect():
        conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                                dbname=pg_server["database"])
        conn.autocommit = False
        return conn

    with pg.cursor() as cur:
        view, _, _ = view_of(cur, SHIP_B)
    query = sql.SQL("SELECT count(*) FROM {}").format(view)
    reader1, reader2 = connect(), connect()
    with reader1.cursor() as cur:
        cur.execute(query)                          # holds the view until it commits
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault(
        "result", cutover.run(config, spark, ships=[SHIP_B])), daemon=True)
    thread.start()
    latencies = []
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        began = time.monotonic()
        with reader2.cursor() as cur:
            cur.execute(query)
        reader2.commit()
        latencies.append(time.monotonic() - began)
        time.sleep(0.05)
    began = time.monotonic()
    with reader1.cursor() as cur:
        cur.execute(query)                          # its own lock: never behind the waiting switch
    assert time.monotonic() - began < 0.5
    assert "result" not in out, "the switch did not wait for the reader's transaction"
    reader1.commit()
    released = dt.datetime.now(dt.UTC)
    thread.join(120)
    reader1.close()
    reader2.close()
    result = out["result"]
    assert result.exit_code == 0 and result.summary["switched"] == [SHIP_B], result.report
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT max(at) FROM {} WHERE ship_id = %s AND to_state = 'switched'").format(
            sql.Identifier(CAT, "ship_transitions")), (SHIP_B,))
        assert cur.fetchone()[0] >= released - dt.timedelta(seconds=0.1)
    return latencies
