"""The exact mode's window between a writer's ``nextval`` and its transaction id (issue 29, item 13).

A transaction holds an id of the order column before it has an xid: an INSERT evaluates its
``nextval`` default before its first row takes the xid, and an application may take ids ahead and
insert them later. Such a writer is in neither the snapshot's in-progress list nor pg_locks'
transaction ids, so an offset taken meanwhile would pass its row. Real streaming queries, the rows
each batch read compared with the narrow table (every row exactly once).
"""
from __future__ import annotations

import datetime as dt
import random
import threading
import time

import psycopg2
import pytest
from psycopg2 import sql

from widen.sources.postgres_stream import NarrowStreamSource, stream_options

NAME = "races"
SRC = f"src_{NAME}"
TABLE = sql.Identifier(SRC, "tbl_data_timeseries")
ROWS = sql.SQL("SELECT ship_id, data_channel_id, created_time, long_v::text, ingest_id FROM {}").format(TABLE)
INSERT = sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, long_v{}) VALUES {}")


@pytest.fixture()
def stream(spark, tmp_path):
    """start(options) -> a streaming query collecting every row it reads into ``seen``."""
    spark.dataSource.register(NarrowStreamSource)
    seen: list = []
    queries = []

    def start(options: dict):
        def collect(frame, batch_id):
            seen.extend((r.ship_id, r.data_channel_id, r.created_time.replace(tzinfo=dt.UTC), r.value, r.order_key)
                        for r in frame.collect())

        queries.append(spark.readStream.format("widen_narrow").options(**options).load()
                       .writeStream.foreachBatch(collect)
                       .option("checkpointLocation", str(tmp_path / "checkpoint")).start())
        return queries[-1]

    yield start, seen
    for query in queries:
        query.stop()


def started(fresh_fleet, make_config, stream, drained: bool = True, **options):
    """An empty exact-mode narrow table and a query on it (caught up unless ``drained`` is False):
    (query, the rows it read)."""
    fresh_fleet(NAME, ships=0, ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id")
    start, seen = stream
    query = start(stream_options(config.source, buckets=2, **options))
    if drained:
        query.processAllAvailable()
    return query, seen


def connect(pg_server: dict, autocommit: bool = True):
    conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"])
    conn.autocommit = autocommit
    return conn


def narrow_rows(pg) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute(ROWS)
        return sorted(cur.fetchall(), key=lambda r: r[4])


def id_without_xid(conn) -> int:
    """An id taken by ``nextval`` in an open transaction that has no xid yet (a nextval that writes
    WAL, one in 32, takes an xid: that transaction is rolled back and another id taken)."""
    with conn.cursor() as cur:
        for _ in range(64):
            cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'ingest_id')), txid_current_if_assigned()",
                        (TABLE.as_string(cur),))
            taken, xid = cur.fetchone()
            if xid is None:
                return taken
            conn.rollback()
    raise AssertionError("every nextval took an xid")


def test_an_id_taken_before_the_transaction_has_an_xid_is_not_passed(fresh_fleet, make_config, pg, pg_server,
                                                                      stream):
    query, seen = started(fresh_fleet, make_config, stream)
    ahead = connect(pg_server, autocommit=False)
    try:
        taken = id_without_xid(ahead)
        with pg.cursor() as cur:        # a later id commits while the earlier one is not written yet
            cur.execute(INSERT.format(TABLE, sql.SQL(""), sql.SQL("('s', 'c', '2026-01-01', 'Integer', 1)")))
        query.processAllAvailable()
        with ahead.cursor() as cur:
            cur.execute(INSERT.format(TABLE, sql.SQL(", ingest_id"), sql.SQL("('s', 'c', '2026-01-02', 'Integer', 2, %s)")),
                        (taken,))
        ahead.commit()
    finally:
        ahead.close()
    query.processAllAvailable()
    assert sorted(seen, key=lambda r: r[4]) == narrow_rows(pg)


