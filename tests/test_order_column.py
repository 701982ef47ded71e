"""With source.order_column, the last row by that column wins a duplicate, end to end."""
import nasty
from psycopg2 import sql

from widen.jobs import backfill

NAME = "ord"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def test_last_row_by_order_column_wins(fresh_fleet, make_config, spark, pg):
    config = make_config(NAME, source__order_column="ingest_id")
    fresh_fleet(NAME, ships=1, channels=2, hours=1, seed=4, ingest_id=True).close()
    ship = "ordered ship"
    # Inserted in this order, so ingest_id grows down the list.
    nasty.insert(pg, SRC, [
        (ship, "a", nasty.at(0), "String", None, None, "z first", None),
        (ship, "a", nasty.at(0), "String", None, None, "a last", None),      # wins although 'z' > 'a'
        (ship, "b", nasty.at(0), "Integer", None, 1, None, None),
        (ship, "b", nasty.at(0), "Integer", None, None, None, None),         # a NULL last row wins too
        (ship, "c", nasty.at(15), "Boolean", None, None, None, True),
    ])
    result = backfill.run(config, spark, ships=[ship])
    assert result.exit_code == 0 and result.summary["duplicate_rows"] == 2
    with pg.cursor() as cur:
        # Oracle: DISTINCT ON keeps the greatest ingest_id per key, then a plain SQL pivot.
        cur.execute(sql.SQL(
            "SELECT created_time, max(v) FILTER (WHERE ch = 'a'), max(v) FILTER (WHERE ch = 'b'), "
            "max(v) FILTER (WHERE ch = 'c') FROM (SELECT DISTINCT ON (created_time, data_channel_id) "
            "created_time, data_channel_id AS ch, CASE value_format WHEN 'String' THEN str_v "
            "WHEN 'Integer' THEN long_v::text WHEN 'Boolean' THEN bool_v::text END AS v FROM {} "
            "WHERE ship_id = %s ORDER BY created_time, data_channel_id, ingest_id DESC) last "
            "GROUP BY created_time ORDER BY 1").format(sql.Identifier(SRC, "tbl_data_timeseries")), (ship,))
        expected = cur.fetchall()
        cur.execute(sql.SQL('SELECT created_time, "a", "b", "c" FROM {} ORDER BY 1').format(
            sql.Identifier(TGT, f"tbl_data_timeseries_{ship}")))
        assert cur.fetchall() == expected
    assert expected[0][1:] == ("a last", None, None)
