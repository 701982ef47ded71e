"""Query benchmark: analysts' questions asked of the narrow table and of widen's wide tables, in
text and in typed mode (``target.column_types``), on the same data.

The narrow table has the indexes a team would have on it: (ship_id, created_time) from the
generator and (ship_id, data_channel_id, created_time). Each wide table has its primary key on
created_time and was ANALYZEd by the backfill. The questions, each for one ship:

  q1 5 channels over a day   the 5 channels' values over one day, one row per time, in time order
  q2 hourly stats 48 h       hourly avg/min/max of one channel over the whole span
  q3 latest of every channel each channel's latest value and its time
  q4 A > x and B < y         the times where channel A is above its median and B below its own
  q5 1-min downsample x 20   per minute avg of 20 channels over one day

Each is run once to warm the cache, then --repeat times; the best time counts. The answers of the
three forms must be equal (values compared as doubles; averages to 1e-9 relative). Also prints
each form's size on disk (tables, TOAST and indexes) and the backfill time in text and in typed mode.

    .venv/bin/python bench/query.py [--small] [--reuse-data | --reuse-wide] [--repeat 3] [--cold]
                                    [--backfill-order typed,text]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
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
from widen.catalog import layouts as catalog  # noqa: E402
from widen.jobs import backfill  # noqa: E402
from widen.session import get_spark  # noqa: E402
from widen.sources import generate  # noqa: E402

SRC_SCHEMA = "bench_src"
FORMS = {"text": ("bench_q_text", "bench_q_cat_text"), "typed": ("bench_q_typed", "bench_q_cat_typed")}
NARROW = sql.Identifier(SRC_SCHEMA, "tbl_data_timeseries")


def make_config(server, form: str) -> widen_config.Config:
    conn = {"host": server.host, "port": server.port, "database": server.database, "user": server.user}
    schema, cat = FORMS[form]
    return widen_config.parse({
        "embedded": "never", "jars_dir": str(ROOT / "jars"),
        "source": {**conn, "schema": SRC_SCHEMA},
        "target": {**conn, "schema": schema, "catalog_schema": cat, "column_types": form},
        "backfill": {"chunk_hours": 24, "partitions_per_chunk": 4, "parallel_chunks": 2, "progress_seconds": 30},
        "cutover": {"views": "off"},
        "spark": {"master": "local[*]", "conf": {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"}},
    })


def connect(cfg):
    conn = psycopg2.connect(**cfg.target.connection.psycopg_params())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute("SET jit = off")
    return conn


# --- the questions, in each form ---------------------------------------------------------------

class Wide:
    """One ship's wide tables in one form: where each channel is, as SQL."""

    def __init__(self, schema: str, layout: catalog.ShipLayout, typed: bool):
        self.schema, self.layout, self.typed = schema, layout, typed

    def table(self, channel: str) -> sql.Composable:
        return sql.Identifier(self.schema, self.layout.tables[self.layout.channels[channel].part])

    def value(self, channel: str, alias: str | None = None) -> sql.Composable:
        column = self.layout.channels[channel].column_name
        ident = sql.Identifier(alias, column) if alias else sql.Identifier(column)
        return ident if self.typed else sql.SQL("{}::float8").format(ident)

    def joined(self, channels: list[str]) -> tuple[sql.Composable, dict[str, str]]:
        """FROM clause over the parts the channels are in (aliases p1, p2 …) and channel -> alias."""
        parts = sorted({self.layout.channels[c].part for c in channels})
        first = parts[0]
        source = sql.SQL("{} p{}").format(sql.Identifier(self.schema, self.layout.tables[first]), sql.SQL(str(first)))
        for part in parts[1:]:
            source = sql.SQL("{} JOIN {} p{p} ON p{p}.created_time = p{f}.created_time").format(
                source, sql.Identifier(self.schema, self.layout.tables[part]), p=sql.SQL(str(part)),
                f=sql.SQL(str(first)))
        return source, {c: f"p{self.layout.channels[c].part}" for c in channels}


