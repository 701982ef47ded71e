"""One bad ship never stops the others, in plan, backfill, stream, reconcile and rollback; table
names stay unique across the fleet whatever order ships arrive in."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

import nasty
import oracle
from psycopg2 import sql

from widen.jobs import backfill, plan, reconcile, rollback, stream
from widen.sources import generate

NAME = "iso"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
UTC = dt.UTC


def test_one_bad_ship_never_stops_the_others(fresh_fleet, make_config, spark, pg, tmp_path):
    fresh_fleet(NAME, ships=3, channels=3, hours=1, seed=4).close()
    good, squatted, too_wide = generate.ship_ids(3)
    # too_wide: one channel whose values alone exceed the row budget; squatted: something that is
    # not widen's table already has its table's name.
    nasty.insert(pg, SRC, [(too_wide, "long text", nasty.at(15 * i), "String", None, None, "x" * 300, None)
                           for i in range(4)])
    with pg.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(TGT)))
        cur.execute(sql.SQL("CREATE VIEW {} AS SELECT now() AS created_time").format(
            sql.Identifier(TGT, f"tbl_data_timeseries_{squatted}")))
    config = make_config(NAME, target__max_row_bytes=250)
    tail_start = nasty.T0 + dt.timedelta(hours=2)
    config = replace(config, stream=replace(config.stream, start=tail_start.isoformat(), settle_seconds=0.0,
                                            query_name=NAME, checkpoint=str(tmp_path / "cp")))

    planned = plan.run(config)
    assert planned.exit_code == 1
    assert [too_wide in p and "long text" in p for p in planned.summary["problems"]] == [True]
    assert {r["ship_id"] for r in planned.summary["plan"] if r["parts"]} == {good, squatted}

    filled = backfill.run(config, spark)
    assert filled.exit_code == 1
    assert filled.summary["chunks_done"] == 1 and filled.summary["chunks_failed"] == 1
    assert squatted in filled.summary["failed"][0]["chunk"]
    assert "WrongObjectType" in filled.summary["failed"][0]["error"] or "not a table" in filled.summary["failed"][0]["error"]
    assert list(filled.summary["ships_not_laid_out"]) == [too_wide]
    with pg.cursor() as cur:
        assert oracle.differences(cur, SRC, TGT, CAT, good) == {f"tbl_data_timeseries_{good}": (0, 0)}

    # The stream: the good ship's rows are written, the squatted ship's are recorded with their range.
    tail = nasty.minute(good, 120, ["a", "b"]) + nasty.minute(squatted, 120, ["a"])
    nasty.insert(pg, SRC, tail)
    streamed = stream.run(config, spark, once=True)
    assert streamed.exit_code == 1
    assert list(streamed.summary["failed_ships"]) == [squatted] and squatted in streamed.report
    assert streamed.summary["wide_rows"] == 4 and streamed.summary["failed_rows"] == 4
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, narrow_rows, first_created_time, last_created_time FROM {}").format(
            sql.Identifier(CAT, "stream_failures")))
        assert cur.fetchall() == [(squatted, 4, nasty.at(7200), nasty.at(7245))]
        assert oracle.differences(cur, SRC, TGT, CAT, good) == {f"tbl_data_timeseries_{good}": (0, 0)}

    # Reconcile: the good ship matches; the squatted one cannot be checked, the other mismatches.
    checked = reconcile.run(config, spark)
    assert checked.exit_code == 1
    assert list(checked.summary["failed"]) == [squatted]
    assert checked.summary["ships_mismatched"] == [too_wide]
    assert f"{good}: matches" in checked.report

    # Rollback of two ships: the squatted one fails (its "table" is a view), the good one goes.
    undone = rollback.run(config, spark, ships=[good, squatted])
    assert undone.exit_code == 1 and list(undone.summary["failed"]) == [squatted]
    assert list(undone.summary["rows_affected"]) == [good]
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(sql.Identifier(CAT, "wide_tables")))
        assert {r[0] for r in cur.fetchall()} == {squatted}
        cur.execute("SELECT to_regclass(%s)", (f'{TGT}."tbl_data_timeseries_{good}"',))
        assert cur.fetchone()[0] is None


def test_a_ship_named_like_another_ships_part_gets_its_own_table(fresh_fleet, make_config, spark, pg, tmp_path):
    """Ship S has a part table S_p2 (recorded first); ship S_p2 arrives later through the stream."""
    name = "isoname"
    fresh_fleet(name, ships=0).close()
    src = f"src_{name}"
    nasty.insert(pg, src, nasty.minute("S", 0, ["a", "b", "c", "d"]))
    config = make_config(name, target__max_columns_per_table=2)
    config = replace(config, stream=replace(config.stream, start="earliest", settle_seconds=0.0, query_name=name,
                                            checkpoint=str(tmp_path / "cp")))
    assert backfill.run(config, spark).exit_code == 0
    nasty.insert(pg, src, nasty.minute("S_p2", 1, ["a"]) + nasty.minute("S", 1, ["e"]))
    assert stream.run(config, spark, once=True).exit_code == 0
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, part, table_name, name_note FROM {} ORDER BY 1, 2").format(
            sql.Identifier(f"cat_{name}", "wide_tables")))
        rows = cur.fetchall()
        assert [r[:3] for r in rows[:3]] == [("S", 1, "tbl_data_timeseries_S"), ("S", 2, "tbl_data_timeseries_S_p2"),
                                             ("S", 3, "tbl_data_timeseries_S_p3")]
        [(ship, part, table, note)] = rows[3:]
        assert (ship, part) == ("S_p2", 1) and table.startswith("tbl_data_timeseries_S_p2_")
        assert len(table) == len("tbl_data_timeseries_S_p2_") + 8
        assert note == "'tbl_data_timeseries_S_p2' is the table of ship 'S' part 2"
        oracle.assert_equal_to_oracle(cur, src, f"wide_{name}", f"cat_{name}")
