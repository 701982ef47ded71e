"""Readings from the future across the hand-off (docs/design.md, "Hand-off"): a ship whose clock runs
ahead, a test row dated 2099. Rows present at the hand-off dated after it, and rows written after
it dated in the future, all reach the wide tables exactly once, checked against the oracle.

In every mode the backfill runs with ``--end`` at the hand-off, and the stream's first batch takes
the rows present at the hand-off dated after it; later rows come by id / LSN (exact, cdc) whatever
their created_time, or (created_time mode, no id) with the first batch after their commit: an
offset records the server's transactions, and a batch also takes the rows dated ahead of its range
committed since its start offset.
A reading from the future never makes the freshness lag negative (it would hide every other ship's).
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import replace

import nasty
import oracle
import psycopg2
from psycopg2 import sql

from widen.jobs import backfill, reconcile, stream

UTC = dt.UTC
FAR = dt.datetime(2099, 1, 1, tzinfo=UTC)
HISTORY = dt.datetime(2026, 1, 1, tzinfo=UTC)


def db_now(pg) -> dt.datetime:
    with pg.cursor() as cur:
        cur.execute("SELECT now()")
        return cur.fetchone()[0]


def present_future_rows(ship: str, now: dt.datetime) -> list[tuple]:
    """In the table before the hand-off: an hour ahead, 2099, and a ship seen only in 2099."""
    return [(ship, "ahead", now + dt.timedelta(hours=1), "Decimal", 1.5, None, None, None),
            (ship, "far", FAR, "Integer", None, 7, None, None),
            ("ship from 2099", "x", FAR + dt.timedelta(microseconds=1), "String", None, None, "from the future", None)]


def later_future_rows(ship: str, now: dt.datetime, ahead: dt.timedelta) -> list[tuple]:
    """Written after the hand-off: a reading now, one ``ahead``, one in 2099 (another timestamp)."""
    return [(ship, "rpm", now, "Integer", None, 1, None, None),
            (ship, "ahead", now + ahead, "Decimal", 2.5, None, None, None),
            (ship, "far", FAR + dt.timedelta(days=1), "Integer", None, 8, None, None)]


def count(cur, src: str, where: str, params=()) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ").format(
        sql.Identifier(src, "tbl_data_timeseries")) + sql.SQL(where), params)
    return cur.fetchone()[0]


def test_exact_mode_takes_the_future(fresh_fleet, make_config, spark, pg, tmp_path):
    name = "fut_x"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    fresh_fleet(name, ships=2, channels=3, hours=1, seed=5, start=HISTORY, ingest_id=True).close()
    ship = sorted(oracle.valid_ships(pg.cursor(), src))[0]
    config = make_config(name, source__order_column="ingest_id")
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name=name,
                                            start="latest"))
    nasty.insert(pg, src, present_future_rows(ship, db_now(pg)))
    first = stream.run(config, spark, once=True)             # the hand-off
    tail = first.summary["start_offset"]["id"]
    handoff = db_now(pg)
    nasty.insert(pg, src, later_future_rows(ship, db_now(pg), dt.timedelta(hours=2)))
    assert backfill.run(config, spark, end=handoff).exit_code == 0       # the history up to the hand-off
    second = stream.run(config, spark, once=True)
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, tgt, cat, order_column="ingest_id")
        # the stream read each row once: every row after its start, and the rows present at it that
        # are dated from the hand-off on
        since = dt.datetime.fromisoformat(first.summary["start_offset"]["t"])
        assert first.summary["narrow_rows"] + second.summary["narrow_rows"] == (
            count(cur, src, "ingest_id > %s", (tail,)) + count(cur, src, "ingest_id <= %s AND created_time >= %s",
                                                                 (tail, since)))
        assert first.summary["narrow_rows"] == 3 and first.summary["late_rows"] == 0
        assert second.summary["freshness_lag_seconds"] >= 0


def test_cdc_mode_takes_the_future(fresh_fleet, make_config, spark, pg, tmp_path):
    name = "fut_c"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    fresh_fleet(name, ships=2, channels=3, hours=1, seed=6, start=HISTORY).close()
    with pg.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(src, "tbl_data_timeseries")))
    ship = sorted(oracle.valid_ships(pg.cursor(), src))[0]
    config = make_config(name, source__mode="cdc", stream__query_name=name, stream__start="latest",
                         stream__checkpoint=str(tmp_path / "cp"))
    nasty.insert(pg, src, present_future_rows(ship, db_now(pg)))
    try:
        first = stream.run(config, spark, once=True)         # the hand-off: the slot's consistent point
        handoff = db_now(pg)
        later = later_future_rows(ship, db_now(pg), dt.timedelta(hours=2))
        nasty.insert(pg, src, later)
        assert backfill.run(config, spark, end=handoff).exit_code == 0
        second = stream.run(config, spark, once=True)
        with pg.cursor() as cur:
            oracle.assert_equal_to_oracle(cur, src, tgt, cat)
        assert second.summary["narrow_rows"] == len(later) and first.exit_code == 0
        assert second.summary["freshness_lag_seconds"] >= 0
    finally:
        stream.run(config, spark, drop_slot=True)


def wide_value(pg, tgt: str, ship: str, channel: str, when: dt.datetime):
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (sql.Identifier(tgt, f"tbl_data_timeseries_{ship}").as_string(cur),))
        if cur.fetchone()[0] is None:
            return None
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "AND column_name = %s", (tgt, f"tbl_data_timeseries_{ship}", channel))
        if cur.fetchone() is None:
            return None
        cur.execute(sql.SQL("SELECT {} FROM {} WHERE created_time = %s").format(
            sql.Identifier(channel), sql.Identifier(tgt, f"tbl_data_timeseries_{ship}")), (when,))
        row = cur.fetchone()
        return row and row[0]


def time_mode_fleet(name: str, seed: int, fresh_fleet, make_config, pg, tmp_path, **stream_keys):
    """A created_time-mode stream config started at the live tail over a fresh two-ship fleet, and
    the fleet's first ship."""
    fresh_fleet(name, ships=2, channels=3, hours=1, seed=seed, start=HISTORY).close()
    ship = sorted(oracle.valid_ships(pg.cursor(), f"src_{name}"))[0]
    config = make_config(name)
    return replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name=name,
                                          start="latest", overlap_seconds=300, **stream_keys)), ship


