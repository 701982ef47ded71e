"""The README's way to run a job: ./spark-submit.sh (spark-submit, the library as a zip, the jars)."""
import json
import os
import subprocess
from pathlib import Path

import oracle

NAME = "submit"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
ROOT = Path(__file__).resolve().parents[1]


def test_backfill_through_the_wrapper(fresh_fleet, write_config, pg):
    fresh_fleet(NAME, ships=2, channels=5, hours=2, seed=8).close()
    config_path = write_config(NAME)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_MASTER")}
    run = subprocess.run([str(ROOT / "spark-submit.sh"), "backfill", "--config", str(config_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert (summary["job"], summary["status"], summary["chunks_done"]) == ("backfill", "ok", 4)
    # spark-submit merges the Python driver's stderr into its stdout
    assert "[backfill] chunks 4/4" in run.stdout + run.stderr
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
    bad = subprocess.run([str(ROOT / "spark-submit.sh"), "explode"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown job" in bad.stderr
