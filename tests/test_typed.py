"""Typed wide columns (``target.column_types: typed``) against the oracle, with the hostile values.

- ``core.typed.fits`` (which texts a typed column holds exactly) against PostgreSQL itself:
  ``text::type::text = text``, for generated doubles, integers and strings (hypothesis, seeded).
- The journey on PostgreSQL: plan (types by format, a mixed-format channel text and named), backfill
  (a typed column that meets a value it cannot hold turns text first, the chunk runs again),
  reconcile with no false mismatch on NaN, ±Infinity, -0 and the bigint extremes, the stream turning
  another column text under a reader view that reads the wide tables, then a tampered double (-0 made
  0) and a tampered bigint found and repaired. Every step equals the oracle's SQL pivot, compared
  through the text PostgreSQL prints for each typed cell.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

import nasty
import oracle
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg2 import sql

from widen.config import ConfigError
from widen.core import typed
from widen.jobs import backfill, plan, reconcile, stream

NAME = "typed"
UTC = dt.UTC
SHIP = nasty.S_SPACES          # "decimal" (NaN, ±Infinity, -0, 1e300, 5e-324 …) and "integer" (extremes)
OTHER = nasty.S_QUOTES         # "string" and "boolean"


def fits_in_postgres(cur, column_type: str, texts: list[str]) -> list[bool]:
    """PostgreSQL's own answer: the text reads into the type and prints back as itself."""
    cur.execute(sql.SQL(
        "CREATE OR REPLACE FUNCTION pg_temp.fits(t text) RETURNS boolean LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN t::{ty}::text = t; EXCEPTION WHEN others THEN RETURN false; END $$").format(
        ty=sql.SQL(column_type)))
    cur.execute("SET extra_float_digits = 1")
    cur.execute("SELECT pg_temp.fits(t) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i", (texts,))
    return [r[0] for r in cur.fetchall()]


def _float_texts(x: float) -> list[str]:
    text = repr(x)
    return [text, text.replace("e+", "e"), text + "0", f"{x:.17g}", f"{x:.15g}", f"{x:.6f}", text.upper()]


texts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).flatmap(lambda x: st.sampled_from(_float_texts(x))),
    st.integers(min_value=-(2 ** 64), max_value=2 ** 64).map(str),
    st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "inf", "-0", "0", "00", "-00", "+1", " 1", "1 ",
                     "1_000", "1e5", "1e+20", "1e-05", "0.0001", "0.00001", "true", "false", "t", "TRUE", "",
                     "9223372036854775807", "-9223372036854775808", "9223372036854775808", "0x10", "1.0"]),
    st.text(max_size=8))


@settings(max_examples=40, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(texts, min_size=1, max_size=60))
def test_fits_agrees_with_postgres(batch, pg):
    batch = [t.replace("\x00", "") for t in batch]
    with pg.cursor() as cur:
        for column_type in (typed.DOUBLE, typed.BIGINT, typed.BOOLEAN):
            expected = fits_in_postgres(cur, column_type, batch)
            got = [typed.fits(column_type, pa.array([t], pa.string())) for t in batch]
            assert got == expected, [(t, g, e) for t, g, e in zip(batch, got, expected) if g != e]
            assert typed.fits(column_type, pa.array(batch, pa.string())) == all(expected)


def test_unknown_column_types_are_refused(make_config):
    with pytest.raises(ConfigError, match="column_types"):
        make_config("typed_bad", target__column_types="double")


def fresh(pg, name: str = NAME) -> None:
    with pg.cursor() as cur:
        for schema in (f"src_{name}", f"wide_{name}", f"cat_{name}"):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"src_{name}")))
        cur.execute(sql.SQL("CREATE TABLE {} (ship_id text, data_channel_id text, created_time timestamptz, "
                            "value_format text, double_v double precision, long_v bigint, str_v text, "
                            "bool_v boolean)").format(sql.Identifier(f"src_{name}", "tbl_data_timeseries")))


