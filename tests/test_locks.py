"""Two overlapping runs of the same job: the second refuses with a clear message, the first finishes,
nothing is corrupted. Runs of different ships, or of different jobs, do not block each other."""
from __future__ import annotations

import json
import subprocess
import time

import jobproc
import oracle
import pytest
from psycopg2 import sql

from widen import cli
from widen.catalog.locks import JobBusy, job_lock
from widen.jobs import backfill

NAME = "lock"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def advisory_locks(cur) -> int:
    cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
    return cur.fetchone()[0]


def test_second_backfill_refuses_first_finishes(fresh_fleet, write_config, make_config, spark, pg, capsys):
    overrides = {"backfill__chunk_hours": 0.25, "backfill__parallel_chunks": 1}
    config_path = write_config(NAME, **overrides)
    fresh_fleet(NAME, ships=2, channels=6, hours=3, seed=6).close()
    first = jobproc.start("backfill", config_path, stdout=subprocess.PIPE)
    with pg.cursor() as cur:
        deadline = time.monotonic() + 120
        while advisory_locks(cur) == 0:            # the first run has taken its lock
            assert first.poll() is None and time.monotonic() < deadline, "first run never took its lock"
            time.sleep(0.05)
    # The second run of the same job, through the CLI as a scheduler would start it.
    code = cli.main(["backfill", "--config", str(config_path)])
    out = capsys.readouterr()
    assert code == 1
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["status"] == "busy" and "backfill is already running" in summary["error"]
    assert "pid" in out.err
    # The first one finishes, and the result is whole.
    assert first.wait(timeout=300) == 0
    assert json.loads(first.stdout.read().strip().splitlines()[-1])["status"] == "ok"
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        cur.execute(sql.SQL("SELECT status, count(*) FROM {} GROUP BY 1").format(
            sql.Identifier(CAT, "backfill_chunks")))
        assert cur.fetchall() == [("done", 2 * 12)]
        assert advisory_locks(cur) == 0            # gone with the first run's session
    # With the locks free again, a rerun goes ahead (and skips every chunk).
    again = backfill.run(make_config(NAME, **overrides), spark)
    assert again.exit_code == 0 and again.summary["chunks_skipped"] == 2 * 12


def test_lock_scopes(make_config):
    conn = make_config(NAME).target.connection
    with job_lock(conn, "backfill", ["ship A"]):
        with job_lock(conn, "backfill", ["ship B"]):          # other ships: fine
            pass
        with job_lock(conn, "reconcile", ["ship A"]):         # another job: fine
            pass
        with pytest.raises(JobBusy, match="'ship A'"):
            with job_lock(conn, "backfill", ["ship B", "ship A"]):
                pass
        with pytest.raises(JobBusy, match="already running"):
            with job_lock(conn, "backfill", None):            # every ship
                pass
    with job_lock(conn, "backfill", None):
        with pytest.raises(JobBusy, match="for every ship"):
            with job_lock(conn, "backfill", ["ship C"]):
                pass
