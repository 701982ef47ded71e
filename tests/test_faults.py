"""Faults and load with real processes and real servers: a reader holding a wide table, a port that
never answers, a backlog of a million rows, a postmaster killed mid-backfill, a stream killed right
after it logged its start, a rollback during a live stream, concurrent reject sweeps."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace

import jobproc
import nasty
import oracle
import psycopg2
import pytest
import yaml
from conftest import raw_config
from netproxy import Proxy
from psycopg2 import sql

from widen import cli, embedded
from widen.config import Connection
from widen.jobs import backfill, resume, rollback, stream
from widen.sources import generate

UTC = dt.UTC


def connect(pg_server, **extra):
    conn = psycopg2.connect(host=pg_server["host"], port=pg_server["port"], user=pg_server["user"],
                            dbname=pg_server["database"], **extra)
    conn.autocommit = True
    return conn


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- a reader holds a wide table while a chunk brings a new channel ------------------------------

def test_readers_never_wait_on_widen(fresh_fleet, make_config, spark, pg, pg_server):
    name = "lockq"
    fresh_fleet(name, ships=1, channels=3, hours=1, seed=2).close()
    [ship] = generate.ship_ids(1)
    wide = sql.Identifier(f"wide_{name}", f"tbl_data_timeseries_{ship}")
    config = make_config(name, target__lock_timeout_seconds=0.5, target__ddl_max_wait_seconds=2)
    assert backfill.run(config, spark).exit_code == 0
    # The next hour brings a channel the wide table has no column for.
    nasty.insert(pg, f"src_{name}", nasty.minute(ship, 60, ["brand new"]))
    reader = connect(pg_server, application_name="reader-under-test")
    reader.autocommit = False
    with reader.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(wide))      # holds the table, idle in transaction
    try:
        # The DDL gives up in the end and says who holds the table.
        blocked = backfill.run(config, spark)
        assert blocked.exit_code == 1
        [failure] = blocked.summary["failed"]
        assert failure["error"].startswith("LockWaitTimeout: "), failure
        assert "reader-under-test" in failure["error"] and "idle in transaction" in failure["error"]
        assert f"pid {reader.get_backend_pid()}" in failure["error"]

        # With a patient backfill: other readers are never held up longer than one lock_timeout try.
        patient = make_config(name, target__lock_timeout_seconds=0.5, target__ddl_max_wait_seconds=120)
        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.update(result=backfill.run(patient, spark)))
        worker.start()
        latencies = []
        with connect(pg_server, application_name="probe") as probe, probe.cursor() as cur:
            cur.execute("SET statement_timeout = '5s'")
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                began = time.monotonic()
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(wide))
                latencies.append(time.monotonic() - began)
        assert worker.is_alive(), "the backfill finished although the reader still holds the table"
        assert max(latencies) < 0.5 + 0.5, max(latencies)
        reader.commit()
        worker.join(timeout=120)
        assert outcome["result"].exit_code == 0, outcome["result"].report
    finally:
        reader.close()
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")


# --- a server that accepts and never answers -------------------------------------------------

def test_a_mute_port_fails_within_the_connect_timeout(pg_server, tmp_path, capsys):
    with Proxy(pg_server["port"], mute=True) as mute:
        raw = raw_config(pg_server, "mute")
        raw["source"].update(port=mute.port, connect_timeout_seconds=2)
        path = tmp_path / "mute.yaml"
        path.write_text(yaml.safe_dump(raw))
        began = time.monotonic()
        code = cli.main(["plan", "--config", str(path)])
        seconds = time.monotonic() - began
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert code == 2 and seconds < 6, (code, seconds)
    assert "cannot connect to PostgreSQL" in summary["error"] and "timeout expired" in summary["error"]


# --- a backlog drains in bounded micro-batches -----------------------------------------------

def test_a_backlog_drains_in_bounded_batches(fresh_fleet, make_config, spark, pg, tmp_path):
    name = "backlog"
    # 4 ships x 50 channels x 21 h at 15 s = 1,008,000 narrow rows waiting for the stream.
    fresh_fleet(name, ships=4, channels=50, hours=21, seed=3, ingest_id=True).close()
    config = make_config(name, source__order_column="ingest_id")
    config = replace(config, stream=replace(config.stream, query_name=name, checkpoint=str(tmp_path / "cp"),
                                            start="earliest", max_rows_per_batch=100_000))
    result = stream.run(config, spark, once=True)
    assert result.exit_code == 0
    assert result.summary["narrow_rows"] == 1_008_000
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT batch_id, narrow_rows FROM {} ORDER BY 1").format(
            sql.Identifier(f"cat_{name}", "stream_batches")))
        batches = cur.fetchall()
        assert [b for b, _ in batches] == list(range(len(batches)))             # gap-free
        data = [rows for _, rows in batches if rows]
        assert len(data) >= 10 and max(data) <= 100_000 and sum(data) == 1_008_000, data
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}", order_column="ingest_id")


# --- the postmaster dies mid-backfill --------------------------------------------------------

@pytest.fixture()
def own_server(tmp_path_factory):
    """A PostgreSQL server of the test's own, which it may kill."""
    home = tmp_path_factory.mktemp("ownpg")
    server = embedded.ensure_running(home)
    yield home, server
    embedded.stop(home, remove_data=True)


