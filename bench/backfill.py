"""Backfill benchmark: widen against the three ways a team would otherwise do it, on the same data.

  widen         ./spark-submit.sh backfill (partitioned JDBC read -> Arrow pivot -> COPY -> MERGE)
  sql-pivot     the database's own pivot: INSERT … SELECT … GROUP BY created_time with one
                max(value) FILTER (WHERE channel = …) per channel, jit off, one connection per ship
                running --sql-parallel at a time
  copy-pandas   one process: COPY the rendered narrow rows out, pandas pivot, COPY the wide rows in
  spark-native  spark.read JDBC (partitioned by created_time) + groupBy().pivot() + write.jdbc
  widen-delta   (with --delta) the same backfill into Delta tables (target.kind delta) under
                <home>/lake; checked against widen's PostgreSQL tables by rows and non-NULL cells
  widen-<ver>   (with --old-source pgbuilds/11.22) the same narrow rows copied bit-exact into an
                old PostgreSQL server started from that build, backfilled from there into the same
                target (the compatibility path: doubles rendered by render.shortest_float_text on
                the source); its tables must equal widen's byte for byte

Prints narrow rows/s and the ratios, and checks that every competitor's tables equal widen's
(EXCEPT both ways). Default data: 8 ships x 150 channels x 48 h at 15 s = 13.8M narrow rows;
--small gives 2 ships x 40 channels x 6 h.

    .venv/bin/python bench/backfill.py [--small] [--skip spark-native] [--reuse-data] [--cli] [--hours 192]
                                       [--channel-index]
                                       [--old-source pgbuilds/11.22]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("TZ", "UTC")

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402

from widen import config as widen_config, embedded  # noqa: E402
from widen.catalog import layouts as catalog  # noqa: E402
from widen.jobs import backfill  # noqa: E402
from widen.pg import (
    db,  # noqa: E402
    render,  # noqa: E402
)
from widen.session import get_spark  # noqa: E402
from widen.sources import generate  # noqa: E402

SRC_SCHEMA = "bench_src"
SCHEMAS = {"widen": "bench_widen", "sql-pivot": "bench_sql", "copy-pandas": "bench_pandas",
           "spark-native": "bench_spark"}
CATALOG = "bench_catalog"


def make_config(server) -> widen_config.Config:
    return widen_config.parse(raw_config(server))


def raw_config(server) -> dict:
    conn = {"host": server.host, "port": server.port, "database": server.database, "user": server.user}
    return ({
        "embedded": "never", "jars_dir": str(ROOT / "jars"),
        "source": {**conn, "schema": SRC_SCHEMA},
        "target": {**conn, "schema": SCHEMAS["widen"], "catalog_schema": CATALOG},
        "backfill": {"chunk_hours": 24, "partitions_per_chunk": 4, "parallel_chunks": 2,
                     "progress_seconds": 15},
        "spark": {"master": "local[*]", "conf": {"spark.sql.shuffle.partitions": "4",
                                                 "spark.driver.memory": "4g"}},
    })


def connect(cfg):
    conn = psycopg2.connect(**cfg.target.connection.psycopg_params())
    conn.autocommit = True
    conn.cursor().execute("SET TIME ZONE 'UTC'")
    return conn


def reset(conn, schemas) -> None:
    with conn.cursor() as cur:
        for schema in schemas:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def layouts(conn) -> dict[str, catalog.ShipLayout]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(sql.Identifier(CATALOG, "wide_tables")))
        ships = [r[0] for r in cur.fetchall()]
    return {s: catalog.load_layout(conn, CATALOG, s) for s in ships}


def create_tables(conn, schema: str, ship_layouts) -> None:
    with conn.cursor() as cur:
        for layout in ship_layouts.values():
            for part in layout.parts:
                cols = [sql.SQL("{} text").format(sql.Identifier(c.column_name)) for c in layout.part_channels(part)]
                cur.execute(sql.SQL("CREATE TABLE {} (created_time timestamptz PRIMARY KEY, {})").format(
                    sql.Identifier(schema, layout.tables[part]), sql.SQL(", ").join(cols)))


# --- competitors -----------------------------------------------------------------------------

#: widen's time before its first chunk started, per run name (from the backfill's summary)
BEFORE_FIRST_CHUNK: dict[str, float] = {}


def run_widen(cfg, spark, name: str = "widen") -> float:
    """A backfill from scratch: it finds the channels itself (the others are handed them)."""
    began = time.monotonic()
    result = backfill.run(cfg, spark)
    assert result.exit_code == 0, result.summary
    BEFORE_FIRST_CHUNK[name] = result.summary["seconds_before_first_chunk"]
    return time.monotonic() - began


def run_widen_cli(raw: dict, home: str) -> tuple[float, float]:
    """``./spark-submit.sh plan`` then ``./spark-submit.sh backfill``, as a user runs them (a JVM
    start for the backfill; plan runs as plain Python): (plan seconds, backfill seconds)."""
    import subprocess

    path = Path(home) / "bench-cli.yaml"
    path.write_text(json.dumps(raw))          # YAML reads JSON
    times = []
    for job in ("plan", "backfill"):
        began = time.monotonic()
        done = subprocess.run([str(ROOT / "spark-submit.sh"), job, "--config", str(path)], capture_output=True,
                              text=True, env={**os.environ, "WIDEN_HOME": home})
        times.append(time.monotonic() - began)
        if done.returncode != 0:
            raise SystemExit(f"{job} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        if job == "backfill":
            BEFORE_FIRST_CHUNK["widen"] = summary["seconds_before_first_chunk"]
    return times[0], times[1]


def delta_config(cfg, home: str):
    import shutil
    from dataclasses import replace

    root = Path(home) / "lake"
    shutil.rmtree(root, ignore_errors=True)
    return replace(cfg, target=replace(cfg.target, kind="delta", delta_root=str(root),
                                       catalog_schema=CATALOG + "_delta"))


def same_in_delta(conn, spark, delta_cfg, ship_layouts) -> bool:
    """Every Delta table has the rows and non-NULL cells of widen's PostgreSQL table."""
    from functools import reduce

    from pyspark.sql import functions as F

    from widen.targets.delta import DeltaTarget, quoted

    target = DeltaTarget(spark, delta_cfg.target)
    for layout in ship_layouts.values():
        for part in layout.parts:
            columns = [c.column_name for c in layout.part_channels(part)]
            with conn.cursor() as cur:
                cells = sql.SQL(" + ").join(sql.SQL("({} IS NOT NULL)::int").format(sql.Identifier(c))
                                            for c in columns) if columns else sql.SQL("0")
                cur.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}").format(
                    cells, sql.Identifier(SCHEMAS["widen"], layout.tables[part])))
                expected = tuple(int(v) for v in cur.fetchone())
            frame = target.read(layout.tables[part])
            nonnull = reduce(lambda a, b: a + b, [F.col(quoted(c)).isNotNull().cast("long") for c in columns],
                             F.lit(0).cast("long"))
            found = frame.agg(F.count(F.lit(1)), F.coalesce(F.sum(nonnull), F.lit(0))).first()
            if (int(found[0]), int(found[1])) != expected:
                print(f"widen-delta: {layout.tables[part]}: {tuple(found)} != {expected}", flush=True)
                return False
    return True


