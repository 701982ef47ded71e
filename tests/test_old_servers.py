"""Every PostgreSQL from 9.3 (docs/postgres-versions.md), on real old servers.

The builds come from Maven Central (``make setup`` -> pgbuilds/) and run with hostile defaults
(conftest.old_server: ``extra_float_digits = 0``, DateStyle SQL/DMY, a +05:45 time zone,
``standard_conforming_strings = off`` before 12), so a setting widen forgets to pin shows.

- The rendering: a double (and a float4) printed on 9.3, 9.6 and 11 by ``render.shortest_float_text``
  is byte for byte what this run's PostgreSQL 18 prints for the same bits (hypothesis draws them).
- The journey, per source version (9.3, 9.6, 11, 13 into the PostgreSQL 18 target; 9.3 into an 11
  target): plan, the stream's hand-off at the live tail, backfill, stream ``--once``, reconcile, a
  tampered and a deleted cell found and repaired, rollback of one ship and its resume; after each step
  the ships' lifecycle states as ``status`` reports them, and at the end how they got there. After each step the wide
  tables equal the oracle: the narrow table copied (bit-exact) into PostgreSQL 18 and pivoted there
  by tests/oracle.py, so the expected text of a double is what PostgreSQL 18 prints.
- A target older than 11 is refused by ``plan`` and ``backfill`` with one clear line (exit 2).
- The created_time mode's offsets (``txid_current_snapshot`` before 13) on 9.3, 11 and 13 sources:
  rows written later dated ahead arrive at once, also one from a released savepoint.

The whole matrix takes about 70 s, so it always runs whole.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import math
import random
import struct
from dataclasses import replace

import oracle
import psycopg2
import pytest
import yaml
from conftest import raw_config
from hypothesis import HealthCheck, example, given, settings, strategies as st
from psycopg2 import sql
from psycopg2.extensions import AsIs
from psycopg2.extras import execute_values

from widen import cli, config as widen_config
from widen.jobs import backfill, plan, reconcile, resume, rollback, status, stream
from widen.pg import render

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
#: doubles at the printing edge: 15 digits lose them, 17 are not the shortest, Java and Python
#: print them differently from PostgreSQL
EDGE = [0.1 + 0.2, 1e-7, 5e-324, 1e300, -0.0, math.nan, math.inf, -math.inf, 609.989, 1e15, 1e-4,
        9.999999999999999e-05, 123456789012345.6, 2.0 ** 53 + 2, 2.0 ** 60, 1e23, 0.3, -2.2250738585072014e-308,
        1.7976931348623157e308, 4.35, 1 / 3]
SHIPS = ["ship a", "船 b"]
CHANNELS = [("temp/°C", "Decimal"), ("pct%s", "Decimal"), ("count", "Integer"), ("state", "String"),
            ("on", "Boolean")]


def connect(server: dict):
    conn = psycopg2.connect(host=server["host"], port=server["port"], user=server["user"], dbname=server["database"])
    conn.autocommit = True
    return conn


def float8(value: float) -> AsIs:
    """Exactly this double as a literal (psycopg2's own -0.0 would arrive as 0)."""
    text = repr(value).replace("inf", "Infinity").replace("nan", "NaN")
    return AsIs(f"'{text}'::float8")


# -- the rendering, value by value -----------------------------------------------------------------

def as_float(bits: int, width: int) -> float:
    return struct.unpack("<d" if width == 64 else "<f", bits.to_bytes(width // 8, "little"))[0]


def printed(conn, values: list[float], kind: str, compat: bool) -> list[str]:
    """How ``conn``'s server prints each value as ``kind``: its own ``::text`` or widen's SQL."""
    texts = [repr(v).replace("inf", "Infinity").replace("nan", "NaN") for v in values]
    x = sql.SQL("(%(a)s::text[])[i]::float8::{}").format(sql.SQL(kind))
    expression = render.shortest_float_text(x, kind) if compat else sql.SQL("{}::text").format(x)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT {} FROM generate_subscripts(%(a)s::text[], 1) AS i ORDER BY i").format(expression),
                    {"a": texts})
        return [r[0] for r in cur.fetchall()]


floats64 = st.one_of(st.floats(), st.integers(0, 2 ** 64 - 1).map(lambda b: as_float(b, 64)),
                     st.sampled_from(EDGE))
floats32 = st.one_of(st.floats(width=32), st.integers(0, 2 ** 32 - 1).map(lambda b: as_float(b, 32)))


@pytest.mark.parametrize("version", ["9.3", "9.6", "11"])
def test_old_servers_print_doubles_as_postgresql_12(version, old_server, pg):
    old = connect(old_server(version))

    @settings(max_examples=25, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(doubles=st.lists(floats64, min_size=1, max_size=200), singles=st.lists(floats32, min_size=1, max_size=100))
    @example(doubles=EDGE, singles=[0.1, 1e6, 123456.0, 1e-45, 3.4028235e38, -0.0, 16777217.0, math.nan])
    def check(doubles, singles):
        for kind, values in (("float8", doubles), ("float4", singles)):
            want = printed(pg, values, kind, compat=False)            # PostgreSQL 18, the same bits
            got = printed(old, values, kind, compat=True)
            wrong = [(repr(v), w, g) for v, w, g in zip(values, want, got) if w != g]
            assert not wrong, (kind, wrong[:5])

    try:
        check()
    finally:
        old.close()


# -- the journey -----------------------------------------------------------------------------------

def readings(minutes: range, seed: int) -> list[tuple]:
    """Every channel of every ship each 20 s; Decimal channels cycle through the edge values and
    random bit patterns; a reading breaking a rule and a duplicate key now and then."""
    rng = random.Random(seed)
    rows = []
    for ship in SHIPS:
        for c, (channel, fmt) in enumerate(CHANNELS):
            for m in minutes:
                for k in range(3):
                    n = 3 * m + k
                    when = T0 + dt.timedelta(seconds=60 * m + 20 * k)
                    value = {"Decimal": float8(EDGE[(n + c) % len(EDGE)] if (n + c) % 3 else
                                               as_float(rng.getrandbits(64), 64)),
                             "Integer": -n * 7919, "String": f"s{n}\\%s'", "Boolean": n % 2 == 0}[fmt]
                    rows.append((ship, channel, when, fmt, *[value if fmt == f else None for f in
                                                               ("Decimal", "Integer", "String", "Boolean")]))
    rows.append((SHIPS[0], "state", T0 + dt.timedelta(seconds=60 * minutes[0]), "Text", None, None, "bad format", None))
    rows.append((SHIPS[1], "temp/°C", T0 + dt.timedelta(seconds=60 * minutes[0]), "Decimal",
                 float8(1 / 7), None, None, None))                       # a second reading of a key
    return rows


def insert(conn, rows: list[tuple]) -> None:
    with conn.cursor() as cur:
        execute_values(cur, "INSERT INTO src.tbl_data_timeseries (ship_id, data_channel_id, created_time, "
                            "value_format, double_v, long_v, str_v, bool_v) VALUES %s", rows)


def make_source(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS src CASCADE; CREATE SCHEMA src")
        cur.execute("CREATE TABLE src.tbl_data_timeseries (ingest_id bigserial, ship_id text, data_channel_id text, "
                    "created_time timestamptz, value_format text, double_v double precision, long_v bigint, "
                    "str_v text, bool_v boolean)")
        cur.execute("CREATE INDEX ON src.tbl_data_timeseries (ship_id, created_time)")
        cur.execute("CREATE INDEX ON src.tbl_data_timeseries (ingest_id)")


def copy_table(src, dst, source: sql.Identifier, target: sql.Identifier) -> None:
    """A table from one server to another, bit-exact (doubles with 17 significant digits)."""
    with src.cursor() as cur:
        cur.execute("SET extra_float_digits = 3; SET DateStyle = 'ISO, MDY'; SET TIME ZONE 'UTC'")
        cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (source.as_string(cur),))
        columns = cur.fetchall()
        data = io.StringIO()
        cur.copy_expert(sql.SQL("COPY {} TO STDOUT").format(source).as_string(cur), data)
    data.seek(0)
    with dst.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in columns)))
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(target).as_string(cur), data)


