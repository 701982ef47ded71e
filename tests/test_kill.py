"""SIGKILL the backfill part way, twice, then run it again: same tables, consistent ledger."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import jobproc
import oracle
from psycopg2 import sql

from widen.jobs import backfill

NAME = "kill"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"


def done_chunks(cur) -> int:
    cur.execute("SELECT to_regclass(%s)", (f"{CAT}.backfill_chunks",))
    if cur.fetchone()[0] is None:
        return 0
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE status = 'done'").format(
        sql.Identifier(CAT, "backfill_chunks")))
    return cur.fetchone()[0]


def kill_after(proc: subprocess.Popen, cur, chunks: int, deadline_seconds: float = 180) -> int:
    """SIGKILL the job (and its JVM) once at least ``chunks`` chunks are done; returns how many were."""
    deadline = time.monotonic() + deadline_seconds
    while done_chunks(cur) < chunks:
        assert time.monotonic() < deadline, "backfill made no progress"
        try:
            proc.wait(timeout=0.2)
            raise AssertionError(f"backfill ended (exit {proc.returncode}) before it could be killed")
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return done_chunks(cur)


def test_sigkill_part_way_then_rerun(fresh_fleet, write_config, make_config, spark, pg):
    overrides = {"backfill__chunk_hours": 0.25, "backfill__parallel_chunks": 1}
    config_path = write_config(NAME, **overrides)
    config = make_config(NAME, **overrides)
    fresh_fleet(NAME, ships=2, channels=8, hours=4, seed=5).close()
    total = 2 * 16
    rng = random.Random()
    with pg.cursor() as cur:
        first_kill = kill_after(jobproc.start("backfill", config_path), cur, rng.randint(1, 6))
        assert 0 < first_kill < total
        second_kill = kill_after(jobproc.start("backfill", config_path), cur, first_kill + rng.randint(1, 6))
        assert first_kill < second_kill < total
    result = backfill.run(config, spark)
    assert result.exit_code == 0
    assert result.summary["chunks_skipped"] == second_kill
    assert result.summary["chunks_done"] == total - second_kill
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
        cur.execute(sql.SQL("SELECT status, count(*), sum(narrow_rows) FROM {} GROUP BY 1").format(
            sql.Identifier(CAT, "backfill_chunks")))
        assert cur.fetchall() == [("done", total, 2 * 8 * 4 * 240)]
        # Staging left behind by the killed runs is gone after the re-run.
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'stg%%'", (CAT,))
        assert cur.fetchone()[0] == 0
