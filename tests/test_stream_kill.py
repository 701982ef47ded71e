"""SIGKILL the stream process at random points three times while a writer inserts; restart it from
its checkpoint each time. The end state equals the oracle, every narrow row is counted once and
stream_batches has no gap and no duplicate batch. For a PostgreSQL and for a Delta target."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import jobproc
import nasty
import oracle
import psycopg2
from psycopg2 import sql

from widen.jobs import stream

NAME = "skill"
CAT = f"cat_{NAME}"
SHIPS = ["ship 1", "ship 2", "ship 3"]
CHANNELS = ["a", "b", "c", "d", "e"]


def batches(cur, cat: str = CAT) -> int:
    cur.execute("SELECT to_regclass(%s)", (f"{cat}.stream_batches",))
    if cur.fetchone()[0] is None:
        return 0
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(cat, "stream_batches")))
    return cur.fetchone()[0]


def kill_three_times_then_resume(name: str, fresh_fleet, write_config, make_config, spark, pg, pg_server,
                                 tmp_path, pause: float = 0.1, most: int = 4, **extra) -> None:
    src, cat = f"src_{name}", f"cat_{name}"
    fresh_fleet(name, ships=0, ingest_id=True).close()
    overrides = {"source__order_column": "ingest_id", "stream__checkpoint": str(tmp_path / "cp"),
                 "stream__query_name": "kill", "stream__start": "earliest", "stream__trigger_seconds": 0.3,
                 **extra}
    config_path = write_config(name, **overrides)
    stop_writing = threading.Event()

    def writer() -> None:
        conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                                dbname=pg_server["database"])
        conn.autocommit = True
        try:
            minute = 0
            while not stop_writing.is_set():
                nasty.insert(conn, src, [r for ship in SHIPS for r in nasty.minute(ship, minute, CHANNELS)])
                minute += 1
                time.sleep(pause)
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pg.cursor() as cur:
            kills = jobproc.kill_at_random_batches("stream", config_path, lambda: batches(cur, cat), most=most)
    finally:
        stop_writing.set()
        thread.join()
    assert kills == sorted(kills) and len(kills) == 3
    # Resume from the checkpoint and drain.
    config = make_config(name, **overrides)
    result = stream.run(config, spark, once=True)
    assert result.summary["late_rows"] == 0
    with pg.cursor() as cur:
        if config.target.is_delta:
            oracle.copy_delta_tables(spark, cur, config.target.delta_root, cat, f"wide_{name}")
        oracle.assert_equal_to_oracle(cur, src, f"wide_{name}", cat, order_column="ingest_id")
        cur.execute(sql.SQL("SELECT batch_id, narrow_rows FROM {} WHERE query_name = 'kill' ORDER BY 1").format(
            sql.Identifier(cat, "stream_batches")))
        ledger = cur.fetchall()
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(src, "tbl_data_timeseries")))
        narrow = cur.fetchone()[0]
    assert [b for b, _ in ledger] == list(range(len(ledger)))      # no gap, no duplicate
    assert sum(n for _, n in ledger) == narrow                      # every row counted once


def test_sigkill_three_times_then_resume(fresh_fleet, write_config, make_config, spark, pg, pg_server, tmp_path):
    kill_three_times_then_resume(NAME, fresh_fleet, write_config, make_config, spark, pg, pg_server, tmp_path)


def test_sigkill_into_delta_tables(fresh_fleet, write_config, make_config, spark, pg, pg_server, tmp_path):
    """The same with a Delta target: a kill may land between two tables' commits or between the
    Delta commits and the ledger row; the restarted batch must neither lose nor double anything."""
    kill_three_times_then_resume("skilld", fresh_fleet, write_config, make_config, spark, pg, pg_server, tmp_path,
                                 pause=0.5, most=2, target__kind="delta", target__delta_root=str(tmp_path / "lake"))


def test_sigterm_stops_after_the_current_batch(fresh_fleet, write_config, pg, tmp_path):
    """SIGTERM: the running batch commits, the process exits 0 with its JSON summary last."""
    name = "sterm"
    fresh_fleet(name, ships=0, ingest_id=True).close()
    config_path = write_config(name, source__order_column="ingest_id", stream__checkpoint=str(tmp_path / "cp"),
                               stream__query_name="term", stream__start="earliest", stream__trigger_seconds=0.3)
    nasty.insert(pg, f"src_{name}", nasty.minute("ship 1", 0, CHANNELS))
    proc = jobproc.start("stream", config_path, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 120
    with pg.cursor() as cur:
        while True:
            cur.execute("SELECT to_regclass(%s)", (f"cat_{name}.stream_batches",))
            if cur.fetchone()[0] is not None:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"cat_{name}", "stream_batches")))
                if cur.fetchone()[0]:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "no batch before the deadline"
            time.sleep(0.1)
    nasty.insert(pg, f"src_{name}", nasty.minute("ship 1", 1, CHANNELS))
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["job"] == "stream" and summary["status"] == "ok"
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT batch_id, narrow_rows FROM {} ORDER BY 1").format(
            sql.Identifier(f"cat_{name}", "stream_batches")))
        ledger = cur.fetchall()
    assert [b for b, _ in ledger] == list(range(len(ledger)))
    assert sum(n for _, n in ledger) == summary["narrow_rows"]
