"""Start a job as its own process (as a scheduler would), in its own process group so a test can
SIGKILL it together with its JVM."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(job: str, config_path: Path, *args: str, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "TZ": "UTC"}
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--config", str(config_path), *args],
                            cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True)