def hostile_rows() -> list[tuple]:
    """nasty.rows() (NaN, ±Infinity, -0, 1e300, 5e-324, bigint extremes, …) and channels for the types."""
    return nasty.rows() + [
        # one channel, two formats: text from the plan on
        (SHIP, "mixed", nasty.at(0), "Decimal", 1.5, None, None, None),
        (SHIP, "mixed", nasty.at(15), "String", None, None, "1.50", None),
        # -0 and 0 in one double column: equal as numbers, different cells
        (SHIP, "zeros", nasty.at(0), "Decimal", -0.0, None, None, None),
        (SHIP, "zeros", nasty.at(15), "Decimal", 0.0, None, None, None),
        (SHIP, "late", nasty.at(0), "Decimal", 2.5, None, None, None),
    ]


#: after the plan, a String reading reaches the Decimal channel "late", in a later chunk
LATE_STRING = (SHIP, "late", nasty.at(7200), "String", None, None, "2.50", None)
#: for the stream: a String reading in the bigint column "integer", a double and a boolean, and a
#: second reading of "zeros" at a time the wide table has (-0 there): the greater text, 5, stays
STREAMED = [(SHIP, "integer", nasty.at(60), "String", None, None, "007", None),
            (SHIP, "zeros", nasty.at(0), "Decimal", 5.0, None, None, None),
            (SHIP, "decimal", nasty.at(3600 * 3), "Decimal", 0.1 + 0.7, None, None, None),
            (OTHER, "boolean", nasty.at(3600 * 3), "Boolean", None, None, None, True)]


def column_types(cur, ship: str) -> dict[str, tuple[str, str]]:
    """channel -> (the catalog's column_type, the wide table's actual type)."""
    cur.execute(sql.SQL(
        "SELECT c.data_channel_id, c.column_type, format_type(a.atttypid, a.atttypmod) FROM {} c "
        "JOIN pg_attribute a ON a.attrelid = (quote_ident(%s) || '.' || quote_ident(c.table_name))::regclass "
        "AND a.attname = c.column_name WHERE c.ship_id = %s").format(sql.Identifier(f"cat_{NAME}", "channel_columns")),
        (f"wide_{NAME}", ship))
    return {ch: (kind, actual) for ch, kind, actual in cur.fetchall()}


def check_oracle(pg) -> None:
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}")


def tamper(cur, ship: str, channel: str, value: str, when: dt.datetime) -> None:
    cur.execute(sql.SQL("SELECT table_name, column_name FROM {} WHERE ship_id = %s AND data_channel_id = %s").format(
        sql.Identifier(f"cat_{NAME}", "channel_columns")), (ship, channel))
    table, column = cur.fetchone()
    cur.execute(sql.SQL("UPDATE {} SET {} = {} WHERE created_time = %s").format(
        sql.Identifier(f"wide_{NAME}", table), sql.Identifier(column), sql.Literal(value)), (when,))
    assert cur.rowcount == 1