def narrow_q1(ship, channels, day):
    cols = sql.SQL(", ").join(sql.SQL("max(double_v) FILTER (WHERE data_channel_id = {})").format(sql.Literal(c))
                              for c in channels)
    return sql.SQL("SELECT created_time, {c} FROM {t} WHERE ship_id = {s} AND data_channel_id = ANY({chs}) "
                   "AND created_time >= {lo} AND created_time < {hi} GROUP BY created_time ORDER BY created_time").format(
        c=cols, t=NARROW, s=sql.Literal(ship), chs=sql.Literal(channels), lo=sql.Literal(day[0]), hi=sql.Literal(day[1]))


def wide_q1(w: Wide, channels, day):
    source, alias = w.joined(channels)
    first = sql.Identifier(alias[channels[0]], "created_time")
    values = [w.value(c, alias[c]) for c in channels]
    return sql.SQL("SELECT {t}, {v} FROM {src} WHERE {t} >= {lo} AND {t} < {hi} AND ({any}) ORDER BY {t}").format(
        t=first, v=sql.SQL(", ").join(values), src=source, lo=sql.Literal(day[0]), hi=sql.Literal(day[1]),
        any=sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(v) for v in values))


def narrow_q2(ship, channel):
    return sql.SQL("SELECT date_trunc('hour', created_time) AS h, avg(double_v), min(double_v), max(double_v) "
                   "FROM {t} WHERE ship_id = {s} AND data_channel_id = {c} GROUP BY 1 ORDER BY 1").format(
        t=NARROW, s=sql.Literal(ship), c=sql.Literal(channel))


def wide_q2(w: Wide, channel):
    v = w.value(channel)
    return sql.SQL("SELECT date_trunc('hour', created_time) AS h, avg({v}), min({v}), max({v}) FROM {t} "
                   "WHERE {v} IS NOT NULL GROUP BY 1 ORDER BY 1").format(v=v, t=w.table(channel))


def narrow_q3(ship, channels):
    """The best a team can do on the narrow table: one index probe per known channel."""
    return sql.SQL(
        "SELECT c.ch, l.created_time, l.v FROM unnest({chs}::text[]) AS c(ch) CROSS JOIN LATERAL ("
        "SELECT created_time, CASE value_format WHEN 'Decimal' THEN double_v::text WHEN 'Integer' THEN long_v::text "
        "WHEN 'String' THEN str_v WHEN 'Boolean' THEN bool_v::text END AS v FROM {t} "
        "WHERE ship_id = {s} AND data_channel_id = c.ch ORDER BY created_time DESC LIMIT 1) l ORDER BY 1").format(
        chs=sql.Literal(sorted(channels)), t=NARROW, s=sql.Literal(ship))


def wide_q3(w: Wide, channels):
    """The latest row of each part table holds most channels' latest values; a channel NULL there
    is looked up on its own (a backward scan of the primary key to its last non-NULL value)."""
    def run(cur) -> list:
        found = {}
        for part in w.layout.parts:
            members = [c for c in w.layout.part_channels(part) if c.data_channel_id in channels]
            cur.execute(sql.SQL("SELECT created_time, {} FROM {} ORDER BY created_time DESC LIMIT 1").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.column_name)) for c in members),
                sql.Identifier(w.schema, w.layout.tables[part])))
            row = cur.fetchone()
            for c, value in zip(members, row[1:]):
                if value is not None:
                    found[c.data_channel_id] = (c.data_channel_id, row[0], value)
        missing = sorted(set(channels) - set(found))
        if missing:
            cur.execute(sql.SQL(" UNION ALL ").join(
                sql.SQL("(SELECT {ch}, created_time, {col}::text FROM {t} WHERE {col} IS NOT NULL "
                        "ORDER BY created_time DESC LIMIT 1)").format(
                    ch=sql.Literal(c), col=sql.Identifier(w.layout.channels[c].column_name), t=w.table(c))
                for c in missing))
            found.update({r[0]: r for r in cur.fetchall()})
        return [found[c] for c in sorted(found)]
    return run


