"""A ship wider than target.max_columns_per_table lands in part tables; rollback undoes a ship or a range."""
from __future__ import annotations

import datetime as dt

import oracle
import pytest
from psycopg2 import sql

from widen.jobs import backfill, rollback
from widen.sources import generate

NAME = "parts"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
UTC = dt.UTC


@pytest.fixture(scope="module")
def migrated(fresh_fleet, make_config, spark):
    config = make_config(NAME, target__max_columns_per_table=5)
    conn = fresh_fleet(NAME, ships=2, channels=13, hours=2, seed=3)
    result = backfill.run(config, spark)          # no plan first: backfill plans unseen ships itself
    yield {"config": config, "result": result, "conn": conn}
    conn.close()


def parts_of(cur, ship: str) -> list[tuple[int, str]]:
    cur.execute(sql.SQL("SELECT part, table_name FROM {} WHERE ship_id = %s ORDER BY part").format(
        sql.Identifier(CAT, "wide_tables")), (ship,))
    return cur.fetchall()


def test_wide_ship_is_split_into_part_tables_that_equal_the_oracle(migrated, pg):
    assert migrated["result"].exit_code == 0
    ship = generate.ship_ids(1)[0]
    with pg.cursor() as cur:
        parts = parts_of(cur, ship)
        assert [p for p, _ in parts] == [1, 2, 3]
        assert [t for _, t in parts] == [f"tbl_data_timeseries_{ship}", f"tbl_data_timeseries_{ship}_p2",
                                         f"tbl_data_timeseries_{ship}_p3"]
        for _, table in parts:
            cur.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                        "AND NOT attisdropped", (sql.Identifier(TGT, table).as_string(pg),))
            assert cur.fetchone()[0] <= 6                          # created_time + at most 5 channels
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s").format(
            sql.Identifier(CAT, "channel_columns")), (ship,))
        assert cur.fetchone()[0] == 13
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_rollback_dry_run_changes_nothing(migrated, pg):
    ship = generate.ship_ids(1)[0]
    result = rollback.run(migrated["config"], ships=[ship], dry_run=True)
    assert "would run: DROP TABLE" in result.report
    with pg.cursor() as cur:
        assert len(parts_of(cur, ship)) == 3
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_rollback_of_a_range_then_backfill_restores_it(migrated, pg, spark):
    ship = generate.ship_ids(1)[0]
    lo = dt.datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    hi = dt.datetime(2026, 1, 1, 1, 15, tzinfo=UTC)
    rollback.run(migrated["config"], ships=[ship], start=lo, end=hi)
    with pg.cursor() as cur:
        for _, table in parts_of(cur, ship):
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_time >= %s AND created_time < %s")
                        .format(sql.Identifier(TGT, table)), (lo, hi))
            assert cur.fetchone()[0] == 0
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s").format(
            sql.Identifier(CAT, "backfill_chunks")), (ship,))
        assert cur.fetchone()[0] == 0                  # both 1-hour chunks overlapped the range
    again = backfill.run(migrated["config"], spark)
    assert again.summary["chunks_done"] == 2
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_rollback_of_a_ship_drops_its_tables_and_catalog_rows(migrated, pg):
    ship, other = generate.ship_ids(2)
    result = rollback.run(migrated["config"], ships=[ship])
    assert result.exit_code == 0
    with pg.cursor() as cur:
        assert parts_of(cur, ship) == []
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                    (TGT, f"tbl_data_timeseries_{ship}%"))
        assert cur.fetchone()[0] == 0
        for table in ("channel_columns", "backfill_chunks"):
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s").format(
                sql.Identifier(CAT, table)), (ship,))
            assert cur.fetchone()[0] == 0
        assert len(parts_of(cur, other)) == 3            # the other ship is untouched
        assert oracle.differences(cur, SRC, TGT, CAT, other) == {
            t: (0, 0) for _, t in parts_of(cur, other)}