def postmaster_pid(server) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])


def crash(server) -> None:
    """SIGKILL the postmaster, then its children (as a crash leaves them, for a clean restart)."""
    pid = postmaster_pid(server)
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    os.kill(pid, signal.SIGKILL)
    for child in children:
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_postmaster_killed_mid_backfill(own_server, spark, tmp_path):
    home, server = own_server
    raw = raw_config({"host": server.host, "port": server.port, "user": server.user, "database": server.database},
                     "crash", backfill__chunk_hours=0.25, backfill__parallel_chunks=1,
                     backfill__max_attempts=3, backfill__retry_backoff_seconds=1)
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(raw))
    conn_cfg = Connection(server.host, server.port, server.database, server.user, password_env=None)
    generate.generate_fleet(conn_cfg, "src_crash", ships=2, channels=6, hours=6, seed=4)
    proc = jobproc.start("backfill", path, stdout=subprocess.PIPE)
    with psycopg2.connect(**server.dsn_params()) as watch:
        watch.autocommit = True
        with watch.cursor() as cur:
            def done() -> int:
                cur.execute("SELECT to_regclass('cat_crash.backfill_chunks')")
                if cur.fetchone()[0] is None:
                    return 0
                cur.execute("SELECT count(*) FROM cat_crash.backfill_chunks WHERE status = 'done'")
                return cur.fetchone()[0]
            wait_until(lambda: done() >= 3 or proc.poll() is not None, 180, "three chunks")
    assert proc.poll() is None, "the backfill ended before the crash"
    crash(server)
    crashed_at = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - crashed_at
    summary = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 1 and took < 20, (proc.returncode, took)
    assert summary["stopped"] and "connection failures in a row" in summary["stopped"], summary
    assert summary["chunks_not_started"] > 0
    embedded.ensure_running(home, port=server.port)                 # crash recovery, same port
    again = cli.main(["backfill", "--config", str(path)])
    assert again == 0
    with psycopg2.connect(**server.dsn_params()) as check:
        check.autocommit = True
        with check.cursor() as cur:
            oracle.assert_equal_to_oracle(cur, "src_crash", "wide_crash", "cat_crash")
            cur.execute("SELECT status, count(*) FROM cat_crash.backfill_chunks GROUP BY 1")
            assert cur.fetchall() == [("done", 2 * 24)]


# --- the hand-off point cannot move ----------------------------------------------------------

def started_after(proc) -> str:
    for line in proc.stderr:
        if "starts after" in line:
            return line.split("starts after ", 1)[1].split(" (stream.start", 1)[0]
    raise AssertionError(f"the stream never logged its start (exit {proc.wait()})")


def test_a_killed_stream_restarts_from_the_offset_it_logged(fresh_fleet, write_config, tmp_path):
    name = "handfix"
    fresh_fleet(name, ships=1, channels=2, hours=1, seed=5).close()
    path = write_config(name, stream__checkpoint=str(tmp_path / "cp"), stream__query_name=name,
                        stream__start="latest", stream__settle_seconds=1)
    first = jobproc.start("stream", path, stderr=subprocess.PIPE)
    logged = started_after(first)
    os.killpg(first.pid, signal.SIGKILL)                     # before any batch could commit
    first.wait()
    time.sleep(1.5)                                          # "latest" (now - settle) has moved on
    second = jobproc.start("stream", path, "--once", stderr=subprocess.PIPE)
    assert started_after(second) == logged
    assert second.wait(timeout=120) == 0


# --- rollback during a live stream -----------------------------------------------------------

