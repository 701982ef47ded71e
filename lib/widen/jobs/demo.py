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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.catalog import schema, views as catalog_views
from widen.catalog.layouts import laid_out_ships, load_layout
from widen.config import Config, MetricsConfig
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, backfill, generate, job, plan, reconcile, report, stream
from widen.pg import db
from widen.session import get_spark
from widen.sources import generate as synthetic, open_table
from widen.targets import needs_spark, open_target

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
DEMO_SOURCE_SCHEMA = "widen_demo"
DEMO_TARGET_SCHEMA = "widen_demo_wide"
DEMO_CATALOG_SCHEMA = "widen_demo_catalog"


@dataclass(frozen=True)
class DemoOptions(generate.FleetOptions):
    pass


def forget_earlier_demo(config: Config, spark: SparkSession) -> None:
    """A fresh demo each time: every table an earlier demo made goes (the target drops its own),
    then its catalog."""
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        schema.migrate(conn, cat)
        ships = sorted(laid_out_ships(conn, cat))
        with conn.cursor() as cur:
            catalog_views.drop_all(cur, cat)        # before the tables a switched view reads
            target = open_target(config.target, spark)
            for ship in ships:
                for step in target.rollback_actions(load_layout(conn, cat, ship)):
                    step(cur)
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(cat)))
        conn.commit()


@job("demo", DemoOptions, reads_narrow_table=False, ships_from=None, lock=False)
def run(config: Config, spark: SparkSession, options: DemoOptions) -> Result:
    began = time.monotonic()
    # The demo works in schemas of its own, so pointing it at a real server never touches real data.
    # Nor its monitoring: the demo's jobs push no metrics (they would replace real runs' figures).
    config = replace(config, source=replace(config.source, schema=DEMO_SOURCE_SCHEMA),
                     target=replace(config.target, schema=DEMO_TARGET_SCHEMA,
                                    catalog_schema=DEMO_CATALOG_SCHEMA),
                     metrics=MetricsConfig())
    say = log.info
    conn_text = config.target.connection.describe()
    say(f"PostgreSQL at {conn_text}")
    made = generate.run(config, fleet_ships=options.fleet_ships, channels=options.channels, hours=options.hours,
                        seed=options.seed, replace_any_table=True)   # the demo's own schema
    say(made.report)
    forget_earlier_demo(config, get_spark(config, spark) if needs_spark(config.target) else spark)
    planned = plan.run(config)
    log.info("plan:\n%s", planned.report)
    # One session for every step: the backfill's own would be started for a backfill alone
    # (widen.jvm: its JVM only schedules), and the stream and reconcile after it need more.
    spark = get_spark(config, spark)
    first = backfill.run(config, spark)
    say(f"backfill: {first.summary['chunks_done']} chunks, {first.summary['narrow_rows']:,} narrow rows "
        f"-> {first.summary['wide_rows']:,} wide rows in {first.summary['seconds']} s")
    again = backfill.run(config, spark)
    say(f"backfill again: {again.summary['chunks_skipped']} chunks skipped, "
        f"{again.summary['chunks_done']} redone")
    streamed = live_tail(config, spark, say)
    differences = {}
    source = open_table(config.source, "demo")
    with db.connection(config.target.connection) as conn:
        for ship in sorted(laid_out_ships(conn, config.target.catalog_schema)):
            layout = load_layout(conn, config.target.catalog_schema, ship)
            differences[ship] = source.pivot_differences(conn, config.target.schema, layout)
    bad = {s: n for s, n in differences.items() if n}
    say("every wide table equals the in-database pivot" if not bad else f"DIFFERENCES: {bad}")
    proof = reconcile.run(config, spark)
    say(f"reconcile: {proof.summary['buckets']} ship x hour buckets checked, "
        f"{proof.summary['mismatched_buckets']} mismatched, {proof.summary['rejected_rows']} rejected rows "
        f"reported apart (run {proof.summary['run_id']})")
    page = report.run(config)
    say(f"report: open {page.summary['path']}")
    ok = (not bad and first.exit_code == 0 and again.summary["chunks_done"] == 0 and streamed > 0
          and proof.exit_code == 0)
    summary = {"narrow_rows": made.summary["rows"], "ships": len(differences),
               "wide_rows": first.summary["wide_rows"], "backfill_seconds": first.summary["seconds"],
               "rerun_chunks_skipped": again.summary["chunks_skipped"],
               "streamed_narrow_rows": streamed, "differences": bad,
               "reconcile_buckets": proof.summary["buckets"], "reconcile_mismatches": proof.summary["mismatched_buckets"],
               "report": page.summary["path"],
               "seconds": round(time.monotonic() - began, 2)}
    return Result("demo", EXIT_OK if ok else EXIT_PROBLEM, summary)


def live_tail(config: Config, spark: SparkSession, say: Callable[[str], None]) -> int:
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
    src = config.source
    latest = synthetic.latest_channels(src.connection, src.schema, src.table)
    # Four readings a channel, just after the stream's start (a compressed minute).
    readings = [(ship, channel, tail + dt.timedelta(milliseconds=200 * (k + 1)), fmt, 0.1 * k, k, f"live {k}", k % 2 == 0)
                for ship, channel, fmt in latest + [(latest[0][0], "demo/new-channel", "Decimal"),
                                                    ("demo new ship", "demo/rpm", "Integer")]
                for k in range(4)]
    readings = [(s, c, t, f, d if f == "Decimal" else None, k if f == "Integer" else None,
                 v if f == "String" else None, b if f == "Boolean" else None)
                for s, c, t, f, d, k, v, b in readings]
    synthetic.insert_readings(src.connection, src.schema, src.table, readings)
    time.sleep(config.stream.settle_seconds + 0.5)    # the created_time mode reads settled rows only
    result = stream.run(config, spark, once=True)
    say(f"stream: {result.summary['narrow_rows']:,} narrow rows -> {result.summary['wide_rows']:,} wide rows "
        f"in {result.summary['batches']} batch(es), freshness lag {result.summary['freshness_lag_seconds']} s")
    return result.summary["narrow_rows"]
