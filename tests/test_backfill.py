"""Integration: a generated fleet plus hostile rows, backfilled on the real server, equals the oracle."""
from __future__ import annotations

import nasty
import oracle
import pytest
from psycopg2 import sql

from widen.jobs import backfill, plan
from widen.pg import db
from widen.sources import generate

NAME = "bf"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
LATE_CHANNEL = "late/new-channel"     # inserted after the plan ran


def snapshot(cur) -> dict:
    """Every wide table's contents and row versions, and the ledger."""
    cur.execute(sql.SQL("SELECT table_name FROM {} ORDER BY 1").format(sql.Identifier(CAT, "wide_tables")))
    out = {}
    for (table,) in cur.fetchall():
        cur.execute(sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY created_time)), "
                            "string_agg(xmin::text, ',' ORDER BY created_time) FROM {} t").format(
            sql.Identifier(TGT, table)))
        out[table] = cur.fetchone()
    cur.execute(sql.SQL("SELECT ship_id, range_start, range_end, status, narrow_rows, wide_rows, attempts "
                        "FROM {} ORDER BY 1, 2").format(sql.Identifier(CAT, "backfill_chunks")))
    out["ledger"] = cur.fetchall()
    return out


@pytest.fixture(scope="module")
def migrated(fresh_fleet, make_config, spark):
    config = make_config(NAME)
    conn = fresh_fleet(NAME, ships=3, channels=12, hours=3, seed=11)
    nasty.insert(conn, SRC)
    planned = plan.run(config, exact=True)
    fast = plan.run(config)
    # A channel the plan never saw arrives before the backfill: it must get a column, not be lost.
    fleet_ship = generate.ship_ids(1)[0]
    nasty.insert(conn, SRC, [(fleet_ship, LATE_CHANNEL, nasty.at(7000), "Integer", None, 42, None,
                              None)])
    first = backfill.run(config, spark)
    yield {"config": config, "conn": conn, "plan": planned, "fast_plan": fast, "first": first}
    conn.close()


def test_every_wide_table_equals_the_sql_pivot(migrated, pg):
    assert migrated["first"].exit_code == 0, migrated["first"].summary
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_hostile_identifiers_become_tables_and_columns(migrated, pg):
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, table_name FROM {} WHERE part = 1").format(
            sql.Identifier(CAT, "wide_tables")))
        tables = dict(cur.fetchall())
        assert tables[nasty.S_SQL] == "tbl_data_timeseries_" + nasty.S_SQL
        assert len(tables[nasty.S_LONG].encode()) <= 63 and tables[nasty.S_LONG] != "tbl_data_timeseries_" + nasty.S_LONG
        # The source table is still there, whatever the ship ids said.
        cur.execute("SELECT to_regclass(%s)", (f"{SRC}.tbl_data_timeseries",))
        assert cur.fetchone()[0] is not None
        cur.execute("SELECT col_description(%s::regclass, a.attnum) FROM pg_attribute a "
                    "WHERE a.attrelid = %s::regclass AND a.attname = 'UPPER'",
                    (sql.Identifier(TGT, tables[nasty.S_SQL]).as_string(pg),) * 2)
        assert cur.fetchone()[0] == "data_channel_id=UPPER"


def test_every_rejected_row_is_in_the_rejects_table(migrated, pg):
    with pg.cursor() as cur:
        cols = "ship_id, data_channel_id, created_time, value_format, double_v, long_v, str_v, bool_v"
        invalid = sql.SQL("SELECT {c} FROM {t} WHERE NOT coalesce({v}, false)").format(
            c=sql.SQL(cols), t=sql.Identifier(SRC, "tbl_data_timeseries"), v=oracle.VALID)
        recorded = sql.SQL("SELECT {c} FROM {t} WHERE job = 'backfill'").format(
            c=sql.SQL(cols), t=sql.Identifier(CAT, "rejects"))
        for a, b in ((invalid, recorded), (recorded, invalid)):
            cur.execute(sql.SQL("SELECT count(*) FROM ({} EXCEPT ALL {}) x").format(a, b))
            assert cur.fetchone()[0] == 0
        cur.execute(sql.SQL("SELECT count(*) FROM ({}) x").format(invalid))
        expected = cur.fetchone()[0]
    assert expected == 8
    assert migrated["first"].summary["rejected_rows"] == expected
    assert migrated["plan"].summary["rejected_rows"] == expected


