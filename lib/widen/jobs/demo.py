"""``demo``: the README's main command, end to end on the embedded default.

Works only in its own schemas (``widen_demo`` for the narrow table, ``widen_demo_wide`` and
``widen_demo_catalog``), so even pointed at a real server it touches nothing else.
Generates a small synthetic fleet, plans, backfills, backfills again (every chunk is skipped),
starts the live stream at the tail (the hand-off), writes a minute of new readings (a new channel
and a new ship among them), lets the stream take them, then checks every wide table against an
in-database pivot of the narrow rows, runs reconcile (bucket checksums on both sides) and prints a
summary.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from psycopg2 import sql

from widen import catalog, db, render
from widen.config import Config
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result
from widen.jobs import backfill, generate, plan, reconcile, stream
from widen.session import get_spark, resolve_connections

log = logging.getLogger(__name__)
DEMO_SOURCE_SCHEMA = "widen_demo"
DEMO_TARGET_SCHEMA = "widen_demo_wide"
DEMO_CATALOG_SCHEMA = "widen_demo_catalog"


def pivot_differences(conn, config: Config, layout: catalog.ShipLayout) -> int:
    """Cells that differ between the wide tables and a SQL pivot of the narrow rows (both ways)."""
    src, tgt = config.source, config.target
    diffs = 0
    with conn.cursor() as cur:
        cur.execute("SET jit = off")
        for part in layout.parts:
            members = layout.part_channels(part)
            cols = sql.SQL(", ").join(sql.Identifier(c.column_name) for c in members)
            pivots = sql.SQL(", ").join(
                sql.SQL("max({v} COLLATE \"C\") FILTER (WHERE data_channel_id = {ch})").format(
                    v=render.rendered_value(), ch=sql.Literal(c.data_channel_id)) for c in members)
            wide = sql.SQL("SELECT created_time, {c} FROM {t}").format(
                c=cols, t=sql.Identifier(tgt.schema, layout.tables[part]))
            narrow = sql.SQL("SELECT created_time, {p} FROM {t} WHERE ship_id = {s} AND {valid} "
                             "GROUP BY created_time").format(
                p=pivots, t=sql.Identifier(src.schema, src.table), s=sql.Literal(layout.ship_id),
                valid=render.valid_row_predicate())
            cur.execute(sql.SQL("SELECT (SELECT count(*) FROM ({w} EXCEPT {n}) a) + "
                                "(SELECT count(*) FROM ({n} EXCEPT {w}) b)").format(w=wide, n=narrow))
            diffs += cur.fetchone()[0]
    return diffs


def run(config: Config, spark=None, fleet_ships: int = 4, channels: int = 50, hours: float = 6.0,
        seed: int = 7, **_ignored) -> Result:
    began = time.monotonic()
    # The demo works in schemas of its own, so pointing it at a real server never touches real data.
    config = resolve_connections(config)
    config = replace(config, source=replace(config.source, schema=DEMO_SOURCE_SCHEMA),
                     target=replace(config.target, schema=DEMO_TARGET_SCHEMA,
                                    catalog_schema=DEMO_CATALOG_SCHEMA))
    say = log.info
    conn_text = config.target.connection.describe()
    say(f"PostgreSQL at {conn_text}")
    made = generate.run(config, fleet_ships=fleet_ships, channels=channels, hours=hours, seed=seed,
                        replace=True, replace_any_table=True)   # the demo's own schema
    say(made.report)
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        # A fresh demo each time: forget what an earlier demo migrated.
        catalog.ensure_catalog(conn, config.target.catalog_schema)
        cur.execute(sql.SQL("SELECT table_schema, table_name FROM {}.wide_tables").format(
            sql.Identifier(config.target.catalog_schema)))
        for schema, table in cur.fetchall():
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))
        for table in ("wide_tables", "channel_columns", "backfill_chunks", "rejects", "stream_batches"):
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(config.target.catalog_schema, table)))
        conn.commit()
    planned = plan.run(config)
    log.info("plan:\n%s", planned.report)
    first = backfill.run(config, spark)
    say(f"backfill: {first.summary['chunks_done']} chunks, {first.summary['narrow_rows']:,} narrow rows "
        f"-> {first.summary['wide_rows']:,} wide rows in {first.summary['seconds']} s")
    again = backfill.run(config, spark)
    say(f"backfill again: {again.summary['chunks_skipped']} chunks skipped, "
        f"{again.summary['chunks_done']} redone")
    streamed = live_tail(config, spark, say)
    differences = {}
    with db.connection(config.target.connection) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id FROM {}.wide_tables WHERE part = 1").format(
            sql.Identifier(config.target.catalog_schema)))
        for ship in sorted(r[0] for r in cur.fetchall()):
            layout = catalog.load_layout(conn, config.target.catalog_schema, ship)
            differences[ship] = pivot_differences(conn, config, layout)
    bad = {s: n for s, n in differences.items() if n}
    say("every wide table equals the in-database pivot" if not bad else f"DIFFERENCES: {bad}")
    proof = reconcile.run(config, spark)
    say(f"reconcile: {proof.summary['buckets']} ship x hour buckets checked, "
        f"{proof.summary['mismatched_buckets']} mismatched, {proof.summary['rejected_rows']} rejected rows "
        f"reported apart (run {proof.summary['run_id']})")
    ok = (not bad and first.exit_code == 0 and again.summary["chunks_done"] == 0 and streamed > 0
          and proof.exit_code == 0)
    summary = {"narrow_rows": made.summary["rows"], "ships": len(differences),
               "wide_rows": first.summary["wide_rows"], "backfill_seconds": first.summary["seconds"],
               "rerun_chunks_skipped": again.summary["chunks_skipped"],
               "streamed_narrow_rows": streamed, "differences": bad,
               "reconcile_buckets": proof.summary["buckets"], "reconcile_mismatches": proof.summary["mismatched_buckets"],
               "seconds": round(time.monotonic() - began, 2)}
    return Result("demo", EXIT_OK if ok else EXIT_PROBLEM, summary)


def live_tail(config: Config, spark, say) -> int:
    """Start the stream at the tail, write a minute of readings, stream them; returns rows streamed."""
    home = Path(config.home)
    config = replace(config, stream=replace(
        config.stream, query_name="widen-demo", start="latest", settle_seconds=1.0,
        checkpoint=str(home / "checkpoints" / "widen-demo")))
    shutil.rmtree(config.stream.checkpoint, ignore_errors=True)
    spark = get_spark(config, spark)
    started = stream.run(config, spark, once=True)
    tail = dt.datetime.fromisoformat(started.summary["start_offset"]["t"])
    say(f"stream: started at the tail ({tail:%Y-%m-%d %H:%M:%S} UTC); writing a minute of readings")
    with db.connection(config.source.connection) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, data_channel_id, value_format FROM {} WHERE created_time = "
                            "(SELECT max(created_time) FROM {})").format(
            sql.Identifier(config.source.schema, config.source.table),
            sql.Identifier(config.source.schema, config.source.table)))
        latest = cur.fetchall()
        # Four readings a channel, just after the stream's start (a compressed minute).
        readings = [(ship, channel, tail + dt.timedelta(milliseconds=200 * (k + 1)), fmt, 0.1 * k, k, f"live {k}", k % 2 == 0)
                    for ship, channel, fmt in latest + [(latest[0][0], "demo/new-channel", "Decimal"),
                                                        ("demo new ship", "demo/rpm", "Integer")]
                    for k in range(4)]
        readings = [(s, c, t, f, d if f == "Decimal" else None, k if f == "Integer" else None,
                     v if f == "String" else None, b if f == "Boolean" else None)
                    for s, c, t, f, d, k, v, b in readings]
        db.execute_values(cur, sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, "
                                       "double_v, long_v, str_v, bool_v) VALUES %s").format(
            sql.Identifier(config.source.schema, config.source.table)), readings)
        conn.commit()
    time.sleep(config.stream.settle_seconds + 0.5)    # the created_time mode reads settled rows only
    result = stream.run(config, spark, once=True)
    say(f"stream: {result.summary['narrow_rows']:,} narrow rows -> {result.summary['wide_rows']:,} wide rows "
        f"in {result.summary['batches']} batch(es), freshness lag {result.summary['freshness_lag_seconds']} s")
    return result.summary["narrow_rows"]
