"""Stream benchmark: freshness from narrow commit to wide visibility, at the nominal rate and 10x.

A writer process plays a fleet: every ship commits one transaction per reading interval holding
one reading of each of its channels (created_time = now), ships spread evenly over the interval.
Nominal: 100 ships x 200 channels x 4 readings a minute (one per 15 s) = 1,333 narrow rows/s; 10x
keeps the fleet and reads every 1.5 s (13,333 rows/s). The stream job runs in this process
(exact mode, ingestion id) with its usual sink. A prober polls the newest created_time of a sample
of ships' wide tables every 50 ms; a reading's freshness is the first time the prober sees it minus
the time its narrow transaction committed (so it includes up to 50 ms of polling).

Prints p50/p95/max freshness per rate, p95 per minute (bounded lag = it does not grow), rows/s,
batches, and writes bench/results/stream-<rate>.json. Run it on a quiet machine:

    .venv/bin/python bench/stream.py [--minutes 5] [--rates 1,10] [--ships 100] [--channels 200]

Backlog mode: a backlog of N million narrow rows (an outage, or ``stream.start: earliest``) drained
by ``stream --once`` run as its own process, as a scheduler runs it; the RSS of the driver's Python
process, its JVM and the Python workers is sampled every 0.2 s. Bounded (stream.max_rows_per_batch)
against unbounded (the old single batch):

    .venv/bin/python bench/stream.py --backlog 1,4 [--max-rows 100000] [--unbounded 1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("TZ", "UTC")

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402
from psycopg2.extras import execute_values  # noqa: E402

from widen import config as widen_config, embedded  # noqa: E402
from widen.core import naming  # noqa: E402
from widen.jobs import stream  # noqa: E402
from widen.session import get_spark  # noqa: E402
from widen.sources import generate  # noqa: E402

SRC, TGT, CAT = "bstream_src", "bstream_wide", "bstream_catalog"
TABLE = "tbl_data_timeseries"
PROBE_SECONDS = 0.05


def make_config(server, home: Path, rate: int, mode: str = "poll") -> widen_config.Config:
    conn = {"host": server.host, "port": server.port, "database": server.database, "user": server.user}
    source = {"order_column": "ingest_id"} if mode == "poll" else {"mode": "cdc"}
    return widen_config.parse({
        "embedded": "never", "jars_dir": str(ROOT / "jars"), "home": str(home),
        "source": {**conn, "schema": SRC, **source},
        "target": {**conn, "schema": TGT, "catalog_schema": CAT},
        "stream": {"query_name": f"bench-{mode}-{rate}x", "checkpoint": str(home / f"bench-stream-{mode}-{rate}x"),
                   "trigger_seconds": 0.25, "start": "latest", "buckets": 2},
        "spark": {"master": "local[*]", "conf": {"spark.sql.shuffle.partitions": "2",
                                                 "spark.driver.memory": "4g"}},
    })


def reset(params: dict, mode: str = "poll") -> None:
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    with conn.cursor() as cur:
        # an earlier cdc run's slot would keep WAL (and its publication a dropped table's name)
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name LIKE 'widen_bench_%%' AND NOT active")
        cur.execute("SELECT pubname FROM pg_publication WHERE pubname LIKE 'widen_bench_%%'")
        for (name,) in cur.fetchall():
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        for schema in (SRC, TGT, CAT):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    generate.ensure_narrow_table(conn, SRC, TABLE)
    with conn.cursor() as cur:
        narrow = sql.Identifier(SRC, TABLE)
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN ingest_id bigserial").format(narrow))
        cur.execute(sql.SQL("CREATE INDEX ON {} (ingest_id)").format(narrow))
        if mode == "cdc":
            cur.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(narrow))
    conn.close()


def writer(params: dict, ships: list[str], channels: list[tuple[str, str]], interval: float,
           seconds: float, out_path: str, corrections: bool = False) -> None:
    """One transaction per ship per ``interval``; logs (ship, created_time, commit time). With
    ``corrections``, each transaction also updates 1 % of its row count of earlier readings of the
    ship and deletes 0.1 % (the application correcting and removing readings)."""
    import random

    conn = psycopg2.connect(**params)
    cur = conn.cursor()
    cur.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    rng = random.Random(3)
    earlier: dict[str, list] = {}
    update = sql.SQL("UPDATE {} SET double_v = double_v + 1, str_v = str_v || '!' WHERE ship_id = %s AND "
                     "created_time = %s AND data_channel_id = %s").format(sql.Identifier(SRC, TABLE))
    delete = sql.SQL("DELETE FROM {} WHERE ship_id = %s AND created_time = %s AND data_channel_id = %s").format(
        sql.Identifier(SRC, TABLE))
    debt = {"update": 0.0, "delete": 0.0}
    insert = sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v, long_v, "
                     "str_v, bool_v) VALUES %s").format(sql.Identifier(SRC, TABLE)).as_string(cur)
    log = []
    began = time.time()
    step = interval / len(ships)
    k = 0
    while time.time() - began < seconds:
        due = began + k * step
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        ship = ships[k % len(ships)]
        now = dt.datetime.now(dt.UTC)
        rows = [(ship, name, now, fmt, k * 0.5 if fmt == "Decimal" else None, k if fmt == "Integer" else None,
                 f"v{k}" if fmt == "String" else None, k % 2 == 0 if fmt == "Boolean" else None)
                for name, fmt in channels]
        execute_values(cur, insert, rows, page_size=len(rows))
        if corrections and earlier.get(ship):
            debt["update"] += len(rows) * 0.01
            debt["delete"] += len(rows) * 0.001
            for kind, statement in (("update", update), ("delete", delete)):
                while debt[kind] >= 1:
                    debt[kind] -= 1
                    cur.execute(statement, (ship, rng.choice(earlier[ship]), rng.choice(channels)[0]))
        earlier.setdefault(ship, []).append(now)
        conn.commit()
        log.append((ship, now.isoformat(), time.time()))
        k += 1
    conn.close()
    with open(out_path, "w") as fh:
        json.dump(log, fh)


def prober(params: dict, tables: dict[str, str], stop: threading.Event, seen: dict) -> None:
    """Every PROBE_SECONDS: newest created_time per sampled ship; records when each first shows."""
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET TIME ZONE 'UTC'")
    newest: dict[str, dt.datetime] = {}
    while not stop.is_set():
        present = {}
        for ship, table in tables.items():
            cur.execute("SELECT to_regclass(%s)", (f'{TGT}."{table}"',))
            if cur.fetchone()[0] is not None:
                present[ship] = table
        if present:
            query = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {s}, created_time FROM {t} WHERE created_time > {since}").format(
                    s=sql.Literal(ship), t=sql.Identifier(TGT, table),
                    since=sql.Literal(newest.get(ship, dt.datetime(1970, 1, 1, tzinfo=dt.UTC))))
                for ship, table in present.items())
            cur.execute(query)
            now = time.time()
            for ship, created in cur.fetchall():
                seen.setdefault((ship, created.isoformat()), now)
                if created > newest.get(ship, created - dt.timedelta(seconds=1)):
                    newest[ship] = created
        time.sleep(PROBE_SECONDS)
    conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_rate(server, spark, home: Path, rate: int, args) -> dict:
    params = {"host": server.host, "port": server.port, "dbname": server.database, "user": server.user}
    reset(params, args.mode)
    config = make_config(server, home, rate, args.mode)
    ships = generate.ship_ids(args.ships)
    channels = generate.channel_names(args.channels, seed=11)
    interval = 15.0 / rate
    sample = ships[:: max(1, len(ships) // args.sample)][: args.sample]
    tables = {s: naming.table_name(config.target.wide_table_template, s) for s in sample}
    import shutil
    shutil.rmtree(config.stream.checkpoint, ignore_errors=True)
    run = stream.start(config, spark)
    log_path = home / f"bench-stream-writer-{rate}x.json"
    seconds = args.warmup + args.minutes * 60
    proc = mp.get_context("spawn").Process(target=writer, args=(params, ships, channels, interval, seconds,
                                                                str(log_path), args.corrections))
    seen: dict = {}
    stop = threading.Event()
    probe = threading.Thread(target=prober, args=(params, tables, stop, seen), daemon=True)
    began = time.time()
    probe.start()
    proc.start()
    print(f"[bench] {args.mode}{' + corrections' if args.corrections else ''} "
          f"{rate}x: {len(ships)} ships x {len(channels)} channels every {interval:g} s "
          f"= {len(ships) * len(channels) / interval:,.0f} rows/s for {seconds:.0f} s "
          f"({args.warmup:.0f} s warm-up)", flush=True)
    proc.join()
    # Let the stream catch up with the last commits, then stop.
    drain_deadline = time.time() + 60
    log = json.loads(log_path.read_text())
    wanted = [(s, c) for s, c, _ in log if s in tables]
    while time.time() < drain_deadline and not all(k in seen for k in wanted):
        time.sleep(0.2)
    drained = time.time() - began - seconds
    stop.set()
    probe.join()
    run.query.stop()
    summary = run.finish()
    fresh, per_minute = [], {}
    for ship, created, committed in log:
        if ship not in tables or committed - began < args.warmup:
            continue
        key = (ship, dt.datetime.fromisoformat(created).isoformat())
        if key not in seen:
            fresh.append(float("inf"))
            continue
        lag = seen[key] - committed
        fresh.append(lag)
        per_minute.setdefault(int((committed - began - args.warmup) // 60), []).append(lag)
    finite = [f for f in fresh if f != float("inf")]
    result = {
        "mode": args.mode, "corrections": args.corrections, "rate": f"{rate}x", "ships": len(ships),
        "channels": len(channels), "interval_s": interval,
        "narrow_rows_per_s": len(ships) * len(channels) / interval, "measured_minutes": args.minutes,
        "samples": len(fresh), "missing": len(fresh) - len(finite),
        "p50_s": round(statistics.median(finite), 3), "p95_s": round(percentile(finite, 0.95), 3),
        "max_s": round(max(finite), 3),
        "p95_per_minute_s": {m: round(percentile(v, 0.95), 3) for m, v in sorted(per_minute.items())},
        "drain_s": round(drained, 1), "batches": summary["batches"], "narrow_rows": summary["narrow_rows"],
        "late_rows": summary["late_rows"],
    }
    minutes = list(result["p95_per_minute_s"].values())
    result["bounded"] = bool(minutes) and minutes[-1] <= max(2 * minutes[0], minutes[0] + 1.0) and result["missing"] == 0
    print(f"[bench] {rate}x: p50 {result['p50_s']} s, p95 {result['p95_s']} s, max {result['max_s']} s over "
          f"{len(finite)} readings of {len(tables)} sampled ships; p95 per minute {minutes}; "
          f"{summary['batches']} batches; lag {'bounded' if result['bounded'] else 'NOT bounded'}", flush=True)
    return result


def tree_rss_mb(root_pid: int) -> dict[str, float]:
    """RSS (MB) of the driver's Python process, its JVM and the other Python processes below it."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid = int(entry.name)
        children.setdefault(int(fields["PPid"].strip()), []).append(pid)
        names[pid] = fields["Name"].strip()
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    out = {"driver_python": rss.get(root_pid, 0) / 1024, "jvm": 0.0, "workers": 0.0}
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        key = "jvm" if names.get(pid) == "java" else "workers"
        out[key] += rss.get(pid, 0) / 1024
    return out