def test_duplicates_are_counted(migrated, pg):
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n FROM {t} WHERE {v} "
                            "GROUP BY ship_id, data_channel_id, created_time) d").format(
            t=sql.Identifier(SRC, "tbl_data_timeseries"), v=oracle.VALID))
        expected = cur.fetchone()[0]
    assert expected == 6
    assert migrated["first"].summary["duplicate_rows"] == expected
    assert migrated["plan"].summary["duplicate_rows"] == expected


def test_plan_reports_rows_span_and_channels(migrated, pg):
    by_ship = {r["ship_id"]: r for r in migrated["plan"].summary["plan"]}
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, count(*), min(created_time), max(created_time), "
                            "count(DISTINCT data_channel_id) FILTER (WHERE {v}) FROM {t} "
                            "WHERE ship_id IS NOT NULL AND data_channel_id IS DISTINCT FROM %s "
                            "GROUP BY 1").format(
            t=sql.Identifier(SRC, "tbl_data_timeseries"), v=oracle.VALID), (LATE_CHANNEL,))
        for ship, rows, lo, hi, channels in cur.fetchall():
            assert by_ship[ship]["channels"] == channels
            if ship != nasty.S_SPACES and ship != nasty.S_QUOTES:    # rows with NULL time are not in the span
                assert (by_ship[ship]["narrow_rows"], by_ship[ship]["start"], by_ship[ship]["end"]) == (rows, lo, hi)


def analyzed(cur) -> dict[str, object]:
    """Each wide table's last manual ANALYZE (None: never)."""
    cur.execute("SELECT pg_stat_clear_snapshot()")
    cur.execute(sql.SQL("SELECT w.table_name, s.last_analyze FROM {} w LEFT JOIN pg_stat_user_tables s "
                        "ON s.schemaname = %s AND s.relname = w.table_name").format(
        sql.Identifier(CAT, "wide_tables")), (TGT,))
    return dict(cur.fetchall())


def test_wide_tables_are_analyzed_after_the_backfill(migrated, pg, spark):
    with pg.cursor() as cur:
        first = analyzed(cur)
    assert first and all(at is not None for at in first.values()), first
    assert migrated["first"].summary["tables_analyzed"] == len(first)
    again = backfill.run(migrated["config"], spark)          # nothing to do: nothing analyzed again
    assert again.summary["tables_analyzed"] == 0
    with pg.cursor() as cur:
        assert analyzed(cur) == first


def test_running_again_changes_nothing(migrated, pg, spark):
    with pg.cursor() as cur:
        before = snapshot(cur)
    again = backfill.run(migrated["config"], spark)
    assert again.exit_code == 0
    assert again.summary["chunks_done"] == 0
    assert again.summary["chunks_skipped"] == migrated["first"].summary["chunks_total"]
    with pg.cursor() as cur:
        assert snapshot(cur) == before


def test_a_replayed_chunk_changes_no_row(migrated, pg, spark):
    """Forget one chunk in the ledger: it is redone, and the MERGE rewrites nothing."""
    ship = generate.ship_ids(1)[0]
    with pg.cursor() as cur:
        before = snapshot(cur)
        cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s AND range_start = %s").format(
            sql.Identifier(CAT, "backfill_chunks")), (ship, nasty.T0))
    again = backfill.run(migrated["config"], spark)
    assert again.summary["chunks_done"] == 1
    with pg.cursor() as cur:
        after = snapshot(cur)
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
    assert {k: v for k, v in after.items() if k != "ledger"} == {k: v for k, v in before.items() if k != "ledger"}
    assert len(after["ledger"]) == len(before["ledger"])