def test_time_mode_takes_the_future(fresh_fleet, make_config, spark, pg, tmp_path):
    """created_time mode: the first batch takes the rows present at the hand-off dated after it
    (without moving the watermark: nothing else is dropped as late); rows written later dated a few
    seconds ahead or in 2099 come with the next batch, not once their time has come."""
    name = "fut_t"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    config, ship = time_mode_fleet(name, 7, fresh_fleet, make_config, pg, tmp_path, settle_seconds=0,
                                   watermark_seconds=600)
    nasty.insert(pg, src, present_future_rows(ship, db_now(pg)))
    first = stream.run(config, spark, once=True)             # the hand-off
    handoff = dt.datetime.fromisoformat(first.summary["start_offset"]["t"])
    assert first.summary["narrow_rows"] == 3 and first.summary["freshness_lag_seconds"] is None
    assert backfill.run(config, spark, end=handoff).exit_code == 0
    soon = db_now(pg) + dt.timedelta(seconds=5)
    far = FAR + dt.timedelta(days=1)
    nasty.insert(pg, src, [(ship, "soon", soon, "Integer", None, 3, None, None),
                           (ship, "rpm", db_now(pg), "Integer", None, 1, None, None),
                           (ship, "far", far, "Integer", None, 8, None, None)])
    early = stream.run(config, spark, once=True)
    assert early.summary["late_rows"] == 0 and early.summary["freshness_lag_seconds"] >= 0
    assert (wide_value(pg, tgt, ship, "soon", soon), wide_value(pg, tgt, ship, "far", far)) == ("3", "8")
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, tgt, cat)


def connect(pg_server: dict):
    return psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"], password=os.environ.get("PGPASSWORD"))


def written_ahead(ship: str, now: dt.datetime) -> list[tuple]:
    """Written after the hand-off, dated at or ahead of ``now - settle_seconds``: within the settle
    window, minutes ahead, 2099 (two readings of one cell: the greatest by byte order stays), a ship
    seen only in 2099, hostile names and values, and a rejected row."""
    far = FAR + dt.timedelta(days=2)
    return [(ship, "ahead/3 min", now + dt.timedelta(minutes=3), "Decimal", 0.1 + 0.2, None, None, None),
            (ship, "ahead/3 min", now + dt.timedelta(minutes=3), "Decimal", -0.0, None, None, None),
            (nasty.S_LONG, "채널/온도", now, "Decimal", 5e-324, None, None, None),
            (nasty.S_SQL, "created_time", now + dt.timedelta(minutes=10), "Integer", None, 9223372036854775807,
             None, None),
            (nasty.S_QUOTES, "string", far, "String", None, None, "z", None),
            (nasty.S_QUOTES, "string", far, "String", None, None, "é", None),
            (nasty.S_QUOTES, "string", far, "String", None, None, "tab\there\\", None),
            ("ship seen only in 2099 ✓", "x\ty", far + dt.timedelta(microseconds=1), "Boolean", None, None, None,
             False),
            (ship, "rejected", far, "Float", 1.0, None, None, None)]


def cell(pg, tgt: str, cat: str, ship: str, channel: str, when: dt.datetime):
    """A wide cell found through the catalog (None when its table, column or row is missing)."""
    with pg.cursor() as cur:
        for table, pairs in oracle.catalog_mapping(cur, cat, ship).items():
            for name, column in pairs:
                if name == channel:
                    cur.execute(sql.SQL("SELECT {}::text FROM {} WHERE created_time = %s").format(
                        sql.Identifier(column), sql.Identifier(tgt, table)), (when,))
                    row = cur.fetchone()
                    return row and row[0]
    return None


