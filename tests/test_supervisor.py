"""A supervisor stops widen through ``spark-submit.sh`` (systemd, Kubernetes, a terminal): SIGTERM or
SIGINT to the wrapper, or SIGTERM to its whole process group. The stream stops after its current
batch, prints its summary, exits 0 and frees its query lock, so a restart right after is not busy;
a backfill stops with exit 130 ("interrupted"), its finished chunks kept. Real wrapper, real JVM,
real signals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nasty
import oracle
import pytest
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ["a", "b", "c", "d", "e"]


def wrapper(job: str, config_path: Path, *args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    """``spark-submit.sh <job>`` as a supervisor starts it: its own session and process group."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_MASTER")}
    # The driver imports this checkout's widen, whichever checkout the venv was installed from
    # (a namespace package in build/widen.zip loses to an editable install's folder).
    env["PYTHONPATH"] = str(ROOT / "lib")
    stderr = config_path.with_suffix(f".{job}.stderr").open("a")
    return subprocess.Popen([str(ROOT / "spark-submit.sh"), job, "--config", str(config_path), "--master", "local[2]",
                             *args], cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True)


def stderr_of(job: str, config_path: Path) -> str:
    return config_path.with_suffix(f".{job}.stderr").read_text()[-3000:]


def count(cur, table: sql.Composable, where: str = "true") -> int:
    cur.execute("SELECT to_regclass(%s)", (table.as_string(cur),))
    if cur.fetchone()[0] is None:
        return 0
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ").format(table) + sql.SQL(where))
    return cur.fetchone()[0]


def wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the job exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.1)


def finish(proc: subprocess.Popen, seconds: float = 90) -> tuple[int, dict]:
    """The wrapper's exit code and its JSON summary (the last stdout line), within ``seconds``."""
    out, _ = proc.communicate(timeout=seconds)
    return proc.returncode, json.loads(out.strip().splitlines()[-1])


def advisory_locks_of(cur, job: str) -> list[int]:
    """PostgreSQL pids holding one of ``job``'s advisory locks (widen.catalog.locks)."""
    cur.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = (hashtext(%s))::oid", ("widen.job." + job,))
    return [r[0] for r in cur.fetchall()]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stream_config(name: str, fresh_fleet, write_config, tmp_path):
    fresh_fleet(name, ships=0, ingest_id=True).close()
    return write_config(name, source__order_column="ingest_id", stream__checkpoint=str(tmp_path / "cp"),
                        stream__query_name=name, stream__start="earliest", stream__trigger_seconds=0.3)


def stop_a_running_stream(name: str, config_path: Path, pg, send) -> dict:
    """Start the stream through the wrapper, wait for a committed batch, add a minute, ``send`` the
    signal; the wrapper must exit 0 with status ok, its lock freed and no process of it left."""
    src, cat = f"src_{name}", f"cat_{name}"
    batches = sql.Identifier(cat, "stream_batches")
    nasty.insert(pg, src, nasty.minute("ship 1", 0, CHANNELS))
    proc = wrapper("stream", config_path)
    with pg.cursor() as cur:
        wait_for(lambda: count(cur, batches, "narrow_rows > 0") > 0, proc, "a committed batch")
        nasty.insert(pg, src, nasty.minute("ship 1", 1, CHANNELS))
        send(proc)
        code, summary = finish(proc)
        assert code == 0, (code, summary, stderr_of("stream", config_path))
        assert summary["job"] == "stream" and summary["status"] == "ok", summary
        assert not advisory_locks_of(cur, "stream"), "the query lock outlived the wrapper"
        deadline = time.monotonic() + 10     # the JVM and its Python driver end with the wrapper
        while group_alive(proc.pid):
            assert time.monotonic() < deadline, "a process of the stopped job is still running"
            time.sleep(0.1)
        cur.execute(sql.SQL("SELECT coalesce(sum(narrow_rows), 0) FROM {}").format(batches))
        assert cur.fetchone()[0] == summary["narrow_rows"]     # every batch it ran committed
    return summary


def test_group_sigterm_stops_the_stream_and_a_restart_is_not_busy(fresh_fleet, write_config, pg, tmp_path):
    """What systemd (KillMode=control-group) and Kubernetes do: SIGTERM to every process of the job."""
    name = "supgrp"
    config_path = stream_config(name, fresh_fleet, write_config, tmp_path)
    stop_a_running_stream(name, config_path, pg, lambda proc: os.killpg(proc.pid, signal.SIGTERM))
    nasty.insert(pg, f"src_{name}", nasty.minute("ship 1", 2, CHANNELS))
    again = wrapper("stream", config_path, "--once")             # right away
    code, summary = finish(again, 300)
    assert code == 0 and summary["status"] == "ok", (code, summary, stderr_of("stream", config_path))
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}", order_column="ingest_id")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_to_the_wrapper_alone_stops_the_stream(signum, fresh_fleet, write_config, pg, tmp_path):
    """``kill <pid>`` of the wrapper (or Ctrl-C sent to it alone): it hands the stop to the driver."""
    name = f"sup{signum.name[3:].lower()}"
    config_path = stream_config(name, fresh_fleet, write_config, tmp_path)
    stop_a_running_stream(name, config_path, pg, lambda proc: proc.send_signal(signum))


def test_group_sigterm_interrupts_a_backfill_and_a_rerun_goes_on(fresh_fleet, write_config, make_config, spark, pg):
    """A backfill stopped by its supervisor: exit 130, status interrupted, its done chunks kept (the
    rerun skips them) and its lock freed; the rerun completes the ships (oracle)."""
    from widen.jobs import backfill

    name = "supbf"
    overrides = {"backfill__chunk_hours": 0.25, "backfill__parallel_chunks": 1}
    config_path = write_config(name, **overrides)
    fresh_fleet(name, ships=2, channels=8, hours=4, seed=5).close()
    chunks = sql.Identifier(f"cat_{name}", "backfill_chunks")
    proc = wrapper("backfill", config_path)
    with pg.cursor() as cur:
        wait_for(lambda: count(cur, chunks, "status = 'done'") > 0, proc, "a done chunk")
        os.killpg(proc.pid, signal.SIGTERM)
        code, summary = finish(proc, 120)
        assert (code, summary["status"]) == (130, "interrupted"), (code, summary, stderr_of("backfill", config_path))
        assert not advisory_locks_of(cur, "backfill"), "the backfill's lock outlived the wrapper"
        kept = count(cur, chunks, "status = 'done'")
        # the chunk the stop cancelled is neither retried nor recorded as failed
        assert count(cur, chunks, "status <> 'done'") == 0, stderr_of("backfill", config_path)
    assert 0 < kept < 32
    result = backfill.run(make_config(name, **overrides), spark)
    assert result.exit_code == 0 and result.summary["chunks_skipped"] == kept, result.summary
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, f"src_{name}", f"wide_{name}", f"cat_{name}")
