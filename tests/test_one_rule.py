"""One rule for which value wins, whichever job wrote last (docs/design.md, "One rule for every writer").

Without an order column every writer keeps the greater value by ``COLLATE "C"`` byte order of the
rendered text, typed columns included (10 < 9 and -0 > 0 as text; NaN is the text 'NaN'). The
backfill and the stream read two narrow tables here: the stream's holds readings of the same keys
that the backfill never read (as when a chunk read its range before they arrived and merged after
the stream had written them). Hour 1 is backfilled, then streamed over; hour 2 is streamed, then
backfilled. The wide tables must equal the oracle's pivot over both tables together (tests/oracle.py,
``max(... COLLATE "C")``), on PostgreSQL 18 (MERGE), 13 (``INSERT … ON CONFLICT``) and Delta.
"""
from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import replace

import nasty
import oracle
import psycopg2
import pytest
from conftest import raw_config
from hypothesis import HealthCheck, example, given, settings, strategies as st
from psycopg2 import sql

from widen import config as widen_config
from widen.jobs import backfill, stream
from widen.jobs.backfill import BackfillOptions
from widen.streaming import sink as stream_sink

T0 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
SHIP = "ship Ä"
#: channel -> how its readings are drawn; "mixed" has Decimal and Integer readings (a text column)
CHANNELS = ["dec", "int", "str", "bool", "mixed"]
NARROW_DDL = ("CREATE TABLE {} (ship_id text, data_channel_id text, created_time timestamptz, value_format text, "
              "double_v double precision, long_v bigint, str_v text, bool_v boolean)")

doubles = st.one_of(st.sampled_from([-0.0, 0.0, math.nan, math.inf, -math.inf, 9.0, 10.0, 1e-7, 0.1 + 0.2]),
                    st.floats(allow_nan=True, allow_infinity=True))
integers = st.one_of(st.sampled_from([-1, 9, 10, 100, -10, 0]), st.integers(-2 ** 63, 2 ** 63 - 1))
texts = st.text(alphabet="aAbBzZ9 éÉ'%\\", max_size=3)


def reading(channel: str) -> st.SearchStrategy:
    """(value_format, double_v, long_v, str_v, bool_v) of one reading of ``channel``, or None."""
    kinds = {"dec": doubles.map(lambda d: ("Decimal", d, None, None, None)),
             "int": integers.map(lambda n: ("Integer", None, n, None, None)),
             "str": texts.map(lambda s: ("String", None, None, s, None)),
             "bool": st.booleans().map(lambda b: ("Boolean", None, None, None, b))}
    kinds["mixed"] = st.one_of(kinds["dec"], kinds["int"])
    return st.one_of(st.none(), kinds[channel])


#: per time (four in each hour): per channel (the backfill's reading, the stream's reading)
readings = st.lists(st.tuples(*[st.tuples(reading(c), reading(c)) for c in CHANNELS]), min_size=8, max_size=8)
#: hand-picked: the backfill's value smaller than the stream's and the other way round, per column kind
PICKED = [tuple((("Decimal", a, None, None, None), ("Decimal", b, None, None, None)) if c in ("dec", "mixed") else
                (("Integer", None, int(a), None, None), ("Integer", None, int(b), None, None)) if c == "int" else
                (("String", None, None, sa, None), ("String", None, None, sb, None)) if c == "str" else
                (("Boolean", None, None, None, a > b), ("Boolean", None, None, None, a < b))
                for c in CHANNELS)
          for (a, b), (sa, sb) in zip([(9.0, 10.0), (10.0, 9.0), (-0.0, 0.0), (0.0, -0.0),
                                       (1.0, 9.0), (9.0, 1.0), (100.0, 2.0), (2.0, 100.0)],
                                      [("a", "B"), ("B", "a"), ("É", "é"), ("é", "É"), ("", "a"),
                                       ("Z", "a"), ("aa", "a"), ("a", "aa")])]


def narrow_rows(draw: list, side: int) -> list[tuple]:
    return [(SHIP, channel, T0 + (HOUR if i >= 4 else dt.timedelta()) + dt.timedelta(seconds=15 * (i % 4)),
             *pair[side])
            for i, row in enumerate(draw) for channel, pair in zip(CHANNELS, row) if pair[side] is not None]