def test_typed_journey_on_postgres(make_config, spark, pg, tmp_path):
    fresh(pg)
    config = make_config(NAME, target__column_types="typed")
    config = replace(config, stream=replace(config.stream, start="earliest", settle_seconds=0.0, query_name=NAME,
                                            checkpoint=str(tmp_path / "cp")))
    nasty.insert(pg, f"src_{NAME}", hostile_rows())

    planned = plan.run(config, spark)
    assert planned.exit_code == 0, planned.report
    by_ship = {r["ship_id"]: r for r in planned.summary["plan"]}
    assert by_ship[SHIP]["mixed_format_channels"] == ["mixed"]
    assert "'mixed'" in planned.report and "more than one value format" in planned.report
    with pg.cursor() as cur:            # planned: no table yet, the catalog has the types
        cur.execute(sql.SQL("SELECT data_channel_id, column_type FROM {} WHERE ship_id = %s").format(
            sql.Identifier(f"cat_{NAME}", "channel_columns")), (SHIP,))
        assert dict(cur.fetchall()) == {"decimal": "double precision", "integer": "bigint", "mixed": "text",
                                        "zeros": "double precision", "late": "double precision"}
    nasty.insert(pg, f"src_{NAME}", [LATE_STRING])

    filled = backfill.run(config, spark)
    assert filled.exit_code == 0, filled.report
    check_oracle(pg)
    with pg.cursor() as cur:
        types = column_types(cur, SHIP)
        assert types["decimal"] == ("double precision", "double precision")
        assert types["integer"] == ("bigint", "bigint")
        assert types["zeros"] == ("double precision", "double precision")
        assert types["mixed"] == ("text", "text")
        assert types["late"] == ("text", "text")       # turned text by the backfill, nothing lost
        other = column_types(cur, OTHER)
        assert other["boolean"] == ("boolean", "boolean") and other["string"] == ("text", "text")

    clean = reconcile.run(config, spark)
    assert clean.exit_code == 0, clean.report       # NaN, ±Infinity, -0, extremes: no false mismatch

    # the ship's reader view reads its wide tables (as after a cutover), then the stream brings a
    # String reading into the bigint column "integer": the column turns text under the view
    from widen.catalog.views import WIDE
    from widen.pg import db
    from widen.sources import open_table
    from widen.targets import open_target
    from widen.targets.views import configure

    target = open_target(config.target)
    views = configure(target, config, open_table(config.source, "test"))
    with db.connection(config.target.connection) as conn:
        views.switch(conn, target.layouts.load(conn, SHIP), WIDE)
        conn.commit()
    nasty.insert(pg, f"src_{NAME}", STREAMED)
    streamed = stream.run(config, spark, once=True)
    assert streamed.exit_code == 0, streamed.report
    check_oracle(pg)
    with pg.cursor() as cur:
        assert column_types(cur, SHIP)["integer"] == ("text", "text")
        assert column_types(cur, SHIP)["decimal"] == ("double precision", "double precision")
        view, reads, _ = oracle.reader_view(cur, f"cat_{NAME}", SHIP)
        assert reads == "wide"
        cur.execute(sql.SQL("SELECT created_time, {} FROM {} WHERE {} IS NOT NULL ORDER BY 1").format(
            sql.Identifier("integer"), view, sql.Identifier("integer")))
        seen = cur.fetchall()
        cur.execute(sql.SQL("SELECT created_time, coalesce(long_v::text, str_v) FROM {} WHERE ship_id = %s AND "
                            "data_channel_id = 'integer' AND coalesce(long_v::text, str_v) IS NOT NULL "
                            "AND created_time IS NOT NULL ORDER BY 1").format(
            sql.Identifier(f"src_{NAME}", "tbl_data_timeseries")), (SHIP,))
        assert seen == cur.fetchall()

    # tampered typed cells: 0 made -0 (equal as numbers, not as cells), a boolean flipped, a
    # double one step away; found and repaired
    with pg.cursor() as cur:
        tamper(cur, SHIP, "zeros", "-0", nasty.at(15))
        tamper(cur, OTHER, "boolean", "false", nasty.at(0))
        tamper(cur, SHIP, "decimal", "0.30000000000000004", nasty.at(15 * 6))     # 0.1 + 0.2 there
        cur.execute(sql.SQL("UPDATE {} SET {} = 0.3 WHERE created_time = %s").format(
            sql.Identifier(f"wide_{NAME}", "tbl_data_timeseries_" + SHIP), sql.Identifier("decimal")),
            (nasty.at(15 * 6),))
    found = reconcile.run(config, spark)
    assert found.exit_code == 1, found.report
    assert sorted(found.summary["ships_mismatched"]) == sorted([SHIP, OTHER])
    assert found.summary["cells_different"] == 3, found.report
    repaired = reconcile.run(config, spark, repair=True)
    assert repaired.exit_code == 0, repaired.report
    check_oracle(pg)
    assert reconcile.run(config, spark).exit_code == 0

    # the source's reading becomes a String its double column cannot hold ("0.30"): the repair
    # turns the column text first (prepare_ship with the rows), then writes the cell
    with pg.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET value_format = 'String', double_v = NULL, str_v = '0.30' "
                            "WHERE ship_id = %s AND data_channel_id = 'decimal' AND created_time = %s").format(
            sql.Identifier(f"src_{NAME}", "tbl_data_timeseries")), (SHIP, nasty.at(15 * 6)))
        assert cur.rowcount == 1
    assert reconcile.run(config, spark).exit_code == 1
    repaired = reconcile.run(config, spark, repair=True)
    assert repaired.exit_code == 0, repaired.report
    check_oracle(pg)
    with pg.cursor() as cur:
        assert column_types(cur, SHIP)["decimal"] == ("text", "text")
    assert reconcile.run(config, spark).exit_code == 0