def narrow_q4(ship, a, b, x, y):
    return sql.SQL("SELECT na.created_time FROM {t} na JOIN {t} nb ON nb.ship_id = na.ship_id AND "
                   "nb.created_time = na.created_time AND nb.data_channel_id = {b} WHERE na.ship_id = {s} AND "
                   "na.data_channel_id = {a} AND na.double_v > {x} AND nb.double_v < {y} ORDER BY 1").format(
        t=NARROW, s=sql.Literal(ship), a=sql.Literal(a), b=sql.Literal(b), x=sql.Literal(x), y=sql.Literal(y))


def wide_q4(w: Wide, a, b, x, y):
    source, alias = w.joined([a, b])
    return sql.SQL("SELECT {t} FROM {src} WHERE {va} > {x} AND {vb} < {y} ORDER BY 1").format(
        t=sql.Identifier(alias[a], "created_time"), src=source, va=w.value(a, alias[a]), vb=w.value(b, alias[b]),
        x=sql.Literal(x), y=sql.Literal(y))


def narrow_q5(ship, channels, day):
    cols = sql.SQL(", ").join(sql.SQL("avg(double_v) FILTER (WHERE data_channel_id = {})").format(sql.Literal(c))
                              for c in channels)
    return sql.SQL("SELECT date_trunc('minute', created_time), {c} FROM {t} WHERE ship_id = {s} AND "
                   "data_channel_id = ANY({chs}) AND created_time >= {lo} AND created_time < {hi} GROUP BY 1 "
                   "ORDER BY 1").format(c=cols, t=NARROW, s=sql.Literal(ship), chs=sql.Literal(channels),
                                        lo=sql.Literal(day[0]), hi=sql.Literal(day[1]))


def wide_q5(w: Wide, channels, day):
    source, alias = w.joined(channels)
    t = sql.Identifier(alias[channels[0]], "created_time")
    return sql.SQL("SELECT date_trunc('minute', {t}), {v} FROM {src} WHERE {t} >= {lo} AND {t} < {hi} "
                   "GROUP BY 1 ORDER BY 1").format(
        t=t, v=sql.SQL(", ").join(sql.SQL("avg({})").format(w.value(c, alias[c])) for c in channels), src=source,
        lo=sql.Literal(day[0]), hi=sql.Literal(day[1]))


# --- running and checking ---------------------------------------------------------------------------

def ask(cur, query) -> list:
    """A question's answer: a statement's rows, or what a function of the cursor returns."""
    if callable(query):
        return query(cur)
    cur.execute(query)
    return cur.fetchall()


def timed(conn, query, repeat: int) -> tuple[float, list]:
    """Warm: once to fill the caches, then the best of ``repeat``."""
    with conn.cursor() as cur:
        answer = ask(cur, query)
        best = math.inf
        for _ in range(repeat):
            began = time.perf_counter()
            ask(cur, query)
            best = min(best, time.perf_counter() - began)
    return best, answer


def timed_cold(home: Path, cfg, query) -> tuple[float, list]:
    """Cold: the server restarted and the kernel's page cache dropped before the one run (what an
    analyst meets on a narrow table bigger than memory)."""
    embedded.stop(home)
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    embedded.ensure_running(home, port=cfg.target.connection.port)
    conn = connect(cfg)
    try:
        with conn.cursor() as cur:
            began = time.perf_counter()
            answer = ask(cur, query)
            return time.perf_counter() - began, answer
    finally:
        conn.close()


def _same_value(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if hasattr(a, "isoformat") or hasattr(b, "isoformat"):
        return a == b
    fa, fb = float(a), float(b)
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb)
    return fa == fb or abs(fa - fb) <= 1e-9 * max(abs(fa), abs(fb))


def same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        for va, vb in zip(ra, rb):
            if isinstance(va, str) and isinstance(vb, str):
                if va != vb and not (_numeric(va) and _numeric(vb) and _same_value(va, vb)):
                    return False
            elif not _same_value(va, vb):
                return False
    return True


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def size_of(conn, relations: list[sql.Composable]) -> int:
    with conn.cursor() as cur:
        total = 0
        for rel in relations:
            cur.execute("SELECT pg_total_relation_size(%s::regclass)", (rel.as_string(cur),))
            total += cur.fetchone()[0]
    return total


