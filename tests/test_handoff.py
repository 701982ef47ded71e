"""The hand-off (docs/operating.md, "Hand-off"): start the stream at the live tail, backfill the history, let
the stream go on. Rows arrive before, between and after the two; nothing is missed or doubled."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

import nasty
import oracle
import psycopg2
import pytest
from psycopg2 import sql

from widen.jobs import backfill, stream
from widen.sources.postgres_stream import initial_offset, stream_options

UTC = dt.UTC


def count_rows(cur, schema: str, where: sql.Composable = sql.SQL("true"), params=()) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        sql.Identifier(schema, "tbl_data_timeseries"), where), params)
    return cur.fetchone()[0]


def test_exact_mode_handoff(fresh_fleet, make_config, spark, pg, pg_server, tmp_path):
    name = "hand"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    history_start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    fresh_fleet(name, ships=2, channels=4, hours=2, seed=3, start=history_start, ingest_id=True).close()
    config = make_config(name, source__order_column="ingest_id")
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name="hand",
                                            start="latest"))
    ship = sorted(oracle.valid_ships(pg.cursor(), src))[0]

    # A transaction still open when the stream starts would put its rows between the two jobs:
    # the start waits for it, and says so when it waits too long.
    slow = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"])
    try:
        nasty.insert(slow, src, [(ship, "in flight", history_start, "String", None, None, "slow", None)])
        options = stream_options(config.source, start="latest", start_wait_seconds=0.3)
        with pytest.raises(RuntimeError, match="still open"):
            initial_offset(options)
        slow.commit()
    finally:
        slow.close()

    first = stream.run(config, spark, once=True)           # starts at the tail: reads nothing yet
    tail = first.summary["start_offset"]["id"]
    with pg.cursor() as cur:
        assert tail == count_rows(cur, src) and first.summary["narrow_rows"] == 0
    # Between the stream's start and the backfill: a new minute, a late reading inside the history,
    # and a corrected value of an existing cell (a later id wins).
    nasty.insert(pg, src, nasty.minute(ship, 120, ["new/channel", "rpm"]) + [
        (ship, "late", history_start + dt.timedelta(minutes=30, seconds=7), "Integer", None, 5, None, None),
        (ship, "in flight", history_start, "String", None, None, "corrected", None)])
    assert backfill.run(config, spark).exit_code == 0
    # After the backfill: more of the tail, and a late reading the backfill has already passed.
    nasty.insert(pg, src, nasty.minute(ship, 121, ["rpm"]) + nasty.minute("new ship", 121, ["rpm"]) + [
        (ship, "late", history_start + dt.timedelta(minutes=31), "Integer", None, 6, None, None)])
    second = stream.run(config, spark, once=True)
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, tgt, cat, order_column="ingest_id")
        # The stream read exactly the rows after its start, each once.
        assert second.summary["narrow_rows"] == count_rows(cur, src, sql.SQL("ingest_id > %s"), (tail,))
        assert second.summary["late_rows"] == 0
        cur.execute(sql.SQL('SELECT "in flight" FROM {} WHERE created_time = %s').format(
            sql.Identifier(tgt, f"tbl_data_timeseries_{ship}")), (history_start,))
        assert cur.fetchone() == ("corrected",)


def test_time_mode_handoff(fresh_fleet, make_config, spark, pg, tmp_path):
    """created_time mode: the backfill ends at the stream's start, the stream re-reads an overlap."""
    name = "handt"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    now = dt.datetime.now(UTC).replace(microsecond=0)
    history_start = now - dt.timedelta(hours=1)
    fresh_fleet(name, ships=2, channels=3, hours=1 - 2 / 60, seed=4, start=history_start).close()
    config = make_config(name)
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name="handt",
                                            start="latest", settle_seconds=0, overlap_seconds=300,
                                            watermark_seconds=600))
    first = stream.run(config, spark, once=True)
    cutoff = dt.datetime.fromisoformat(first.summary["start_offset"]["t"])
    ship = sorted(oracle.valid_ships(pg.cursor(), src))[0]
    # Arriving after the stream started: a reading just before the cutoff (inside the overlap) and
    # readings after it.
    nasty.insert(pg, src, [
        (ship, "late", cutoff - dt.timedelta(seconds=90), "Decimal", 0.1, None, None, None),
        (ship, "late", cutoff + dt.timedelta(microseconds=1), "Decimal", 0.2, None, None, None),
        ("new ship", "x", cutoff + dt.timedelta(microseconds=2), "Boolean", None, None, None, False)])
    result = backfill.run(config, spark, end=cutoff)        # the history, up to the stream's start
    assert result.exit_code == 0
    stream.run(config, spark, once=True)
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, tgt, cat)