@pytest.mark.parametrize("server_version", [180000, 140000], ids=["merge", "insert-on-conflict"])
def test_typed_merges_compare_cells_by_their_text(pg, server_version):
    """A typed cell changes when its text does: -0 replaces 0 (equal as numbers); with ``greatest``
    (no order column) the greater text wins, 9 over 10, as in a text column."""
    from widen.targets.postgres import merge_statement

    with pg.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS typed_merge CASCADE; CREATE SCHEMA typed_merge")
        for table in ("w", "s"):
            cur.execute(sql.SQL("CREATE TABLE {} (created_time timestamptz PRIMARY KEY, d double precision, "
                                "n bigint)").format(sql.Identifier("typed_merge", table)))
        cur.execute("INSERT INTO typed_merge.w VALUES ('2026-01-01', 0, 10), ('2026-01-02', 'NaN', 10)")
        cur.execute("INSERT INTO typed_merge.s VALUES ('2026-01-01', '-0', 10), ('2026-01-02', 'NaN', NULL)")
        types = {"d": typed.DOUBLE, "n": typed.BIGINT}
        target, staging = sql.Identifier("typed_merge", "w"), sql.Identifier("typed_merge", "s")
        cur.execute(merge_statement(server_version, target, staging, ["d", "n"], False, types))
        cur.execute("SELECT created_time, d::text, n FROM typed_merge.w ORDER BY 1")
        assert [r[1:] for r in cur.fetchall()] == [("-0", 10), ("NaN", 10)]
        cur.execute("UPDATE typed_merge.w SET n = 10")
        cur.execute("UPDATE typed_merge.s SET d = 5, n = 9")
        cur.execute(merge_statement(server_version, target, staging, ["d", "n"], True, types))
        cur.execute("SELECT d::text, n FROM typed_merge.w ORDER BY created_time")
        # by byte order "5" > "-0" but "NaN" > "5" (as numbers NaN is the greatest too; -0 < 5); "9" > "10"
        assert cur.fetchall() == [("5", 9), ("NaN", 9)]
        cur.execute("DROP SCHEMA typed_merge CASCADE")


