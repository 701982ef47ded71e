"""The wheel works on its own: built from the checkout, installed into a fresh venv that cannot see
the checkout, its ``widen`` console command runs plan, status and a Spark job from another folder.

No download at test time: the fresh venv borrows the project venv's third-party packages through a
.pth line (a path only: the project's editable install of widen is not processed from there), and
the wheel goes in with ``--no-deps``. `.ci/run` installs the wheel with its dependencies from the
package index."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import oracle
import pytest
import yaml
from conftest import raw_config

NAME = "wheel"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow      # builds the wheel and a venv


def bare_venv(path: Path) -> Path:
    """A venv without widen that finds the project venv's third-party packages; its python."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SPARK_MASTER", "SPARK_LOCAL_IP", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
                        "WIDEN_SUBMITTED", "WIDEN_PY_FILES", "WIDEN_SUMMARY_FILE")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the build leaves its files there, not here)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "setup.py", src)
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(dist), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    [whl] = dist.glob("widen-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel installed; its bin folder."""
    python = bare_venv(tmp_path_factory.mktemp("venv") / "v")
    away = tmp_path_factory.mktemp("away")
    seen = subprocess.run([str(python), "-c", "import widen"], cwd=away, env=clean_env(), capture_output=True,
                          text=True)
    assert "No module named 'widen'" in seen.stderr, "the fresh venv must not see the checkout's widen"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python.parent


def test_the_wheel_holds_the_library_its_data_and_its_dependencies(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = {line.split(":", 1)[1].strip().split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip()
                    for line in zf.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")}
    for module in ("widen/__init__.py", "widen/cli.py", "widen/session.py", "widen/pyfiles.py",
                   "widen/jobs/backfill.py", "widen/core/__init__.py", "widen/log4j2-quiet.properties",
                   "widen/log4j2-json.properties"):
        assert module in names, (module, sorted(names))
    assert {"pyspark", "psycopg2-binary", "PyYAML", "pyarrow", "pandas", "prometheus-client"} <= requires, requires


def run(venv: Path, cwd: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([str(venv / "widen"), *args], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert lines, (done.returncode, done.stderr[-3000:])
    return done, json.loads(lines[-1])


def write(cwd: Path, raw: dict) -> Path:
    path = cwd / "widen.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_console_command_plans_and_reports_status(venv, fresh_fleet, pg_server, tmp_path):
    fresh_fleet(NAME, ships=2, channels=4, hours=2, seed=11).close()
    config = write(tmp_path, raw_config(pg_server, NAME))
    planned, summary = run(venv, tmp_path, "plan", "--config", config.name)
    assert planned.returncode == 0 and summary["status"] == "ok", planned.stderr[-3000:]
    assert summary["ships"] == 2, summary
    status, summary = run(venv, tmp_path, "status", "--config", config.name)
    assert summary["job"] == "status" and summary["status"] in ("ok", "problem"), status.stderr[-3000:]
    assert len(summary["ship_status"]) == 2, summary


def test_a_spark_job_from_the_console_command_ships_the_library_to_its_workers(venv, fresh_fleet, pg_server,
                                                                                pg, tmp_path):
    """The backfill's Python workers run a python without widen (as a cluster's executors would):
    they import it from the zip the driver ships."""
    fresh_fleet(NAME, ships=2, channels=4, hours=2, seed=11).close()
    config = write(tmp_path, {**raw_config(pg_server, NAME), "home": str(tmp_path / "home"),
                              "spark": {"master": "local[2]", "conf": {"spark.ui.enabled": "false"}}})
    workers = bare_venv(tmp_path / "workers")
    done, summary = run(venv, tmp_path, "backfill", "--config", config.name, env=clean_env(PYSPARK_PYTHON=str(workers)))
    assert done.returncode == 0 and summary["status"] == "ok", done.stderr[-3000:]
    assert summary["chunks_done"] == 4, summary
    assert list((tmp_path / "home" / "py-files").glob("widen-*.zip"))
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_a_spark_job_without_the_jars_says_where_to_put_them(venv, fresh_fleet, pg_server, tmp_path):
    fresh_fleet(NAME, ships=1, channels=2, hours=1, seed=12).close()
    empty = tmp_path / "nojars"
    empty.mkdir()
    config = write(tmp_path, {**raw_config(pg_server, NAME), "jars_dir": str(empty)})
    done, summary = run(venv, tmp_path, "backfill", "--config", config.name)
    assert done.returncode == 2 and summary["status"] == "bad_input", done.stderr[-3000:]
    assert summary["error"].startswith(f"jars_dir: no PostgreSQL JDBC jar in '{empty}'"), summary
    assert done.stderr.strip().splitlines()[-1] == f"widen: {summary['error']}", done.stderr
    assert "Traceback" not in done.stderr
