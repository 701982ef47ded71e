"""A Delta table of narrow rows as the stream's source (``source.kind: delta``).

The same hostile rows go into the Delta table and into a PostgreSQL narrow table; the wide tables the
stream builds from Delta must equal the in-database SQL pivot of the PostgreSQL copy, so every
value is rendered exactly as PostgreSQL renders it (doubles included), and the rejects match.
"""
from __future__ import annotations

from dataclasses import replace

import nasty
import oracle
from psycopg2 import sql

from widen.jobs import stream

NAME = "dsrc"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
SCHEMA = ("ship_id string, data_channel_id string, created_time timestamp, value_format string, "
          "double_v double, long_v bigint, str_v string, bool_v boolean")


def append(spark, path: str, rows: list[tuple]) -> None:
    spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").save(path)


def test_stream_from_delta(fresh_fleet, make_config, spark, pg, tmp_path):
    fresh_fleet(NAME, ships=0).close()
    path = str(tmp_path / "narrow_delta")
    config = make_config(NAME, source__kind="delta", source__delta_path=path)
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name="delta",
                                            start="earliest", overlap_seconds=0,
                                            watermark_seconds=86400))
    first = nasty.rows()
    channels = ["rpm", "mode", "temp", "alarm"]
    second = (nasty.minute("ship A", 0, channels) + nasty.minute("new ship", 1, ["x"])
              + [(nasty.S_SPACES, "decimal", nasty.at(15), "Decimal", 1e15, None, None, None),     # new value later
                 (nasty.S_SPACES, "late", nasty.at(0), "Decimal", 123456789012345.6, None, None, None)])
    append(spark, path, first)
    nasty.insert(pg, SRC, first)
    one = stream.run(config, spark, once=True)
    append(spark, path, second)
    nasty.insert(pg, SRC, second)
    two = stream.run(config, spark, once=True)
    with pg.cursor() as cur:
        # Delta's versions are exact offsets: every row of the Delta table is read once, so two
        # identical readings are two narrow rows (one of them a counted duplicate).
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SRC, "tbl_data_timeseries")))
        assert one.summary["narrow_rows"] + two.summary["narrow_rows"] == cur.fetchone()[0]
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        # Rejects: the same rows, reasons and raw values as the SQL rule finds in the copy.
        reason = sql.SQL(
            "CASE WHEN ship_id IS NULL THEN 'null ship_id' WHEN data_channel_id IS NULL THEN 'null data_channel_id' "
            "WHEN data_channel_id = '' THEN 'empty data_channel_id' WHEN created_time IS NULL THEN 'null created_time' "
            "WHEN value_format IS NULL THEN 'null value_format' ELSE 'unknown value_format' END")
        cols = sql.SQL("ship_id, data_channel_id, created_time, value_format, double_v::text, long_v, str_v, bool_v")
        cur.execute(sql.SQL("SELECT {c}, {r} FROM {t} WHERE ({v}) IS NOT TRUE EXCEPT ALL SELECT {c}, reason FROM {rj}").format(
            c=cols, r=reason, t=sql.Identifier(SRC, "tbl_data_timeseries"), v=oracle.VALID,
            rj=sql.Identifier(CAT, "rejects")))
        assert cur.fetchall() == []
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS NOT TRUE").format(
            sql.Identifier(SRC, "tbl_data_timeseries"), oracle.VALID))
        invalid = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(CAT, "rejects")))
        assert cur.fetchone()[0] == invalid > 0