def run_sql_pivot(cfg, ship_layouts, parallel: int) -> float:
    schema = SCHEMAS["sql-pivot"]
    src = sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries")

    def one(layout):
        conn = connect(cfg)
        with conn.cursor() as cur:
            cur.execute("SET jit = off")
            for part in layout.parts:
                members = layout.part_channels(part)
                cols = sql.SQL(", ").join(sql.Identifier(c.column_name) for c in members)
                pivots = sql.SQL(", ").join(sql.SQL("max({v} COLLATE \"C\") FILTER (WHERE data_channel_id = {ch})")
                                            .format(v=render.rendered_value(), ch=sql.Literal(c.data_channel_id))
                                            for c in members)
                cur.execute(sql.SQL("INSERT INTO {t} (created_time, {cols}) SELECT created_time, {p} FROM {s} "
                                    "WHERE ship_id = %s AND {valid} GROUP BY created_time").format(
                    t=sql.Identifier(schema, layout.tables[part]), cols=cols, p=pivots, s=src,
                    valid=render.valid_row()), (layout.ship_id,))
        conn.close()

    began = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, ship_layouts.values()))
    return time.monotonic() - began


def run_copy_pandas(cfg, ship_layouts) -> float:
    """What a competent hand-written script does: COPY out, pandas pivot, COPY in (CSV via Arrow)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    schema = SCHEMAS["copy-pandas"]
    began = time.monotonic()
    conn = connect(cfg)
    with conn.cursor() as cur:
        for layout in ship_layouts.values():
            out = io.BytesIO()
            cur.copy_expert(sql.SQL(
                "COPY (SELECT created_time, data_channel_id, {v} FROM {s} WHERE ship_id = {ship} AND {valid}) "
                "TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)").format(
                v=render.rendered_value(), s=sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries"),
                ship=sql.Literal(layout.ship_id), valid=render.valid_row()).as_string(cur), out)
            out.seek(0)
            # FORCE_QUOTE makes NULL the only unquoted empty field, which Arrow reads as null.
            table = pacsv.read_csv(out, read_options=pacsv.ReadOptions(column_names=["t", "ch", "v"]),
                                   convert_options=pacsv.ConvertOptions(
                                       column_types={"t": pa.string(), "ch": pa.string(), "v": pa.string()},
                                       strings_can_be_null=True, quoted_strings_can_be_null=False))
            narrow = table.to_pandas()
            if narrow.duplicated(["t", "ch"]).any():
                narrow = narrow.groupby(["t", "ch"], as_index=False)["v"].max()
            wide = narrow.pivot(index="t", columns="ch", values="v")
            for part in layout.parts:
                members = layout.part_channels(part)
                frame = wide.reindex(columns=[c.data_channel_id for c in members]).reset_index()
                buf = io.BytesIO()
                pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), buf,
                                pacsv.WriteOptions(include_header=False))
                buf.seek(0)
                cols = sql.SQL(", ").join([sql.Identifier("created_time")] +
                                          [sql.Identifier(c.column_name) for c in members])
                cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
                    sql.Identifier(schema, layout.tables[part]), cols).as_string(cur), buf)
    conn.close()
    return time.monotonic() - began


def run_spark_native(cfg, spark, ship_layouts) -> float:
    from pyspark.sql import functions as F

    schema = SCHEMAS["spark-native"]
    conn_cfg = cfg.source.connection
    props = conn_cfg.jdbc_properties()
    began = time.monotonic()
    conn = connect(cfg)
    for layout in ship_layouts.values():
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT min(created_time), max(created_time) FROM {} WHERE ship_id = %s").format(
                sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries")), (layout.ship_id,))
            lo, hi = cur.fetchone()
        query = sql.SQL("(SELECT created_time, data_channel_id, {v} AS value FROM {s} WHERE ship_id = {ship} "
                        "AND {valid}) q").format(v=render.rendered_value(),
                                                 s=sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries"),
                                                 ship=sql.Literal(layout.ship_id),
                                                 valid=render.valid_row()).as_string(conn)
        narrow = (spark.read.format("jdbc").option("url", conn_cfg.jdbc_url()).option("dbtable", query)
                  .option("partitionColumn", "created_time").option("lowerBound", lo.isoformat())
                  .option("upperBound", hi.isoformat()).option("numPartitions", 4)
                  .option("fetchsize", 10000).options(**props).load())
        channels = [c.data_channel_id for c in layout.channels.values()]
        wide = narrow.groupBy("created_time").pivot("data_channel_id", channels).agg(F.max("value"))
        for part in layout.parts:
            members = layout.part_channels(part)
            frame = wide.select("created_time", *[F.col(f"`{c.data_channel_id}`").alias(c.column_name)
                                                  for c in members])
            frame.write.jdbc(conn_cfg.jdbc_url(), sql.Identifier(schema, layout.tables[part]).as_string(conn),
                             mode="append", properties={**props, "batchsize": "5000"})
    conn.close()
    return time.monotonic() - began


def old_source_config(cfg, build: Path, home: str):
    """The bench's config with the narrow table on an old server started from ``build``."""
    from dataclasses import replace

    old = embedded.ensure_running(Path(home) / f"pg-{build.name}", build=build)
    conn = replace(cfg.source.connection, host=old.host, port=old.port, database=old.database, user=old.user)
    return replace(cfg, source=replace(cfg.source, connection=conn),
                   target=replace(cfg.target, schema=f"{SCHEMAS['widen']}_old", catalog_schema=f"{CATALOG}_old"))