def write_for(pg_server: dict, seconds: float, seed: int, errors: list, pause: float = 0.0,
              stop: threading.Event | None = None) -> None:
    """One writer: transactions of 1-20 rows for ``seconds`` or until ``stop`` (``pause`` between
    them), in turn by the default ``nextval`` (many rows per INSERT), with ids taken ahead and
    written a moment later, written in a released savepoint (their xmin the savepoint's xid) and
    committed a moment later, and rolled back."""
    rng = random.Random(seed)
    conn = connect(pg_server, autocommit=False)
    deadline = time.monotonic() + seconds
    n = 0
    try:
        with conn.cursor() as cur:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                style = rng.choice(["default", "ahead", "ahead", "savepoint", "rollback"])
                rows = [(f"ship {seed}", f"ch{i}", f"2026-01-01 00:00:{n % 60:02d}+00", "Integer", n + i)
                        for i in range(rng.randint(1, 20))]
                n += len(rows)
                if style == "ahead":
                    cur.execute("SELECT nextval(pg_get_serial_sequence(%s, 'ingest_id')) FROM generate_series(1, %s)",
                                (TABLE.as_string(cur), len(rows)))
                    ids = [r[0] for r in cur.fetchall()]
                    cur.execute("SELECT pg_sleep(%s)", (rng.random() / 20,))     # the application works
                    values = sql.SQL(", ").join([sql.SQL("(%s, %s, %s, %s, %s, %s)")] * len(rows))
                    cur.execute(INSERT.format(TABLE, sql.SQL(", ingest_id"), values),
                                [v for row, i in zip(rows, ids) for v in (*row, i)])
                else:
                    values = sql.SQL(", ").join([sql.SQL("(%s, %s, %s, %s, %s)")] * len(rows))
                    if style == "savepoint":     # rows with the savepoint's xid, the transaction open a while
                        cur.execute("SAVEPOINT w")
                    cur.execute(INSERT.format(TABLE, sql.SQL(""), values), [v for row in rows for v in row])
                    if style == "savepoint":
                        cur.execute("RELEASE SAVEPOINT w")
                        cur.execute("SELECT pg_sleep(%s)", (rng.random() / 4,))
                conn.rollback() if style == "rollback" else conn.commit()
                time.sleep(pause)
    except Exception as err:  # noqa: BLE001 - reported by the test
        errors.append(err)
    finally:
        conn.close()


@pytest.mark.parametrize("max_rows", [0, 60], ids=["unbounded", "bounded"])
def test_concurrent_writers_every_row_read_exactly_once(max_rows, fresh_fleet, make_config, pg, pg_server, stream):
    """Four writers for 3 s while the query runs batch after batch: no row lost, none read twice.
    Also in batches of about 60 rows, each ending below the newest id while writers are in flight."""
    query, seen = started(fresh_fleet, make_config, stream, drained=False, max_rows_per_batch=max_rows)
    errors: list = []
    writers = [threading.Thread(target=write_for, args=(pg_server, 3.0, seed, errors)) for seed in range(4)]
    for w in writers:
        w.start()
    deadline = time.monotonic() + 60
    while any(w.is_alive() for w in writers) and time.monotonic() < deadline:
        query.processAllAvailable()
    for w in writers:
        w.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not errors and not any(w.is_alive() for w in writers)
    query.processAllAvailable()
    expected = narrow_rows(pg)
    assert len(expected) > 100
    got = sorted(seen, key=lambda r: r[4])
    lost = {r[4] for r in expected} - {r[4] for r in got}
    assert not lost, f"{len(lost)} rows never read, e.g. ids {sorted(lost)[:5]}"
    assert got == expected


def test_a_session_idle_after_a_write_that_matched_nothing_does_not_hold_the_offset(fresh_fleet, make_config, pg,
                                                                                    pg_server, stream):
    """A DELETE that matched no row (or a LOCK TABLE) leaves its session holding the table's lock
    without an xid, maybe for hours (a pooled connection): it can write no row without first taking
    an xid, so the stream goes on."""
    query, seen = started(fresh_fleet, make_config, stream)
    idle = connect(pg_server, autocommit=False)
    try:
        with idle.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = 'none'").format(TABLE))
            cur.execute("SELECT txid_current_if_assigned()")
            assert cur.fetchone()[0] is None
        with pg.cursor() as cur:
            cur.execute(INSERT.format(TABLE, sql.SQL(""), sql.SQL("('s', 'c', '2026-01-01', 'Integer', 1)")))
        query.processAllAvailable()
        assert sorted(seen, key=lambda r: r[4]) == narrow_rows(pg)
    finally:
        idle.close()


