"""Stream source -> foreachBatch sink on a real streaming query: wide tables equal the oracle,
new ships and channels appear mid-stream, and the ledger makes each batch count once."""
from __future__ import annotations

import nasty
import oracle
import pytest
from psycopg2 import sql

from widen.sources.postgres_stream import NarrowStreamSource, stream_options
from widen.streaming import sink as stream_sink
from widen.targets import postgres as postgres_target

NAME = "sink"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def start_query(spark, config, query_name: str, checkpoint) -> tuple:
    """A streaming query from the narrow source into ``write_batch``; (query, the batches' results)."""
    results = []

    def sink(frame, batch_id):
        results.append(stream_sink.write_batch(config, frame.toArrow(), batch_id, query_name))

    spark.dataSource.register(NarrowStreamSource)
    query = (spark.readStream.format("widen_narrow").options(**stream_options(config.source, buckets=2)).load()
             .writeStream.foreachBatch(sink).option("checkpointLocation", str(checkpoint)).start())
    return query, results


@pytest.mark.parametrize("direct_rows", [500, 0], ids=["upsert", "staging"])
def test_stream_into_wide_tables(fresh_fleet, make_config, spark, pg, tmp_path, monkeypatch, direct_rows):
    """Both write paths: small batches upserted directly, larger ones staged, COPYed and merged."""
    monkeypatch.setattr(postgres_target, "DIRECT_ROWS", direct_rows)
    fresh_fleet(NAME, ships=0, ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id")
    query, results = start_query(spark, config, "test-query", tmp_path / "cp")
    try:
        channels = ["/dnv-v2/vis-3-4a/411.1/C101.31/meta/qty-temperature", "rpm", "mode", "alarm"]
        for m in range(3):
            nasty.insert(pg, SRC, nasty.minute("ship A", m, channels) + nasty.minute("ship B", m, channels[:2]))
            query.processAllAvailable()
        # A new channel for ship A and a brand-new ship, mid-stream, plus rows to reject.
        nasty.insert(pg, SRC, nasty.minute("ship A", 3, channels + ["created_time"]) + nasty.minute("ship 'C'", 3, ["x"]) + [
            ("ship A", "rpm", nasty.at(240), "Float", 1.0, None, None, None),
            (None, "rpm", nasty.at(240), "Decimal", 2.0, None, None, None)])
        query.processAllAvailable()
        # Readings of an existing timestamp arriving in a later batch merge column-wise.
        nasty.insert(pg, SRC, [("ship B", "mode", nasty.at(0), "String", None, None, "late column", None)])
        query.processAllAvailable()
    finally:
        query.stop()
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        cur.execute(sql.SQL("SELECT batch_id FROM {} WHERE query_name = 'test-query' ORDER BY 1").format(
            sql.Identifier(CAT, "stream_batches")))
        ids = [r[0] for r in cur.fetchall()]
        assert ids == list(range(len(ids))) and len(ids) == len(results) >= 5
        cur.execute(sql.SQL("SELECT reason, ship_id FROM {} WHERE job = 'stream' ORDER BY 1").format(
            sql.Identifier(CAT, "rejects")))
        assert cur.fetchall() == [("null ship_id", None), ("unknown value_format", "ship A")]
        # Replaying a recorded batch is skipped and changes nothing.
        cur.execute(sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY created_time)) FROM {} t").format(
            sql.Identifier(TGT, "tbl_data_timeseries_ship A")))
        before = cur.fetchone()
    assert stream_sink.write_batch(config, spark.range(0).toArrow(), 0, "test-query").skipped
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT md5(string_agg(t::text, '|' ORDER BY created_time)) FROM {} t").format(
            sql.Identifier(TGT, "tbl_data_timeseries_ship A")))
        assert cur.fetchone() == before


def test_wide_tables_dropped_under_a_running_stream(fresh_fleet, make_config, spark, pg, tmp_path):
    """The sink caches layouts between batches; tables dropped since (an operator starting over)
    are made again, not reported as the ship's failure (rows left for reconcile)."""
    name = "sinkdrop"
    fresh_fleet(name, ships=0, ingest_id=True).close()
    config = make_config(name, source__order_column="ingest_id")
    query, results = start_query(spark, config, "drop-query", tmp_path / "cp")
    try:
        nasty.insert(pg, f"src_{name}", nasty.minute("ship A", 0, ["rpm", "mode"]))
        query.processAllAvailable()
        with pg.cursor() as cur:     # the wide tables go; the catalog still lists them
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(f"wide_{name}")))
        nasty.insert(pg, f"src_{name}", nasty.minute("ship A", 1, ["rpm", "mode"]))
        query.processAllAvailable()
    finally:
        query.stop()
    assert results[-1].failed == {} and results[-1].wide_rows == 4
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*), min(created_time) FROM {}").format(
            sql.Identifier(f"wide_{name}", "tbl_data_timeseries_ship A")))
        assert cur.fetchone() == (4, nasty.at(60))
