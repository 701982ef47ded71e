"""spark-submit.sh on a real Spark standalone cluster (master + worker on loopback, started from
pyspark's own spark-class): backfill and reconcile run on it and the result equals the oracle."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import oracle
import pyspark
import pytest

NAME = "cluster"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    port, ui, worker_ui = free_port(), free_port(), free_port()
    work = tmp_path_factory.mktemp("spark-work")
    spark_class = str(home / "bin" / "spark-class")
    procs = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                master_state(ui)
                break
            except OSError:
                assert time.monotonic() < deadline, "the standalone master did not come up"
                time.sleep(0.5)
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
             "--cores", "2", "--memory", "2g", "--webui-port", str(worker_ui), "--work-dir", str(work)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        while not [w for w in master_state(ui)["workers"] if w["state"] == "ALIVE"]:
            assert time.monotonic() < deadline, "no worker registered with the master"
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}", ui
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def submit(job: str, master: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_MASTER")}
    env["SPARK_MASTER"] = master
    return subprocess.run([str(ROOT / "spark-submit.sh"), job, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_backfill_and_reconcile_on_a_standalone_cluster(standalone, fresh_fleet, write_config, pg):
    master, ui = standalone
    fresh_fleet(NAME, ships=2, channels=5, hours=2, seed=12).close()
    config_path = write_config(NAME)
    filled = submit("backfill", master, "--config", str(config_path))
    assert filled.returncode == 0, filled.stdout[-2000:] + filled.stderr[-2000:]
    assert json.loads(filled.stdout.strip().splitlines()[-1])["chunks_done"] == 4
    checked = submit("reconcile", master, "--config", str(config_path))
    assert checked.returncode == 0, checked.stdout[-2000:]
    summary = json.loads(checked.stdout.strip().splitlines()[-1])
    assert summary["buckets"] > 0 and summary["mismatched_buckets"] == 0
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
    # Both ran as applications of the cluster, their executors on its worker.
    apps = master_state(ui)["completedapps"]
    assert len(apps) >= 2 and all(app["state"] == "FINISHED" for app in apps)
    # Cluster deploy mode for a Python application is refused by Spark on standalone: said up front.
    refused = submit("plan", master, "--deploy-mode", "cluster", "--config", str(config_path))
    assert refused.returncode == 2 and "cluster deploy mode" in refused.stderr