def test_a_row_written_in_a_released_savepoint_of_a_transaction_open_across_an_offset_is_read(
        fresh_fleet, make_config, pg, pg_server, stream):
    """A transaction writes its row in a savepoint it releases and stays open while a later id
    commits and a batch runs past both ids. The row's xmin is the savepoint's xid, which neither
    the snapshot's in-progress list nor pg_locks holds (only the transaction's own xid): the batch
    after its commit must still read it, and read it once."""
    query, seen = started(fresh_fleet, make_config, stream)
    held = connect(pg_server, autocommit=False)
    try:
        with held.cursor() as cur:
            cur.execute("SAVEPOINT widen_test")
            cur.execute(INSERT.format(TABLE, sql.SQL(""), sql.SQL("('s', 'c', '2026-01-01', 'Integer', 1)")))
            cur.execute("RELEASE SAVEPOINT widen_test")
        with pg.cursor() as cur:        # a later id commits while the savepoint's row is not committed
            cur.execute(INSERT.format(TABLE, sql.SQL(""), sql.SQL("('s', 'c', '2026-01-02', 'Integer', 2)")))
        query.processAllAvailable()
        held.commit()
    finally:
        held.close()
    with pg.cursor() as cur:
        cur.execute(INSERT.format(TABLE, sql.SQL(""), sql.SQL("('s', 'c', '2026-01-03', 'Integer', 3)")))
    query.processAllAvailable()
    assert sorted(seen, key=lambda r: r[4]) == narrow_rows(pg)


def test_a_run_of_what_is_there_ends_while_writers_go_on(fresh_fleet, make_config, pg, pg_server, spark, tmp_path):
    """`stream --once` (Trigger.AvailableNow) from a scheduler: it reads what was committed when it
    started and ends, though writers keep transactions in flight at every look; the next run takes
    the rest. Together the runs read every row exactly once."""
    spark.dataSource.register(NarrowStreamSource)
    fresh_fleet(NAME, ships=0, ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id")
    with pg.cursor() as cur:
        cur.execute(INSERT.format(TABLE, sql.SQL(""), sql.SQL(", ").join(
            [sql.SQL("('s', 'c', %s, 'Integer', 1)")] * 50)), [f"2026-01-01 00:{m:02d}:00+00" for m in range(50)])
    seen: list = []

    def collect(frame, batch_id):
        seen.extend((r.ship_id, r.data_channel_id, r.created_time.replace(tzinfo=dt.UTC), r.value, r.order_key)
                    for r in frame.collect())

    def run_once(max_rows: int):
        return (spark.readStream.format("widen_narrow").options(**stream_options(config.source, buckets=2,
                                                                                 max_rows_per_batch=max_rows)).load()
                .writeStream.foreachBatch(collect).trigger(availableNow=True)
                .option("checkpointLocation", str(tmp_path / "checkpoint")).start())

    errors: list = []
    query = None
    stop = threading.Event()
    writers = [threading.Thread(target=write_for, args=(pg_server, 60.0, seed, errors, 0.02, stop))
               for seed in range(4)]
    for w in writers:
        w.start()
    try:
        deadline = time.monotonic() + 30        # the writers under way (transactions in flight) first
        with pg.cursor() as cur:
            while True:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(TABLE))
                there = cur.fetchone()[0]
                if there > 50 + 100 or time.monotonic() > deadline:
                    break
        assert there > 150 and all(w.is_alive() for w in writers), (there, errors)
        query = run_once(1000)              # in bounded batches
        ended = query.awaitTermination(45)
        assert ended and all(w.is_alive() for w in writers), "the run did not end while the writers wrote"
        assert len(seen) >= there
    finally:
        stop.set()
        for w in writers:
            w.join(60)
        if query is not None:
            query.stop()
    assert not errors and not any(w.is_alive() for w in writers)
    query = run_once(0)
    try:
        assert query.awaitTermination(60), "the second run did not end"
    finally:
        query.stop()
    expected = narrow_rows(pg)
    assert sorted(seen, key=lambda r: r[4]) == expected
