"""A chunk that keeps failing is retried, recorded and reported; the other ships still migrate."""
from __future__ import annotations

import oracle
from psycopg2 import sql

from widen.jobs import backfill
from widen.sources import generate

NAME = "fail"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def test_failing_chunk_is_retried_reported_and_redone_later(fresh_fleet, make_config, spark, pg):
    config = make_config(NAME, backfill__chunk_hours=2)
    fresh_fleet(NAME, ships=2, channels=4, hours=2, seed=9).close()
    broken, healthy = generate.ship_ids(2)
    with pg.cursor() as cur:
        # Something that is not a table already holds the broken ship's table name.
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(TGT)))
        cur.execute(sql.SQL("CREATE VIEW {} AS SELECT now() AS created_time").format(
            sql.Identifier(TGT, f"tbl_data_timeseries_{broken}")))
    result = backfill.run(config, spark)
    assert result.exit_code == 1
    assert result.summary["chunks_failed"] == 1 and result.summary["chunks_done"] == 1
    [failure] = result.summary["failed"]
    assert broken in failure["chunk"] and f"tbl_data_timeseries_{broken}" in failure["error"]
    assert broken in result.report
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, status, attempts FROM {} ORDER BY 1").format(
            sql.Identifier(CAT, "backfill_chunks")))
        assert cur.fetchall() == [(broken, "failed", 2), (healthy, "done", 1)]
        assert oracle.differences(cur, SRC, TGT, CAT, healthy) == {f"tbl_data_timeseries_{healthy}": (0, 0)}
        cur.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(TGT, f"tbl_data_timeseries_{broken}")))
    again = backfill.run(config, spark)
    assert again.exit_code == 0
    assert (again.summary["chunks_done"], again.summary["chunks_skipped"]) == (1, 1)
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        cur.execute(sql.SQL("SELECT ship_id, status, attempts FROM {} ORDER BY 1").format(
            sql.Identifier(CAT, "backfill_chunks")))
        assert cur.fetchall() == [(broken, "done", 3), (healthy, "done", 1)]
