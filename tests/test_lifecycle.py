"""The ship lifecycle (widen.core.lifecycle) and ``status`` on a fleet of 1,000 ships.

The journey through the states, job by job, is checked in tests/test_old_servers.py (on every
source version); here the rule itself, and ``status`` on a catalog of 1,000 ships made by the test
with SQL (lifecycle rows, 10 chunks a ship, rejects, stream failures, 5,000 stream batches), against
counts the test computes in SQL itself.
"""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st
from psycopg2 import sql

from widen.catalog import schema
from widen.core import lifecycle
from widen.jobs import status

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.dictionaries(st.sampled_from(lifecycle.FACTS), st.just(NOW)))
def test_the_state_follows_from_the_facts(facts):
    state = lifecycle.state_of(facts)
    order = lifecycle.STATES
    if "rolled_back_at" in facts:
        assert state == lifecycle.ROLLED_BACK
    elif "switched_at" in facts:
        assert state == lifecycle.SWITCHED
    else:
        # a ship is never further than the facts that lead there allow, and never short of them
        assert (order.index(state) >= order.index(lifecycle.BACKFILLED)) == ("backfilled_at" in facts)
        assert (state in (lifecycle.LIVE, lifecycle.VERIFIED)) == ({"backfilled_at", "live_since"} <= set(facts))
        assert (state == lifecycle.VERIFIED) == ({"backfilled_at", "live_since", "verified_through"} <= set(facts))
        if state == lifecycle.PLANNED:
            assert "backfill_started_at" not in facts
    # adding facts in lifecycle order never moves a ship back
    before = {k: v for k, v in facts.items() if k not in ("rolled_back_at", "switched_at")}
    assert order.index(lifecycle.state_of({**before, "live_since": NOW})) >= order.index(lifecycle.state_of(before))


SHIPS = 1000


@pytest.fixture
def fleet_catalog(pg, make_config):
    """1,000 ships in every state, made with SQL; ship i: state STATES[i % 6] (no rolled back),
    every 97th with a failed chunk, every 89th with a reconcile that found differences."""
    config = make_config("status1k")
    cat = config.target.catalog_schema
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(cat)))
    schema.migrate(pg, cat)
    pg.autocommit = True
    t = {name: sql.Identifier(cat, name) for name in ("ship_lifecycle", "backfill_chunks", "rejects",
                                                       "stream_failures", "stream_batches", "stream_starts")}
    with pg.cursor() as cur:
        cur.execute(sql.SQL(
            "INSERT INTO {} (ship_id, state, since, backfill_chunks_total, last_reconcile_at, last_reconcile_result, "
            "last_reconcile_through) SELECT format('ship %%s', i), (ARRAY['planned', 'backfilling', 'backfilled', "
            "'live', 'verified', 'switched'])[i %% 6 + 1], now() - i * interval '1 minute', 10, "
            "CASE WHEN i %% 2 = 0 THEN now() - interval '1 hour' END, "
            "CASE WHEN i %% 2 = 0 THEN CASE WHEN i %% 89 = 0 THEN 'mismatch' ELSE 'clean' END END, "
            "CASE WHEN i %% 2 = 0 THEN now() - interval '1 hour' END FROM generate_series(0, %s) i").format(
            t["ship_lifecycle"]), (SHIPS - 1,))
        cur.execute(sql.SQL(
            "INSERT INTO {} (ship_id, range_start, range_end, status, narrow_rows, rejected_rows) "
            "SELECT format('ship %%s', i), c * interval '1 day' + timestamptz '2026-01-01', "
            "(c + 1) * interval '1 day' + timestamptz '2026-01-01', "
            "CASE WHEN i %% 97 = 0 AND c = 9 THEN 'failed' ELSE 'done' END, 1000 + i, i %% 3 "
            "FROM generate_series(0, %s) i, generate_series(0, 9) c").format(t["backfill_chunks"]), (SHIPS - 1,))
        cur.execute(sql.SQL("INSERT INTO {} (ship_id, reason, job) SELECT format('ship %%s', i %% 50), 'null "
                            "created_time', 'backfill' FROM generate_series(1, %s) i").format(t["rejects"]), (5000,))
        cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, ship_id, narrow_rows, failed_at) "
                            "VALUES ('q', 7, 'ship 3', 5, now())").format(t["stream_failures"]))
        cur.execute(sql.SQL("INSERT INTO {} (query_name, checkpoint, start_offset) VALUES ('q', '/cp', '{{}}')").format(
            t["stream_starts"]))
        cur.execute(sql.SQL("INSERT INTO {} (query_name, batch_id, narrow_rows, committed_at, newest_created_time) "
                            "SELECT 'q', b, 10, now() - (5000 - b) * interval '1 second', "
                            "now() - (5000 - b) * interval '1 second' - interval '3 seconds' "
                            "FROM generate_series(1, 5000) b").format(t["stream_batches"]))
    return config, t


def test_status_of_a_thousand_ships(fleet_catalog, pg):
    config, t = fleet_catalog
    result = status.run(config)
    with pg.cursor() as cur:      # the oracle: the same figures, counted here
        cur.execute(sql.SQL("SELECT state, count(*) FROM {} GROUP BY 1").format(t["ship_lifecycle"]))
        assert result.summary["states"] == dict(cur.fetchall())
        cur.execute(sql.SQL("SELECT ship_id FROM {} WHERE status <> 'done' UNION SELECT ship_id FROM {} "
                            "WHERE last_reconcile_result = 'mismatch' UNION SELECT 'ship 3'").format(
            t["backfill_chunks"], t["ship_lifecycle"]))
        needing = {r[0] for r in cur.fetchall()}
        cur.execute(sql.SQL("SELECT ship_id, sum(narrow_rows) FILTER (WHERE status = 'done'), "
                            "count(*) FILTER (WHERE status = 'done') FROM {} GROUP BY 1").format(t["backfill_chunks"]))
        moved = {ship: (rows, done) for ship, rows, done in cur.fetchall()}
        cur.execute(sql.SQL("SELECT ship_id, count(*) FROM {} GROUP BY 1").format(t["rejects"]))
        rejects = dict(cur.fetchall())
    assert result.summary["ships"] == SHIPS
    assert result.exit_code == 1
    assert {line.split(":")[0] for line in result.summary["attention"]} == needing
    for row in result.summary["ship_status"]:
        assert (row["narrow_rows"], row["chunks_done"]) == moved[row["ship_id"]]
        assert row["rejects"] == rejects.get(row["ship_id"], 0)
    assert 2.5 < result.summary["stream_lag_seconds"] < 60, result.summary["stream_lag_seconds"]
    assert len(result.report.splitlines()) == SHIPS + 2 + 2 + len(needing)
    print(f"status of {SHIPS} ships: {result.summary['seconds']} s")   # the figure BENCHMARKS.md quotes
    lagging = status.run(config.__class__(**{**config.__dict__, "cutover": config.cutover.__class__(
        max_lag_seconds=1.0)}), ships=["ship 1"])
    assert lagging.exit_code == 1 and lagging.summary["attention"][0].startswith("the stream lags"), lagging.summary