def test_time_mode_takes_rows_written_later_dated_ahead(fresh_fleet, make_config, spark, pg, pg_server, tmp_path):
    """created_time mode: a row written after the hand-off dated at or after ``now - settle_seconds``
    (within the settle window, minutes ahead, 2099) arrives with the next batch, not once its time
    has come; so do the rows of transactions open while a batch's offsets were taken, also one
    written in a savepoint (its xmin is a subtransaction's xid, which no snapshot lists)."""
    name = "fut_tl"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    config, ship = time_mode_fleet(name, 8, fresh_fleet, make_config, pg, tmp_path, settle_seconds=30,
                                   watermark_seconds=300)
    first = stream.run(config, spark, once=True)             # the hand-off
    assert backfill.run(config, spark, end=dt.datetime.fromisoformat(first.summary["start_offset"]["t"])).exit_code == 0
    now = db_now(pg)
    plain, nested = connect(pg_server), connect(pg_server)
    try:
        nasty.insert(plain, src, [(ship, "open", FAR + dt.timedelta(days=3), "String", None, None,
                                   "committed after the offset", None)])
        with nested.cursor() as cur:
            cur.execute("SAVEPOINT widen_test")
        nasty.insert(nested, src, [(nasty.S_QUOTES, "open/nested", now + dt.timedelta(minutes=7), "Integer", None,
                                    -9223372036854775808, None, None)])
        with nested.cursor() as cur:
            cur.execute("RELEASE SAVEPOINT widen_test")
        # committed after both took their xids, so the snapshot's xmax passes the savepoint's xid
        nasty.insert(pg, src, written_ahead(ship, now))
        second = stream.run(config, spark, once=True)        # its offsets are taken while both are open
        plain.commit()
        nested.commit()
    finally:
        plain.close()
        nested.close()
    third = stream.run(config, spark, once=True)
    assert db_now(pg) < now + dt.timedelta(seconds=30), "too slow: the rows dated now would have settled"
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, tgt, cat)
    assert cell(pg, tgt, cat, nasty.S_QUOTES, "string", FAR + dt.timedelta(days=2)) == "é"
    assert cell(pg, tgt, cat, nasty.S_QUOTES, "open/nested", now + dt.timedelta(minutes=7)) == "-9223372036854775808"
    assert [r.summary["late_rows"] for r in (second, third)] == [0, 0]
    assert reconcile.run(config, spark).exit_code == 0


def test_time_mode_offset_from_an_older_widen(fresh_fleet, make_config, spark, pg, tmp_path):
    """A checkpoint whose last offset an older widen wrote (no ``snapshot``): the next batch takes
    every row dated ahead (reading too much is harmless, missing one is not)."""
    name = "fut_to"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    fresh_fleet(name, ships=1, channels=2, hours=0.25, seed=9, start=HISTORY).close()
    config = make_config(name)
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name=name,
                                            start="earliest", settle_seconds=0))
    assert stream.run(config, spark, once=True).exit_code == 0
    nasty.insert(pg, src, [(nasty.S_DOTS, "far", FAR + dt.timedelta(days=4), "String", None, None, "from before", None)])
    offsets = tmp_path / "cp" / "offsets"
    last = max((p for p in offsets.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    (offsets / f".{last.name}.crc").unlink(missing_ok=True)     # Hadoop's checksum of the old text
    *head, offset = last.read_text().splitlines()
    older = {k: v for k, v in json.loads(offset).items() if k != "snapshot"}
    assert older != json.loads(offset)
    last.write_text("\n".join([*head, json.dumps(older)]))
    assert stream.run(config, spark, once=True).summary["narrow_rows"] >= 1
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, tgt, cat)


def test_time_mode_on_a_timestamp_column(fresh_fleet, make_config, spark, pg, tmp_path):
    """A narrow table whose created_time is ``timestamp`` (without time zone, read as UTC): the
    offsets' times are naive there, the snapshot's ``now()`` is not; batches after the first
    compare both."""
    name = "fut_naive"
    src, tgt, cat = f"src_{name}", f"wide_{name}", f"cat_{name}"
    fresh_fleet(name, ships=1, channels=2, hours=0.25, seed=10, start=HISTORY).close()
    with pg.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN created_time TYPE timestamp USING created_time AT TIME ZONE "
                            "'UTC'").format(sql.Identifier(src, "tbl_data_timeseries")))
    pg.commit()
    config = make_config(name)
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name=name,
                                            start="earliest", settle_seconds=0))
    assert stream.run(config, spark, once=True).exit_code == 0
    later = (FAR + dt.timedelta(days=5)).replace(tzinfo=None)        # dated ahead, UTC wall-clock
    nasty.insert(pg, src, [(nasty.S_DOTS, "far", later, "String", None, None, "naive", None)])
    second = stream.run(config, spark, once=True)
    assert second.exit_code == 0, second.report
    assert second.summary["narrow_rows"] == 1
    with pg.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        oracle.assert_equal_to_oracle(cur, src, tgt, cat)