def copy_narrow_table(cfg, old_cfg) -> float:
    """The narrow table from the bench's server to the old one, bit-exact (COPY text with
    extra_float_digits 3), streamed through a pipe; returns seconds."""
    began = time.monotonic()
    table = sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries")
    with db.connection(old_cfg.source.connection) as dst:
        generate.ensure_narrow_table(dst, SRC_SCHEMA, "tbl_data_timeseries")
        with dst.cursor() as cur:
            cur.execute(sql.SQL("TRUNCATE {}").format(table))
            cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries_ship_time")))
        dst.commit()
        read_end, write_end = os.pipe()
        columns = sql.SQL("(ship_id, data_channel_id, created_time, value_format, double_v, long_v, str_v, bool_v)")

        def send() -> None:
            with db.connection(cfg.source.connection) as src, src.cursor() as cur, open(write_end, "wb") as out:
                cur.copy_expert(sql.SQL("COPY {} {} TO STDOUT").format(table, columns).as_string(cur), out)

        sender = threading.Thread(target=send)
        sender.start()
        with dst.cursor() as cur, open(read_end, "rb") as incoming:
            cur.copy_expert(sql.SQL("COPY {} {} FROM STDIN").format(table, columns).as_string(cur), incoming)
            cur.execute(sql.SQL("CREATE INDEX {} ON {} (ship_id, created_time)").format(
                sql.Identifier("tbl_data_timeseries_ship_time"), table))
        dst.commit()
        sender.join()
        dst.autocommit = True
        dst.cursor().execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    return time.monotonic() - began


