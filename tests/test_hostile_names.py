"""Any ship id or channel name PostgreSQL can store works in every job (docs/design.md, "Identifiers").

Property-based: hypothesis draws ship ids and channel names from all of Unicode except NUL, mixed
with a list of known-nasty ones (``%`` in every psycopg2 form, braces, quotes, backslashes, control
characters, emoji, 1-byte names, names of exactly 63 and 64 bytes, names that differ only by case or
only after byte 54, and ship ``S`` whose part table would be ship ``S_p2``'s table). Each example runs
plan -> backfill -> stream --once -> reconcile with a tampered cell -> --repair -> rollback of one
ship, each step checked against the in-database SQL pivot of tests/oracle.py. Seeded and bounded
(``derandomize``, a few examples) so the suite stays fast and repeatable.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace

import nasty
import oracle
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st
from psycopg2 import sql

from widen.jobs import backfill, plan, reconcile, rollback, stream

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
PREFIX_54 = "p" * 54
#: ship ids: with the template "tbl_data_timeseries_" (20 bytes), a 43-byte id makes a 63-byte
#: table name (kept) and a 44-byte one a 64-byte name (hashed)
NASTY_SHIPS = ["pct%ship", "%s", "%(x)s", "{}", "o'q\"uo\\te", "tab\tnew\nline", "🚢 船", "x",
               "S", "S_p2", "Case", "case", "s" * 43, "s" * 44, "L" * 40 + "-after-byte-54-a",
               "L" * 40 + "-after-byte-54-b", "?", "$1", "-- not a comment", "a.b`c"]
NASTY_CHANNELS = ["%", "%s", "%(x)s", "{}", "{0}", "'", '"', "\\", "\t", "\n", "😀", "c", "c" * 63, "c" * 64,
                  "Upper", "upper", PREFIX_54 + "-one", PREFIX_54 + "-two", "created_time", "?", "/* x */",
                  "a.b", "`tick`", "é" * 32]

names = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=40)
ships_strategy = st.lists(st.one_of(names, st.sampled_from(NASTY_SHIPS)), min_size=2, max_size=4, unique=True)
channels_strategy = st.lists(st.one_of(names, st.sampled_from(NASTY_CHANNELS)), min_size=1, max_size=6,
                             unique=True)
fleet_strategy = ships_strategy.flatmap(
    lambda ships: st.fixed_dictionaries({ship: channels_strategy for ship in ships}))


def readings(fleet: dict[str, list[str]], minutes: range) -> list[tuple]:
    """Four formats in turn, a reading per channel per minute, values that print differently
    in Java and Python, and a second, different reading of the first key (a duplicate)."""
    rows = []
    for ship, channels in fleet.items():
        for i, channel in enumerate(channels):
            for m in minutes:
                fmt = ("Decimal", "Integer", "String", "Boolean")[(i + m) % 4]
                rows.append((ship, channel, T0 + dt.timedelta(minutes=m), fmt,
                             (0.1 + 0.2) * m if fmt == "Decimal" else None, -m if fmt == "Integer" else None,
                             f"%s {channel}\t{m}\\" if fmt == "String" else None, m % 2 == 0 if fmt == "Boolean" else None))
    ship, channel, when, fmt, *_ = rows[0]
    rows.append((ship, channel, when, "String", None, None, "a duplicate reading", None))
    return rows


def fresh(pg, name: str) -> None:
    with pg.cursor() as cur:
        for schema in (f"src_{name}", f"wide_{name}", f"cat_{name}"):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"src_{name}")))
        cur.execute(sql.SQL("CREATE TABLE {} (ship_id text, data_channel_id text, created_time timestamptz, "
                            "value_format text, double_v double precision, long_v bigint, str_v text, "
                            "bool_v boolean)").format(sql.Identifier(f"src_{name}", "tbl_data_timeseries")))


def tamper_one_cell(cur, name: str, ship: str) -> None:
    cur.execute(sql.SQL("SELECT table_name, column_name FROM {} WHERE ship_id = %s ORDER BY 1, 2 LIMIT 1").format(
        sql.Identifier(f"cat_{name}", "channel_columns")), (ship,))
    table, column = cur.fetchone()
    target = sql.Identifier(f"wide_{name}", table)
    cur.execute(sql.SQL("UPDATE {t} SET {c} = 'tampered' WHERE created_time = "
                        "(SELECT min(created_time) FROM {t} WHERE {c} IS NOT NULL)")
                .format(t=target, c=sql.Identifier(column)))
    assert cur.rowcount == 1


def tables_of(cur, name: str, ship: str) -> list[str]:
    cur.execute(sql.SQL("SELECT table_name FROM {} WHERE ship_id = %s").format(
        sql.Identifier(f"cat_{name}", "wide_tables")), (ship,))
    return [r[0] for r in cur.fetchall()]


def assert_ships_equal_oracle(cur, name: str, ships) -> None:
    for ship in ships:
        diffs = oracle.differences(cur, f"src_{name}", f"wide_{name}", f"cat_{name}", ship)
        assert diffs and all(d == (0, 0) for d in diffs.values()), (ship, diffs)


EXAMPLES = iter(range(1000))


@settings(max_examples=2, derandomize=True, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(fleet=fleet_strategy)
@example(fleet={ship: NASTY_CHANNELS[i % 5::3] + (NASTY_CHANNELS[:5] if ship == "S" else [])
                for i, ship in enumerate(NASTY_SHIPS)})
def test_any_name_through_every_job(fleet, make_config, spark, pg, tmp_path_factory):
    name = f"hyp{next(EXAMPLES)}"
    fresh(pg, name)
    config = make_config(name, target__max_columns_per_table=3)      # parts (and S/S_p2) come early
    config = replace(config, stream=replace(config.stream, start="earliest", settle_seconds=0.0,
                                            query_name=name,
                                            checkpoint=str(tmp_path_factory.mktemp("cp") / name)))
    history = readings(fleet, range(0, 3))
    nasty.insert(pg, f"src_{name}", history)

    planned = plan.run(config)
    assert planned.exit_code == 0, planned.report
    assert planned.summary["ships"] == len(fleet)

    filled = backfill.run(config, spark)
    assert filled.exit_code == 0, filled.report
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")
        cur.execute(sql.SQL("SELECT count(*), count(DISTINCT table_name) FROM {}").format(
            sql.Identifier(f"cat_{name}", "wide_tables")))
        tables, distinct = cur.fetchone()
        assert tables == distinct                                   # unique across the fleet
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (f"wide_{name}",))
        assert cur.fetchone()[0] == tables

    # The live tail: later minutes, a new channel for a fleet ship and a new ship.
    first_ship = sorted(fleet)[0]
    tail = readings(fleet, range(3, 5)) + readings({first_ship: ["new %s channel"], "new ship %(s)s": ["%"]},
                                                  range(4, 6))
    nasty.insert(pg, f"src_{name}", tail)
    streamed = stream.run(config, spark, once=True)
    assert streamed.exit_code == 0, streamed.report
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")

    # A tampered cell is found by reconcile and repaired.
    with pg.cursor() as cur:
        tamper_one_cell(cur, name, first_ship)
    found = reconcile.run(config, spark)
    assert found.exit_code == 1 and found.summary["ships_mismatched"] == [first_ship], found.report
    assert found.summary["cells_different"] == 1
    repaired = reconcile.run(config, spark, repair=True)
    assert repaired.exit_code == 0, repaired.report
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")

    # Rollback of one ship: its tables and catalog rows go, every other ship is untouched.
    with pg.cursor() as cur:
        gone = tables_of(cur, name, first_ship)
    undone = rollback.run(config, spark, ships=[first_ship])
    assert undone.exit_code == 0, undone.report
    with pg.cursor() as cur:
        assert tables_of(cur, name, first_ship) == []
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
                    (f"wide_{name}", gone))
        assert cur.fetchone()[0] == 0
        assert_ships_equal_oracle(cur, name, [s for s in oracle.valid_ships(cur, f"src_{name}") if s != first_ship])


def test_any_name_into_delta(make_config, spark, pg, tmp_path):
    """The same journey into Delta tables for a handful of the nasty names."""
    name = "hypdelta"
    fresh(pg, name)
    root = str(tmp_path / "lake")
    fleet = {"pct%ship": ["%", "%(x)s", "Upper", "upper", "a.b"], "o'q\"uo\\te 🚢": ["{}", "`tick`", "\t", "c" * 64]}
    config = make_config(name, target__kind="delta", target__delta_root=root)
    config = replace(config, stream=replace(config.stream, start="earliest", settle_seconds=0.0, query_name=name,
                                            checkpoint=str(tmp_path / "cp")))
    nasty.insert(pg, f"src_{name}", readings(fleet, range(0, 3)))
    copy = f"wide_{name}"

    def check() -> None:
        with pg.cursor() as cur:
            oracle.copy_delta_tables(spark, cur, root, f"cat_{name}", copy)
            oracle.assert_equal_to_oracle(cur, f"src_{name}", copy, f"cat_{name}")

    assert plan.run(config).exit_code == 0
    assert backfill.run(config, spark).exit_code == 0
    nasty.insert(pg, f"src_{name}", readings({"pct%ship": ["%", "new %s"]}, range(3, 4)))
    assert stream.run(config, spark, once=True).exit_code == 0
    check()
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from widen.targets.delta import table_dir
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT table_name, column_name FROM {} WHERE ship_id = %s AND data_channel_id = %s")
                    .format(sql.Identifier(f"cat_{name}", "channel_columns")), ("pct%ship", "%(x)s"))
        table, column = cur.fetchone()
    DeltaTable.forPath(spark, f"{root}/{table_dir(table)}").update(
        F.col("created_time") == F.lit(T0), {f"`{column}`": F.lit("tampered")})
    repaired = reconcile.run(config, spark, repair=True)       # finds the tampered cell, then repairs it
    assert repaired.exit_code == 0 and repaired.summary["repaired_ships"] == ["pct%ship"], repaired.report
    assert repaired.summary["cells_different"] == 1
    check()
    with pg.cursor() as cur:
        paths = [f"{root}/{table_dir(t)}" for t in tables_of(cur, name, "pct%ship")]
    assert rollback.run(config, spark, ships=["pct%ship"]).exit_code == 0
    assert not any(os.path.exists(p) for p in paths)
