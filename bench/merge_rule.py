"""The backfill chunk's merge, replace rule against the greatest rule (docs/design.md, "One rule for every writer").

One chunk's staging table (--rows timestamps x --channels text or typed columns, every cell set)
MERGEd into its wide table: empty (a chunk's usual case: its range has no wide rows yet) and full
(a rerun, or a range the stream wrote first), with each rule, alternately, --repeat times; prints
the median seconds per case. MERGE on this server (18); ``--on-conflict`` times the 11-14 form.

    .venv/bin/python bench/merge_rule.py [--rows 20000] [--channels 150] [--typed] [--on-conflict]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("TZ", "UTC")

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402

from widen import embedded  # noqa: E402
from widen.targets.postgres import merge_statement  # noqa: E402

SCHEMA = "bench_merge_rule"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--typed", action="store_true", help="double precision columns instead of text")
    parser.add_argument("--on-conflict", action="store_true", help="INSERT … ON CONFLICT (PostgreSQL 11-14)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="widen-merge-bench-"))
    server = embedded.ensure_running(home)
    try:
        conn = psycopg2.connect(**server.dsn_params())
        conn.autocommit = True
        cur = conn.cursor()
        kind = "double precision" if args.typed else "text"
        names = [f"c{i}" for i in range(args.channels)]
        cols = sql.SQL(", ").join(sql.SQL("{} " + kind).format(sql.Identifier(c)) for c in names)
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(SCHEMA)))
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (created_time timestamptz, {})").format(
            sql.Identifier(SCHEMA, "s"), cols))
        value = "(random() * 1000)::int::float8" + ("" if args.typed else "::text")
        cur.execute(sql.SQL("INSERT INTO {} SELECT timestamptz '2026-01-01' + g * interval '15 s', {} "
                            "FROM generate_series(1, %s) g").format(
            sql.Identifier(SCHEMA, "s"), sql.SQL(", ").join([sql.SQL(value)] * args.channels)), (args.rows,))
        version = 140000 if args.on_conflict else conn.server_version
        types = {c: "double precision" for c in names} if args.typed else None
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.repeat):
            for greatest in (False, True):
                for state in ("empty", "full"):
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (created_time timestamptz "
                                        "PRIMARY KEY, {c})").format(t=sql.Identifier(SCHEMA, "w"), c=cols))
                    if state == "full":     # the same rows with other values: every cell is compared
                        cur.execute(sql.SQL("INSERT INTO {} SELECT created_time, {} FROM {}").format(
                            sql.Identifier(SCHEMA, "w"), sql.SQL(", ").join([sql.SQL(value)] * args.channels),
                            sql.Identifier(SCHEMA, "s")))
                    cur.execute("CHECKPOINT")
                    statement = merge_statement(version, sql.Identifier(SCHEMA, "w"), sql.Identifier(SCHEMA, "s"),
                                                names, greatest, types)
                    t0 = time.perf_counter()
                    cur.execute("BEGIN")
                    cur.execute(statement)
                    cur.execute("COMMIT")
                    times.setdefault((state, greatest), []).append(time.perf_counter() - t0)
        form = "INSERT … ON CONFLICT" if args.on_conflict else "MERGE"
        print(f"{form}, {args.rows:,} rows x {args.channels} {kind} columns ({args.rows * args.channels:,} cells), "
              f"median of {args.repeat}:")
        for state in ("empty", "full"):
            replace, greatest = (statistics.median(times[(state, g)]) for g in (False, True))
            print(f"  into {'an' if state == 'empty' else 'a'} {state} table: replace {replace:.2f} s, greatest {greatest:.2f} s "
                  f"({greatest / replace:.2f}x)")
        conn.close()
    finally:
        embedded.stop(home)


if __name__ == "__main__":
    main()
