"""The way docs/operating.md runs a job: ./spark-submit.sh (spark-submit, the library as a zip, the jars)."""
import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import jobproc
import oracle

NAME = "submit"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
ROOT = Path(__file__).resolve().parents[1]
WRAPPER = str(ROOT / "spark-submit.sh")


def _address(hex_address: str) -> ipaddress._BaseAddress:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    return getattr(address, "ipv4_mapped", None) or address


def listening(ports: range) -> set:
    """Local addresses of TCP sockets listening on ``ports``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) in ports:
                    found.add(_address(address))
    return found


def driver_command_lines(marker: str) -> list[list[str]]:
    """Command lines of running Spark driver JVMs whose arguments mention ``marker``."""
    return [args for args in jobproc.spark_submit_jvms(marker) if "org.apache.spark.launcher.Main" not in args]


def test_backfill_through_the_wrapper(fresh_fleet, write_config, pg, tmp_path):
    fresh_fleet(NAME, ships=2, channels=5, hours=2, seed=8).close()
    config_path = write_config(NAME)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_MASTER", "SPARK_LOCAL_IP")}
    # A relative --config means relative to where the user stands, not to the repository.
    proc = subprocess.Popen([WRAPPER, "backfill", "--config", config_path.name], cwd=config_path.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ui_addresses: set[str] = set()
    drivers: list[list[str]] = []
    deadline = time.monotonic() + 600
    while proc.poll() is None:
        assert time.monotonic() < deadline
        ui_addresses |= listening(range(4040, 4100))
        drivers = drivers or driver_command_lines(str(config_path))
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    [line] = out.strip().splitlines()                     # the JSON summary, alone on stdout
    summary = json.loads(line)
    assert (summary["job"], summary["status"], summary["chunks_done"]) == ("backfill", "ok", 4)
    assert "[backfill] chunks 4/4" in err                 # progress on stderr
    # The driver's JVM mapped Spark's classes from setup's archive and, as it only schedules a
    # PostgreSQL-to-PostgreSQL backfill, ran the quick compiler only (widen.jvm).
    [driver] = drivers
    assert f"-XX:SharedArchiveFile={ROOT / 'jars' / 'spark-classes.jsa'}" in driver, driver
    assert "-XX:TieredStopAtLevel=1" in driver, driver
    # The Spark UI ran, on the loopback only.
    assert ui_addresses and all(a.is_loopback for a in ui_addresses), ui_addresses
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


def test_wrapper_usage_errors_are_bad_input(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cases = [(["explode"], "unknown job 'explode'"), (["plan", "--config"], "--config needs a value"),
             (["plan", "--master"], "--master needs a value"), (["plan", "--deploy-mode", "sideways"], "client or cluster"),
             (["plan", "--config", "nowhere.yaml"], f"config file {tmp_path}/nowhere.yaml does not exist")]
    for argv, message in cases:
        run = subprocess.run([WRAPPER, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, (argv, run.stderr)
        [line] = run.stdout.strip().splitlines()
        summary = json.loads(line)
        assert summary["status"] == "bad_input" and message in summary["error"], (argv, summary)
        assert message in run.stderr


def test_jobs_without_spark_work_start_no_jvm(fresh_fleet, write_config, tmp_path):
    """plan, status, report, rollback and resume run through the wrapper as plain Python: with
    SPARK_SUBMIT pointing at a program that always fails, each still succeeds."""
    name = "submitlight"
    fresh_fleet(name, ships=2, channels=3, hours=1, seed=4).close()
    config_path = str(write_config(name))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_MASTER")}
    env["SPARK_SUBMIT"] = "/bin/false"

    def wrapper(*args: str) -> dict:
        done = subprocess.run([WRAPPER, *args, "--config", config_path], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        [line] = done.stdout.strip().splitlines()
        return json.loads(line)

    planned = wrapper("plan")
    assert planned["job"] == "plan" and planned["ships"] == 2
    ship = sorted(s["ship_id"] for s in wrapper("status")["ship_status"])[0]
    assert wrapper("report", "--out", str(tmp_path / "r.html"))["path"] == str(tmp_path / "r.html")
    assert wrapper("rollback", "--ships", ship, "--dry-run")["dry_run"] is True
    # A job that needs Spark still goes through spark-submit (which here always fails).
    done = subprocess.run([WRAPPER, "backfill", "--config", config_path], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0 and json.loads(done.stdout.strip().splitlines()[-1])["status"] == "error"
