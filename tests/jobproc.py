"""Start a job as its own process (as a scheduler would), in its own process group so a test can
SIGKILL it together with its JVM."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(job: str, config_path: Path, *args: str, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "TZ": "UTC"}
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--config", str(config_path), *args],
                            cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True)


def kill_at_random_batches(job: str, config_path: Path, batches: Callable[[], int], times: int = 3,
                           deadline: float = 180, most: int = 4) -> list[int]:
    """Start ``job`` and SIGKILL it (with its JVM) ``times`` times, each after 1-``most`` more committed
    batches (``batches()`` counts them) and a random moment into the next; returns the batch
    counts at each kill."""
    rng = random.Random()
    kills = []
    log = config_path.with_suffix(".stderr")
    for _ in range(times):
        with log.open("w") as stderr:
            proc = start(job, config_path, stderr=stderr)
        target = batches() + rng.randint(1, most)
        until = time.monotonic() + deadline
        while batches() < target:
            assert proc.poll() is None, f"{job} exited ({proc.returncode}) before it was killed: " \
                                        f"{log.read_text()[-3000:]}"
            assert time.monotonic() < until, f"{job} made no progress"
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 0.8))    # land anywhere in the next batch
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(batches())
    return kills


def spark_submit_jvms(marker: str) -> list[list[str]]:
    """Command lines of running spark-submit JVMs (the launcher's and the driver's) whose arguments
    mention ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if Path(args[0]).name == "java" and "org.apache.spark.deploy.SparkSubmit" in args \
                and any(marker in a for a in args):
            found.append(args)
    return found