def ship_layouts(conn, catalog_schema: str) -> dict[str, catalog.ShipLayout]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(sql.Identifier(catalog_schema, "wide_tables")))
        ships = sorted(r[0] for r in cur.fetchall())
    return {s: catalog.load_layout(conn, catalog_schema, s) for s in ships}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="2 ships x 40 channels x 6 h")
    parser.add_argument("--ships", type=int, default=8)
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--hours", type=float, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true",
                        help="also time each question once from a cold cache (restarts the server; needs root "
                             "to drop the kernel's page cache)")
    parser.add_argument("--reuse-data", action="store_true", help="keep the narrow table of the last run")
    parser.add_argument("--reuse-wide", action="store_true", help="keep its wide tables too (no backfill)")
    parser.add_argument("--backfill-order", default="text,typed",
                        help="which mode's backfill runs first (the first also warms the JVM)")
    parser.add_argument("--home", default=str(ROOT / ".local" / "bench"))
    args = parser.parse_args()
    if args.small:
        args.ships, args.channels, args.hours = 2, 40, 6
    server = embedded.ensure_running(Path(args.home))
    configs = {form: make_config(server, form) for form in FORMS}
    conn = connect(configs["text"])
    backfill_seconds: dict[str, float] = {}
    if args.reuse_wide:
        args.reuse_data = True
    if not args.reuse_data:
        made = generate.generate_fleet(configs["text"].source.connection, SRC_SCHEMA, ships=args.ships,
                                       channels=args.channels, hours=args.hours, replace=True, replace_any_table=True)
        print(f"generated {made['rows']:,} narrow rows in {made['seconds']} s", flush=True)
    with conn.cursor() as cur:
        began = time.monotonic()
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS bench_narrow_ship_channel_time ON {} "
                            "(ship_id, data_channel_id, created_time)").format(NARROW))
        print(f"narrow index (ship_id, data_channel_id, created_time): {time.monotonic() - began:.0f} s", flush=True)
        cur.execute("VACUUM ANALYZE " + NARROW.as_string(cur))
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(NARROW))
        narrow_rows = cur.fetchone()[0]
    if not args.reuse_wide:
        spark = get_spark(configs["text"])
        for form in args.backfill_order.split(","):
            cfg = configs[form]
            with conn.cursor() as cur:
                for schema in FORMS[form]:
                    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            began = time.monotonic()
            result = backfill.run(cfg, spark)
            assert result.exit_code == 0, result.summary
            backfill_seconds[form] = time.monotonic() - began
            print(f"backfill {form}: {backfill_seconds[form]:.1f} s", flush=True)
        spark.stop()

    layouts = {form: ship_layouts(conn, FORMS[form][1]) for form in FORMS}
    ship = sorted(layouts["typed"])[0]
    typed_layout = layouts["typed"][ship]
    doubles = sorted(c for c, col in typed_layout.channels.items() if col.column_type == "double precision")
    assert len(doubles) >= 20, f"ship {ship!r} has only {len(doubles)} Decimal channels"
    five, twenty, (a, b) = doubles[:5], doubles[:20], doubles[5:7]
    wides = {form: Wide(FORMS[form][0], layouts[form][ship], form == "typed") for form in FORMS}
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT min(created_time) FROM {} WHERE ship_id = %s").format(NARROW), (ship,))
        start = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY double_v) FROM {} WHERE ship_id = %s "
                            "AND data_channel_id = %s").format(NARROW), (ship, a))
        x = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY double_v) FROM {} WHERE ship_id = %s "
                            "AND data_channel_id = %s").format(NARROW), (ship, b))
        y = cur.fetchone()[0]
    day = (start + dt.timedelta(hours=args.hours / 4), start + dt.timedelta(hours=args.hours / 4 + min(24, args.hours / 2)))
    questions = {
        "q1 5 channels over a day": (narrow_q1(ship, five, day), lambda w: wide_q1(w, five, day)),
        "q2 hourly stats, all span": (narrow_q2(ship, a), lambda w: wide_q2(w, a)),
        "q3 latest of every channel": (narrow_q3(ship, list(typed_layout.channels)),
                                       lambda w: wide_q3(w, list(typed_layout.channels))),
        "q4 A > x and B < y": (narrow_q4(ship, a, b, x, y), lambda w: wide_q4(w, a, b, x, y)),
        "q5 1-min avg of 20, a day": (narrow_q5(ship, twenty, day), lambda w: wide_q5(w, twenty, day)),
    }
    results, equal, cold = {}, {}, {}
    for label, (narrow_query, wide_query) in questions.items():
        times, answers = {}, {}
        times["narrow"], answers["narrow"] = timed(conn, narrow_query, args.repeat)
        for form in FORMS:
            times[form], answers[form] = timed(conn, wide_query(wides[form]), args.repeat)
        results[label] = times
        equal[label] = all(same(answers["narrow"], answers[form]) for form in FORMS)
        print(f"{label}: narrow {times['narrow']:.3f} s, text {times['text']:.3f} s, typed {times['typed']:.3f} s, "
              f"{len(answers['narrow'])} rows, equal {equal[label]}", flush=True)
    if args.cold:
        conn.close()
        for label, (narrow_query, wide_query) in questions.items():
            cold[label] = {"narrow": timed_cold(Path(args.home), configs["text"], narrow_query)[0]}
            for form in FORMS:
                cold[label][form] = timed_cold(Path(args.home), configs["text"], wide_query(wides[form]))[0]
            print(f"{label} (cold): narrow {cold[label]['narrow']:.3f} s, text {cold[label]['text']:.3f} s, "
                  f"typed {cold[label]['typed']:.3f} s", flush=True)
        conn = connect(configs["text"])

    sizes = {"narrow": size_of(conn, [NARROW])}
    for form in FORMS:
        sizes[form] = size_of(conn, [sql.Identifier(FORMS[form][0], t) for layout in layouts[form].values()
                                     for t in layout.tables.values()])

    print(f"\n{narrow_rows:,} narrow rows, {args.ships} ships x {args.channels} channels x {args.hours:g} h; ship "
          f"{ship!r}; {os.cpu_count()} cores, {platform.machine()}; best of {args.repeat} after a warm-up")
    print(f"{'question':<36} {'narrow s':>9} {'text s':>8} {'typed s':>8} {'text x':>7} {'typed x':>8} {'equal':>6}")
    for label, times in results.items():
        print(f"{label:<36} {times['narrow']:>9.3f} {times['text']:>8.3f} {times['typed']:>8.3f} "
              f"{times['narrow'] / times['text']:>6.1f}x {times['narrow'] / times['typed']:>7.1f}x {str(equal[label]):>6}")
    for label, times in cold.items():
        print(f"{label + ' (cold)':<36} {times['narrow']:>9.3f} {times['text']:>8.3f} {times['typed']:>8.3f} "
              f"{times['narrow'] / times['text']:>6.1f}x {times['narrow'] / times['typed']:>7.1f}x")
    print(f"{'size on disk (with indexes)':<36} {sizes['narrow'] / 2**20:>7.0f}MB {sizes['text'] / 2**20:>6.0f}MB "
          f"{sizes['typed'] / 2**20:>6.0f}MB {sizes['narrow'] / sizes['text']:>6.1f}x {sizes['narrow'] / sizes['typed']:>7.1f}x")
    if backfill_seconds:
        print(f"backfill: text {backfill_seconds['text']:.1f} s, typed {backfill_seconds['typed']:.1f} s")
    print(json.dumps({"narrow_rows": narrow_rows, "seconds": results, "cold_seconds": cold, "equal": equal,
                      "bytes": sizes,
                      "backfill_seconds": {k: round(v, 1) for k, v in backfill_seconds.items()}}))
    conn.close()
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