def assert_equal_to_oracle(src, tgt, pg, name: str, same_server: bool) -> None:
    """The wide tables against the SQL pivot, in PostgreSQL 18, of the narrow rows copied there."""
    s, w, c = f"src_{name}", f"wide_{name}", f"cat_{name}"
    schemas = [s] if same_server else [s, w, c]
    with pg.cursor() as cur:
        for schema in schemas:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(schema)))
    copy_table(src, pg, sql.Identifier("src", "tbl_data_timeseries"), sql.Identifier(s, "tbl_data_timeseries"))
    if not same_server:
        with tgt.cursor() as cur:
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN (%s, %s) "
                        "AND table_type = 'BASE TABLE'", (w, c))
            tables = cur.fetchall()
        for schema, table in tables:
            copy_table(tgt, pg, sql.Identifier(schema, table), sql.Identifier(schema, table))
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, s, w, c, order_column="ingest_id")


def states(config) -> dict[str, str]:
    """Each ship's lifecycle state, as ``status`` reports it."""
    report = status.run(config)
    return {r["ship_id"]: r["state"] for r in report.summary["ship_status"]}


def tamper(tgt, name: str, ship: str) -> None:
    """One cell changed and one cell emptied in the ship's wide table."""
    with tgt.cursor() as cur:
        cur.execute(sql.SQL("SELECT table_name, column_name FROM {} WHERE ship_id = %s ORDER BY 2 LIMIT 2").format(
            sql.Identifier(f"cat_{name}", "channel_columns")), (ship,))
        (table, first), (_, second) = cur.fetchall()
        wide = sql.Identifier(f"wide_{name}", table)
        cur.execute(sql.SQL("UPDATE {t} SET {a} = 'tampered', {b} = NULL WHERE created_time = "
                            "(SELECT min(created_time) FROM {t} WHERE {a} IS NOT NULL AND {b} IS NOT NULL)").format(
            t=wide, a=sql.Identifier(first), b=sql.Identifier(second)))
        assert cur.rowcount == 1