def test_rollback_during_a_live_stream(fresh_fleet, make_config, spark, pg, tmp_path):
    name = "rbstream"
    fresh_fleet(name, ships=0, ingest_id=True).close()
    src, cat = f"src_{name}", f"cat_{name}"
    config = make_config(name, source__order_column="ingest_id")
    config = replace(config, stream=replace(config.stream, query_name=name, checkpoint=str(tmp_path / "cp"),
                                            start="earliest", trigger_seconds=0.2,
                                            metrics_textfile=str(tmp_path / "widen.prom")))

    def merged(ship: str, minute: int) -> bool:
        with pg.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f'wide_{name}."tbl_data_timeseries_{ship}"',))
            if cur.fetchone()[0] is None:
                return False
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_time = %s").format(
                sql.Identifier(f"wide_{name}", f"tbl_data_timeseries_{ship}")), (nasty.at(60 * minute),))
            return cur.fetchone()[0] == 1

    run = stream.start(config, spark)
    try:
        nasty.insert(pg, src, nasty.minute("ship A", 0, ["a"]) + nasty.minute("ship B", 0, ["a"]))
        wait_until(lambda: merged("ship A", 0) and merged("ship B", 0), 60, "minute 0")
        undone = rollback.run(config, spark, ships=["ship A"])       # while the stream runs
        assert undone.exit_code == 0, undone.report
        nasty.insert(pg, src, nasty.minute("ship A", 1, ["a", "b"]) + nasty.minute("ship B", 1, ["a"]))
        wait_until(lambda: merged("ship B", 1), 60, "ship B's minute 1")
        time.sleep(1)                                                 # a few more triggers
        assert not merged("ship A", 1)
    finally:
        run.query.stop()
    summary = run.finish()
    assert summary["skipped_rows"] == 8 and summary["skipped_ships"] == {"ship A": 8}
    assert "widen_stream_skipped_rows_total{query_name=\"rbstream\"} 8.0" in (tmp_path / "widen.prom").read_text()
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'wide_{name}."tbl_data_timeseries_ship A"',))
        assert cur.fetchone()[0] is None                              # never recreated
        cur.execute(sql.SQL("SELECT ship_id, state FROM {}").format(sql.Identifier(cat, "ship_states")))
        assert cur.fetchall() == [("ship A", "rolled_back")]
    # resume: the next stream run writes ship A again (its table comes back with the new rows).
    assert resume.run(config, spark, ships=["ship A"]).exit_code == 0
    nasty.insert(pg, src, nasty.minute("ship A", 2, ["a"]))
    assert stream.run(config, spark, once=True).exit_code == 0
    assert merged("ship A", 2)


# --- the reject sweep under concurrency ------------------------------------------------------

def test_concurrent_reject_sweeps_never_duplicate(fresh_fleet, make_config, pg):
    name = "sweep"
    fresh_fleet(name, ships=2, channels=2, hours=1, seed=6).close()
    nasty.insert(pg, f"src_{name}", [(None, "c", nasty.at(i), "Decimal", float(i), None, None, None) for i in range(5)])
    config = make_config(name)
    first, second = generate.ship_ids(2)
    from widen.catalog import schema
    from widen.pg import db

    with db.connection(config.target.connection) as conn:
        schema.migrate(conn, config.target.catalog_schema)
    with pg.cursor() as cur:
        # Each INSERT into rejects takes a second: two sweeps without a lock would both insert.
        cur.execute(sql.SQL("CREATE OR REPLACE FUNCTION {}.slow() RETURNS trigger LANGUAGE plpgsql AS "
                            "$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$").format(sql.Identifier(f"cat_{name}")))
        cur.execute(sql.SQL("CREATE TRIGGER slow BEFORE INSERT ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}.slow()")
                    .format(sql.Identifier(f"cat_{name}", "rejects"), sql.Identifier(f"cat_{name}")))

    from widen.sources import open_table
    from widen.targets import open_target

    def sweep(ships):
        job = backfill.Backfill(config, None, open_table(config.source, "test"), open_target(config.target))
        with db.connection(config.source.connection) as src, db.connection(config.target.connection) as tgt:
            job.sweep_unplaceable_rejects(src, tgt, ships)

    threads = [threading.Thread(target=sweep, args=([s],)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE batch = 'sweep'").format(
            sql.Identifier(f"cat_{name}", "rejects")))
        assert cur.fetchone()[0] == 5
