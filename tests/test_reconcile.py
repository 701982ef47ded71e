"""reconcile: a clean backfill passes (floating-point edge values included); six injected faults are
each found with their exact ship, timestamp and channel; --repair fixes them and the next run passes."""
from __future__ import annotations

import datetime as dt

import nasty
import oracle
from psycopg2 import sql

from widen.jobs import backfill, reconcile

NAME = "rec"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def test_reconcile_finds_and_repairs(fresh_fleet, make_config, spark, pg):
    # 4 columns a table: the 6 generated channels are split over two part tables.
    config = make_config(NAME, target__max_columns_per_table=4)
    fresh_fleet(NAME, ships=2, channels=6, hours=3, seed=9).close()
    nasty.insert(pg, SRC)                       # NaN, ±Infinity, -0, 5e-324, duplicates, rejects …
    assert backfill.run(config, spark).exit_code == 0
    clean = reconcile.run(config, spark)
    assert clean.exit_code == 0, clean.report
    assert clean.summary["mismatched_buckets"] == 0 and clean.summary["rejected_rows"] > 0
    assert clean.summary["buckets"] > 0

    with pg.cursor() as cur:
        ship = sorted(s for s in oracle.valid_ships(cur, SRC) if s.startswith("IMO"))[0]
        mapping = {ch: (table, col) for table, pairs in oracle.catalog_mapping(cur, CAT, ship).items()
                   for ch, col in pairs}
        ch1, ch2, ch3 = sorted(mapping)[:3]
        wide = lambda ch: sql.Identifier(TGT, mapping[ch][0])  # noqa: E731
        col = lambda ch: sql.Identifier(mapping[ch][1])  # noqa: E731
        narrow = sql.Identifier(SRC, "tbl_data_timeseries")
        cur.execute(sql.SQL("SELECT min(created_time) FROM {} WHERE ship_id = %s").format(narrow), (ship,))
        t0 = cur.fetchone()[0]
        at = lambda minutes, seconds=0: t0 + dt.timedelta(minutes=minutes, seconds=seconds)  # noqa: E731
        cur.execute(sql.SQL("UPDATE {} SET {} = 'tampered' WHERE created_time = %s").format(wide(ch1), col(ch1)),
                    (at(10),))                                                    # changed cell
        cur.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE created_time = %s").format(wide(ch2), col(ch2)),
                    (at(40),))                                                    # NULLed cell
        for table in {t for t, _ in mapping.values()}:                            # deleted wide row
            cur.execute(sql.SQL("DELETE FROM {} WHERE created_time = %s").format(sql.Identifier(TGT, table)),
                        (at(70),))
        cur.execute(sql.SQL("INSERT INTO {} (created_time, {}) VALUES (%s, 'ghost')").format(wide(ch3), col(ch3)),
                    (at(100, 7),))                                                # extra wide row
        nasty.insert(pg, SRC, [(ship, ch1, at(130, 7), "Integer", None, 42, None, None)])  # late narrow row
        cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s AND data_channel_id = %s AND created_time = %s")
                    .format(narrow), (ship, ch2, at(160)))                        # narrow row deleted
        assert cur.rowcount == 1

    found = reconcile.run(config, spark)
    assert found.exit_code == 1
    cells = {(c["kind"], c["created_time"], c["data_channel_id"]) for c in found.summary["cells"]
             if c["ship_id"] == ship}
    iso = lambda t: t.isoformat()  # noqa: E731
    assert ("different", iso(at(10)), ch1) in cells
    assert ("missing", iso(at(40)), ch2) in cells
    assert {("missing", iso(at(70)), ch) for ch in mapping} <= cells
    assert ("extra", iso(at(100, 7)), ch3) in cells
    assert ("missing", iso(at(130, 7)), ch1) in cells
    assert ("extra", iso(at(160)), ch2) in cells
    assert len(cells) == 5 + len(mapping)                  # nothing else reported
    assert found.summary["ships_mismatched"] == [ship]
    assert f"{iso(at(10))} {ch1}: different" in found.report and "'tampered'" in found.report

    repaired = reconcile.run(config, spark, repair=True)
    assert repaired.exit_code == 0, repaired.report
    assert repaired.summary["repaired_ships"] == [ship] and "REPAIRED" in repaired.report
    again = reconcile.run(config, spark)
    assert again.exit_code == 0 and again.summary["found_mismatched_buckets"] == 0
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        cur.execute(sql.SQL("SELECT status, count(*) FROM {} WHERE run_id = %s GROUP BY 1").format(
            sql.Identifier(CAT, "reconcile_results")), (repaired.summary["run_id"],))
        statuses = dict(cur.fetchall())
    assert statuses.get("repaired", 0) >= 1 and "mismatch" not in statuses
