"""Reader views never get in the way of the data.

A reader that holds a ship's view in an open transaction (a BI tool's idle session, a long report)
must not make the stream or the backfill fail when a new channel arrives: the new column is
made in the ship's tables and the data committed; the view catches up at the next plan (or
layout change, or cutover). A switched view (reading the wide tables) with views turned off in
the config is refused by ``rollback`` rather than left pointing at dropped tables. The view is
compared with the test's own SQL pivot of the narrow rows.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace

import oracle
import psycopg2
from psycopg2 import sql

from widen.jobs import cutover, plan, rollback
from widen.pg import db
from widen.sources import open_source
from widen.targets import ensure_tables_ddl, open_target, prepare_ship
from widen.targets.views import configure

NAME = "views"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
SHIP = "ship 'v' 100%"
NEW = "late/chan 'n' 5%"


def view_of(cur, ship: str) -> tuple[sql.Identifier, str, list[str]]:
    return oracle.reader_view(cur, CAT, ship)


def differing_rows(cur, ship: str) -> int:
    """Rows of the view and of the test's own pivot of the narrow rows that the other lacks."""
    view, _, columns = view_of(cur, ship)
    cur.execute(sql.SQL("SELECT column_name, data_channel_id FROM {} WHERE ship_id = %s").format(
        sql.Identifier(CAT, "reader_view_columns")), (ship,))
    channel = dict(cur.fetchall())
    cells = [sql.SQL("max(CASE WHEN data_channel_id = {} THEN {} END) AS {}").format(
        sql.Literal(channel[c]), oracle.RENDER, sql.Identifier(c)) for c in columns[1:]]
    theirs = sql.SQL("SELECT created_time, {} FROM {} WHERE ship_id = {} AND {} GROUP BY created_time").format(
        sql.SQL(", ").join(cells), sql.Identifier(SRC, "tbl_data_timeseries"), sql.Literal(ship), oracle.VALID)
    mine = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)), view)
    cur.execute(sql.SQL("SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b}) x) + (SELECT count(*) FROM ({b} EXCEPT ALL "
                        "{a}) y)").format(a=mine, b=theirs))
    return cur.fetchone()[0]


def test_a_reader_holding_the_view_never_fails_the_data(fresh_fleet, make_config, spark, pg, pg_server):
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    fresh_fleet(NAME, ship_list=[SHIP], channels=3, hours=0.5, start=start, cadence_seconds=60).close()
    config = make_config(NAME, target__lock_timeout_seconds=0.2, target__ddl_max_wait_seconds=2)
    assert plan.run(config, spark).exit_code == 0
    with pg.cursor() as cur:
        view, reads, columns = view_of(cur, SHIP)
        assert reads == "narrow" and len(columns) == 4
        cur.execute(sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, str_v) "
                            "VALUES (%s, %s, %s, 'String', 'late')").format(
            sql.Identifier(SRC, "tbl_data_timeseries")), (SHIP, NEW, start))

    reader = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                              dbname=pg_server["database"])
    try:
        with reader.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(view))     # holds the view until it ends
        # what the stream and the backfill do when a chunk meets a new channel
        target = open_target(config.target, spark)
        assert configure(target, config, open_source(config.source)) is not None
        began = time.monotonic()
        with db.connection(config.target.connection) as conn:
            layout = prepare_ship(conn, target, SHIP, [NEW])
        assert layout is not None and NEW in layout.channels
        assert time.monotonic() - began < 2.0       # one lock timeout for the view, no retries
        with pg.cursor() as cur:
            table, column = layout.tables[layout.channels[NEW].part], layout.channels[NEW].column_name
            cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s AND column_name = %s", (TGT, table, column))
            assert cur.fetchone()[0] == 1             # the data's column was made and committed
            assert view_of(cur, SHIP)[2] == columns   # the view waits for its reader
        with reader.cursor() as cur:                  # and the reader is undisturbed
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(view))
    finally:
        reader.rollback()
        reader.close()

    assert plan.run(config, spark).exit_code == 0     # the next plan brings the view up to date
    with pg.cursor() as cur:
        _, _, now = view_of(cur, SHIP)
        assert now[:4] == columns and now[4:] == [NEW]
        assert differing_rows(cur, SHIP) == 0


def test_rollback_refuses_a_switched_view_when_views_are_off(fresh_fleet, make_config, spark, pg):
    fresh_fleet(NAME, ship_list=[SHIP], channels=2, hours=0.5, cadence_seconds=60).close()
    config = make_config(NAME)
    assert plan.run(config, spark).exit_code == 0
    target = open_target(config.target, spark)
    views = configure(target, config, open_source(config.source))
    with db.connection(config.target.connection) as conn:      # what a cutover leaves behind
        layout = target.layouts.load(conn, SHIP)
        assert ensure_tables_ddl(conn, target, layout, "test")
        views.switch(conn, layout, "wide")
        with conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET switched_at = now(), state = 'switched' WHERE ship_id = %s").format(
                sql.Identifier(CAT, "ship_lifecycle")), (SHIP,))
        conn.commit()
    off = replace(config, cutover=replace(config.cutover, views="off"))
    refused = rollback.run(off, spark, ships=[SHIP])
    assert refused.exit_code != 0 and "reads its wide tables" in refused.report, refused.report
    assert "cutover --undo" in refused.report
    with pg.cursor() as cur:
        assert view_of(cur, SHIP)[1] == "wide"
    assert cutover.run(config, spark, ships=[SHIP], undo=True).exit_code == 0
    assert rollback.run(off, spark, ships=[SHIP]).exit_code == 0
