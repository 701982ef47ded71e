"""Reconcile benchmark: a full reconcile against counting the rows, on ~10M narrow rows.

    baseline   SELECT count(*) on the narrow table + SELECT count(*) on every wide table
    reconcile  widen's reconcile job (bucket checksums on both sides, Spark over ships)

Both run on the same data after a backfill; the Spark session is started before either is timed.
Prints the seconds and the ratio (target: reconcile within 3x of the counts).

    .venv/bin/python bench/reconcile.py [--ships 8 --channels 150 --hours 35] [--reuse-data]
"""
from __future__ import annotations

import argparse
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
from widen.jobs import backfill, reconcile  # noqa: E402
from widen.session import get_spark  # noqa: E402
from widen.sources import generate  # noqa: E402

SRC, TGT, CAT = "brec_src", "brec_wide", "brec_catalog"


def make_config(server) -> widen_config.Config:
    conn = {"host": server.host, "port": server.port, "database": server.database, "user": server.user}
    return widen_config.parse({
        "embedded": "never", "jars_dir": str(ROOT / "jars"),
        "source": {**conn, "schema": SRC},
        "target": {**conn, "schema": TGT, "catalog_schema": CAT},
        "backfill": {"chunk_hours": 24, "partitions_per_chunk": 4, "parallel_chunks": 2, "progress_seconds": 30},
        "reconcile": {"bucket_hours": 1, "parallel_ships": 2},
        "spark": {"master": "local[*]", "conf": {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"}},
    })


def counts(params: dict) -> tuple[float, int, int]:
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    began = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SRC, "tbl_data_timeseries")))
        narrow = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT table_schema, table_name FROM {}").format(sql.Identifier(CAT, "wide_tables")))
        wide = 0
        for schema, table in cur.fetchall():
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
            wide += cur.fetchone()[0]
    conn.close()
    return time.monotonic() - began, narrow, wide


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ships", type=int, default=8)
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--hours", type=float, default=35.0)
    parser.add_argument("--reuse-data", action="store_true", help="skip generate + backfill")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--home", default=str(ROOT / ".local" / "bench"))
    args = parser.parse_args()
    server = embedded.ensure_running(Path(args.home))
    config = make_config(server)
    params = {"host": server.host, "port": server.port, "dbname": server.database, "user": server.user}
    spark = get_spark(config)
    spark.sparkContext.setLogLevel("ERROR")
    if not args.reuse_data:
        conn = psycopg2.connect(**params)
        conn.autocommit = True
        with conn.cursor() as cur:
            for schema in (SRC, TGT, CAT):
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.close()
        made = generate.generate_fleet(config.source.connection, SRC, ships=args.ships, channels=args.channels,
                                       hours=args.hours, replace=True, replace_any_table=True)
        print(f"[bench] generated {made['rows']:,} narrow rows in {made['seconds']} s", flush=True)
        done = backfill.run(config, spark)
        print(f"[bench] backfill {done.summary['seconds']} s", flush=True)
        conn = psycopg2.connect(**params)
        conn.autocommit = True
        conn.cursor().execute("VACUUM ANALYZE")
        conn.close()
    results = []
    for run in range(args.runs):
        count_s, narrow, wide = counts(params)
        began = time.monotonic()
        result = reconcile.run(config, spark)
        reconcile_s = time.monotonic() - began
        assert result.exit_code == 0, result.report
        results.append({"run": run + 1, "narrow_rows": narrow, "wide_rows": wide, "count_s": round(count_s, 2),
                        "reconcile_s": round(reconcile_s, 2), "buckets": result.summary["buckets"],
                        "ratio": round(reconcile_s / count_s, 2)})
        print(f"[bench] run {run + 1}: counts {count_s:.2f} s ({narrow:,} narrow + {wide:,} wide rows), "
              f"reconcile {reconcile_s:.2f} s over {result.summary['buckets']} buckets -> "
              f"{reconcile_s / count_s:.1f}x the counts", flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    (out / "reconcile.json").write_text(json.dumps({"runs": results, "machine": machine}, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
