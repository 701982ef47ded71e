"""Every bad input ends with exit 2, one line naming the key or argument and what is wrong, and the
JSON summary alone on stdout; never a traceback. Faults of the environment (a full disk) end with
exit 1 and their real cause. No password ever shows."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid

import psycopg2
import pytest
import yaml
from conftest import raw_config
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg2 import sql

from widen import cli

NAME = "badin"
SRC = f"src_{NAME}"


def run_cli(capsys, argv: list[str]) -> tuple[int, dict, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 1, out.out            # the JSON summary, alone
    return code, json.loads(lines[0]), out.err


def write(tmp_path, raw: dict | str) -> str:
    path = tmp_path / f"{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return str(path)


def with_keys(base: dict, **dotted) -> dict:
    raw = copy.deepcopy(base)
    for key, value in dotted.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return raw


@pytest.fixture(scope="module")
def narrow(pg_server):
    """A small narrow table (two ships) and the base config pointing at it."""
    from widen.config import Connection
    from widen.sources import generate

    conn = Connection(pg_server["host"], pg_server["port"], pg_server["database"], pg_server["user"])
    admin = psycopg2.connect(**conn.psycopg_params())
    admin.autocommit = True
    with admin.cursor() as cur:
        for schema in (SRC, f"wide_{NAME}", f"cat_{NAME}"):
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    admin.close()
    generate.generate_fleet(conn, SRC, ships=2, channels=2, hours=1)
    return raw_config(pg_server, NAME)


CONFIG_CASES = {
    "chunk_hours NaN": ({"backfill__chunk_hours": float("nan")}, "backfill.chunk_hours: must be a finite number"),
    "chunk_hours inf": ({"backfill__chunk_hours": float("inf")}, "backfill.chunk_hours: must be a finite number"),
    "spark.conf a list": ({"spark__conf": ["a=b"]}, "spark.conf: expected a mapping"),
    "negative backoff": ({"backfill__retry_backoff_seconds": -1}, "backfill.retry_backoff_seconds: must be at least 0"),
    "fractional count": ({"backfill__parallel_chunks": 2.5}, "backfill.parallel_chunks: expected a whole number"),
    "typo under spark": ({"spark__mastr": "local[2]"}, "spark: unknown key(s) mastr"),
    "source key under target": ({"target__order_column": "id"}, "target: unknown key(s) order_column (a source key)"),
    "stream.start yesterday": ({"stream__start": "yesterday"}, "stream.start: expected latest, earliest or an ISO"),
    "metrics port": ({"stream__metrics_port": 70000}, "stream.metrics_port: must be at most 65535"),
    "port not a number": ({"target__port": "fivefour"}, "target.port: expected a whole number"),
    "sslmode": ({"source__sslmode": "sometimes"}, "source.sslmode: expected one of"),
    "empty schema": ({"source__schema": ""}, "source.schema: must not be empty"),
    "unknown kind": ({"target__kind": "parquet"}, "target.kind: expected one of postgres, delta"),
    "password file missing": ({"target__password_file": "/nonexistent/pw"}, "target.password_file: cannot read"),
    "max columns": ({"target__max_columns_per_table": 1600}, "target.max_columns_per_table: must be at most 1599"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_values(case, narrow, tmp_path, capsys):
    keys, message = CONFIG_CASES[case]
    code, summary, err = run_cli(capsys, ["plan", "--config", write(tmp_path, with_keys(narrow, **keys))])
    if message is None:
        assert code == 0, summary
        return
    assert (code, summary["status"]) == (2, "bad_input"), summary
    assert message in summary["error"], summary["error"]
    assert [line for line in err.splitlines() if line.startswith("widen:")] == [f"widen: {summary['error']}"]
    assert "Traceback" not in err


def test_bad_config_files(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WIDEN_NOT_SET", raising=False)
    cases = {
        "[1, 2]\n": "config: expected a mapping at the top level",
        "source: [\n": "not valid YAML",
        "source:\n  host: ${WIDEN_NOT_SET}\n": "source.host: environment variable WIDEN_NOT_SET is not set",
        "stream: 5\n": "stream: expected a mapping",
    }
    for text, message in cases.items():
        code, summary, err = run_cli(capsys, ["plan", "--config", write(tmp_path, text)])
        assert code == 2 and message in summary["error"], (text, summary)
        assert "Traceback" not in err
    code, summary, _ = run_cli(capsys, ["plan", "--config", str(tmp_path / "missing.yaml")])
    assert code == 2 and "does not exist" in summary["error"]


def test_bad_narrow_tables(narrow, pg, tmp_path, capsys):
    with pg.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (ship_id text, data_channel_id text, created_time "
                            "timestamptz, value_format text, double_v float8, long_v bigint, str_v text)").format(
            sql.Identifier(SRC, "no_bool")))
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (ship_id text, data_channel_id text, created_time text, "
                            "value_format text, double_v float8, long_v bigint, str_v text, bool_v boolean)").format(
            sql.Identifier(SRC, "text_time")))
    for job in ("plan", "backfill", "reconcile"):
        code, summary, _ = run_cli(capsys, [job, "--config", write(tmp_path, with_keys(narrow, source__table="no_bool"))])
        assert code == 2 and "has no column bool_v" in summary["error"], summary
        code, summary, _ = run_cli(capsys, [job, "--config", write(tmp_path, with_keys(narrow, source__table="text_time"))])
        assert code == 2 and "created_time is text; widen needs timestamptz or timestamp" in summary["error"], summary
    config = write(tmp_path, with_keys(narrow, source__order_column="ingest"))
    code, summary, _ = run_cli(capsys, ["plan", "--config", config])
    assert code == 2 and "has no column ingest" in summary["error"]


def test_unknown_ships_and_empty_ranges(narrow, tmp_path, capsys):
    config = write(tmp_path, narrow)
    for job in ("plan", "backfill", "reconcile"):
        code, summary, _ = run_cli(capsys, [job, "--config", config, "--ships", "NOSUCHSHIP"])
        assert code == 2 and "--ships: no ship 'NOSUCHSHIP' in src_badin.tbl_data_timeseries or the catalog" \
            in summary["error"], summary
    code, summary, _ = run_cli(capsys, ["rollback", "--config", config, "--ships", "NOSUCHSHIP"])
    assert code == 2 and "no ship 'NOSUCHSHIP' in the catalog" in summary["error"]
    code, summary, _ = run_cli(capsys, ["backfill", "--config", config, "--start", "2026-01-02", "--end", "2026-01-01"])
    assert code == 2 and "is not before --end" in summary["error"]
    code, summary, _ = run_cli(capsys, ["reconcile", "--config", config, "--start", "2026-01-01", "--end", "2026-01-01"])
    assert code == 2 and "the range is empty" in summary["error"]
    code, summary, _ = run_cli(capsys, ["backfill", "--config", config, "--ships-file", str(tmp_path / "none.txt")])
    assert code == 2 and "--ships-file: cannot read" in summary["error"]
    for argv in (["backfill", "--ships", ""], ["generate", "--hours", "-1"], ["generate", "--fleet-ships", "x"],
                 ["stream", "--unknown-flag"]):
        code, summary, err = run_cli(capsys, argv + ["--config", config])
        assert code == 2 and summary["status"] == "bad_input" and "Traceback" not in err, argv


def test_a_misspelled_ship_is_named_with_a_suggestion(narrow, tmp_path, capsys):
    config = write(tmp_path, narrow)
    code, summary, _ = run_cli(capsys, ["plan", "--config", config])
    assert code == 0
    code, summary, _ = run_cli(capsys, ["reconcile", "--config", config, "--ships", "IMO930001"])
    assert code == 2 and "(did you mean " in summary["error"] and "'IMO9300001'" in summary["error"], summary


def test_generate_replaces_only_its_own_tables(narrow, pg, tmp_path, capsys):
    with pg.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)").format(
            sql.Identifier(SRC, "production"), sql.Identifier(SRC, "tbl_data_timeseries")))
        cur.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} LIMIT 5").format(
            sql.Identifier(SRC, "production"), sql.Identifier(SRC, "tbl_data_timeseries")))
    config = write(tmp_path, with_keys(narrow, source__table="production"))
    code, summary, _ = run_cli(capsys, ["generate", "--config", config, "--replace", "--fleet-ships", "1",
                                        "--channels", "1", "--hours", "0.1"])
    assert code == 2 and "was not made by generate" in summary["error"]
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SRC, "production")))
        assert cur.fetchone()[0] == 5                  # untouched
    own = write(tmp_path, narrow)                      # the table generate made: replaced
    code, summary, _ = run_cli(capsys, ["generate", "--config", own, "--replace", "--fleet-ships", "2",
                                        "--channels", "2", "--hours", "1"])
    assert code == 0 and summary["rows"] == 2 * 2 * 240


def test_unwritable_checkpoint(narrow, tmp_path, capsys):
    mount = tmp_path / "readonly"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], check=True)
    try:
        config = write(tmp_path, with_keys(narrow, stream__checkpoint=str(mount / "cp")))
        code, summary, err = run_cli(capsys, ["stream", "--config", config, "--once"])
        assert code == 2 and "stream.checkpoint: cannot write to" in summary["error"]
        assert "Read-only file system" in summary["error"] and "Traceback" not in err
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- a full disk: exit 1 with the real cause ---------------------------------------------------------

@pytest.fixture()
def full_disk(pg, pg_server):
    """A 64 MB tmpfs as a tablespace and a database on it; ``fill()`` leaves it with no free byte."""
    with pg.cursor() as cur:
        cur.execute("SHOW data_directory")
        owner = os.stat(cur.fetchone()[0])
    mount = f"/tmp/widen-disk-{uuid.uuid4().hex[:8]}"
    os.mkdir(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64m,mode=0755,uid={owner.st_uid},gid={owner.st_gid}",
                    "tmpfs", mount], check=True)
    space, database = f"disk_{uuid.uuid4().hex[:6]}", f"diskdb_{uuid.uuid4().hex[:6]}"
    os.mkdir(f"{mount}/ts")
    os.chown(f"{mount}/ts", owner.st_uid, owner.st_gid)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(space), sql.Literal(f"{mount}/ts")))
        cur.execute(sql.SQL("CREATE DATABASE {} TABLESPACE {}").format(sql.Identifier(database), sql.Identifier(space)))

    def fill() -> None:
        """Write until the file system refuses even 512 bytes."""
        fd = os.open(f"{mount}/filler", os.O_WRONLY | os.O_CREAT)
        try:
            for size in (1 << 20, 1 << 14, 512):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    continue
        finally:
            os.close(fd)

    yield database, fill
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        cur.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(space)))
    subprocess.run(["umount", mount], check=True)
    os.rmdir(mount)


def test_disk_full_ends_with_its_real_cause(full_disk, pg_server, spark, tmp_path, capsys):
    database, fill = full_disk
    raw = raw_config(pg_server, NAME)
    for side in ("source", "target"):
        raw[side]["database"] = database
    config = write(tmp_path, raw)
    code, summary, _ = run_cli(capsys, ["generate", "--config", config, "--fleet-ships", "2", "--channels", "20",
                                        "--hours", "2"])
    assert code == 0
    code, summary, _ = run_cli(capsys, ["plan", "--config", config])
    assert code == 0
    fill()
    # The backfill's staging COPY runs in a Spark Python worker: the cause is the worker's error.
    code, summary, err = run_cli(capsys, ["backfill", "--config", config])
    # A full disk is not transient: the backfill stops at once (no retry, no further chunk).
    assert code == 1 and summary["stopped"].startswith("out of disk space: DiskFull: "), summary
    assert summary["chunks_failed"] >= 1 and summary["chunks_not_started"] >= 1, summary
    assert summary["chunks_failed"] + summary["chunks_not_started"] == summary["chunks_total"], summary
    for failure in summary["failed"]:
        assert failure["error"].startswith(("DiskFull: ", "DiskFull:")), failure
        assert "No space left on device" in failure["error"]
    code, summary, err = run_cli(capsys, ["generate", "--config", config, "--replace", "--fleet-ships", "2",
                                          "--channels", "20", "--hours", "2"])
    assert code == 1 and summary["status"] == "error", summary
    assert summary["error"].startswith("DiskFull: ") and "No space left on device" in summary["error"]
    assert "Traceback" not in err


# --- secrets ------------------------------------------------------------------------------------

SPECIAL_PASSWORDS = ["p@ss: w0rd #{x}", "a'b\"c%s%(x)s\\n/?&=;", "- [not, a, list]", "${PGPASSWORD}:{}@host"]


def assert_secret_kept(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, text


@settings(max_examples=4, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated=st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=6,
                         max_size=30).filter(lambda s: s.strip() == s))
def test_passwords_never_show(generated, narrow, tmp_path_factory, capsys):
    tmp_path = tmp_path_factory.mktemp("pw")
    for secret in [generated, *SPECIAL_PASSWORDS]:
        os.environ["PGPASSWORD"] = secret
        try:
            cases = [
                ("source", "password_file", "${PGPASSWORD}"),     # the path is the password
                ("target", "port", "${PGPASSWORD}"),
                ("target", "host", "${PGPASSWORD}"),
                ("source", "password", "${PGPASSWORD}"),
                ("backfill", "chunk_hours", "${PGPASSWORD}"),
            ]
            for section, key, value in cases:
                code, summary, err = run_cli(capsys, ["plan", "--config", write(tmp_path, with_keys(
                    narrow, **{f"{section}__{key}": value}))])
                assert code == 2, (section, key, summary)
                assert f"{section}.{key}: ${{PGPASSWORD}} holds a password" in summary["error"], summary
                assert_secret_kept(secret, json.dumps(summary), err)
            # A whole run with the password set (the test server trusts local connections).
            code, summary, err = run_cli(capsys, ["plan", "--config", write(tmp_path, narrow)])
            assert code == 0
            assert_secret_kept(secret, json.dumps(summary), err)
        finally:
            os.environ.pop("PGPASSWORD", None)
