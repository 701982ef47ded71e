"""The command line's edges (issue 29 items 6, 9, 10): each job's own help and options, bad config
said in one line, configured names kept on the embedded server, read-only jobs that create
nothing, passwords that never reach a message (so no output is rewritten), a full disk that stops
the backfill at once, and ``--log-format json`` for every stderr line."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import jobproc
import psycopg2
import pytest
import yaml
from conftest import raw_config
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg2 import sql

from widen import cli, embedded
from widen.config import Connection
from widen.sources import generate

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = str(ROOT / "spark-submit.sh")


def summary_of(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def wrapper(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([WRAPPER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@contextlib.contextmanager
def environment(**values: str | None):
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_quietly(argv: list[str], summary_file: Path) -> tuple[int, str, str]:
    """``cli.main(argv)`` with its stderr captured and its summary written to ``summary_file``:
    (exit code, stderr, the summary line)."""
    err = io.StringIO()
    with environment(WIDEN_SUMMARY_FILE=str(summary_file)), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue(), summary_file.read_text().strip()


# --- 10. help and options per job -------------------------------------------------------------------

@pytest.mark.parametrize("job, has, lacks", [
    ("backfill", ["--start", "--cutoff", "--ships-file"], ["--repair", "--once", "--exact", "--fleet-ships"]),
    ("reconcile", ["--repair", "--start"], ["--once", "--undo"]),
    ("stream", ["--once", "--drop-slot"], ["--ships", "--repair"]),
    ("generate", ["--fleet-ships", "--replace-any-table"], ["--ships", "--repair"]),
])
def test_each_job_has_its_own_help(capsys, job, has, lacks):
    assert cli.main([job, "--help"]) == 0
    text = capsys.readouterr().out
    assert f"widen {job}" in text
    for option in has:
        assert option in text, (option, text)
    for option in lacks:
        assert option not in text, (option, text)


@pytest.mark.parametrize("argv, option", [(["backfill", "--repair"], "--repair"), (["status", "--once"], "--once"),
                                          (["stream", "--ships", "A"], "--ships")])
def test_an_option_the_job_does_not_take_is_bad_input(capsys, argv, option):
    assert cli.main(argv) == 2
    summary = summary_of(capsys)
    assert summary["status"] == "bad_input" and option in summary["error"] and argv[0] in summary["error"]


def test_the_wrapper_lists_the_jobs_and_a_jobs_options_without_a_jvm(tmp_path):
    marker = tmp_path / "submitted"
    fake_submit = tmp_path / "spark-submit"
    fake_submit.write_text(f"#!/bin/sh\ntouch {marker}\nexit 9\n")
    fake_submit.chmod(0o755)
    env = {"SPARK_SUBMIT": str(fake_submit), "WIDEN_ALWAYS_SUBMIT": "1"}
    listing = wrapper("--help", env=env)
    assert listing.returncode == 0, listing.stderr
    assert all(job in listing.stdout for job in cli.JOBS)
    own = wrapper("backfill", "--config", "conf/local.yaml", "--help", env=env)
    assert own.returncode == 0, own.stderr
    assert "--cutoff" in own.stdout and "--repair" not in own.stdout
    assert not marker.exists(), "help started spark-submit"
    refused = wrapper("status", "--once")
    assert refused.returncode == 2 and "--once" in json.loads(refused.stdout.splitlines()[-1])["error"]


# --- 10. config: empty is bad input; a YAML error is one line without the text --------------------

@pytest.mark.parametrize("text", ["", "# all commented out\n", "{}\n"])
def test_an_empty_config_is_bad_input(capsys, tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert cli.main(["status", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["status"] == "bad_input" and "empty" in summary["error"]
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, line, column", [
    ('target:\n  host: db\n  sslmode: "require\n  password_env: "Tr0ub4dor&3-secret\n', 4, 18),
    ("source:\n  host: db\n\tuser: Tr0ub4dor&3-secret\n", 3, 1),
    ("source: [Tr0ub4dor&3-secret\n", 2, 1),
])
def test_a_yaml_error_names_file_line_and_column_in_one_line_without_the_text(capsys, tmp_path, text, line,
                                                                               column):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert cli.main(["status", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out.strip().splitlines()[-1])["error"]
    assert error.startswith(f"{path}:{line}:{column}: not valid YAML"), error
    assert "Tr0ub4dor" not in captured.err + captured.out and "secret" not in error
    assert len(captured.err.strip().splitlines()) == 1, captured.err


# --- 10. read-only jobs create nothing --------------------------------------------------------------

def schema_exists(pg, name: str) -> bool:
    with pg.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))
        return cur.fetchone() is not None


def test_read_only_jobs_create_no_catalog(capsys, pg, pg_server, tmp_path):
    with pg.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS cat_nothing_yet CASCADE")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(pg_server, "nothing_yet")))
    assert cli.main(["status", "--config", str(path)]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["status"] == "problem" and summary["ships"] == 0
    assert "no catalog yet: run plan or backfill first" in captured.err
    assert cli.main(["report", "--config", str(path), "--out", str(tmp_path / "r.html")]) == 1
    assert not (tmp_path / "r.html").exists()
    assert cli.main(["cutover", "--config", str(path), "--ships", "S1", "--dry-run"]) == 2
    assert cli.main(["rollback", "--config", str(path), "--ships", "S1", "--dry-run"]) == 2
    capsys.readouterr()
    assert not schema_exists(pg, "cat_nothing_yet")


# --- 10. the embedded server keeps the configured names ---------------------------------------------

@pytest.fixture(scope="module")
def own_pg(tmp_path_factory):
    """An embedded server of this module's own (started by a job through its home), so tests may
    change its authentication and tablespaces."""
    home = tmp_path_factory.mktemp("edges")
    server = embedded.ensure_running(home)
    yield home, server
    embedded.stop(home)


def test_the_embedded_server_uses_the_configured_database_and_user(own_pg, tmp_path):
    home, server = own_pg
    path = tmp_path / "named.yaml"
    named = {"database": "fleet_db", "user": "migrator"}
    path.write_text(yaml.safe_dump({"embedded": "auto", "home": str(home), "source": named,
                                    "target": {**named, "catalog_schema": "cat_named"}}))
    code, err, line = run_quietly(["generate", "--config", str(path), "--fleet-ships", "1", "--channels", "2",
                                   "--hours", "0.1"], tmp_path / "summary")
    assert code == 0, (err, line)
    admin = psycopg2.connect(host=server.host, port=server.port, user=server.user, dbname="fleet_db")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'tenant' "
                        "AND tablename = 'tbl_data_timeseries'")
            assert cur.fetchall() == [("migrator",)]
    finally:
        admin.close()
    default = psycopg2.connect(**server.dsn_params())
    try:
        with default.cursor() as cur:
            cur.execute("SELECT to_regclass('tenant.tbl_data_timeseries')")
            assert cur.fetchone()[0] is None, "the job wrote into the embedded server's own database"
    finally:
        default.close()


# --- 6. passwords: no output rewritten, none ever carried --------------------------------------------

@pytest.fixture(scope="module")
def planned_fleet(pg_server, tmp_path_factory):
    """A tiny fleet, planned, so that status lists ship ids (``IMO…`` digits, the usual victims)."""
    conn_cfg = Connection(pg_server["host"], pg_server["port"], pg_server["database"], pg_server["user"])
    admin = psycopg2.connect(**conn_cfg.psycopg_params())
    admin.autocommit = True
    with admin.cursor() as cur:
        for schema in ("src_secrets", "wide_secrets", "cat_secrets"):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    generate.generate_fleet(conn_cfg, "src_secrets", ships=3, channels=2, hours=0.2, seed=3)
    with admin.cursor() as cur:
        cur.execute("SELECT DISTINCT ship_id FROM src_secrets.tbl_data_timeseries ORDER BY 1")
        ships = [r[0] for r in cur.fetchall()]
    admin.close()
    path = tmp_path_factory.mktemp("secrets") / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config(pg_server, "secrets")))
    with environment(PGPASSWORD=None):
        code, err, line = run_quietly(["plan", "--config", str(path)], path.with_name("plan.json"))
    assert code == 0, (err, line)
    return path, ships


@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_short_password_found_in_ship_ids_leaves_the_summary_intact(planned_fleet, data):
    path, ships = planned_fleet
    ship = data.draw(st.sampled_from(ships))
    start = data.draw(st.integers(0, len(ship) - 1))
    password = ship[start:start + data.draw(st.integers(1, 4))]
    with environment(PGPASSWORD=password):
        code, err, line = run_quietly(["status", "--config", str(path)], path.with_name("status.json"))
    summary = json.loads(line)                   # valid JSON whatever the password
    assert code in (0, 1), (err, line)
    assert sorted(s["ship_id"] for s in summary["ship_status"]) == ships
    assert all(ship in err for ship in ships), err


@pytest.fixture(scope="module")
def password_server(own_pg):
    """``own_pg`` asking the role ``pwuser`` for its password (scram) over TCP."""
    home, server = own_pg
    admin = psycopg2.connect(**server.dsn_params())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS pwuser")
        cur.execute("CREATE ROLE pwuser LOGIN PASSWORD 'the-right-one'")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        cur.execute("SELECT pg_reload_conf()")
    admin.close()
    return server


def wrong_password_run(server, folder: Path, password: str) -> tuple[int, str, str]:
    path = folder / "c.yaml"
    conn = {"host": server.host, "port": server.port, "database": server.database, "user": "pwuser",
            "password_env": "WIDEN_TEST_PW"}
    path.write_text(yaml.safe_dump({"embedded": "never", "source": conn, "target": conn}))
    with environment(WIDEN_TEST_PW=password):
        return run_quietly(["status", "--config", str(path)], folder / "summary")


@settings(max_examples=10, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=24))
def test_a_wrong_password_never_reaches_a_message(password_server, tmp_path_factory, password):
    server = password_server
    reference = wrong_password_run(server, tmp_path_factory.mktemp("pw"), "a wrong one")
    code, err, line = wrong_password_run(server, tmp_path_factory.mktemp("pw"), password)
    summary = json.loads(line)
    assert code == 2 and summary["status"] == "bad_input", (err, line)
    assert "password authentication failed" in summary["error"]
    # the messages do not depend on the password: nothing of it, not even masked
    assert (err, summary) == (reference[1], json.loads(reference[2]))
    assert "***" not in err and len(err.strip().splitlines()) == 1, err


def test_connection_errors_fit_one_line_and_name_the_server(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    closed = {"host": "127.0.0.1", "port": 9, "connect_timeout_seconds": 3}
    path.write_text(yaml.safe_dump({"embedded": "never", "source": closed, "target": closed}))
    with environment(PGPASSWORD="Zx9#q"):
        assert cli.main(["status", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Zx9#q" not in captured.err + captured.out and "***" not in captured.err
    assert "postgres@127.0.0.1:9/widen" in captured.err
    nohost = {"port": 9}
    path.write_text(yaml.safe_dump({"embedded": "never", "source": nohost, "target": nohost}))
    with environment(PGHOST=None):
        assert cli.main(["status", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "None" not in captured.err and "Unix socket" in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err


# --- 9. a full disk stops the backfill at once -----------------------------------------------------

@pytest.fixture()
def small_disk(own_pg):
    """A 256 KiB tmpfs as the tablespace of the database ``diskfull``'s new tables (staging among
    them): a real ``No space left on device`` (needs the right to mount, as root in CI)."""
    home, server = own_pg
    # where the server's user can reach it (a test's own tmp_path may be root's alone)
    mount = Path(f"/tmp/widen-small-{uuid.uuid4().hex[:8]}")
    mount.mkdir(mode=0o755)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    # as tests/test_bad_input.py's full disk: the suite runs as root (make test, .ci/run)
    assert done.returncode == 0, f"cannot mount a small tmpfs ({done.stderr.strip()}): the full-disk test needs root"
    try:
        embedded._chown_for_service(mount)
        admin = psycopg2.connect(**server.dsn_params())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS diskfull")
            cur.execute("CREATE DATABASE diskfull")
            cur.execute("DROP TABLESPACE IF EXISTS small")
            cur.execute(sql.SQL("CREATE TABLESPACE small LOCATION {}").format(sql.Literal(str(mount))))
        yield server, admin
        with admin.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS diskfull")
            cur.execute("DROP TABLESPACE IF EXISTS small")
        admin.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def test_a_full_disk_stops_the_backfill_at_once_in_one_line(small_disk, tmp_path):
    server, admin = small_disk
    conn_cfg = Connection(server.host, server.port, "diskfull", server.user, password_env=None)
    generate.generate_fleet(conn_cfg, "src_disk", ships=2, channels=40, hours=6, seed=5)
    raw = raw_config({"host": server.host, "port": server.port, "user": server.user, "database": "diskfull"},
                     "disk", backfill__chunk_hours=6, backfill__parallel_chunks=1, backfill__max_attempts=3,
                     backfill__retry_backoff_seconds=2)
    path = tmp_path / "disk.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["plan", "--config", str(path)]) == 0        # catalog and wide tables on the big disk
    with admin.cursor() as cur:
        cur.execute("ALTER DATABASE diskfull SET default_tablespace = small")
    began = time.monotonic()
    proc = jobproc.start("backfill", path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    took = time.monotonic() - began
    summary = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 1, (summary, err[-3000:])
    assert summary["stopped"] and summary["stopped"].startswith("out of disk space"), summary
    assert "Traceback" not in err and "\tat " not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 8, err           # the JVM's one warning, start, stop, progress, FAILED, STOPPED
    # no chunk was tried again: each attempt costs at least the 2 s backoff before a retry
    with psycopg2.connect(host=server.host, port=server.port, user=server.user, dbname="diskfull") as check:
        with check.cursor() as cur:
            cur.execute("SELECT coalesce(max(attempts), 0) FROM cat_disk.backfill_chunks WHERE status = 'failed'")
            assert cur.fetchone()[0] <= 1
    assert took < 90, took


def test_a_temp_file_over_its_limit_counts_as_a_full_disk_and_an_outage_does_not(pg):
    from widen import errors

    with pg.cursor() as cur:
        cur.execute("SET temp_file_limit = '64kB'")
        with pytest.raises(psycopg2.Error) as over:
            cur.execute("SELECT g FROM generate_series(1, 200000) g ORDER BY md5(g::text)")
        cur.execute("RESET temp_file_limit")
    assert over.value.pgcode == "53400" and errors.is_out_of_space(over.value)
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(host="127.0.0.1", port=9, dbname="x", connect_timeout=3)
    assert not errors.is_out_of_space(refused.value) and errors.is_connection_failure(refused.value)


# --- 9. --log-format json: every stderr line is JSON -----------------------------------------------

def assert_all_json(stderr: str) -> list[dict]:
    entries = []
    for line in stderr.splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not JSON: {line!r}") from None
            assert isinstance(entries[-1], dict), line
    return entries


def test_log_format_json_makes_every_stderr_line_json(fresh_fleet, write_config):
    fresh_fleet("jsonlog", ships=2, channels=3, hours=2).close()
    path = write_config("jsonlog")
    refused = wrapper("plan", "--config", "nowhere.yaml", "--log-format", "json")     # the wrapper's own line
    assert refused.returncode == 2 and assert_all_json(refused.stderr), refused.stderr
    planned = wrapper("plan", "--config", str(path), "--log-format", "json")
    assert planned.returncode == 0, planned.stderr
    assert_all_json(planned.stderr)
    status = wrapper("status", "--config", str(path), "--log-format=json")
    entries = assert_all_json(status.stderr)
    assert any("fleet:" in e.get("message", "") for e in entries), status.stderr   # the status table, as JSON
    backfilled = wrapper("backfill", "--config", str(path), "--log-format", "json", "--verbose")
    assert backfilled.returncode == 0, backfilled.stderr[-3000:]
    entries = assert_all_json(backfilled.stderr)
    assert any(e.get("job") == "backfill" for e in entries)
    assert json.loads(backfilled.stdout.strip().splitlines()[-1])["status"] == "ok"