def test_typed_journey_on_delta(make_config, spark, pg, tmp_path):
    """The same journey into Delta tables: typed Spark columns, a column rewritten as text by the
    backfill and another by the stream, reconcile exact on the hostile values, tampered cells
    found and repaired; checked by copying the Delta tables (typed) into PostgreSQL for the oracle."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from widen.targets.delta import table_dir

    name = "typed_delta"
    fresh(pg, name)
    root = str(tmp_path / "lake")
    config = make_config(name, target__kind="delta", target__delta_root=root, target__column_types="typed")
    config = replace(config, stream=replace(config.stream, start="earliest", settle_seconds=0.0, query_name=name,
                                            checkpoint=str(tmp_path / "cp")))
    nasty.insert(pg, f"src_{name}", hostile_rows())

    def check() -> None:
        with pg.cursor() as cur:
            oracle.copy_delta_tables(spark, cur, root, f"cat_{name}", f"wide_{name}")
            oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")

    def spark_types(ship: str) -> dict[str, str]:
        with pg.cursor() as cur:
            cur.execute(sql.SQL("SELECT data_channel_id, table_name, column_name FROM {} WHERE ship_id = %s").format(
                sql.Identifier(f"cat_{name}", "channel_columns")), (ship,))
            placed = cur.fetchall()
        out = {}
        for channel, table, column in placed:
            schema = spark.read.format("delta").load(f"{root}/{table_dir(table)}").schema
            out[channel] = schema[column].dataType.simpleString()
        return out

    assert plan.run(config, spark).exit_code == 0
    nasty.insert(pg, f"src_{name}", [LATE_STRING])
    filled = backfill.run(config, spark)
    assert filled.exit_code == 0, filled.report
    check()
    types = spark_types(SHIP)
    assert (types["decimal"], types["integer"], types["zeros"], types["mixed"], types["late"]) == (
        "double", "bigint", "double", "string", "string")
    assert spark_types(OTHER)["boolean"] == "boolean"
    clean = reconcile.run(config, spark)
    assert clean.exit_code == 0, clean.report

    nasty.insert(pg, f"src_{name}", STREAMED)
    streamed = stream.run(config, spark, once=True)
    assert streamed.exit_code == 0, streamed.report
    check()
    assert spark_types(SHIP)["integer"] == "string"

    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, data_channel_id, table_name, column_name FROM {} WHERE "
                            "(ship_id, data_channel_id) IN ((%s, 'zeros'), (%s, 'boolean'))").format(
            sql.Identifier(f"cat_{name}", "channel_columns")), (SHIP, OTHER))
        placed = {(ship, channel): (table, column) for ship, channel, table, column in cur.fetchall()}
    for (ship, channel), value, when in (((SHIP, "zeros"), F.expr("CAST('-0' AS DOUBLE)"), nasty.at(15)),
                                         ((OTHER, "boolean"), F.lit(False), nasty.at(0))):
        table, column = placed[(ship, channel)]
        DeltaTable.forPath(spark, f"{root}/{table_dir(table)}").update(
            F.col("created_time") == F.lit(when), {f"`{column}`": value})
    found = reconcile.run(config, spark)
    assert found.exit_code == 1, found.report
    assert found.summary["cells_different"] == 2, found.report
    repaired = reconcile.run(config, spark, repair=True)
    assert repaired.exit_code == 0, repaired.report
    check()


# -- a format the survey did not see ----------------------------------------------------------------
#: three ships whose channel "mixed" has Decimal readings first; the Integer readings that come later
#: (values a double prints exactly: they "fit" a double column) reach each through another writer
BY_BACKFILL, BY_STREAM, BY_REPAIR = "by backfill", nasty.S_QUOTES, "by repair"
EXPECTED_TYPE = sql.SQL("CASE WHEN count(DISTINCT value_format) > 1 THEN 'text' ELSE CASE min(value_format) "
                        "WHEN 'Decimal' THEN 'double precision' WHEN 'Integer' THEN 'bigint' "
                        "WHEN 'Boolean' THEN 'boolean' ELSE 'text' END END")


def readings(ship: str, channel: str, fmt: str, hour: int, count: int = 40) -> list[tuple]:
    """``count`` readings from ``hour``, 90 s apart: doubles i + 0.25 or integers i - 20."""
    return [(ship, channel, nasty.at(3600 * hour + 90 * i), fmt, i + 0.25 if fmt == "Decimal" else None,
             i - 20 if fmt == "Integer" else None, None, None) for i in range(count)]


def oracle_types(cur, name: str) -> dict[tuple[str, str], str]:
    """(ship, channel) -> the column type the formats of all its valid rows give (docs/typed-columns.md's rule)."""
    cur.execute(sql.SQL("SELECT ship_id, data_channel_id, {} FROM {} WHERE {} GROUP BY 1, 2").format(
        EXPECTED_TYPE, sql.Identifier(f"src_{name}", "tbl_data_timeseries"), oracle.VALID))
    return {(s, c): t for s, c, t in cur.fetchall()}


def wide_types(cur, name: str) -> dict[tuple[str, str], str]:
    """(ship, channel) -> the wide column's actual type, asserted equal to the catalog's column_type."""
    cur.execute(sql.SQL(
        "SELECT c.ship_id, c.data_channel_id, coalesce(c.column_type, 'text'), format_type(a.atttypid, a.atttypmod) "
        "FROM {} c JOIN pg_attribute a ON a.attrelid = (quote_ident(%s) || '.' || quote_ident(c.table_name))::regclass "
        "AND a.attname = c.column_name").format(sql.Identifier(f"cat_{name}", "channel_columns")), (f"wide_{name}",))
    rows = cur.fetchall()
    assert all(recorded == actual for _, _, recorded, actual in rows), rows
    return {(s, c): actual for s, c, _, actual in rows}


@pytest.mark.parametrize("survey", ["skip scan", "sample"])
def test_a_format_the_survey_missed_turns_the_column_text_whatever_the_path(survey, make_config, spark, pg,
                                                                            tmp_path, monkeypatch):
    """A channel with Decimal readings first and Integer readings later ends as text whichever survey
    laid it out (an index skip scan reading each channel's first rows, or a TABLESAMPLE that misses
    them) and whichever writer meets the Integers (a backfill chunk, the stream, a repair): the
    column types and the cells equal the oracle's."""
    from widen.pg import db
    from widen.sources import open_table, postgres as pg_source

    # schemas of their own per path: the stream's layout cache in this process outlives a dropped catalog
    name = f"typed_{survey.replace(' ', '_')}"
    fresh(pg, name)
    narrow = sql.Identifier(f"src_{name}", "tbl_data_timeseries")
    with pg.cursor() as cur:
        cur.execute(sql.SQL("CREATE INDEX ON {} (ship_id, created_time)").format(narrow))
        if survey == "skip scan":
            cur.execute(sql.SQL("CREATE INDEX ON {} (ship_id, data_channel_id, created_time)").format(narrow))
    monkeypatch.setattr(pg_source, "SURVEY_SAMPLE_ROWS", 1)     # a sample far smaller than the table
    first = [r for ship in (BY_BACKFILL, BY_STREAM, BY_REPAIR)
             for r in readings(ship, "mixed", "Decimal", 0) + readings(ship, "decimal", "Decimal", 0)
             + readings(ship, "integer", "Integer", 0)]
    nasty.insert(pg, f"src_{name}", first + readings(BY_BACKFILL, "mixed", "Integer", 1))
    config = make_config(name, target__column_types="typed")
    config = replace(config, stream=replace(config.stream, start="earliest", settle_seconds=0.0, query_name=name,
                                            checkpoint=str(tmp_path / "cp")))

    # the survey (the backfill's, for new ships) takes the intended path and misses the Integers
    source = open_table(config.source, "test")
    with db.connection(config.source.connection) as conn:
        stats, how = source.survey(conn, [BY_BACKFILL])
    assert how == survey
    assert "Integer" not in stats[BY_BACKFILL]["channels"].get("mixed", {"formats": {}})["formats"]

    def check() -> None:
        with pg.cursor() as cur:
            assert wide_types(cur, name) == oracle_types(cur, name)
            oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")

    filled = backfill.run(config, spark)
    assert filled.exit_code == 0, filled.report
    check()
    with pg.cursor() as cur:     # typed where one format was seen: the other ships' "mixed" is a double
        types = wide_types(cur, name)
    assert types[(BY_BACKFILL, "mixed")] == "text" and types[(BY_STREAM, "mixed")] == "double precision"
    assert types[(BY_STREAM, "integer")] == "bigint"

    nasty.insert(pg, f"src_{name}", readings(BY_STREAM, "mixed", "Integer", 2))
    streamed = stream.run(config, spark, once=True)
    assert streamed.exit_code == 0, streamed.report
    check()

    nasty.insert(pg, f"src_{name}", readings(BY_REPAIR, "mixed", "Integer", 2))
    assert reconcile.run(config, spark, ships=[BY_REPAIR]).exit_code == 1
    repaired = reconcile.run(config, spark, ships=[BY_REPAIR], repair=True)
    assert repaired.exit_code == 0, repaired.report
    check()
    with pg.cursor() as cur:
        assert {s for (s, c), t in wide_types(cur, name).items() if c == "mixed" and t == "text"} == {
            BY_BACKFILL, BY_STREAM, BY_REPAIR}
    assert reconcile.run(config, spark).exit_code == 0
