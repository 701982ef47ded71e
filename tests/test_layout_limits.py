"""A ship that cannot fit a row is refused by name and numbers; the other ships still migrate."""
import nasty
import oracle
from psycopg2 import sql

from widen.jobs import backfill, plan

NAME = "limits"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def test_too_wide_channel_is_reported_and_other_ships_migrate(fresh_fleet, make_config, spark, pg):
    config = make_config(NAME, target__max_row_bytes=60)
    fresh_fleet(NAME, ships=0).close()
    nasty.insert(pg, SRC, [
        ("wide ship", "essay", nasty.at(0), "String", None, None, "x" * 40, None),
        ("narrow ship", "a", nasty.at(0), "Integer", None, 1, None, None),
        ("narrow ship", "b", nasty.at(15), "Integer", None, 22, None, None),
    ])
    planned = plan.run(config)
    assert planned.exit_code == 1
    [problem] = planned.summary["problems"]
    assert "'wide ship'" in problem and "'essay'" in problem and "max_row_bytes=60" in problem
    result = backfill.run(config, spark)
    assert result.exit_code == 1
    assert list(result.summary["ships_not_laid_out"]) == ["wide ship"]
    assert "SHIP NOT MIGRATED wide ship" in result.report
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(sql.Identifier(CAT, "wide_tables")))
        assert [r[0] for r in cur.fetchall()] == ["narrow ship"]
        assert oracle.differences(cur, SRC, TGT, CAT, "narrow ship") == {"tbl_data_timeseries_narrow ship": (0, 0)}


def test_plan_warns_when_chunk_reads_would_scan_the_table(fresh_fleet, make_config, pg):
    config = make_config("noindex")
    fresh_fleet("noindex", ships=1, channels=2, hours=1).close()
    assert plan.run(config).summary["warnings"] == []
    with pg.cursor() as cur:
        cur.execute('DROP INDEX "src_noindex"."tbl_data_timeseries_ship_time"')
        cur.execute('CREATE INDEX ON "src_noindex"."tbl_data_timeseries" (created_time, ship_id)')
    [warning] = plan.run(config).summary["warnings"]
    assert "src_noindex.tbl_data_timeseries has no index on (ship_id, created_time)" in warning
