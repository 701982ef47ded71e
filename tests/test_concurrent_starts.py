"""Any number of jobs may start at once from one checkout (a scheduler's minute): a job's library zip
never changes under it while others start (spark-submit.sh, widen.pyfiles)."""
import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import jobproc
import oracle

NAME = "concurrent"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
ROOT = Path(__file__).resolve().parents[1]
WRAPPER = str(ROOT / "spark-submit.sh")
AT_ONCE = 6


def running_py_files(marker: str) -> list[str]:
    """The --py-files of running spark-submit JVMs whose arguments mention ``marker``."""
    return [args[args.index("--py-files") + 1] for args in jobproc.spark_submit_jvms(marker) if "--py-files" in args]


def fingerprint(path: str) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size, Path(path).read_bytes()


def test_jobs_starting_while_a_spark_job_runs_leave_its_zip_alone(fresh_fleet, write_config, pg):
    """A backfill runs through spark-submit (its driver imports widen from the zip as it goes, its
    executors fetch the zip again and refuse one that "exists and does not match contents"); six jobs
    start through the wrapper at the same instant meanwhile. Before the fix each start rewrote
    build/widen.zip in place under the running backfill."""
    fresh_fleet(NAME, ships=2, channels=4, hours=2, seed=29).close()
    config_path = str(write_config(NAME))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_MASTER", "SPARK_LOCAL_IP")}
    backfill = subprocess.Popen([WRAPPER, "backfill", "--config", config_path], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (shipped := running_py_files(config_path)):
            assert backfill.poll() is None, backfill.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the backfill's driver never started"
            time.sleep(0.1)
        [zip_path] = shipped
        before = fingerprint(zip_path)
        starts = [subprocess.Popen([WRAPPER, "status", "--config", config_path], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(AT_ONCE)]
        summaries = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in starts]
        assert [s["job"] for s in summaries] == ["status"] * AT_ONCE, summaries
        assert "error" not in {s["status"] for s in summaries}, summaries
        assert fingerprint(zip_path) == before, f"{zip_path} changed while the backfill ran from it"
        out, err = backfill.communicate(timeout=600)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.communicate()
    assert backfill.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["status"], summary["chunks_done"]) == ("ok", 4), summary
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_the_zip_is_named_by_its_content_and_never_rewritten(tmp_path):
    """Six preparations of the zip at the same instant: one file, whole, holding every module."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    python = str(ROOT / ".venv" / "bin" / "python")
    lib = tmp_path / "lib"
    shutil.copytree(ROOT / "lib" / "widen", lib / "widen", ignore=shutil.ignore_patterns("__pycache__"))
    dest = tmp_path / "build"
    barrier = time.time() + 2
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from widen import pyfiles; "
            "time.sleep(max(0, float(sys.argv[3]) - time.time())); print(pyfiles.library_zip(sys.argv[2]))")
    procs = [subprocess.Popen([python, "-c", code, str(lib), str(dest), str(barrier)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    paths = {out.strip() for out, _ in results}
    [path] = paths
    zips = sorted(p.name for p in dest.iterdir())
    assert zips == sorted([Path(path).name, "widen.zip"]), zips     # no temporary file left behind
    expected = sorted(str(p.relative_to(lib)) for p in (lib / "widen").rglob("*.py") if "__pycache__" not in p.parts)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None and sorted(zf.namelist()) == expected
    assert os.path.samefile(path, dest / "widen.zip")
    # A changed module makes a new zip beside the old one, which stays as it was.
    before = Path(path).read_bytes()
    (lib / "widen" / "cli.py").write_text((lib / "widen" / "cli.py").read_text() + "\n# changed\n")
    again = subprocess.run([python, "-c", code, str(lib), str(dest), "0"], env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert again != path and Path(path).read_bytes() == before
    assert os.path.samefile(again, dest / "widen.zip")


def test_a_start_that_finds_the_link_made_meanwhile_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Another start links widen.zip to the same zip between this start's check and its rename:
    rename() between two links of one file is a no-op (POSIX), so the temporary link must be removed."""
    from widen import pyfiles
    final = pyfiles.library_zip(tmp_path)
    assert os.path.samefile(final, tmp_path / "widen.zip")
    monkeypatch.setattr(pyfiles.os.path, "samefile", lambda a, b: False)   # the check ran before the other's link
    pyfiles._link_latest(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, "widen.zip"])