def same_tables(conn, schema: str, ship_layouts) -> bool:
    with conn.cursor() as cur:
        for layout in ship_layouts.values():
            for part in layout.parts:
                a = sql.Identifier(SCHEMAS["widen"], layout.tables[part])
                b = sql.Identifier(schema, layout.tables[part])
                cur.execute(sql.SQL("SELECT (SELECT count(*) FROM (TABLE {a} EXCEPT ALL TABLE {b}) x) + "
                                    "(SELECT count(*) FROM (TABLE {b} EXCEPT ALL TABLE {a}) y)").format(a=a, b=b))
                if cur.fetchone()[0]:
                    return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="2 ships x 40 channels x 6 h")
    parser.add_argument("--ships", type=int, default=8)
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--hours", type=float, default=48)
    parser.add_argument("--skip", action="append", default=[], choices=list(SCHEMAS)[1:])
    parser.add_argument("--sql-parallel", type=int, default=1, help="ships pivoted at once by sql-pivot")
    parser.add_argument("--reuse-data", action="store_true", help="keep the narrow table of the last run")
    parser.add_argument("--home", default=str(ROOT / ".local" / "bench"))
    parser.add_argument("--delta", action="store_true", help="also backfill into Delta tables (widen-delta)")
    parser.add_argument("--cli", action="store_true",
                        help="widen as a user runs it: ./spark-submit.sh plan, then ./spark-submit.sh backfill "
                             "(JVM start included)")
    parser.add_argument("--channel-index", action="store_true",
                        help="give the narrow table an index on (ship_id, data_channel_id, created_time), so "
                             "widen finds channels by a skip scan (without it: a TABLESAMPLE); not timed")
    parser.add_argument("--old-source", type=Path, metavar="BUILD",
                        help="also backfill from an old server started from this build (e.g. pgbuilds/11.22)")
    args = parser.parse_args()
    if args.small:
        args.ships, args.channels, args.hours = 2, 40, 6
    server = embedded.ensure_running(Path(args.home))
    cfg = make_config(server)
    conn = connect(cfg)
    if not args.reuse_data:
        made = generate.generate_fleet(cfg.source.connection, SRC_SCHEMA, ships=args.ships,
                                       channels=args.channels, hours=args.hours, replace=True, replace_any_table=True)
        print(f"generated {made['rows']:,} narrow rows in {made['seconds']} s", flush=True)
    with conn.cursor() as cur:
        index = sql.Identifier(SRC_SCHEMA, "bench_narrow_ship_channel_time")
        if args.channel_index:
            cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (ship_id, data_channel_id, created_time)").format(
                sql.Identifier(index.strings[1]), sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries")))
        else:
            cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(index))
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries")))
        narrow_rows = cur.fetchone()[0]
        cur.execute("VACUUM ANALYZE " + sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries").as_string(cur))
    old_cfg = old_source_config(cfg, args.old_source, args.home) if args.old_source else None
    if old_cfg:
        print(f"copied the narrow table to PostgreSQL {args.old_source.name} in "
              f"{copy_narrow_table(cfg, old_cfg):.0f} s", flush=True)
    reset(conn, [CATALOG, CATALOG + "_delta", CATALOG + "_old", *SCHEMAS.values(), SCHEMAS["widen"] + "_old"])
    cli_parts = None
    if args.cli:
        cli_parts = run_widen_cli(raw_config(server), args.home)
        timings = {"widen": sum(cli_parts)}
        print(f"widen (CLI): plan {cli_parts[0]:.1f} s + backfill {cli_parts[1]:.1f} s", flush=True)
    began = time.monotonic()
    spark = get_spark(cfg)
    spark_start = time.monotonic() - began
    if not args.cli:
        timings = {"widen": run_widen(cfg, spark)}
    print(f"widen: {timings['widen']:.1f} s ({BEFORE_FIRST_CHUNK['widen']} s before its first chunk)", flush=True)
    ship_layouts = layouts(conn)
    for name in ("sql-pivot", "copy-pandas", "spark-native"):
        if name in args.skip:
            continue
        create_tables(conn, SCHEMAS[name], ship_layouts)
        if name == "sql-pivot":
            timings[name] = run_sql_pivot(cfg, ship_layouts, args.sql_parallel)
        elif name == "copy-pandas":
            timings[name] = run_copy_pandas(cfg, ship_layouts)
        else:
            timings[name] = run_spark_native(cfg, spark, ship_layouts)
        print(f"{name}: {timings[name]:.1f} s", flush=True)
    equal = {name: same_tables(conn, SCHEMAS[name], ship_layouts) for name in timings if name != "widen"}
    if old_cfg:
        name = f"widen-{args.old_source.name}"
        timings[name] = run_widen(old_cfg, spark, name)
        print(f"{name}: {timings[name]:.1f} s", flush=True)
        equal[name] = same_tables(conn, old_cfg.target.schema, ship_layouts)
    if args.delta:
        delta_cfg = delta_config(cfg, args.home)
        timings["widen-delta"] = run_widen(delta_cfg, spark, "widen-delta")
        print(f"widen-delta: {timings['widen-delta']:.1f} s", flush=True)
        equal["widen-delta"] = same_in_delta(conn, spark, delta_cfg, ship_layouts)
    print(f"\n{narrow_rows:,} narrow rows, {args.ships} ships x {args.channels} channels x {args.hours:g} h; "
          f"{os.cpu_count()} cores, {platform.machine()}; Spark session start {spark_start:.1f} s (not counted)")
    print(f"{'competitor':<14} {'seconds':>8} {'narrow rows/s':>14} {'widen speed-up':>15} {'same tables':>12}")
    for name, seconds in timings.items():
        ratio = seconds / timings["widen"]
        print(f"{name:<14} {seconds:>8.1f} {narrow_rows / seconds:>14,.0f} {ratio:>14.2f}x "
              f"{('-' if name == 'widen' else str(equal[name])):>12}")
    print("widen's time includes finding each ship's channels ("
          + ("index skip scan" if args.channel_index else "TABLESAMPLE: no index leads with (ship_id, data_channel_id)")
          + "); the others were handed them")
    print("before the first chunk: " + ", ".join(f"{k} {v} s" for k, v in BEFORE_FIRST_CHUNK.items())
          + (f"; through the CLI: plan {cli_parts[0]:.1f} s + backfill {cli_parts[1]:.1f} s (JVM start included)"
             if cli_parts else ""))
    print(json.dumps({"narrow_rows": narrow_rows, "seconds": {k: round(v, 2) for k, v in timings.items()},
                      "before_first_chunk": BEFORE_FIRST_CHUNK, "same_tables": equal,
                      "cli": {"plan": round(cli_parts[0], 2), "backfill": round(cli_parts[1], 2)} if cli_parts else None}))
    conn.close()
    spark.stop()
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
