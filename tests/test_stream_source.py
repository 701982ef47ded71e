"""The streaming source over the narrow table: real streaming queries, no sleeps.

The exact (order_column) mode must not skip a row whose transaction stays open while later ids
commit; the created_time mode must re-read its overlap.
"""
from __future__ import annotations

import datetime as dt

import nasty
import psycopg2
import pytest
from psycopg2 import sql

from widen.sources.postgres_stream import NarrowStreamSource, stream_options

NAME = "ss"
SRC = f"src_{NAME}"
ORACLE = sql.SQL(
    "SELECT ship_id, data_channel_id, created_time, CASE value_format WHEN 'Decimal' THEN double_v::text "
    "WHEN 'Integer' THEN long_v::text WHEN 'String' THEN str_v WHEN 'Boolean' THEN bool_v::text END, "
    "ingest_id FROM {}").format(sql.Identifier(SRC, "tbl_data_timeseries"))


def rows(n: int, first_second: int, ship: str = "stream ship") -> list[tuple]:
    return [(ship, f"ch/{i % 3}", nasty.at(first_second + 15 * i), "Integer", None, i, None, None)
            for i in range(n)]


@pytest.fixture()
def stream(spark, tmp_path):
    spark.dataSource.register(NarrowStreamSource)
    seen: list = []

    def start(options: dict):
        def collect(frame, batch_id):
            seen.extend(tuple(r) for r in frame.collect())

        return (spark.readStream.format("widen_narrow").options(**options).load()
                .writeStream.foreachBatch(collect)
                .option("checkpointLocation", str(tmp_path / "checkpoint")).start())

    queries = []
    yield lambda options: queries.append(start(options)) or queries[-1], seen
    for query in queries:
        query.stop()


def test_exact_mode_waits_for_an_open_transaction(fresh_fleet, make_config, pg, pg_server, stream):
    fresh_fleet(NAME, ships=0, ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id")
    start, seen = stream
    query = start(stream_options(config.source, buckets=2))
    nasty.insert(pg, SRC, rows(5, 0))
    query.processAllAvailable()
    assert len(seen) == 5

    slow = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"])
    try:
        nasty.insert(slow, SRC, [("slow ship", "ch/slow", nasty.at(0), "String", None, None, "late commit", None)])
        nasty.insert(pg, SRC, rows(4, 600))            # later ids, committed first
        query.processAllAvailable()
        assert len(seen) == 9
        assert "late commit" not in {r[3] for r in seen}
        slow.commit()
    finally:
        slow.close()
    query.processAllAvailable()
    with pg.cursor() as cur:
        cur.execute(ORACLE)
        expected = set(cur.fetchall())
    # Spark hands timestamps back naive, in the session time zone (UTC).
    assert {(r[0], r[1], r[2].replace(tzinfo=dt.UTC), r[3], r[5]) for r in seen} == expected
    assert "late commit" in {r[3] for r in seen}


def test_exact_mode_sees_a_transaction_newer_than_every_committed_one(fresh_fleet, make_config, pg_server,
                                                                    stream):
    """The snapshot's in-progress list misses a transaction whose xid is above every completed one:
    Y takes its xid, X takes an id and a newer xid, Y takes a higher id and commits. X's row is
    below the greatest visible id and X is not in pg_snapshot_xip; it must still be read."""
    fresh_fleet(f"{NAME}x", ships=0, ingest_id=True).close()
    config = make_config(f"{NAME}x", source__order_column="ingest_id")
    start, seen = stream
    query = start(stream_options(config.source, buckets=1))
    connect = lambda: psycopg2.connect(host=pg_server["host"], port=pg_server["port"],  # noqa: E731
                                       user=pg_server["user"], dbname=pg_server["database"])
    y, x = connect(), connect()
    try:
        nasty.insert(y, f"src_{NAME}x", [("ship", "y", nasty.at(0), "String", None, None, "y first", None)])
        nasty.insert(x, f"src_{NAME}x", [("ship", "x", nasty.at(0), "String", None, None, "x waits", None)])
        nasty.insert(y, f"src_{NAME}x", [("ship", "y", nasty.at(15), "String", None, None, "y second", None)])
        y.commit()
        query.processAllAvailable()
        assert sorted(r[3] for r in seen) == ["y first", "y second"]
        x.commit()
    finally:
        x.close()
        y.close()
    query.processAllAvailable()
    assert sorted(r[3] for r in seen) == ["x waits", "y first", "y second"]


def test_time_mode_reads_up_to_now_minus_settle_and_rereads_overlap(fresh_fleet, make_config, pg, stream):
    fresh_fleet(f"{NAME}t", ships=0).close()
    config = make_config(f"{NAME}t")
    now = dt.datetime.now(dt.UTC)
    past = [("ship t", "temp", now - dt.timedelta(minutes=10, seconds=15 * i), "Decimal", 1.5 * i, None, None, None)
            for i in range(4)]
    nasty.insert(pg, f"src_{NAME}t", past)
    start, seen = stream
    query = start(stream_options(config.source, settle_seconds=0, overlap_seconds=3600, buckets=3))
    query.processAllAvailable()
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT created_time, double_v::text FROM {}").format(
            sql.Identifier(f"src_{NAME}t", "tbl_data_timeseries")))
        expected = set(cur.fetchall())
    assert {(r[2].replace(tzinfo=dt.UTC), r[3]) for r in seen} == expected
    future = [("ship t", "temp", now + dt.timedelta(hours=1), "Decimal", 9.0, None, None, None)]
    nasty.insert(pg, f"src_{NAME}t", future)
    query.processAllAvailable()
    # Dated ahead of now - settle, but committed since the last offset: read at once, not when its
    # time has come. Its watermark time is the batch's end, not 2099-ish: the past rows' is theirs.
    ahead = [r for r in seen if r[2].replace(tzinfo=dt.UTC) > now]
    assert [r[3] for r in ahead] == ["9"] and ahead[0][7].replace(tzinfo=dt.UTC) < now + dt.timedelta(seconds=5)
    assert all(r[7] == r[2] for r in seen if r not in ahead)
    assert all(r[4] is None and r[5] is None for r in seen)
