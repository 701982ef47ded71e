"""The README's main command, in process: generate -> plan -> backfill (twice) -> live stream -> check."""
from dataclasses import replace

import oracle
from psycopg2 import sql

from widen.jobs import demo


def test_demo_end_to_end(make_config, spark, pg, tmp_path):
    config = replace(make_config("demo"), home=str(tmp_path))
    result = demo.run(config, spark, fleet_ships=2, channels=12, hours=2)
    assert result.exit_code == 0, result.summary
    assert result.summary["streamed_narrow_rows"] > 0 and result.summary["rerun_chunks_skipped"] > 0
    assert result.summary["reconcile_buckets"] > 0 and result.summary["reconcile_mismatches"] == 0
    with pg.cursor() as cur:
        # The demo's own check, repeated with the tests' independent oracle.
        oracle.assert_equal_to_oracle(cur, demo.DEMO_SOURCE_SCHEMA, demo.DEMO_TARGET_SCHEMA,
                                      demo.DEMO_CATALOG_SCHEMA)
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = 'demo new ship'").format(
            sql.Identifier(demo.DEMO_CATALOG_SCHEMA, "wide_tables")))
        assert cur.fetchone() == (1,)
