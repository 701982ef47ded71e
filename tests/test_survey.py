"""No full scan before the first chunk (issue 18): the backfill finds a new ship's channels by an
index skip scan or a sample, and channels those miss get their columns when a chunk meets them, by
the same placement rule.

The fleet is one generated ship plus, for ship A, a rare channel with one reading in one chunk
only and a late channel of long strings, in its last chunk, that no longer fits the first part
table (``target.max_row_bytes``), so a part table is made mid-backfill. Two surveys:

- ``sample``: a sample too small to see anything (``SURVEY_SAMPLE_ROWS`` lowered, the table
  analyzed), so every channel is met by the chunks;
- ``skip scan``: with an index on (ship_id, data_channel_id), every channel is found up front.

Both end equal to the oracle's pivot, with every chunk done and the part table recorded.
"""
from __future__ import annotations

import nasty
import oracle
import pytest
from psycopg2 import sql

from widen.jobs import backfill
from widen.sources import open_table, postgres as postgres_source

SHIP_A = "survey ship A"
RARE = "rare/one reading"
LONG = "late/long text"


@pytest.mark.parametrize("how", ["sample", "skip scan"])
def test_channels_the_survey_misses_are_met_by_the_chunks(how, fresh_fleet, make_config, spark, pg, monkeypatch):
    name = "survey_" + how.replace(" ", "_")
    src = f"src_{name}"
    fresh_fleet(name, ships=1, channels=4, hours=3, seed=5).close()
    rows = [row for m in range(0, 180, 5) for row in nasty.minute(SHIP_A, m, ["a", "b"])]
    rows.append((SHIP_A, RARE, nasty.at(3600 + 7), "Integer", None, 7, None, None))
    rows += [(SHIP_A, LONG, nasty.at(7200 + 15 * i), "String", None, None, f"{i:03d}" + "x" * 200, None)
             for i in range(8)]
    nasty.insert(pg, src, rows)
    narrow = sql.Identifier(src, "tbl_data_timeseries")
    with pg.cursor() as cur:
        if how == "skip scan":
            cur.execute(sql.SQL("CREATE INDEX ON {} (ship_id, data_channel_id, created_time)").format(narrow))
        cur.execute(sql.SQL("ANALYZE {}").format(narrow))
    if how == "sample":
        monkeypatch.setattr(postgres_source, "SURVEY_SAMPLE_ROWS", 1)
    config = make_config(name, target__max_row_bytes=250, target__column_types="typed")

    source = open_table(config.source, "test")
    with source.connect() as conn:
        found, used = source.survey(conn, [SHIP_A])
    assert used == how
    if how == "sample":
        assert RARE not in found[SHIP_A]["channels"] and LONG not in found[SHIP_A]["channels"]
    else:
        assert {RARE, LONG} <= set(found[SHIP_A]["channels"])

    filled = backfill.run(config, spark)
    assert filled.exit_code == 0, filled.report
    assert filled.summary["chunks_failed"] == 0 and filled.summary["seconds_before_first_chunk"] > 0
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, src, f"wide_{name}", f"cat_{name}")
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s").format(
            sql.Identifier(f"cat_{name}", "wide_tables")), (SHIP_A,))
        assert cur.fetchone()[0] == 2                    # the long channel's part table
        cur.execute(sql.SQL("SELECT count(*) FILTER (WHERE status <> 'done'), count(*) FROM {}").format(
            sql.Identifier(f"cat_{name}", "backfill_chunks")))
        assert cur.fetchone() == (0, filled.summary["chunks_total"])