def make_narrow(conn, schema: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(schema)))
        table = sql.Identifier(schema, "tbl_data_timeseries")
        cur.execute(sql.SQL(NARROW_DDL).format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} (ship_id, created_time)").format(table))


def connect(server: dict):
    conn = psycopg2.connect(host=server["host"], port=server["port"], user=server["user"], dbname=server["database"])
    conn.autocommit = True
    with conn.cursor() as cur:
        # the oracle renders in this session: a double as PostgreSQL 12+ prints it, whatever the
        # server's default (the old servers' fixture sets extra_float_digits = 0)
        cur.execute("SET extra_float_digits = 1; SET TimeZone = 'UTC'")
    return conn


@pytest.fixture(params=["pg18", "pg13", "delta"])
def where(request, pg_server, old_server, tmp_path_factory):
    """(server for sources, target and catalog; Delta root or None; drawn examples besides the
    hand-picked one: PostgreSQL 18's MERGE gets the most, the others share its rule's SQL or Spark's)."""
    if request.param == "pg13":
        return old_server("13"), None, 1
    return pg_server, (str(tmp_path_factory.mktemp("lake")) if request.param == "delta" else None), \
        (1 if request.param == "delta" else 3)


def configs(server: dict, root: str | None, run: int) -> tuple[widen_config.Config, widen_config.Config]:
    """The backfill's config (narrow table ``src_rule``) and the stream's (``src_rule_stream``):
    one target and catalog."""
    overrides = {"target__column_types": "typed"}
    if root is not None:
        overrides.update(target__kind="delta", target__delta_root=f"{root}/{run}")
    base = widen_config.parse(raw_config(server, "rule", **overrides))
    streamed = replace(base, source=replace(base.source, schema="src_rule_stream"),
                       stream=replace(base.stream, checkpoint=f"{root or server['home']}/cp{run}", query_name="rule",
                                      start="earliest", settle_seconds=0))
    return base, streamed


def test_the_greater_value_wins_whichever_job_wrote_last(where, spark, tmp_path_factory):
    """Typed columns (target.column_types typed): Decimal, Integer and Boolean channels typed, String
    and the mixed channel text."""
    server, root, examples = where
    server = {**server, "home": str(tmp_path_factory.mktemp("rule"))}
    runs = itertools.count()
    conn = connect(server)

    @settings(max_examples=examples, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(readings)
    @example(PICKED)
    def check(draw):
        run = next(runs)
        first, second = configs(server, root, run)
        for state in list(stream_sink._STATES.values()):
            state.reset()
        with conn.cursor() as cur:
            for schema in ("wide_rule", "cat_rule", "copy_rule"):
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        make_narrow(conn, "src_rule")
        make_narrow(conn, "src_rule_stream")
        nasty.insert(conn, "src_rule", narrow_rows(draw, 0))
        nasty.insert(conn, "src_rule_stream", narrow_rows(draw, 1))
        # hour 1: the backfill, then the stream over it; hour 2: the stream, then the backfill
        assert backfill.run(first, spark, BackfillOptions(start=T0, end=T0 + HOUR)).exit_code == 0
        assert stream.run(second, spark, once=True).exit_code == 0
        assert backfill.run(first, spark, BackfillOptions(start=T0 + HOUR, end=T0 + 2 * HOUR)).exit_code == 0
        with conn.cursor() as cur:
            wide = "wide_rule"
            if root is not None:
                oracle.copy_delta_tables(spark, cur, f"{root}/{run}", "cat_rule", "copy_rule")
                wide = "copy_rule"
            both = sql.SQL("(SELECT * FROM {} UNION ALL SELECT * FROM {}) n").format(
                sql.Identifier("src_rule", "tbl_data_timeseries"),
                sql.Identifier("src_rule_stream", "tbl_data_timeseries"))
            cur.execute(sql.SQL("SELECT DISTINCT data_channel_id FROM {} WHERE {}").format(both, oracle.VALID))
            channels = {r[0] for r in cur.fetchall()}
            mapped = oracle.catalog_mapping(cur, "cat_rule", SHIP)
            assert {ch for pairs in mapped.values() for ch, _ in pairs} == channels
            diffs = oracle.differences(cur, "src_rule", wide, "cat_rule", SHIP, narrow=both)
            assert all(d == (0, 0) for d in diffs.values()), diffs

    try:
        check()
    finally:
        conn.close()