def test_plan_without_exact_estimates_and_counts_nothing_it_would_scan_for(migrated, pg):
    """The default plan (no --exact) on the hostile fleet: the same channels and layout as the exact
    one (a small table is sampled whole), rows and spans per ship from the index, rejects and
    duplicates not counted and said so."""
    fast, exact = migrated["fast_plan"], migrated["plan"]
    assert fast.exit_code == 0, fast.report
    assert fast.summary["estimated"] is True and exact.summary["estimated"] is False
    assert fast.summary["rejected_rows"] is None and fast.summary["duplicate_rows"] is None
    assert "plan --exact" in fast.report and "plan --exact" not in exact.report
    by_ship = {r["ship_id"]: r for r in fast.summary["plan"]}
    exact_by_ship = {r["ship_id"]: r for r in exact.summary["plan"]}
    assert set(by_ship) == set(exact_by_ship)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, count(*), count(DISTINCT data_channel_id) FILTER (WHERE {v}) FROM {t} "
                            "WHERE ship_id <> '' AND data_channel_id IS DISTINCT FROM %s GROUP BY 1").format(
            t=sql.Identifier(SRC, "tbl_data_timeseries"), v=oracle.VALID), (LATE_CHANNEL,))
        for ship, rows, channels in cur.fetchall():
            assert by_ship[ship]["channels"] == channels == exact_by_ship[ship]["channels"]
            assert by_ship[ship]["narrow_rows"] == rows
            assert by_ship[ship]["rejected_rows"] is None and by_ship[ship]["duplicate_rows"] is None
            assert by_ship[ship]["parts"] == exact_by_ship[ship]["parts"]


def test_analyze_leaves_the_channels_to_autovacuum_only_where_it_runs(pg, make_config):
    """``backfill.analyze: created_time`` analyzes that column where autovacuum will analyze the
    table soon (PostgreSQL keeps the table's change count after a partial ANALYZE), every column
    where it will not (off for the table; too few rows changed since its last ANALYZE, as for a big
    table that got a new column); ``all`` every column."""
    from types import SimpleNamespace

    from widen.targets.postgres import PostgresTarget

    cfg = make_config("analyze_columns")
    schema = cfg.target.schema
    tables = {"fresh": "", "auto_off": "WITH (autovacuum_enabled = false)", "settled": ""}
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(schema)))
        for table, options in tables.items():
            cur.execute(sql.SQL("CREATE TABLE {} (created_time timestamptz PRIMARY KEY, a text, b text) " + options)
                        .format(sql.Identifier(schema, table)))
            cur.execute(sql.SQL("INSERT INTO {} SELECT timestamptz '2026-01-01' + i * interval '1 s', i::text, "
                                "(i % 7)::text FROM generate_series(1, 500) i").format(sql.Identifier(schema, table)))
        # analyzed in full, then a new channel's column and one row: autovacuum is not due
        settled = sql.Identifier(schema, "settled")
        cur.execute("SELECT pg_stat_force_next_flush()")        # the inserts counted before the ANALYZE
        cur.execute(sql.SQL("ANALYZE {}").format(settled))
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN c text").format(settled))
        cur.execute(sql.SQL("INSERT INTO {} VALUES (timestamptz '2027-01-01', 'x', 'y', 'z')").format(settled))
        cur.execute("SELECT pg_stat_force_next_flush()")        # the change counts, visible to all

    def stats() -> dict[str, set[str]]:
        with pg.cursor() as cur:
            cur.execute("SELECT tablename, attname FROM pg_stats WHERE schemaname = %s", (schema,))
            out: dict[str, set[str]] = {}
            for table, column in cur.fetchall():
                out.setdefault(table, set()).add(column)
            cur.execute("SELECT relname FROM pg_stat_user_tables WHERE schemaname = %s AND autoanalyze_count > 0",
                        (schema,))
            for (table,) in cur.fetchall():          # autovacuum came in between: it analyzed all
                out[table] = out.get(table, set()) | {"autovacuum"}
            return out

    every = {"created_time", "a", "b"}
    target = PostgresTarget(cfg.target)
    with db.connection(cfg.target.connection) as conn:
        assert target.analyze(conn, SimpleNamespace(tables=dict(enumerate(tables))), "created_time") == 3
        found = stats()
        assert found["auto_off"] == every and found["settled"] == every | {"c"}
        assert found["fresh"] in ({"created_time"}, every | {"autovacuum"})
        assert target.analyze(conn, SimpleNamespace(tables={1: "fresh"}), "all") == 1
        assert stats()["fresh"] >= every
