"""Rollback benchmark: how long going back takes (planning notes: at most 30 minutes), against
doing it by hand in SQL.

One ship of 10M narrow rows (150 channels x 278 h at 15 s), backfilled; then, timed:

  rollback --dry-run          what would be done (nothing changes)
  rollback of one day         widen: the wide rows of that day deleted from every part table in one
                              transaction, the day's ledger rows forgotten; by hand: the same DELETE
                              per part table (same transaction shape, no catalog), on a copy
  backfill of that day again  the way forward after a range rollback
  rollback of the whole ship  widen: DROP of its tables + catalog forgotten + marked rolled back;
                              by hand: DROP TABLE of a copy of its tables

Each step is checked: the narrow table is untouched (row count and a checksum), the day's wide rows
are gone and no other, the day comes back equal (EXCEPT both ways against the tables before), the
tables are gone. The Spark session is started before anything is timed.

    .venv/bin/python bench/rollback.py [--channels 150 --hours 278] [--reuse-data]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("TZ", "UTC")

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402

from widen import config as widen_config, embedded  # noqa: E402
from widen.jobs import backfill, rollback  # noqa: E402
from widen.session import get_spark  # noqa: E402
from widen.sources import generate  # noqa: E402

SRC, TGT, CAT, COPY = "brb_src", "brb_wide", "brb_catalog", "brb_by_hand"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SHIP = "IMO9000001"


def make_config(server) -> widen_config.Config:
    conn = {"host": server.host, "port": server.port, "database": server.database, "user": server.user}
    return widen_config.parse({
        "embedded": "never", "jars_dir": str(ROOT / "jars"),
        "source": {**conn, "schema": SRC},
        "target": {**conn, "schema": TGT, "catalog_schema": CAT},
        "backfill": {"chunk_hours": 24, "partitions_per_chunk": 4, "parallel_chunks": 2, "progress_seconds": 30},
        "spark": {"master": "local[*]", "conf": {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"}},
    })


def timed(what: str, action):
    began = time.monotonic()
    out = action()
    seconds = time.monotonic() - began
    print(f"[bench] {what}: {seconds:.2f} s", flush=True)
    return seconds, out


def wide_tables(cur) -> list[str]:
    cur.execute(sql.SQL("SELECT table_name FROM {} WHERE ship_id = %s ORDER BY part").format(
        sql.Identifier(CAT, "wide_tables")), (SHIP,))
    return [r[0] for r in cur.fetchall()]


def narrow_fingerprint(cur) -> tuple:
    cur.execute(sql.SQL("SELECT count(*), sum(hashtext(data_channel_id || created_time::text)::bigint) FROM {}").format(
        sql.Identifier(SRC, "tbl_data_timeseries")))
    return cur.fetchone()


def rows_in(cur, schema: str, tables: list[str], lo=None, hi=None) -> int:
    total = 0
    for table in tables:
        where = sql.SQL(" WHERE created_time >= {} AND created_time < {}").format(
            sql.Literal(lo), sql.Literal(hi)) if lo else sql.SQL("")
        cur.execute(sql.SQL("SELECT count(*) FROM {}{}").format(sql.Identifier(schema, table), where))
        total += cur.fetchone()[0]
    return total


def copy_tables(cur, tables: list[str]) -> None:
    """The ship's tables copied into COPY, with a primary key like widen's, for the by-hand runs."""
    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(COPY)))
    for table in tables:
        cur.execute(sql.SQL("CREATE TABLE {c} AS TABLE {t}; ALTER TABLE {c} ADD PRIMARY KEY (created_time)").format(
            c=sql.Identifier(COPY, table), t=sql.Identifier(TGT, table)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--hours", type=float, default=278.0, help="278 h x 150 channels at 15 s = 10M rows")
    parser.add_argument("--reuse-data", action="store_true", help="keep the narrow table of the last run")
    parser.add_argument("--home", default=str(ROOT / ".local" / "bench"))
    args = parser.parse_args()
    server = embedded.ensure_running(Path(args.home))
    config = make_config(server)
    params = {"host": server.host, "port": server.port, "dbname": server.database, "user": server.user}
    spark = get_spark(config)
    spark.sparkContext.setLogLevel("ERROR")
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        for schema in (TGT, CAT) if args.reuse_data else (SRC, TGT, CAT):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    if not args.reuse_data:
        made = generate.generate_fleet(config.source.connection, SRC, ships=1, ship_list=[SHIP],
                                       channels=args.channels, hours=args.hours, start=START, replace=True,
                                       replace_any_table=True)
        print(f"[bench] generated {made['rows']:,} narrow rows in {made['seconds']} s", flush=True)
    backfill_s, done = timed("backfill of the whole ship", lambda: backfill.run(config, spark))
    assert done.exit_code == 0, done.report
    figures: dict = {"backfill_s": round(backfill_s, 2)}
    with conn.cursor() as cur:
        cur.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SRC, "tbl_data_timeseries")))
        narrow = narrow_fingerprint(cur)
        figures["narrow_rows"] = narrow[0]
        tables = wide_tables(cur)
        figures["wide_tables"] = len(tables)
        wide_before = rows_in(cur, TGT, tables)
        figures["wide_rows"] = wide_before
        copy_tables(cur, tables)
    day_lo = START + dt.timedelta(days=5)
    day_hi = day_lo + dt.timedelta(days=1)
    with conn.cursor() as cur:
        day_rows = rows_in(cur, TGT, tables, day_lo, day_hi)
        cur.execute(sql.SQL("CREATE TEMP TABLE day_before AS SELECT * FROM {} WHERE created_time >= %s AND "
                            "created_time < %s").format(sql.Identifier(TGT, tables[0])), (day_lo, day_hi))

    s, dry = timed("rollback --dry-run (one day)", lambda: rollback.run(
        config, spark, ships=[SHIP], start=day_lo, end=day_hi, dry_run=True))
    assert dry.exit_code == 0, dry.report
    figures["dry_run_s"] = round(s, 2)

    s, day = timed("widen: rollback of one day", lambda: rollback.run(
        config, spark, ships=[SHIP], start=day_lo, end=day_hi))
    assert day.exit_code == 0, day.report
    figures["day_rollback_s"] = round(s, 2)

    def by_hand_day():
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for table in tables:
                cur.execute(sql.SQL("DELETE FROM {} WHERE created_time >= %s AND created_time < %s").format(
                    sql.Identifier(COPY, table)), (day_lo, day_hi))
            cur.execute("COMMIT")
    s, _ = timed("by hand: DELETE of one day", by_hand_day)
    figures["day_by_hand_s"] = round(s, 2)
    with conn.cursor() as cur:
        assert narrow_fingerprint(cur) == narrow, "the narrow table changed"
        assert rows_in(cur, TGT, tables, day_lo, day_hi) == 0
        assert rows_in(cur, TGT, tables) == wide_before - day_rows, "rows outside the day went"
        assert rows_in(cur, COPY, tables) == wide_before - day_rows
    figures["day_wide_rows"] = day_rows

    s, again = timed("widen: backfill of that day again", lambda: backfill.run(
        config, spark, ships=[SHIP], start=day_lo, end=day_hi))
    assert again.exit_code == 0, again.report
    figures["day_backfill_s"] = round(s, 2)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT (SELECT count(*) FROM (TABLE day_before EXCEPT ALL SELECT * FROM {t} WHERE "
                            "created_time >= %s AND created_time < %s) a) + (SELECT count(*) FROM (SELECT * FROM {t} "
                            "WHERE created_time >= %s AND created_time < %s EXCEPT ALL TABLE day_before) b)").format(
            t=sql.Identifier(TGT, tables[0])), (day_lo, day_hi, day_lo, day_hi))
        assert cur.fetchone()[0] == 0, "the day came back different"
        assert rows_in(cur, TGT, tables) == wide_before

    s, whole = timed("widen: rollback of the whole ship", lambda: rollback.run(config, spark, ships=[SHIP]))
    assert whole.exit_code == 0, whole.report
    figures["ship_rollback_s"] = round(s, 2)

    def by_hand_ship():
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(
                sql.Identifier(COPY, t) for t in tables)))
    s, _ = timed("by hand: DROP TABLE of the ship's tables", by_hand_ship)
    figures["ship_by_hand_s"] = round(s, 2)
    with conn.cursor() as cur:
        assert narrow_fingerprint(cur) == narrow, "the narrow table changed"
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (TGT,))
        assert cur.fetchone()[0] == 0, "tables left behind"
        cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(COPY)))
    conn.close()

    print("[bench] " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    (out / "rollback.json").write_text(json.dumps({"figures": figures, "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