#: (source, target; None: this run's PostgreSQL 18)
JOURNEYS = [("9.3", None), ("9.3", "11"), ("9.6", None), ("11", None), ("13", None)]


@pytest.mark.parametrize("source_version,target_version", [
    pytest.param(s, t, id=f"{s}-to-{t or '18'}") for s, t in JOURNEYS])
def test_journey_from_an_old_source(source_version, target_version, old_server, pg_server, pg, spark, tmp_path):
    source_server = old_server(source_version)
    target_server = old_server(target_version) if target_version else pg_server
    name = f"old{source_version.replace('.', '')}to{(target_version or '18').replace('.', '')}"
    raw = raw_config(target_server, name)
    raw["source"].update(host=source_server["host"], port=source_server["port"], user=source_server["user"],
                         database=source_server["database"], schema="src", order_column="ingest_id")
    config = widen_config.parse(raw)
    config = replace(config, stream=replace(config.stream, start="latest", settle_seconds=0.0, query_name=name,
                                            checkpoint=str(tmp_path / "cp")),
                     cutover=replace(config.cutover, max_lag_seconds=1e9))   # the readings are from March
    src, tgt = connect(source_server), connect(target_server)
    try:
        make_source(src)
        with tgt.cursor() as cur:
            for schema in (f"wide_{name}", f"cat_{name}"):
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        same = target_version is None
        insert(src, readings(range(0, 3), seed=1))

        planned = plan.run(config)
        assert planned.exit_code == 0, planned.report
        assert planned.summary["ships"] == len(SHIPS)
        assert states(config) == dict.fromkeys(SHIPS, "planned")

        # The hand-off: the stream starts at the live tail, the backfill takes the history, and
        # rows written in between (a new minute, a correction of an existing cell) are the backfill's.
        first = stream.run(config, spark, once=True)
        assert first.exit_code == 0 and first.summary["narrow_rows"] == 0, first.report
        tail = first.summary["start_offset"]["id"]
        insert(src, readings(range(3, 4), seed=2) + [
            (SHIPS[0], "state", T0, "String", None, None, "corrected", None)])
        filled = backfill.run(config, spark)
        assert filled.exit_code == 0, filled.report
        assert states(config) == dict.fromkeys(SHIPS, "backfilled")
        assert_equal_to_oracle(src, tgt, pg, name, same)

        insert(src, readings(range(4, 6), seed=3))
        streamed = stream.run(config, spark, once=True)
        assert streamed.exit_code == 0, streamed.report
        with src.cursor() as cur:      # every row after the tail, each read once
            cur.execute("SELECT count(*) FROM src.tbl_data_timeseries WHERE ingest_id > %s", (tail,))
            assert streamed.summary["narrow_rows"] == cur.fetchone()[0]
        assert states(config) == dict.fromkeys(SHIPS, "live")
        assert_equal_to_oracle(src, tgt, pg, name, same)

        checked = reconcile.run(config, spark)
        assert checked.exit_code == 0 and checked.summary["ships_mismatched"] == [], checked.report
        assert states(config) == dict.fromkeys(SHIPS, "verified")

        tamper(tgt, name, SHIPS[1])
        found = reconcile.run(config, spark)
        assert found.exit_code == 1 and found.summary["ships_mismatched"] == [SHIPS[1]], found.report
        assert found.summary["cells_different"] + found.summary["cells_missing"] == 2, found.summary
        assert states(config) == {SHIPS[0]: "verified", SHIPS[1]: "live"}
        needs = status.run(config)
        assert needs.exit_code == 1 and len(needs.summary["attention"]) == 1, needs.summary["attention"]
        assert needs.summary["attention"][0].startswith(f"{SHIPS[1]}: the last reconcile"), needs.summary
        repaired = reconcile.run(config, spark, repair=True)
        assert repaired.exit_code == 0, repaired.report
        assert states(config) == dict.fromkeys(SHIPS, "verified")
        assert_equal_to_oracle(src, tgt, pg, name, same)

        undone = rollback.run(config, spark, ships=[SHIPS[0]])
        assert undone.exit_code == 0, undone.report
        with tgt.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s").format(
                sql.Identifier(f"cat_{name}", "wide_tables")), (SHIPS[0],))
            assert cur.fetchone()[0] == 0
        assert states(config) == {SHIPS[0]: "rolled_back", SHIPS[1]: "verified"}
        assert resume.run(config, spark, ships=[SHIPS[0]]).exit_code == 0
        assert states(config)[SHIPS[0]] == "planned"
        with tgt.cursor() as cur:       # how each ship got where it is
            cur.execute(sql.SQL("SELECT ship_id, string_agg(to_state, ' ' ORDER BY at) FROM {} GROUP BY 1").format(
                sql.Identifier(f"cat_{name}", "ship_transitions")))
            assert dict(cur.fetchall()) == {
                SHIPS[0]: "planned backfilling backfilled live verified rolled_back planned",
                SHIPS[1]: "planned backfilling backfilled live verified live verified"}
        with src.cursor() as cur:
            cur.execute("DELETE FROM src.tbl_data_timeseries WHERE ship_id = %s", (SHIPS[0],))
        assert_equal_to_oracle(src, tgt, pg, name, same)
    finally:
        src.close()
        tgt.close()


