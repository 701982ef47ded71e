"""The catalog is versioned: a catalog the released widen made (with its ledger rows) is upgraded by
this code in place, every row kept, every job working on it; two jobs upgrading at once apply each
migration once; a catalog newer than the code is refused.

The release is the code itself, taken from git (``RELEASE``) and run as a process of its own, as a
user upgrading would have run it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import nasty
import oracle
import pytest
import yaml
from conftest import ROOT, raw_config
from psycopg2 import sql

from widen import cli
from widen.catalog import schema
from widen.jobs import backfill, plan, reconcile, rollback, stream
from widen.pg import db

#: the last release before the catalog was versioned (stop 8 on main)
RELEASE = "f39dfa0"
NAME = "mig"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
CATALOG_TABLES = ["wide_tables", "channel_columns", "backfill_chunks", "stream_batches", "rejects",
                  "reconcile_results"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The released code, unpacked from git."""
    where = tmp_path_factory.mktemp("release")
    archive = where / "release.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), RELEASE, "lib", "jobs"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    # The release's widen was a namespace package: a regular one (the project's, installed) would
    # come first on the path, whatever PYTHONPATH says. Made regular, the release's is found first.
    (where / "lib" / "widen" / "__init__.py").touch()
    return where


def run_release(release: Path, job: str, config: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(release / "lib"), "TZ": "UTC"}
    done = subprocess.run([sys.executable, str(release / "jobs" / f"{job}.py"), "--config", str(config), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def catalog_rows(cur) -> dict[str, list]:
    out = {}
    for table in CATALOG_TABLES:
        cur.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2, 3").format(sql.Identifier(CAT, table)))
        out[table] = cur.fetchall()
    return out


def test_a_released_catalog_is_upgraded_in_place(release, fresh_fleet, pg_server, make_config, spark, pg, tmp_path):
    fresh_fleet(NAME, ships=2, channels=3, hours=2, seed=12).close()
    nasty.insert(pg, SRC, [("IMO9300001", "x", nasty.at(10), "Float", 1.0, None, None, None)])   # a reject
    checkpoint = str(tmp_path / "cp")
    raw = raw_config(pg_server, NAME, stream__checkpoint=checkpoint, stream__query_name=NAME, stream__start="earliest",
                     stream__settle_seconds=0)
    path = tmp_path / "release.yaml"
    path.write_text(yaml.safe_dump(raw))
    # The release migrates the history and streams it (its catalog, ledgers, checkpoint).
    assert run_release(release, "backfill", path)["chunks_done"] == 4
    assert run_release(release, "stream", path, "--once")["narrow_rows"] > 0
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{CAT}.schema_migrations",))
        assert cur.fetchone()[0] is None                       # made before the catalog had versions
        before = catalog_rows(cur)
    assert before["backfill_chunks"] and before["stream_batches"] and before["rejects"] and before["channel_columns"]

    # This code: every job works on it, and it keeps every row the release wrote.
    config = make_config(NAME)
    config = replace(config, stream=replace(config.stream, checkpoint=checkpoint, query_name=NAME, start="earliest",
                                            settle_seconds=0.0))
    assert plan.run(config).exit_code == 0
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT version FROM {} ORDER BY 1").format(sql.Identifier(CAT, "schema_migrations")))
        assert [r[0] for r in cur.fetchall()] == [version for version, _, _ in schema.MIGRATIONS]
        after = catalog_rows(cur)
    for table in CATALOG_TABLES:
        # Columns are only added: every row keeps the release's columns as they were.
        width = len(before[table][0]) if before[table] else 0
        assert [row[:width] for row in after[table]] == before[table], table
    again = backfill.run(config, spark)
    assert again.exit_code == 0 and again.summary["chunks_done"] == 0 and again.summary["chunks_skipped"] == 4
    nasty.insert(pg, SRC, nasty.minute("IMO9300001", 200, ["new channel"]))
    more = stream.run(config, spark, once=True)                # from the release's checkpoint on
    assert more.exit_code == 0 and more.summary["narrow_rows"] == 4
    checked = reconcile.run(config, spark)
    assert checked.exit_code == 0 and checked.summary["mismatched_buckets"] == 0, checked.report
    with pg.cursor() as cur:
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)
    assert rollback.run(config, spark, ships=["IMO9300018"]).exit_code == 0


def test_two_upgrades_at_once_and_a_catalog_from_the_future(release, pg_server, pg, tmp_path, capsys):
    name = "migtwo"
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    # The release's own catalog DDL, run by the release.
    code = (f"import psycopg2, widen.catalog as c; conn = psycopg2.connect(host={pg_server['host']!r}, "
            f"port={pg_server['port']}, user={pg_server['user']!r}, dbname={pg_server['database']!r}); "
            f"c.ensure_catalog(conn, {name!r})")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(release / "lib")}, check=True)
    params = {"host": pg_server["host"], "port": pg_server["port"], "dbname": pg_server["database"],
              "user": pg_server["user"]}
    start = threading.Barrier(2)
    found, failures = [], []

    def upgrade() -> None:
        conn = db.open_session(params)
        try:
            start.wait()
            found.append(schema.migrate(conn, name))
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            failures.append(err)
        finally:
            conn.close()

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == [] and sorted(found) == [0, schema.LATEST]     # one upgraded, the other found it done
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT version FROM {} ORDER BY 1").format(sql.Identifier(name, "schema_migrations")))
        assert [r[0] for r in cur.fetchall()] == list(range(1, schema.LATEST + 1))
        cur.execute(sql.SQL("INSERT INTO {} (version, description) VALUES (%s, 'from a newer widen')").format(
            sql.Identifier(name, "schema_migrations")), (schema.LATEST + 1,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS src_migtwo; CREATE TABLE IF NOT EXISTS src_migtwo.tbl_data_timeseries "
                    "(ship_id text, data_channel_id text, created_time timestamptz, value_format text, "
                    "double_v float8, long_v bigint, str_v text, bool_v boolean)")
    raw = raw_config(pg_server, "migtwo", target__catalog_schema=name)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["plan", "--config", str(path)]) == 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert f"is at catalog version {schema.LATEST + 1}, newer than this widen knows" in summary["error"]
