"""The stream job with --once: two runs continue from the checkpoint; the end state equals the oracle."""
from dataclasses import replace

import nasty
import oracle
from psycopg2 import sql

from widen.jobs import stream

NAME = "sjob"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def test_once_twice_continues_from_checkpoint(fresh_fleet, make_config, spark, pg, tmp_path):
    fresh_fleet(NAME, ships=0, ingest_id=True).close()
    config = make_config(NAME, source__order_column="ingest_id")
    config = replace(config, stream=replace(config.stream, checkpoint=str(tmp_path / "cp"), query_name="job",
                                                    start="earliest"))
    nasty.insert(pg, SRC, nasty.minute("ship 1", 0, ["a", "b"]) + nasty.minute("ship 2", 0, ["a"]))
    first = stream.run(config, spark, once=True)
    assert first.summary["narrow_rows"] == 12 and first.summary["skipped"] == 0
    nasty.insert(pg, SRC, nasty.minute("ship 1", 1, ["a", "b", "c"]))
    second = stream.run(config, spark, once=True)
    assert second.summary["narrow_rows"] == 12              # only the new rows
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        cur.execute(sql.SQL("SELECT batch_id, narrow_rows FROM {} ORDER BY 1").format(
            sql.Identifier(CAT, "stream_batches")))
        # Every batch in the ledger, without a gap (--once runs the empty batch Spark runs after a
        # data batch when the watermark moves, as the continuous stream does); each run's rows once.
        batches = cur.fetchall()
        assert [b for b, _ in batches] == list(range(len(batches)))
        assert [rows for _, rows in batches if rows] == [12, 12]