def test_a_target_older_than_11_is_refused(old_server, pg_server, fresh_fleet, tmp_path, capsys):
    """Through the command line, as a user meets it: exit 2, one line naming the server and why."""
    old = old_server("9.6")
    fresh_fleet("oldtarget", ships=1, channels=2, hours=0.1).close()
    raw = raw_config(pg_server, "oldtarget")
    raw["target"].update(host=old["host"], port=old["port"], user=old["user"], database=old["database"])
    path = tmp_path / "oldtarget.yaml"
    path.write_text(yaml.safe_dump(raw))
    for job in ("plan", "backfill"):
        code = cli.main([job, "--config", str(path)])
        out = capsys.readouterr()
        summary = json.loads(out.out)
        assert (code, summary["status"]) == (2, "bad_input"), summary
        assert (f"the target server postgres@{old['host']}:{old['port']} is PostgreSQL 9.6.24; widen writes wide "
                "tables and its catalog to PostgreSQL 11 or later") in summary["error"], summary
        assert "Traceback" not in out.err


@pytest.mark.parametrize("version", ["9.3", "11", "13"])
def test_time_mode_takes_rows_written_later_dated_ahead(version, old_server, spark, tmp_path):
    """created_time mode on old sources (``txid_current_snapshot`` before 13): rows written after
    the stream started dated ahead arrive with the batch after their commit, also one written in
    a released savepoint of a transaction open across an offset (its xmin is the savepoint's xid)."""
    from widen.sources.postgres_stream import NarrowStreamSource, stream_options

    server = old_server(version)
    src = connect(server)
    make_source(src)
    raw = raw_config(server, f"oldtime{version.replace('.', '')}")
    raw["source"]["schema"] = "src"
    config = widen_config.parse(raw)
    seen: list = []
    spark.dataSource.register(NarrowStreamSource)
    query = (spark.readStream.format("widen_narrow")
             .options(**stream_options(config.source, buckets=2, start="latest", settle_seconds=0)).load()
             .writeStream.foreachBatch(lambda frame, _: seen.extend(tuple(r) for r in frame.collect()))
             .option("checkpointLocation", str(tmp_path / "cp")).start())
    writer = psycopg2.connect(host=server["host"], port=server["port"], user=server["user"], dbname=server["database"])
    try:
        query.processAllAvailable()                   # the hand-off's batch: nothing yet
        with writer.cursor() as cur:
            cur.execute("SAVEPOINT widen_test")
        insert(writer, [(SHIPS[1], "far", dt.datetime(2099, 1, 1, tzinfo=UTC), "String", None, None, "saved", None)])
        with writer.cursor() as cur:
            cur.execute("RELEASE SAVEPOINT widen_test")
        with src.cursor() as cur:
            cur.execute("SELECT now()")
            now = cur.fetchone()[0]
        insert(src, [(SHIPS[0], "ahead", now + dt.timedelta(minutes=10), "Integer", None, 1, None, None)])
        query.processAllAvailable()
        writer.commit()
        query.processAllAvailable()
    finally:
        query.stop()
        writer.close()
        src.close()
    assert {(r[0], r[1], r[3]) for r in seen} == {(SHIPS[0], "ahead", "1"), (SHIPS[1], "far", "saved")}