def run_backlog(server, home: Path, millions: float, max_rows: int) -> dict:
    """Drain a backlog of ``millions`` narrow rows with stream --once (a process of its own)."""
    import subprocess

    import yaml

    params = {"host": server.host, "port": server.port, "dbname": server.database, "user": server.user}
    reset(params)
    conn_cfg = widen_config.Connection(server.host, server.port, server.database, server.user, password_env=None)
    ships, channels = 8, 50
    hours = millions * 1e6 / (ships * channels * 240)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    with conn.cursor() as cur:     # generate_fleet fills the table; the ingestion id comes after
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SRC)))
    conn.close()
    made = generate.generate_fleet(conn_cfg, SRC, ships=ships, channels=channels, hours=hours, seed=5)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    with conn.cursor() as cur:
        narrow = sql.Identifier(SRC, TABLE)
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN ingest_id bigserial").format(narrow))
        cur.execute(sql.SQL("CREATE INDEX ON {} (ingest_id)").format(narrow))
        cur.execute(sql.SQL("VACUUM ANALYZE {}").format(narrow))
    conn.close()
    label = f"{millions:g}M-{max_rows or 'unbounded'}"
    conn_raw = {"host": server.host, "port": server.port, "database": server.database, "user": server.user}
    raw = {"embedded": "never", "jars_dir": str(ROOT / "jars"), "home": str(home),
           "source": {**conn_raw, "schema": SRC, "order_column": "ingest_id"},
           "target": {**conn_raw, "schema": TGT, "catalog_schema": CAT},
           "stream": {"query_name": f"backlog-{label}", "checkpoint": str(home / f"backlog-{label}"),
                      "start": "earliest", "max_rows_per_batch": max_rows or 1_000_000_000},
           "spark": {"master": "local[*]", "conf": {"spark.sql.shuffle.partitions": "2", "spark.driver.memory": "4g"}}}
    import shutil
    shutil.rmtree(raw["stream"]["checkpoint"], ignore_errors=True)
    path = home / f"backlog-{label}.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "TZ": "UTC"}
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "stream.py"), "--config", str(path), "--once"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = {"driver_python": 0.0, "jvm": 0.0, "workers": 0.0}
    while proc.poll() is None:
        for key, value in tree_rss_mb(proc.pid).items():
            peak[key] = max(peak[key], value)
        time.sleep(0.2)
    seconds = time.monotonic() - began
    summary = json.loads(proc.stdout.read().strip().splitlines()[-1])
    result = {"backlog_rows": made["rows"], "max_rows_per_batch": max_rows or None, "seconds": round(seconds, 1),
              "rows_per_s": round(made["rows"] / seconds), "batches": summary.get("batches"),
              "narrow_rows": summary.get("narrow_rows"), "exit": proc.returncode,
              **{f"peak_{k}_mb": round(v) for k, v in peak.items()}}
    print(f"[bench] backlog {made['rows']:,} rows, max_rows_per_batch {max_rows or 'unbounded'}: "
          f"{seconds:.1f} s ({result['rows_per_s']:,} rows/s), {summary.get('batches')} batches; peak RSS: "
          f"driver Python {peak['driver_python']:.0f} MB, JVM {peak['jvm']:.0f} MB, workers {peak['workers']:.0f} MB",
          flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="measured minutes per rate (after warm-up)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before measuring")
    parser.add_argument("--rates", default="1,10", help="multiples of the nominal rate, e.g. 1,10")
    parser.add_argument("--ships", type=int, default=100)
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--sample", type=int, default=20, help="ships whose wide tables the prober polls")
    parser.add_argument("--home", default=str(ROOT / ".local" / "bench"))
    parser.add_argument("--mode", choices=("poll", "cdc"), default="poll",
                        help="source.mode: poll (exact mode, ingestion id) or cdc (replication slot)")
    parser.add_argument("--corrections", action="store_true",
                        help="the writer also updates 1 %% and deletes 0.1 %% of earlier readings")
    parser.add_argument("--backlog", help="backlog mode: millions of narrow rows, e.g. 1,4")
    parser.add_argument("--max-rows", type=int, default=100_000, help="backlog mode: stream.max_rows_per_batch")
    parser.add_argument("--unbounded", default="", help="backlog mode: also drain these sizes in one batch, e.g. 1")
    args = parser.parse_args()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    server = embedded.ensure_running(home, settings={"wal_level": "logical"})
    with psycopg2.connect(**server.dsn_params()) as conn, conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        logical = cur.fetchone()[0] == "logical"
    if args.mode == "cdc" and not logical:        # started earlier without it: restart with it
        embedded.stop(home)
        server = embedded.ensure_running(home, settings={"wal_level": "logical"})
    if args.backlog:
        results = [run_backlog(server, home, float(m), args.max_rows) for m in args.backlog.split(",")]
        results += [run_backlog(server, home, float(m), 0) for m in args.unbounded.split(",") if m]
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "stream-backlog.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results))
        return 0
    config = make_config(server, home, 1)
    spark = get_spark(config)
    spark.sparkContext.setLogLevel("ERROR")
    results = [run_rate(server, spark, home, int(r), args) for r in args.rates.split(",")]
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    for result in results:
        label = f"{result['mode']}{'-corrections' if result['corrections'] else ''}-" if result["mode"] != "poll" else ""
        (out / f"stream-{label}{result['rate']}.json").write_text(json.dumps({**result, "machine": machine}, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
