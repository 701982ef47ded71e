"""--ships, --start and --end select exactly the work they name."""
import datetime as dt

import oracle
from psycopg2 import sql

from widen.jobs import backfill
from widen.sources import generate

NAME = "sel"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
UTC = dt.UTC


def test_ships_and_time_range_select_chunks(fresh_fleet, make_config, spark, pg):
    config = make_config(NAME)
    fresh_fleet(NAME, ships=3, channels=3, hours=3, seed=2).close()
    first, second, third = generate.ship_ids(3)
    start = dt.datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    cutoff = dt.datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    result = backfill.run(config, spark, ships=[first, third], start=start, end=cutoff)
    assert result.exit_code == 0
    with pg.cursor() as cur:
        # chunks are named by their grid cells; the cell --start cuts is partial, with what it covers
        cur.execute(sql.SQL("SELECT ship_id, range_start, range_end, status, covered_start, covered_end FROM {} "
                            "ORDER BY 1, 2").format(sql.Identifier(CAT, "backfill_chunks")))
        one, two = dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC), dt.datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
        assert cur.fetchall() == [
            (first, one, two, "partial", start, two), (first, two, cutoff, "done", two, cutoff),
            (third, one, two, "partial", start, two), (third, two, cutoff, "done", two, cutoff)]
        cur.execute(sql.SQL("SELECT DISTINCT ship_id FROM {}").format(sql.Identifier(CAT, "wide_tables")))
        assert {r[0] for r in cur.fetchall()} == {first, third}
        for ship in (first, third):
            diffs = oracle.differences(cur, SRC, TGT, CAT, ship, start, cutoff)
            assert all(d == (0, 0) for d in diffs.values())
            cur.execute(sql.SQL("SELECT min(created_time), max(created_time), count(*) FROM {}").format(
                sql.Identifier(TGT, f"tbl_data_timeseries_{ship}")))
            assert cur.fetchone() == (start, cutoff - dt.timedelta(seconds=15), 360)
